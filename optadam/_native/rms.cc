// RMSProp, plain and centered, each element in one pass: optadam/rmsprop.py's scale_by_rms
// (its moments, then its direction, with `scale`) transcribed line for line, with the same names
// and order. The Python stays the definition; tests/test_native_rms.py holds this file to it.
#include <cmath>

#include "block8.h"
#include "leaves.h"
#include "lowp.h"

namespace optadam {
namespace {

// This step's runtime scalars, in the order scale_by_rms lists them for its Kernel.
template <typename T>
struct RmsScalars {
  T decay, one_minus_decay, eps;
  T c;  // bias correction 1 − ρ^t, or 1 without bias_correction
};
constexpr size_t kRmsScalars = sizeof(RmsScalars<float>) / sizeof(float);

// scale(var): 1 / sqrt(var + ε) (XLA:CPU's rsqrt) or 1 / (sqrt(var) + ε).
template <typename T, bool kEpsInSqrt>
inline T Scale(const RmsScalars<T>& s, T var) {
  return kEpsInSqrt ? T(1) / std::sqrt(var + s.eps) : T(1) / (std::sqrt(var) + s.eps);
}

// max(x, 0) as jnp.maximum: a NaN stays NaN.
template <typename T>
inline T NonNegative(T x) {
  return std::isnan(x) ? x : (x > T(0) ? x : T(0));
}

// scale_by_rms's moments: `nu`, and `mu` when centered, advanced in place.
template <typename T, bool kCentered>
inline void RmsMoments(const RmsScalars<T>& s, T g, T& mu, T& nu) {
  nu = MulAdd(s.decay, nu, s.one_minus_decay * (g * g));  // ν_t = ρ · ν_{t-1} + (1 − ρ) · |g_t|²
  if (kCentered) mu = MulAdd(s.decay, mu, s.one_minus_decay * g);  // μ_t = ρ · μ_{t-1} + (1 − ρ) · g_t
}

// scale_by_rms's direction: u_t from the new moments (`mu` read only when centered).
template <typename T, bool kCentered, bool kEpsInSqrt>
inline T RmsDirection(const RmsScalars<T>& s, T g, T mu, T nu) {
  if (!kCentered) return Scale<T, kEpsInSqrt>(s, nu / s.c) * g;  // u_t = scale(ν_t / c) · g_t
  T mu_hat = mu / s.c;
  // var = max(ν_t / c − |μ_t / c|², 0); u_t = scale(var) · g_t
  T var = NonNegative(MulAdd(-mu_hat, mu_hat, nu / s.c));
  return Scale<T, kEpsInSqrt>(s, var) * g;
}

// One element of scale_by_rms's update; `mu` (centered only) and `nu` updated in place, u_t
// returned.
template <typename T, bool kCentered, bool kEpsInSqrt>
inline T RmsElement(const RmsScalars<T>& s, T g, T& mu, T& nu) {
  RmsMoments<T, kCentered>(s, g, mu, nu);
  return RmsDirection<T, kCentered, kEpsInSqrt>(s, g, mu, nu);
}

// Elements [begin, end) of one leaf of tx.update: the moments alone, in place (mu is null unless
// centered). The direction stays jnp (map_leaves computes it from the state this
// returns), so XLA fuses it into the loop that consumes u_t (optax.apply_updates'); see adam.cc.
template <typename T, bool kCentered>
void MomentsRange(const RmsScalars<T>& s, const T* __restrict g, T* __restrict mu,
                  T* __restrict nu, size_t begin, size_t end) {
  T unused = 0;
  for (size_t i = begin; i < end; ++i) {
    RmsMoments<T, kCentered>(s, g[i], kCentered ? mu[i] : unused, nu[i]);
  }
}

// Operands: the scalars, then per leaf (g, nu), or (g, mu, nu) when centered; results per leaf
// (nu) or (mu, nu), in place. Split over XLA's thread pool as Adam is. `eps_in_sqrt` shapes only
// the direction; it is bound so that one Kernel's options serve this call and optadam.step's.
template <typename T>
ffi::Future Rms(ffi::ThreadPool pool, bool centered, bool /*eps_in_sqrt*/, ffi::RemainingArgs args,
                ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kRmsScalars);
  if (packed.has_error()) return Done(packed.error());
  RmsScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  if (centered) {
    std::vector<Leaf<T, 3, 2>> leaves;
    if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
    return InParallel<T>(pool, std::move(leaves),
                         [s](const Leaf<T, 3, 2>& b, size_t begin, size_t end) {
                           Alias(b, 1, 0, begin, end);  // mu
                           Alias(b, 2, 1, begin, end);  // nu
                           MomentsRange<T, true>(s, b.in[0], b.out[0], b.out[1], begin, end);
                         });
  }
  std::vector<Leaf<T, 2, 1>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  return InParallel<T>(pool, std::move(leaves),
                       [s](const Leaf<T, 2, 1>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // nu
                         MomentsRange<T, false>(s, b.in[0], nullptr, b.out[0], begin, end);
                       });
}

// optadam.step's scalars: the global-norm clip in front (leaves.h; "no clip" without one),
// scale_by_rms's, then −η (the sign as scale_by_learning_rate applies it).
template <typename T>
struct StepScalars {
  ClipScalars<T> clip;
  RmsScalars<T> rms;
  T minus_lr;
};
constexpr size_t kStepScalars = sizeof(StepScalars<float>) / sizeof(float);

// Elements [begin, end) of one leaf of a whole step, as chain(scale_by_rms,
// scale_by_learning_rate) followed by optax.apply_updates computes it: g_t clipped (with kClip),
// u_t, then (−η)·u_t, then θ + that, which XLA:CPU fuses and contracts into one FMA as MulAdd
// does here. θ and the moments are written in place; no update buffer.
template <typename T, bool kCentered, bool kEpsInSqrt, bool kClip>
void StepRange(const StepScalars<T>& s, const T* __restrict g, T* __restrict theta,
               T* __restrict mu, T* __restrict nu, size_t begin, size_t end) {
  T unused = 0;
  for (size_t i = begin; i < end; ++i) {
    T g_t = Clipped<T, kClip>(s.clip, g[i]);  // g_t, or (g_t / ‖g‖) · c when clipping
    T u = RmsElement<T, kCentered, kEpsInSqrt>(s.rms, g_t, kCentered ? mu[i] : unused, nu[i]);
    theta[i] = MulAdd(u, s.minus_lr, theta[i]);  // θ_t = θ_{t-1} + u_t·(−η)
  }
}

// Operands: the scalars, then per leaf (g, θ, nu), or (g, θ, mu, nu) when centered; results per
// leaf (θ, nu) or (θ, mu, nu), all in place.
template <typename T>
ffi::Future RmsStep(ffi::ThreadPool pool, bool centered, bool eps_in_sqrt,
                    ffi::RemainingArgs args, ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kStepScalars);
  if (packed.has_error()) return Done(packed.error());
  StepScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  using Range = void (*)(const StepScalars<T>&, const T*, T*, T*, T*, size_t, size_t);
  // [centered][eps_in_sqrt][clip]; whether to clip is known only now, from this step's norm
  static constexpr Range kRanges[2][2][2] = {
      {{StepRange<T, false, false, false>, StepRange<T, false, false, true>},
       {StepRange<T, false, true, false>, StepRange<T, false, true, true>}},
      {{StepRange<T, true, false, false>, StepRange<T, true, false, true>},
       {StepRange<T, true, true, false>, StepRange<T, true, true, true>}}};
  Range step = kRanges[centered][eps_in_sqrt][s.clip.clip != 0];
  if (centered) {
    std::vector<Leaf<T, 4, 3>> leaves;
    if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
    return InParallel<T>(pool, std::move(leaves),
                         [s, step](const Leaf<T, 4, 3>& b, size_t begin, size_t end) {
                           Alias(b, 1, 0, begin, end);  // θ
                           Alias(b, 2, 1, begin, end);  // mu
                           Alias(b, 3, 2, begin, end);  // nu
                           step(s, b.in[0], b.out[0], b.out[1], b.out[2], begin, end);
                         });
  }
  std::vector<Leaf<T, 3, 2>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  return InParallel<T>(pool, std::move(leaves),
                       [s, step](const Leaf<T, 3, 2>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // θ
                         Alias(b, 2, 1, begin, end);  // nu
                         step(s, b.in[0], b.out[0], nullptr, b.out[1], begin, end);
                       });
}

// optadam.step's scalars for rmsprop(momentum=β): the step's above, then β (the trace's decay).
template <typename T>
struct MomentumStepScalars {
  StepScalars<T> step;
  T beta;
};
constexpr size_t kMomentumStepScalars = sizeof(MomentumStepScalars<float>) / sizeof(float);

// Elements [begin, end) of one leaf of a whole step of rmsprop(momentum=β), as chain(scale_by_rms,
// scale_by_learning_rate, scale_by_momentum) followed by optax.apply_updates computes it: u_t,
// then v_t = (−η)·u_t, then momentum.cc's trace and direction over v_t, then θ + that (a plain
// add: no multiply left to contract). θ, the moments and the trace are written in place.
template <typename T, bool kCentered, bool kEpsInSqrt, bool kNesterov, bool kClip>
void MomentumStepRange(const MomentumStepScalars<T>& s, const T* __restrict g,
                       T* __restrict theta, T* __restrict mu, T* __restrict nu,
                       T* __restrict trace, size_t begin, size_t end) {
  T unused = 0;
  for (size_t i = begin; i < end; ++i) {
    T g_t = Clipped<T, kClip>(s.step.clip, g[i]);  // g_t, or (g_t / ‖g‖) · c when clipping
    T u = RmsElement<T, kCentered, kEpsInSqrt>(s.step.rms, g_t, kCentered ? mu[i] : unused,
                                               nu[i]);
    T v = u * s.step.minus_lr;                        // v_t = u_t·(−η)
    trace[i] = MulAdd(s.beta, trace[i], v);           // trace_t = v_t + β · trace_{t-1}
    T step = kNesterov ? MulAdd(s.beta, trace[i], v)  // Nesterov: v_t + β · trace_t
                       : trace[i];                    // heavy-ball: trace_t
    theta[i] = theta[i] + step;                       // θ_t = θ_{t-1} + step
  }
}

// The loop for these switches: one template instance each, so no branch inside the loop.
template <typename T, bool kCentered>
auto MomentumStepFor(bool eps_in_sqrt, bool nesterov, bool clip) {
  using Range = void (*)(const MomentumStepScalars<T>&, const T*, T*, T*, T*, T*, size_t, size_t);
  // [eps_in_sqrt][nesterov][clip]
  static constexpr Range kRanges[2][2][2] = {
      {{MomentumStepRange<T, kCentered, false, false, false>,
        MomentumStepRange<T, kCentered, false, false, true>},
       {MomentumStepRange<T, kCentered, false, true, false>,
        MomentumStepRange<T, kCentered, false, true, true>}},
      {{MomentumStepRange<T, kCentered, true, false, false>,
        MomentumStepRange<T, kCentered, true, false, true>},
       {MomentumStepRange<T, kCentered, true, true, false>,
        MomentumStepRange<T, kCentered, true, true, true>}}};
  return kRanges[eps_in_sqrt][nesterov][clip];
}

// Operands: the scalars, then per leaf (g, θ, nu, trace), or (g, θ, mu, nu, trace) when centered;
// results per leaf (θ, nu, trace) or (θ, mu, nu, trace), all in place.
template <typename T>
ffi::Future RmsMomentumStep(ffi::ThreadPool pool, bool centered, bool eps_in_sqrt, bool nesterov,
                            ffi::RemainingArgs args, ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kMomentumStepScalars);
  if (packed.has_error()) return Done(packed.error());
  MomentumStepScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  if (centered) {
    auto step = MomentumStepFor<T, true>(eps_in_sqrt, nesterov, s.step.clip.clip != 0);
    std::vector<Leaf<T, 5, 4>> leaves;
    if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
    return InParallel<T>(pool, std::move(leaves),
                         [s, step](const Leaf<T, 5, 4>& b, size_t begin, size_t end) {
                           Alias(b, 1, 0, begin, end);  // θ
                           Alias(b, 2, 1, begin, end);  // mu
                           Alias(b, 3, 2, begin, end);  // nu
                           Alias(b, 4, 3, begin, end);  // trace
                           step(s, b.in[0], b.out[0], b.out[1], b.out[2], b.out[3], begin, end);
                         });
  }
  auto step = MomentumStepFor<T, false>(eps_in_sqrt, nesterov, s.step.clip.clip != 0);
  std::vector<Leaf<T, 4, 3>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  return InParallel<T>(pool, std::move(leaves),
                       [s, step](const Leaf<T, 4, 3>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // θ
                         Alias(b, 2, 1, begin, end);  // nu
                         Alias(b, 3, 2, begin, end);  // trace
                         step(s, b.in[0], b.out[0], nullptr, b.out[1], b.out[2], begin, end);
                       });
}

// --- Stored in bfloat16, or bfloat16/float16 gradients (lowp.h) ---------------------------------

// scale_by_rms on lifted moments, for LowpMomentsCall and LowpStepCall: {nu} plain, {mu, nu}
// centered.
template <bool kEpsInSqrt = true>
struct RmsLowpFamily {
  using Scalars = RmsScalars<float>;
  static constexpr size_t kMoments = 1;
  static constexpr Format8 kFormats[1] = {kRoot};  // state_bits=8 (block8.h)
  template <typename G, typename N>
  static void Moments(const Scalars& s, float g, float m[1]) {
    m[0] = Ema<G, N>(s.decay, s.one_minus_decay, m[0], g * g);  // ν_t = ρ · ν_{t-1} + (1 − ρ) · |g_t|²
  }
  static float Direction(const Scalars& s, float g, const float m[1]) {
    return RmsDirection<float, false, kEpsInSqrt>(s, g, 0.0f, m[0]);
  }
};

template <bool kEpsInSqrt = true>
struct CenteredRmsLowpFamily {
  using Scalars = RmsScalars<float>;
  static constexpr size_t kMoments = 2;
  static constexpr Format8 kFormats[2] = {kSigned, kRoot};  // state_bits=8 (block8.h)
  template <typename G, typename M, typename N>
  static void Moments(const Scalars& s, float g, float m[2]) {
    m[1] = Ema<G, N>(s.decay, s.one_minus_decay, m[1], g * g);  // ν_t = ρ · ν_{t-1} + (1 − ρ) · |g_t|²
    m[0] = Ema<G, M>(s.decay, s.one_minus_decay, m[0], g);      // μ_t = ρ · μ_{t-1} + (1 − ρ) · g_t
  }
  static float Direction(const Scalars& s, float g, const float m[2]) {
    return RmsDirection<float, true, kEpsInSqrt>(s, g, m[0], m[1]);
  }
};

ffi::Future RmsLowp(ffi::ThreadPool pool, bool centered, bool /*eps_in_sqrt*/, bool stochastic,
                    ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if (centered) return LowpMomentsCall<CenteredRmsLowpFamily<>>(pool, stochastic, args, rets);
  return LowpMomentsCall<RmsLowpFamily<>>(pool, stochastic, args, rets);
}

// `f(Family{})` with the lowp.h family of these switches: plain or centered, ε in or out of the
// root.
template <typename F>
ffi::Future WithRmsFamily(bool centered, bool eps_in_sqrt, F&& f) {
  if (centered) {
    if (eps_in_sqrt) return f(CenteredRmsLowpFamily<true>{});
    return f(CenteredRmsLowpFamily<false>{});
  }
  if (eps_in_sqrt) return f(RmsLowpFamily<true>{});
  return f(RmsLowpFamily<false>{});
}

// The same family followed by rmsprop(momentum=β)'s trace, heavy-ball or Nesterov (lowp.h's
// Traced).
template <typename F>
ffi::Future WithTracedRmsFamily(bool centered, bool eps_in_sqrt, bool nesterov, F&& f) {
  return WithRmsFamily(centered, eps_in_sqrt, [&](auto family) {
    using Family = decltype(family);
    if (nesterov) return f(Traced<Family, true>{});
    return f(Traced<Family, false>{});
  });
}

// Operands: float32 scalars (the step kernel's, then the seeds), per leaf (g, θ, nu) or
// (g, θ, mu, nu) when centered; results per leaf (θ, nu) or (θ, mu, nu), in place.
ffi::Future RmsStepLowp(ffi::ThreadPool pool, bool centered, bool eps_in_sqrt, bool stochastic,
                        ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return WithRmsFamily(centered, eps_in_sqrt, [&](auto family) {
    return LowpStepCall<decltype(family)>(pool, stochastic, args, rets);
  });
}

// rmsprop(momentum=β)'s one pass with stored moments and trace. Operands: float32 scalars (the
// float32 kernel's: the clip, the family's, −η, β; then the seeds), per leaf (g, θ, nu, trace) or
// (g, θ, mu, nu, trace); results per leaf (θ, the moments, the trace), in place.
ffi::Future RmsMomentumStepLowp(ffi::ThreadPool pool, bool centered, bool eps_in_sqrt,
                                bool nesterov, bool stochastic, ffi::RemainingArgs args,
                                ffi::RemainingRets rets) {
  return WithTracedRmsFamily(centered, eps_in_sqrt, nesterov, [&](auto family) {
    return LowpStepCall<decltype(family)>(pool, stochastic, args, rets);
  });
}

// 8-bit moments (block8.h): optadam.step's (kUpdate false) or tx.update's. Operands: the step
// kernel's or the update kernel's scalars, per leaf (g, θ (the step's), nu codes and scales,
// nu's seed) or, centered, (g, θ, mu codes and scales, nu codes and scales, nu's seed); results
// per leaf (θ or u, then the codes and scales), in place.
template <bool kUpdate>
ffi::Future Rms8(ffi::ThreadPool pool, bool centered, bool eps_in_sqrt, int64_t block_size,
                 ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return WithRmsFamily(centered, eps_in_sqrt, [&](auto family) {
    return Call8<decltype(family), kUpdate>(pool, block_size, args, rets);
  });
}

// rmsprop(momentum=β)'s one pass with 8-bit moments and trace (the trace signed, last).
// Operands: the scalars (as RmsMomentumStepLowp's), per leaf (g, θ, the moments' and the trace's
// codes and scales, nu's seed); results per leaf (θ, the codes and scales), in place.
ffi::Future RmsMomentum8Step(ffi::ThreadPool pool, bool centered, bool eps_in_sqrt, bool nesterov,
                             int64_t block_size, ffi::RemainingArgs args,
                             ffi::RemainingRets rets) {
  return WithTracedRmsFamily(centered, eps_in_sqrt, nesterov, [&](auto family) {
    return Call8<decltype(family), false>(pool, block_size, args, rets);
  });
}

}  // namespace
}  // namespace optadam

#define OPTADAM_RMS_HANDLER(name, fn, T)                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn<T>,                            \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<bool>("centered")             \
                                    .Attr<bool>("eps_in_sqrt")          \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

OPTADAM_RMS_HANDLER(optadam_rms_f32, optadam::Rms, float)
OPTADAM_RMS_HANDLER(optadam_rms_f64, optadam::Rms, double)
OPTADAM_RMS_HANDLER(optadam_rms_step_f32, optadam::RmsStep, float)
OPTADAM_RMS_HANDLER(optadam_rms_step_f64, optadam::RmsStep, double)

XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_rms_momentum_step_f32, optadam::RmsMomentumStep<float>,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("centered")
                                  .Attr<bool>("eps_in_sqrt")
                                  .Attr<bool>("nesterov")
                                  .RemainingArgs()
                                  .RemainingRets());
XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_rms_momentum_step_f64, optadam::RmsMomentumStep<double>,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("centered")
                                  .Attr<bool>("eps_in_sqrt")
                                  .Attr<bool>("nesterov")
                                  .RemainingArgs()
                                  .RemainingRets());

// Low-precision storage (lowp.h): tx.update's moments advanced in place, any mix of dtypes.
XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_rms_lowp, optadam::RmsLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("centered")
                                  .Attr<bool>("eps_in_sqrt")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_rms_step_lowp, optadam::RmsStepLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("centered")
                                  .Attr<bool>("eps_in_sqrt")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

#define OPTADAM_RMS8_HANDLER(name, update)                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, optadam::Rms8<update>,            \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<bool>("centered")             \
                                    .Attr<bool>("eps_in_sqrt")          \
                                    .Attr<int64_t>("block_size")        \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

// 8-bit moments (block8.h)
OPTADAM_RMS8_HANDLER(optadam_rms8_step_f32, false)
OPTADAM_RMS8_HANDLER(optadam_rms8_f32, true)

// rmsprop(momentum=β)'s one pass with stored (lowp.h) or 8-bit (block8.h) moments and trace.
XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_rms_momentum_step_lowp, optadam::RmsMomentumStepLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("centered")
                                  .Attr<bool>("eps_in_sqrt")
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());
XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_rms_momentum8_step_f32, optadam::RmsMomentum8Step,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("centered")
                                  .Attr<bool>("eps_in_sqrt")
                                  .Attr<bool>("nesterov")
                                  .Attr<int64_t>("block_size")
                                  .RemainingArgs()
                                  .RemainingRets());

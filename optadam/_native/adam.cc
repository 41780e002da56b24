// Adam (and so AdamW) and NAdam, each element in one pass: optadam/adam.py's scale_by_adam
// (adam_moments, adam_mu_hat, then its direction) transcribed line for line, with the same names
// and order. The Python stays the definition; tests/test_native.py holds this file to it.
#include <cmath>
#include <cstdint>

#include "leaves.h"
#include "lowp.h"

namespace optadam {
namespace {

// This step's runtime scalars, in the order scale_by_adam lists them for its Kernel.
template <typename T>
struct AdamScalars {
  T b1, one_minus_b1, b2, one_minus_b2, eps, eps_root;
  T c1, c2, c1_next;  // bias corrections 1 − β1^t, 1 − β2^t, 1 − β1^(t+1)
};
constexpr size_t kAdamScalars = sizeof(AdamScalars<float>) / sizeof(float);

// adam_moments: `mu` and `nu` advanced in place.
template <typename T>
inline void AdamMoments(const AdamScalars<T>& s, T g, T& mu, T& nu) {
  mu = MulAdd(s.b1, mu, s.one_minus_b1 * g);        // m_t = β1 · m_{t-1} + (1 − β1) · g_t
  nu = MulAdd(s.b2, nu, s.one_minus_b2 * (g * g));  // v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²
}

// adam_direction: u_t from the new moments.
template <typename T, bool kNesterov>
inline T AdamDirection(const AdamScalars<T>& s, T g, T mu, T nu) {
  T mu_hat = kNesterov
                 // NAdam: m̂_t = β1 · m_t / (1 − β1^(t+1)) + (1 − β1) · g_t / (1 − β1^t)
                 ? MulAdd(s.b1, mu / s.c1_next, s.one_minus_b1 * (g / s.c1))
                 : mu / s.c1;  // m̂_t = m_t / (1 − β1^t)
  T nu_hat = nu / s.c2;        // v̂_t = v_t / (1 − β2^t)
  return mu_hat / (std::sqrt(nu_hat + s.eps_root) + s.eps);  // u_t = m̂_t / (sqrt(v̂_t + ε_root) + ε)
}

// One element of scale_by_adam's update; `mu` and `nu` are updated in place, `u_t` returned.
template <typename T, bool kNesterov>
inline T AdamElement(const AdamScalars<T>& s, T g, T& mu, T& nu) {
  AdamMoments(s, g, mu, nu);
  return AdamDirection<T, kNesterov>(s, g, mu, nu);
}

// Elements [begin, end) of one leaf of tx.update: adam_moments alone, `mu` and `nu` advanced in
// place. The direction stays jnp (map_leaves computes it from the moments this returns), so XLA
// fuses it into the loop that consumes u_t -- in a training step optax.apply_updates'
// θ + (−η)·u_t -- and u_t is never stored: 36 B/param with apply_updates instead of XLA's ~44.
template <typename T>
void MomentsRange(const AdamScalars<T>& s, const T* __restrict g, T* __restrict mu,
                  T* __restrict nu, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) AdamMoments(s, g[i], mu[i], nu[i]);
}

// Operands: the scalars, then per leaf (g, mu, nu); results per leaf (mu, nu), in place. The
// elements are split over XLA's thread pool (InParallel); the call completes when the last range
// is done. `nesterov` changes only the direction; it is bound so that one Kernel's options serve
// this call and optadam.step's.
template <typename T>
ffi::Future Adam(ffi::ThreadPool pool, bool /*nesterov*/, ffi::RemainingArgs args,
                 ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kAdamScalars);
  if (packed.has_error()) return Done(packed.error());
  AdamScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<Leaf<T, 3, 2>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  return InParallel<T>(pool, std::move(leaves),
                       [s](const Leaf<T, 3, 2>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // mu
                         Alias(b, 2, 1, begin, end);  // nu
                         MomentsRange(s, b.in[0], b.out[0], b.out[1], begin, end);
                       });
}

// optadam.step's scalars: the global-norm clip in front (leaves.h; "no clip" without one), Adam's,
// then −η (the sign as scale_by_learning_rate applies it) and λ.
template <typename T>
struct StepScalars {
  ClipScalars<T> clip;
  AdamScalars<T> adam;
  T minus_lr, weight_decay;
};
constexpr size_t kStepScalars = sizeof(StepScalars<float>) / sizeof(float);

// Elements [begin, end) of one leaf of a whole step, as the chain computes it followed by
// optax.apply_updates: g_t clipped (with kClip), u_t from scale_by_adam, then
// add_decayed_weights' u_t + λ·θ, then scale_by_learning_rate's (−η)·u_t, then θ + that. XLA:CPU
// fuses those last ops into one loop and contracts each multiply-add into an FMA, as MulAdd does
// here. No update buffer: θ, m and v are written in place.
template <typename T, bool kNesterov, bool kDecay, bool kClip>
void StepRange(const StepScalars<T>& s, const T* __restrict g, T* __restrict theta,
               T* __restrict mu, T* __restrict nu, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    T g_t = Clipped<T, kClip>(s.clip, g[i]);  // g_t, or (g_t / ‖g‖) · c when clipping
    T u = AdamElement<T, kNesterov>(s.adam, g_t, mu[i], nu[i]);
    if (kDecay) u = MulAdd(s.weight_decay, theta[i], u);  // u_t + λ·θ_{t-1}
    theta[i] = MulAdd(u, s.minus_lr, theta[i]);           // θ_t = θ_{t-1} + u_t·(−η)
  }
}

// Operands: the scalars, then per leaf (g, θ, mu, nu); results per leaf (θ, mu, nu), all three in
// place (aliased to their operands). Split over the pool as Adam is.
template <typename T>
ffi::Future AdamStep(ffi::ThreadPool pool, bool nesterov, bool decay, ffi::RemainingArgs args,
                     ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kStepScalars);
  if (packed.has_error()) return Done(packed.error());
  StepScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<Leaf<T, 4, 3>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  using Range = void (*)(const StepScalars<T>&, const T*, T*, T*, T*, size_t, size_t);
  // [nesterov][decay][clip]; whether to clip is known only now, from this step's norm
  static constexpr Range kRanges[2][2][2] = {
      {{StepRange<T, false, false, false>, StepRange<T, false, false, true>},
       {StepRange<T, false, true, false>, StepRange<T, false, true, true>}},
      {{StepRange<T, true, false, false>, StepRange<T, true, false, true>},
       {StepRange<T, true, true, false>, StepRange<T, true, true, true>}}};
  Range step = kRanges[nesterov][decay][s.clip.clip != 0];
  return InParallel<T>(pool, std::move(leaves),
                       [s, step](const Leaf<T, 4, 3>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // θ
                         Alias(b, 2, 1, begin, end);  // mu
                         Alias(b, 3, 2, begin, end);  // nu
                         step(s, b.in[0], b.out[0], b.out[1], b.out[2], begin, end);
                       });
}

// --- Low-precision storage: bfloat16/float16 params and gradients, bfloat16 moments (lowp.h) ----

// adam_moments on lifted moments, for LowpMomentsCall: m = {mu, nu} advanced in float32, the FMA
// of each where XLA:CPU places it for these storage types (Ema).
struct AdamLowpFamily {
  using Scalars = AdamScalars<float>;
  static constexpr size_t kMoments = 2;
  template <typename G, typename M, typename N>
  static void Moments(const Scalars& s, float g, float m[2]) {
    m[0] = Ema<G, M>(s.b1, s.one_minus_b1, m[0], g);      // m_t = β1 · m_{t-1} + (1 − β1) · g_t
    m[1] = Ema<G, N>(s.b2, s.one_minus_b2, m[1], g * g);  // v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²
  }
};

// One element of scale_by_adam's update with stored moments: the moments lifted, advanced and
// each rounded once to its storage, in place; the direction from the moments as stored.
template <typename G, typename M, typename N, bool kNesterov>
inline float MixedElement(const AdamScalars<float>& s, float g, typename M::Stored& mu_stored,
                          typename N::Stored& nu_stored, const uint32_t seed[2], size_t i) {
  float m[2] = {M::Lift(mu_stored), N::Lift(nu_stored)};
  AdamLowpFamily::Moments<G, M, N>(s, g, m);
  mu_stored = M::Round(m[0], seed[0] + static_cast<uint32_t>(i));
  nu_stored = N::Round(m[1], seed[1] + static_cast<uint32_t>(i));
  return AdamDirection<float, kNesterov>(s, g, M::Lift(mu_stored), N::Lift(nu_stored));
}

// Elements [begin, end) of one leaf of a whole step, as update + apply_updates compute it. With
// float32 params as StepRange. With bfloat16/float16 params (no clip, no decay: the Python falls
// back) θ is rounded as lowp.h's Applied says. The clip and the decay are template switches: a
// runtime choice per element kept GCC from vectorizing the loop (see LowpStepRange).
// LowpStepCall (lowp.h) is this loop without the decay, for the other families.
template <typename G, typename M, typename N, bool kNesterov, bool kDecay, bool kClip>
void MixedStepRange(StepScalars<float> s, const MixedLeaf& b, size_t begin, size_t end) {
  const auto* __restrict g = static_cast<const typename G::Stored*>(b.in[0]);
  auto* __restrict theta = static_cast<typename G::Stored*>(b.out[0]);
  auto* __restrict mu = static_cast<typename M::Stored*>(b.out[1]);
  auto* __restrict nu = static_cast<typename N::Stored*>(b.out[2]);
  for (size_t i = begin; i < end; ++i) {
    float g_t = Clipped<float, kClip>(s.clip, G::Lift(g[i]));  // g_t, or (g_t / ‖g‖) · c
    float u = MixedElement<G, M, N, kNesterov>(s.adam, g_t, mu[i], nu[i], b.seed, i);
    if constexpr (G::kExact) {
      if (kDecay) u = MulAdd(s.weight_decay, theta[i], u);  // u_t + λ·θ_{t-1}
    }
    theta[i] = Applied<G>(u, s.minus_lr, theta[i]);  // θ_t = θ_{t-1} + u_t·(−η), rounded
  }
}

// `f(G, M, N)` with the storage types of one call's (gradient, mu, nu) dtypes.
template <typename F>
ffi::Error WithStorage(const ffi::DataType* types, bool stochastic, F&& f) {
  auto choose = [&](auto bf16) {
    return WithParamStorage(types[0], [&](auto g) {
      return WithMomentStorages<2, decltype(bf16)>(types + 1, [&](auto m, auto v) { return f(g, m, v); });
    });
  };
  return stochastic ? choose(BFloat16StochasticStorage{}) : choose(BFloat16Storage{});
}

// Operands: float32 scalars (AdamScalars, then the seeds), per leaf (g, mu, nu); results per leaf
// (mu, nu) in their operands' dtypes, in place (tx.update's: the direction stays jnp, as for Adam).
ffi::Future AdamLowp(ffi::ThreadPool pool, bool /*nesterov*/, bool stochastic,
                     ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return LowpMomentsCall<AdamLowpFamily>(pool, stochastic, args, rets);
}

// Operands: float32 scalars (StepScalars, then the seeds), per leaf (g, θ, mu, nu), g and θ of
// one dtype; results per leaf (θ, mu, nu), in place.
ffi::Future AdamStepLowp(ffi::ThreadPool pool, bool nesterov, bool decay, bool stochastic,
                         ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if ((args.size() - 1) % 4 != 0 || (args.size() - 1) / 4 * 3 != rets.size()) {
    return Done(ffi::Error::InvalidArgument("optadam adam step lowp kernel: operand count"));
  }
  std::vector<MixedLeaf> leaves(rets.size() / 3);
  auto packed = GetScalars<float>(args, kStepScalars + (stochastic ? 2 * leaves.size() : 0));
  if (packed.has_error()) return Done(packed.error());
  StepScalars<float> s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<ffi::DataType> types;
  const float* seeds = stochastic ? *packed + kStepScalars : nullptr;
  if (ffi::Error error = GetMixedLeaves(args, rets, 4, 3, 2, seeds, leaves, types); error.failure()) {
    return Done(error);
  }
  if (leaves.empty()) return Done();
  if (types[0] != types[1] ||
      (types[0] != ffi::DataType::F32 && (decay || s.clip.clip != 0 || s.clip.g_norm != 1))) {
    return Done(ffi::Error::InvalidArgument(
        "optadam adam step lowp kernel: params in the gradients' dtype; no clip or decay with "
        "bfloat16/float16 params"));
  }
  using Range = void (*)(StepScalars<float>, const MixedLeaf&, size_t, size_t);
  Range step = nullptr;
  const ffi::DataType step_types[3] = {types[0], types[2], types[3]};
  ffi::Error chosen = WithStorage(step_types, stochastic, [&](auto g, auto m, auto v) {
    using G = decltype(g);
    using M = decltype(m);
    using N = decltype(v);
    if constexpr (G::kExact) {  // [nesterov][decay][clip]
      Range ranges[2][2][2] = {
          {{MixedStepRange<G, M, N, false, false, false>, MixedStepRange<G, M, N, false, false, true>},
           {MixedStepRange<G, M, N, false, true, false>, MixedStepRange<G, M, N, false, true, true>}},
          {{MixedStepRange<G, M, N, true, false, false>, MixedStepRange<G, M, N, true, false, true>},
           {MixedStepRange<G, M, N, true, true, false>, MixedStepRange<G, M, N, true, true, true>}}};
      step = ranges[nesterov][decay][s.clip.clip != 0];
    } else {  // neither a decay nor a clip (checked above)
      step = nesterov ? MixedStepRange<G, M, N, true, false, false>
                      : MixedStepRange<G, M, N, false, false, false>;
    }
    return ffi::Error::Success();
  });
  if (chosen.failure()) return Done(chosen);
  size_t widths[3] = {ffi::ByteWidth(types[1]), ffi::ByteWidth(types[2]), ffi::ByteWidth(types[3])};
  return InParallel<float>(pool, std::move(leaves),
                           [s, step, widths](const MixedLeaf& b, size_t begin, size_t end) {
                             for (int k = 0; k < 3; ++k) {  // θ, mu, nu
                               AliasBytes(b.in[k + 1], b.out[k], widths[k], begin, end);
                             }
                             step(s, b, begin, end);
                           });
}

}  // namespace
}  // namespace optadam

#define OPTADAM_ADAM_HANDLER(name, T)                                   \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, optadam::Adam<T>,                 \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<bool>("nesterov")             \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

OPTADAM_ADAM_HANDLER(optadam_adam_f32, float)
OPTADAM_ADAM_HANDLER(optadam_adam_f64, double)

#define OPTADAM_ADAM_STEP_HANDLER(name, T)                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, optadam::AdamStep<T>,             \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<bool>("nesterov")             \
                                    .Attr<bool>("decay")                \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

OPTADAM_ADAM_STEP_HANDLER(optadam_adam_step_f32, float)
OPTADAM_ADAM_STEP_HANDLER(optadam_adam_step_f64, double)

// Low-precision storage (bfloat16/float16 params, bfloat16 moments; math in float32): the dtypes
// are read from the buffers; `stochastic` rounds bfloat16 moments as round_stochastic_bf16.
XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_adam_lowp, optadam::AdamLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_adam_step_lowp, optadam::AdamStepLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("decay")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

// AdaGrad, each element in one pass: optadam/adagrad.py's scale_by_adagrad (its moments, then its
// direction) transcribed line for line, with the same names and order; with ε outside the root,
// optadam/torch/adagrad.py's torch form. The Python stays the definition;
// tests/test_native_adagrad.py holds this file to it.
#include <cmath>

#include "leaves.h"
#include "lowp.h"

namespace optadam {
namespace {

// This step's runtime scalars, in the order scale_by_adagrad lists them for its Kernel.
template <typename T>
struct AdagradScalars {
  T eps;  // ε
};
constexpr size_t kAdagradScalars = sizeof(AdagradScalars<float>) / sizeof(float);

// scale_by_adagrad's moments: `s` (sum_of_squares) advanced in place.
template <typename T>
inline void AdagradMoments(T g, T& s) {
  s = MulAdd(g, g, s);  // s_t = s_{t-1} + |g_t|²
}

// scale_by_adagrad's direction: u_t from the new sum.
template <typename T, bool kEpsInSqrt>
inline T AdagradDirection(const AdagradScalars<T>& k, T g, T s) {
  if (kEpsInSqrt) {
    // u_t = g_t / sqrt(s_t + ε), 0 where s_t = 0 (and where s_t is NaN: `s > 0` is false, as in
    // jnp.where). The root is taken everywhere, then selected on the bits (Select): a
    // conditional sqrt and division keep GCC from vectorizing the loop (they may trap), and a
    // plain `?:` let it sink them into one.
    T scale = T(1) / std::sqrt(s + k.eps);
    return Select(s > T(0), scale, T(0)) * g;
  }
  return g / (std::sqrt(s) + k.eps);  // torch: u_t = g_t / (sqrt(s_t) + ε)
}

// One element of scale_by_adagrad's update; `s` (sum_of_squares) is updated in place, u_t
// returned.
template <typename T, bool kEpsInSqrt>
inline T AdagradElement(const AdagradScalars<T>& k, T g, T& s) {
  AdagradMoments(g, s);
  return AdagradDirection<T, kEpsInSqrt>(k, g, s);
}

// Elements [begin, end) of one leaf of tx.update: the sum alone, in place. The direction stays jnp (map_leaves computes it from the state this
// returns), so XLA fuses it into the loop that consumes u_t (optax.apply_updates'); see adam.cc.
template <typename T>
void MomentsRange(const T* __restrict g, T* __restrict s, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) AdagradMoments(g[i], s[i]);
}

// Operands: the scalars, then per leaf (g, s); results per leaf (s), in place. Split over XLA's
// thread pool as Adam is (InParallel). ε and `eps_in_sqrt` shape only the direction; they are
// taken so that one Kernel serves this call and optadam.step's.
template <typename T>
ffi::Future Adagrad(ffi::ThreadPool pool, bool /*eps_in_sqrt*/, ffi::RemainingArgs args,
                    ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kAdagradScalars);
  if (packed.has_error()) return Done(packed.error());
  std::vector<Leaf<T, 2, 1>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  return InParallel<T>(pool, std::move(leaves), [](const Leaf<T, 2, 1>& b, size_t begin, size_t end) {
    Alias(b, 1, 0, begin, end);  // s
    MomentsRange(b.in[0], b.out[0], begin, end);
  });
}

// optadam.step's scalars: the global-norm clip in front (leaves.h; "no clip" without one),
// scale_by_adagrad's, then −η (the sign as scale_by_learning_rate applies it).
template <typename T>
struct StepScalars {
  ClipScalars<T> clip;
  AdagradScalars<T> adagrad;
  T minus_lr;
};
constexpr size_t kStepScalars = sizeof(StepScalars<float>) / sizeof(float);

// Elements [begin, end) of one leaf of a whole step, as chain(scale_by_adagrad,
// scale_by_learning_rate) followed by optax.apply_updates computes it: g_t clipped (with kClip),
// u_t, then (−η)·u_t, then θ + that, which XLA:CPU fuses and contracts into one FMA as MulAdd
// does here. θ and the sum are written in place; no update buffer.
template <typename T, bool kEpsInSqrt, bool kClip>
void StepRange(const StepScalars<T>& k, const T* __restrict g, T* __restrict theta,
               T* __restrict s, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    T g_t = Clipped<T, kClip>(k.clip, g[i]);  // g_t, or (g_t / ‖g‖) · c when clipping
    T u = AdagradElement<T, kEpsInSqrt>(k.adagrad, g_t, s[i]);
    theta[i] = MulAdd(u, k.minus_lr, theta[i]);  // θ_t = θ_{t-1} + u_t·(−η)
  }
}

// Operands: the scalars, then per leaf (g, θ, s); results per leaf (θ, s), both in place.
template <typename T>
ffi::Future AdagradStep(ffi::ThreadPool pool, bool eps_in_sqrt, ffi::RemainingArgs args,
                        ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kStepScalars);
  if (packed.has_error()) return Done(packed.error());
  StepScalars<T> k;
  std::memcpy(&k, *packed, sizeof(k));
  std::vector<Leaf<T, 3, 2>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  using Range = void (*)(const StepScalars<T>&, const T*, T*, T*, size_t, size_t);
  // [eps_in_sqrt][clip]; whether to clip is known only now, from this step's norm
  static constexpr Range kRanges[2][2] = {{StepRange<T, false, false>, StepRange<T, false, true>},
                                          {StepRange<T, true, false>, StepRange<T, true, true>}};
  Range step = kRanges[eps_in_sqrt][k.clip.clip != 0];
  return InParallel<T>(pool, std::move(leaves),
                       [k, step](const Leaf<T, 3, 2>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // θ
                         Alias(b, 2, 1, begin, end);  // s
                         step(k, b.in[0], b.out[0], b.out[1], begin, end);
                       });
}

// --- Stored in bfloat16, or bfloat16/float16 gradients (lowp.h) ---------------------------------

// scale_by_adagrad on the lifted sum, for LowpMomentsCall and LowpStepCall.
template <bool kEpsInSqrt = true>
struct AdagradLowpFamily {
  using Scalars = AdagradScalars<float>;
  static constexpr size_t kMoments = 1;
  template <typename G, typename S>
  static void Moments(const Scalars&, float g, float m[1]) {
    AdagradMoments(g, m[0]);  // s_t = s_{t-1} + |g_t|²
  }
  static float Direction(const Scalars& s, float g, const float m[1]) {
    return AdagradDirection<float, kEpsInSqrt>(s, g, m[0]);
  }
};

ffi::Future AdagradLowp(ffi::ThreadPool pool, bool /*eps_in_sqrt*/, bool stochastic,
                        ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return LowpMomentsCall<AdagradLowpFamily<>>(pool, stochastic, args, rets);
}

// Operands: float32 scalars (the step kernel's, then the seeds), per leaf (g, θ, s); results per
// leaf (θ, s), in place.
ffi::Future AdagradStepLowp(ffi::ThreadPool pool, bool eps_in_sqrt, bool stochastic,
                            ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if (eps_in_sqrt) return LowpStepCall<AdagradLowpFamily<true>>(pool, stochastic, args, rets);
  return LowpStepCall<AdagradLowpFamily<false>>(pool, stochastic, args, rets);
}

}  // namespace
}  // namespace optadam

#define OPTADAM_ADAGRAD_HANDLER(name, fn, T)                            \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn<T>,                            \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<bool>("eps_in_sqrt")          \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

OPTADAM_ADAGRAD_HANDLER(optadam_adagrad_f32, optadam::Adagrad, float)
OPTADAM_ADAGRAD_HANDLER(optadam_adagrad_f64, optadam::Adagrad, double)
OPTADAM_ADAGRAD_HANDLER(optadam_adagrad_step_f32, optadam::AdagradStep, float)
OPTADAM_ADAGRAD_HANDLER(optadam_adagrad_step_f64, optadam::AdagradStep, double)

// Low-precision storage (lowp.h): tx.update's sum advanced in place, any mix of dtypes.
XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_adagrad_lowp, optadam::AdagradLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("eps_in_sqrt")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_adagrad_step_lowp, optadam::AdagradStepLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("eps_in_sqrt")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

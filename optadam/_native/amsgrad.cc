// AMSGrad, each element in one pass: optadam/adam.py's scale_by_amsgrad (amsgrad_moments, then
// amsgrad_direction) transcribed line for line, with the same names and order. The Python stays
// the definition; tests/test_native_amsgrad.py holds this file to it.
#include <cmath>

#include "block8.h"
#include "leaves.h"
#include "lowp.h"

namespace optadam {
namespace {

// This step's runtime scalars, in the order amsgrad_scalars lists them.
template <typename T>
struct AmsgradScalars {
  T b1, one_minus_b1, b2, one_minus_b2, eps, eps_root;
  T c1, c2;  // bias corrections 1 − β1^t and 1 − β2^t, each 1 where it is turned off
};
constexpr size_t kAmsgradScalars = sizeof(AmsgradScalars<float>) / sizeof(float);

// max(a, b) as jnp.maximum: NaN if either is NaN. A select on the bits (leaves.h): with `||`
// and `?:` GCC left the 8-bit kernel's element loop scalar ("control flow in loop").
template <typename T>
inline T Maximum(T a, T b) {
  return Select((a > b) | std::isnan(a), a, b);
}

// amsgrad_moments: the three moments advanced in place.
template <typename T>
inline void AmsgradMoments(const AmsgradScalars<T>& s, T g, T& mu, T& nu, T& nu_max) {
  mu = MulAdd(s.b1, mu, s.one_minus_b1 * g);        // m_t = β1 · m_{t-1} + (1 − β1) · g_t
  nu = MulAdd(s.b2, nu, s.one_minus_b2 * (g * g));  // v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²
  nu_max = Maximum(nu_max, nu / s.c2);              // v_max_t = max(v_max_{t-1}, v̂_t)
}

// amsgrad_direction: u_t from the new moments.
template <typename T>
inline T AmsgradDirection(const AmsgradScalars<T>& s, T mu, T nu_max) {
  T mu_hat = mu / s.c1;  // m̂_t = m_t / (1 − β1^t)
  // u_t = m̂_t / (sqrt(v_max_t + ε_root) + ε)
  return mu_hat / (std::sqrt(nu_max + s.eps_root) + s.eps);
}

// One element of scale_by_amsgrad's update; the three moments updated in place, u_t returned.
template <typename T>
inline T AmsgradElement(const AmsgradScalars<T>& s, T g, T& mu, T& nu, T& nu_max) {
  AmsgradMoments(s, g, mu, nu, nu_max);
  return AmsgradDirection(s, mu, nu_max);
}

// Elements [begin, end) of one leaf of tx.update: the moments alone, in place. The direction stays jnp (map_leaves computes it from the state this
// returns), so XLA fuses it into the loop that consumes u_t (optax.apply_updates'); see adam.cc.
template <typename T>
void MomentsRange(const AmsgradScalars<T>& s, const T* __restrict g, T* __restrict mu,
                  T* __restrict nu, T* __restrict nu_max, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) AmsgradMoments(s, g[i], mu[i], nu[i], nu_max[i]);
}

// Operands: the scalars, then per leaf (g, mu, nu, nu_max); results per leaf (mu, nu, nu_max), in
// place. Split over XLA's thread pool (InParallel) as Adam is.
template <typename T>
ffi::Future Amsgrad(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kAmsgradScalars);
  if (packed.has_error()) return Done(packed.error());
  AmsgradScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<Leaf<T, 4, 3>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  auto update = MomentsRange<T>;  // called, not inlined: its __restrict lets the loop vectorize
  return InParallel<T>(pool, std::move(leaves),
                       [s, update](const Leaf<T, 4, 3>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // mu
                         Alias(b, 2, 1, begin, end);  // nu
                         Alias(b, 3, 2, begin, end);  // nu_max
                         update(s, b.in[0], b.out[0], b.out[1], b.out[2], begin, end);
                       });
}

// optadam.step's scalars: the global-norm clip in front (leaves.h; "no clip" without one),
// scale_by_amsgrad's, then −η (the sign as scale_by_learning_rate applies it).
template <typename T>
struct StepScalars {
  ClipScalars<T> clip;
  AmsgradScalars<T> amsgrad;
  T minus_lr;
};
constexpr size_t kStepScalars = sizeof(StepScalars<float>) / sizeof(float);

// Elements [begin, end) of one leaf of a whole step, as chain(scale_by_amsgrad,
// scale_by_learning_rate) followed by optax.apply_updates computes it: g_t clipped (with kClip),
// u_t, then (−η)·u_t, then θ + that, which XLA:CPU fuses and contracts into one FMA as MulAdd
// does here. θ and the moments are written in place; no update buffer.
template <typename T, bool kClip>
void StepRange(const StepScalars<T>& s, const T* __restrict g, T* __restrict theta,
               T* __restrict mu, T* __restrict nu, T* __restrict nu_max, size_t begin,
               size_t end) {
  for (size_t i = begin; i < end; ++i) {
    T g_t = Clipped<T, kClip>(s.clip, g[i]);  // g_t, or (g_t / ‖g‖) · c when clipping
    T u = AmsgradElement(s.amsgrad, g_t, mu[i], nu[i], nu_max[i]);
    theta[i] = MulAdd(u, s.minus_lr, theta[i]);  // θ_t = θ_{t-1} + u_t·(−η)
  }
}

// Operands: the scalars, then per leaf (g, θ, mu, nu, nu_max); results per leaf
// (θ, mu, nu, nu_max), all in place.
template <typename T>
ffi::Future AmsgradStep(ffi::ThreadPool pool, ffi::RemainingArgs args, ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kStepScalars);
  if (packed.has_error()) return Done(packed.error());
  StepScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<Leaf<T, 5, 4>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  // called, not inlined, as MomentsRange; whether to clip is known only now, from this step's norm
  auto step = s.clip.clip != 0 ? StepRange<T, true> : StepRange<T, false>;
  return InParallel<T>(pool, std::move(leaves),
                       [s, step](const Leaf<T, 5, 4>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // θ
                         Alias(b, 2, 1, begin, end);  // mu
                         Alias(b, 3, 2, begin, end);  // nu
                         Alias(b, 4, 3, begin, end);  // nu_max
                         step(s, b.in[0], b.out[0], b.out[1], b.out[2], b.out[3], begin, end);
                       });
}

// --- Stored in bfloat16, or bfloat16/float16 gradients (lowp.h) ---------------------------------

// amsgrad_moments on lifted moments, for LowpMomentsCall and LowpStepCall: {mu, nu, nu_max}; v̂ from the new ν
// before its rounding, as map_leaves computes all three before storing any.
struct AmsgradLowpFamily {
  using Scalars = AmsgradScalars<float>;
  static constexpr size_t kMoments = 3;
  static constexpr Format8 kFormats[3] = {kSigned, kRoot, kRoot};  // state_bits=8 (block8.h)
  template <typename G, typename M, typename N, typename X>
  static void Moments(const Scalars& s, float g, float m[3]) {
    m[0] = Ema<G, M>(s.b1, s.one_minus_b1, m[0], g);      // m_t = β1 · m_{t-1} + (1 − β1) · g_t
    m[1] = Ema<G, N>(s.b2, s.one_minus_b2, m[1], g * g);  // v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²
    m[2] = Maximum(m[2], m[1] / s.c2);                    // v_max_t = max(v_max_{t-1}, v̂_t)
  }
  static float Direction(const Scalars& s, float /*g*/, const float m[3]) {
    return AmsgradDirection(s, m[0], m[2]);
  }
};

ffi::Future AmsgradLowp(ffi::ThreadPool pool, bool stochastic, ffi::RemainingArgs args,
                        ffi::RemainingRets rets) {
  return LowpMomentsCall<AmsgradLowpFamily>(pool, stochastic, args, rets);
}

// Operands: float32 scalars (the step kernel's, then the seeds), per leaf (g, θ, mu, nu, nu_max);
// results per leaf (θ, mu, nu, nu_max), in place.
ffi::Future AmsgradStepLowp(ffi::ThreadPool pool, bool stochastic, ffi::RemainingArgs args,
                            ffi::RemainingRets rets) {
  return LowpStepCall<AmsgradLowpFamily>(pool, stochastic, args, rets);
}

// 8-bit moments (block8.h): optadam.step's (kUpdate false) or tx.update's. Operands: the step
// kernel's or the update kernel's scalars, per leaf (g, θ (the step's), codes and scales of mu,
// nu and nu_max, then nu's and nu_max's seeds); results per leaf (θ or u, codes and scales).
template <bool kUpdate>
ffi::Future Amsgrad8(ffi::ThreadPool pool, int64_t block_size, ffi::RemainingArgs args,
                     ffi::RemainingRets rets) {
  return Call8<AmsgradLowpFamily, kUpdate>(pool, block_size, args, rets);
}

}  // namespace
}  // namespace optadam

#define OPTADAM_AMSGRAD_HANDLER(name, fn, T)                            \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn<T>,                            \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

OPTADAM_AMSGRAD_HANDLER(optadam_amsgrad_f32, optadam::Amsgrad, float)
OPTADAM_AMSGRAD_HANDLER(optadam_amsgrad_f64, optadam::Amsgrad, double)
OPTADAM_AMSGRAD_HANDLER(optadam_amsgrad_step_f32, optadam::AmsgradStep, float)
OPTADAM_AMSGRAD_HANDLER(optadam_amsgrad_step_f64, optadam::AmsgradStep, double)

// Low-precision storage (lowp.h): tx.update's moments advanced in place, any mix of dtypes.
XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_amsgrad_lowp, optadam::AmsgradLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_amsgrad_step_lowp, optadam::AmsgradStepLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

#define OPTADAM_AMSGRAD8_HANDLER(name, update)                          \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, optadam::Amsgrad8<update>,        \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<int64_t>("block_size")        \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

// 8-bit moments (block8.h)
OPTADAM_AMSGRAD8_HANDLER(optadam_amsgrad8_step_f32, false)
OPTADAM_AMSGRAD8_HANDLER(optadam_amsgrad8_f32, true)

// RAdam, each element in one pass: optadam/radam.py's scale_by_radam (adam_moments, then
// radam_direction) transcribed line for line, with the same names and order. ρ_t, the choice
// between the rectified adaptive step and the momentum step, and r_t depend on the step count
// only: Python computes them once per step and passes them as runtime scalars (a 0/1 flag and
// r_t), so a step never recompiles, and the handler picks the loop for the flag. The Python stays
// the definition; tests/test_native_radam.py holds this file to it.
#include <cmath>

#include "block8.h"
#include "leaves.h"
#include "lowp.h"

namespace optadam {
namespace {

// This step's runtime scalars, in the order radam_scalars lists them.
template <typename T>
struct RadamScalars {
  T b1, one_minus_b1, b2, one_minus_b2, eps, eps_root;
  T c1, c2, c1_next;  // bias corrections 1 − β1^t, 1 − β2^t, 1 − β1^(t+1)
  T rectify;          // 1 when ρ_t >= threshold (the rectified adaptive step), else 0
  T r;                // r_t, the rectification factor (1 when not rectifying)
};
constexpr size_t kRadamScalars = sizeof(RadamScalars<float>) / sizeof(float);

// adam_moments: `mu` and `nu` advanced in place.
template <typename T>
inline void RadamMoments(const RadamScalars<T>& s, T g, T& mu, T& nu) {
  mu = MulAdd(s.b1, mu, s.one_minus_b1 * g);        // m_t = β1 · m_{t-1} + (1 − β1) · g_t
  nu = MulAdd(s.b2, nu, s.one_minus_b2 * (g * g));  // v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²
}

// radam_direction: u_t from the new moments, the rectified step or the momentum step.
template <typename T, bool kNesterov, bool kRectify>
inline T RadamDirection(const RadamScalars<T>& s, T g, T mu, T nu) {
  T mu_hat = kNesterov
                 // NAdam: m̂_t = β1 · m_t / (1 − β1^(t+1)) + (1 − β1) · g_t / (1 − β1^t)
                 ? MulAdd(s.b1, mu / s.c1_next, s.one_minus_b1 * (g / s.c1))
                 : mu / s.c1;  // m̂_t = m_t / (1 − β1^t)
  if (!kRectify) return mu_hat;  // u_t = m̂_t before ρ_t reaches the threshold
  T nu_hat = nu / s.c2;          // v̂_t = v_t / (1 − β2^t)
  return s.r * mu_hat / (std::sqrt(nu_hat + s.eps_root) + s.eps);  // u_t = r_t · m̂_t / (…)
}

// One element of scale_by_radam's update; `mu` and `nu` updated in place, u_t returned.
template <typename T, bool kNesterov, bool kRectify>
inline T RadamElement(const RadamScalars<T>& s, T g, T& mu, T& nu) {
  RadamMoments(s, g, mu, nu);
  return RadamDirection<T, kNesterov, kRectify>(s, g, mu, nu);
}

// Elements [begin, end) of one leaf of tx.update: the moments alone, in place. The direction stays jnp (map_leaves computes it from the state this
// returns), so XLA fuses it into the loop that consumes u_t (optax.apply_updates'); see adam.cc.
template <typename T>
void MomentsRange(const RadamScalars<T>& s, const T* __restrict g, T* __restrict mu,
                  T* __restrict nu, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) RadamMoments(s, g[i], mu[i], nu[i]);
}

// Operands: the scalars, then per leaf (g, mu, nu); results per leaf (mu, nu), in place. Split
// over XLA's thread pool (InParallel) as Adam is. `nesterov` changes only the direction; it is
// bound so that one Kernel's options serve this call and optadam.step's.
template <typename T>
ffi::Future Radam(ffi::ThreadPool pool, bool /*nesterov*/, ffi::RemainingArgs args,
                  ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kRadamScalars);
  if (packed.has_error()) return Done(packed.error());
  RadamScalars<T> s;
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

// optadam.step's scalars: the global-norm clip in front (leaves.h; "no clip" without one),
// scale_by_radam's, then −η (the sign as scale_by_learning_rate applies it).
template <typename T>
struct StepScalars {
  ClipScalars<T> clip;
  RadamScalars<T> radam;
  T minus_lr;
};
constexpr size_t kStepScalars = sizeof(StepScalars<float>) / sizeof(float);

// Elements [begin, end) of one leaf of a whole step, as chain(scale_by_radam,
// scale_by_learning_rate) followed by optax.apply_updates computes it: g_t clipped (with kClip),
// u_t, then (−η)·u_t, then θ + that, which XLA:CPU fuses and contracts into one FMA as MulAdd
// does here. θ and the moments are written in place; no update buffer.
template <typename T, bool kNesterov, bool kRectify, bool kClip>
void StepRange(const StepScalars<T>& s, const T* __restrict g, T* __restrict theta,
               T* __restrict mu, T* __restrict nu, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    T g_t = Clipped<T, kClip>(s.clip, g[i]);  // g_t, or (g_t / ‖g‖) · c when clipping
    T u = RadamElement<T, kNesterov, kRectify>(s.radam, g_t, mu[i], nu[i]);
    theta[i] = MulAdd(u, s.minus_lr, theta[i]);  // θ_t = θ_{t-1} + u_t·(−η)
  }
}

// Operands: the scalars, then per leaf (g, θ, mu, nu); results per leaf (θ, mu, nu), all in place.
template <typename T>
ffi::Future RadamStep(ffi::ThreadPool pool, bool nesterov, ffi::RemainingArgs args,
                      ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kStepScalars);
  if (packed.has_error()) return Done(packed.error());
  StepScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<Leaf<T, 4, 3>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  using Range = void (*)(const StepScalars<T>&, const T*, T*, T*, T*, size_t, size_t);
  // [nesterov][rectify][clip]: the step's, not each element's (one loop per call)
  static constexpr Range kRanges[2][2][2] = {
      {{StepRange<T, false, false, false>, StepRange<T, false, false, true>},
       {StepRange<T, false, true, false>, StepRange<T, false, true, true>}},
      {{StepRange<T, true, false, false>, StepRange<T, true, false, true>},
       {StepRange<T, true, true, false>, StepRange<T, true, true, true>}}};
  Range step = kRanges[nesterov][s.radam.rectify != T(0)][s.clip.clip != 0];
  return InParallel<T>(pool, std::move(leaves),
                       [s, step](const Leaf<T, 4, 3>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // θ
                         Alias(b, 2, 1, begin, end);  // mu
                         Alias(b, 3, 2, begin, end);  // nu
                         step(s, b.in[0], b.out[0], b.out[1], b.out[2], begin, end);
                       });
}

// --- Stored in bfloat16, or bfloat16/float16 gradients (lowp.h) ---------------------------------

// RAdam (Adam's moments) on lifted moments, for LowpMomentsCall and LowpStepCall: {mu, nu}. The
// step's direction picks the rectified or the momentum step per element on the bits (Select,
// computing both): `rectify` is a runtime scalar, and a branch in the loop keeps it scalar.
template <bool kNesterov = false>
struct RadamLowpFamily {
  using Scalars = RadamScalars<float>;
  static constexpr size_t kMoments = 2;
  static constexpr Format8 kFormats[2] = {kSigned, kRoot};  // state_bits=8 (block8.h)
  template <typename G, typename M, typename N>
  static void Moments(const Scalars& s, float g, float m[2]) {
    m[0] = Ema<G, M>(s.b1, s.one_minus_b1, m[0], g);      // m_t = β1 · m_{t-1} + (1 − β1) · g_t
    m[1] = Ema<G, N>(s.b2, s.one_minus_b2, m[1], g * g);  // v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²
  }
  static float Direction(const Scalars& s, float g, const float m[2]) {
    float rectified = RadamDirection<float, kNesterov, true>(s, g, m[0], m[1]);
    float momentum = RadamDirection<float, kNesterov, false>(s, g, m[0], m[1]);
    return Select(s.rectify != 0.0f, rectified, momentum);
  }
};

ffi::Future RadamLowp(ffi::ThreadPool pool, bool /*nesterov*/, bool stochastic,
                      ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return LowpMomentsCall<RadamLowpFamily<>>(pool, stochastic, args, rets);
}

// Operands: float32 scalars (the step kernel's, then the seeds), per leaf (g, θ, mu, nu); results
// per leaf (θ, mu, nu), in place.
ffi::Future RadamStepLowp(ffi::ThreadPool pool, bool nesterov, bool stochastic,
                          ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if (nesterov) return LowpStepCall<RadamLowpFamily<true>>(pool, stochastic, args, rets);
  return LowpStepCall<RadamLowpFamily<false>>(pool, stochastic, args, rets);
}

// 8-bit moments (block8.h): optadam.step's (kUpdate false) or tx.update's. Operands: the step
// kernel's or the update kernel's scalars, per leaf (g, θ (the step's), mu codes and scales, nu
// codes and scales, nu's seed); results per leaf (θ or u, codes and scales), in place.
template <bool kUpdate>
ffi::Future Radam8(ffi::ThreadPool pool, bool nesterov, int64_t block_size,
                   ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if (nesterov) return Call8<RadamLowpFamily<true>, kUpdate>(pool, block_size, args, rets);
  return Call8<RadamLowpFamily<false>, kUpdate>(pool, block_size, args, rets);
}

}  // namespace
}  // namespace optadam

#define OPTADAM_RADAM_HANDLER(name, fn, T)                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, fn<T>,                            \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<bool>("nesterov")             \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

OPTADAM_RADAM_HANDLER(optadam_radam_f32, optadam::Radam, float)
OPTADAM_RADAM_HANDLER(optadam_radam_f64, optadam::Radam, double)
OPTADAM_RADAM_HANDLER(optadam_radam_step_f32, optadam::RadamStep, float)
OPTADAM_RADAM_HANDLER(optadam_radam_step_f64, optadam::RadamStep, double)

// Low-precision storage (lowp.h): tx.update's moments advanced in place, any mix of dtypes.
XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_radam_lowp, optadam::RadamLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_radam_step_lowp, optadam::RadamStepLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

#define OPTADAM_RADAM8_HANDLER(name, update)                            \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, optadam::Radam8<update>,          \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<bool>("nesterov")             \
                                    .Attr<int64_t>("block_size")        \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

// 8-bit moments (block8.h)
OPTADAM_RADAM8_HANDLER(optadam_radam8_step_f32, false)
OPTADAM_RADAM8_HANDLER(optadam_radam8_f32, true)

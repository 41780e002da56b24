// Adam (and so AdamW) and NAdam, each element in one pass: optadam/adam.py's scale_by_adam
// (adam_moments, adam_mu_hat, then its direction) transcribed line for line, with the same names
// and order. The Python stays the definition; tests/test_native.py holds this file to it.
#include <cmath>

#include "leaves.h"

namespace optadam {
namespace {

// This step's runtime scalars, in the order scale_by_adam lists them for its Kernel.
template <typename T>
struct AdamScalars {
  T b1, one_minus_b1, b2, one_minus_b2, eps, eps_root;
  T c1, c2, c1_next;  // bias corrections 1 − β1^t, 1 − β2^t, 1 − β1^(t+1)
};
constexpr size_t kAdamScalars = sizeof(AdamScalars<float>) / sizeof(float);

// One element of scale_by_adam's update; `mu` and `nu` are updated in place, `u_t` returned.
template <typename T, bool kNesterov>
inline T AdamElement(const AdamScalars<T>& s, T g, T& mu, T& nu) {
  mu = MulAdd(s.b1, mu, s.one_minus_b1 * g);        // m_t = β1 · m_{t-1} + (1 − β1) · g_t
  nu = MulAdd(s.b2, nu, s.one_minus_b2 * (g * g));  // v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²
  T mu_hat = kNesterov
                 // NAdam: m̂_t = β1 · m_t / (1 − β1^(t+1)) + (1 − β1) · g_t / (1 − β1^t)
                 ? MulAdd(s.b1, mu / s.c1_next, s.one_minus_b1 * (g / s.c1))
                 : mu / s.c1;  // m̂_t = m_t / (1 − β1^t)
  T nu_hat = nu / s.c2;        // v̂_t = v_t / (1 − β2^t)
  return mu_hat / (std::sqrt(nu_hat + s.eps_root) + s.eps);  // u_t = m̂_t / (sqrt(v̂_t + ε_root) + ε)
}

// Elements [begin, end) of one leaf: the direction u_t over the gradient (Python aliases g to u,
// so g and u may be one buffer: no __restrict on them), the moments in place.
template <typename T, bool kNesterov>
void UpdateRange(const AdamScalars<T>& s, const T* g, T* __restrict mu,
                 T* __restrict nu, T* u, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) u[i] = AdamElement<T, kNesterov>(s, g[i], mu[i], nu[i]);
}

// Operands: the scalars, then per leaf (g, mu, nu); results per leaf (u, mu, nu), mu and nu in
// place. The elements are split over XLA's thread pool (InParallel); the call completes when the
// last range is done.
template <typename T>
ffi::Future Adam(ffi::ThreadPool pool, bool nesterov, ffi::RemainingArgs args,
                 ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kAdamScalars);
  if (packed.has_error()) return Done(packed.error());
  AdamScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  if ((args.size() - 1) % 3 != 0 || args.size() - 1 != rets.size()) {
    return Done(ffi::Error::InvalidArgument("optadam adam kernel: operand count"));
  }
  std::vector<Leaf<T, 3, 3>> leaves(rets.size() / 3);
  for (size_t leaf = 0; leaf < leaves.size(); ++leaf) {
    if (ffi::Error error = GetLeaf<T, 3, 3>(args, rets, leaf, leaves[leaf]); error.failure()) {
      return Done(error);
    }
  }
  auto update = nesterov ? UpdateRange<T, true> : UpdateRange<T, false>;
  return InParallel<T>(pool, std::move(leaves),
                       [s, update](const Leaf<T, 3, 3>& b, size_t begin, size_t end) {
                         Alias(b, 1, 1, begin, end);  // mu
                         Alias(b, 2, 2, begin, end);  // nu
                         update(s, b.in[0], b.out[1], b.out[2], b.out[0], begin, end);
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
  if ((args.size() - 1) % 4 != 0 || (args.size() - 1) / 4 * 3 != rets.size()) {
    return Done(ffi::Error::InvalidArgument("optadam adam step kernel: operand count"));
  }
  std::vector<Leaf<T, 4, 3>> leaves(rets.size() / 3);
  for (size_t leaf = 0; leaf < leaves.size(); ++leaf) {
    if (ffi::Error error = GetLeaf<T, 4, 3>(args, rets, leaf, leaves[leaf]); error.failure()) {
      return Done(error);
    }
  }
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

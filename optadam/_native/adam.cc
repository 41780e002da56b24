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

// Elements [begin, end) of one leaf: the direction u_t to a fresh buffer, the moments in place.
template <typename T, bool kNesterov>
void UpdateRange(const AdamScalars<T>& s, const T* __restrict g, T* __restrict mu,
                 T* __restrict nu, T* __restrict u, size_t begin, size_t end) {
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

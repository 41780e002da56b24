// Adam (and so AdamW) and NAdam, each element in one pass: optadam/adam.py's scale_by_adam
// (adam_moments, adam_mu_hat, then its direction) transcribed line for line, with the same names
// and order. The Python stays the definition; tests/test_native.py holds this file to it.
#include <cmath>
#include <cstdint>
#include <type_traits>

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

// --- Low-precision storage: bfloat16/float16 params and gradients, bfloat16 moments ---------------
//
// map_leaves (optadam/_leafwise.py) lifts every input to float32, computes in float32 and rounds
// each output once to its storage dtype; the direction reads each new moment as stored (rounded).
// A storage type says how one element is lifted and rounded. Conversions are on the bits, each
// equal to XLA:CPU's convert (tests/test_native_bf16.py): round to nearest even, subnormals kept,
// NaN stays NaN.

inline uint32_t BitsOf(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits;
}

inline float FloatOf(uint32_t bits) {
  float x;
  std::memcpy(&x, &bits, sizeof(x));
  return x;
}

inline bool IsNanBits(uint32_t bits) { return (bits & 0x7FFFFFFFu) > 0x7F800000u; }

// optadam/_quantize.py's _mix: the lowbias32 hash.
inline uint32_t Mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

struct Float32Storage {
  using Stored = float;
  static constexpr ffi::DataType kType = ffi::DataType::F32;
  static constexpr bool kExact = true;
  static float Lift(float x) { return x; }
  static float Round(float x, uint32_t) { return x; }
};

// bfloat16 is float32's upper half: rounding to nearest even adds 0x7FFF plus the kept half's
// lowest bit (a NaN becomes the quiet NaN of its sign, as XLA converts it).
struct BFloat16Storage {
  using Stored = uint16_t;
  static constexpr ffi::DataType kType = ffi::DataType::BF16;
  static constexpr bool kExact = false;
  static float Lift(uint16_t x) { return FloatOf(uint32_t{x} << 16); }
  static uint16_t Round(float x, uint32_t) {
    uint32_t bits = BitsOf(x);
    uint32_t nearest = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
    return static_cast<uint16_t>(IsNanBits(bits) ? ((bits >> 16) & 0x8000u) | 0x7FC0u : nearest);
  }
};

// round_stochastic_bf16: 16 random bits (the hash of the element's index plus its array's seed,
// `seed` here being that sum) added below the kept half, then truncated; NaN becomes 0x7FC0.
struct BFloat16StochasticStorage : BFloat16Storage {
  static uint16_t Round(float x, uint32_t seed) {
    uint32_t bits = BitsOf(x);
    uint32_t rounded = IsNanBits(bits) ? 0x7FC00000u : bits + (Mix(seed) & 0xFFFFu);
    return static_cast<uint16_t>(rounded >> 16);
  }
};

// IEEE half: 5 exponent bits (bias 15), 10 mantissa bits. Rounded to nearest even; values from
// 65520 up overflow to inf; below 2^-14 subnormal (units of 2^-24); a NaN keeps its sign and top
// mantissa bits and is made quiet, as XLA:CPU's convert does.
struct Float16Storage {
  using Stored = uint16_t;
  static constexpr ffi::DataType kType = ffi::DataType::F16;
  static constexpr bool kExact = false;
  // Every case computed, then selected: no branch, so the loops vectorize.
  static float Lift(uint16_t x) {
    uint32_t sign = uint32_t{x & 0x8000u} << 16, exponent = (x >> 10) & 0x1Fu, mantissa = x & 0x3FFu;
    uint32_t subnormal = BitsOf(static_cast<float>(mantissa) * 0x1p-24f) | sign;
    uint32_t special = sign | 0x7F800000u | (mantissa << 13);  // inf, NaN
    uint32_t normal = sign | ((exponent + 112) << 23) | (mantissa << 13);
    return FloatOf(exponent == 0 ? subnormal : exponent == 31 ? special : normal);
  }
  static uint16_t Round(float x, uint32_t) {
    uint32_t bits = BitsOf(x), sign = (bits >> 16) & 0x8000u, a = bits & 0x7FFFFFFFu;
    uint32_t nan = 0x7E00u | ((a >> 13) & 0x3FFu);
    // subnormal half (or zero): m · 2^(e−126) in units of 2^-24, to nearest even; a shift of 25
    // or more leaves 0 (clamped, so every shift stays defined)
    int32_t shift = 126 - static_cast<int32_t>(a >> 23);
    shift = shift < 1 ? 1 : shift > 25 ? 25 : shift;
    uint32_t mantissa = (a & 0x7FFFFFu) | 0x800000u;
    uint32_t kept = mantissa >> shift, rest = mantissa & ((1u << shift) - 1), half = 1u << (shift - 1);
    uint32_t subnormal = kept + ((rest > half) | ((rest == half) & kept & 1u));
    uint32_t rebiased = a - (112u << 23);  // normal: rebias, round the 13 dropped bits
    uint32_t normal = (rebiased + 0xFFFu + ((rebiased >> 13) & 1u)) >> 13;
    uint32_t out = a > 0x7F800000u   ? nan
                   : a >= 0x477FF000u ? 0x7C00u  // inf, or rounds to it (65520 and up)
                   : a < 0x38800000u  ? subnormal
                                      : normal;
    return static_cast<uint16_t>(sign | out);
  }
};

// One leaf of a low-precision call: untyped buffers (their dtypes checked against the call's
// storage types) and, with stochastic rounding, the seeds of its two moments.
struct MixedLeaf {
  size_t n = 0;
  const void* in[4] = {};
  void* out[3] = {};
  uint32_t seed[2] = {};  // array_seed of mu and of nu (their first elements' positions + seed)
};

// One element's adam_moments with stored moments: lifted, advanced, each rounded once to its
// storage, in place.
template <typename G, typename M, typename N>
inline void MixedMoments(const AdamScalars<float>& s, float g, typename M::Stored& mu_stored,
                         typename N::Stored& nu_stored, const uint32_t seed[2], size_t i) {
  float mu = M::Lift(mu_stored), nu = N::Lift(nu_stored);
  // adam_moments. XLA:CPU (LLVM) contracts one of each moment's two products into an FMA: the
  // moment's, except where the moment is lifted from bfloat16 and g is not (then g's); measured
  // (tests/test_native_bf16.py), the choice LLVM makes for these converts.
  constexpr bool kMuOnG = !std::is_same_v<M, Float32Storage> && !std::is_same_v<G, BFloat16Storage>;
  constexpr bool kNuOnG = !std::is_same_v<N, Float32Storage> && !std::is_same_v<G, BFloat16Storage>;
  mu = kMuOnG ? MulAdd(s.one_minus_b1, g, s.b1 * mu)       // m_t = β1 · m_{t-1} + (1 − β1) · g_t
              : MulAdd(s.b1, mu, s.one_minus_b1 * g);
  nu = kNuOnG ? MulAdd(s.one_minus_b2, g * g, s.b2 * nu)  // v_t = β2 · v_{t-1} + (1 − β2) · |g_t|²
              : MulAdd(s.b2, nu, s.one_minus_b2 * (g * g));
  mu_stored = M::Round(mu, seed[0] + static_cast<uint32_t>(i));
  nu_stored = N::Round(nu, seed[1] + static_cast<uint32_t>(i));
}

// One element of scale_by_adam's update with stored moments: the moments as MixedMoments, the
// direction from the moments as stored.
template <typename G, typename M, typename N, bool kNesterov>
inline float MixedElement(const AdamScalars<float>& s, float g, typename M::Stored& mu_stored,
                          typename N::Stored& nu_stored, const uint32_t seed[2], size_t i) {
  MixedMoments<G, M, N>(s, g, mu_stored, nu_stored, seed, i);
  return AdamDirection<float, kNesterov>(s, g, M::Lift(mu_stored), N::Lift(nu_stored));
}

// Elements [begin, end) of one leaf of tx.update: the moments in place, as MomentsRange. The
// scalars come by value: a float32 result written through a pointer could otherwise alias them,
// and GCC then does not vectorize the loop.
template <typename G, typename M, typename N>
void MixedMomentsRange(AdamScalars<float> s, const MixedLeaf& b, size_t begin, size_t end) {
  const auto* __restrict g = static_cast<const typename G::Stored*>(b.in[0]);
  auto* __restrict mu = static_cast<typename M::Stored*>(b.out[0]);
  auto* __restrict nu = static_cast<typename N::Stored*>(b.out[1]);
  for (size_t i = begin; i < end; ++i) MixedMoments<G, M, N>(s, G::Lift(g[i]), mu[i], nu[i], b.seed, i);
}

// Elements [begin, end) of one leaf of a whole step, as update + apply_updates compute it. With
// float32 params as StepRange (the clip chosen per element by select: a runtime `decay` there
// kept GCC from vectorizing, so that one is a template switch). With bfloat16/float16 params (no clip, no decay: the Python falls back) XLA
// rounds u_t to the params' dtype, then (−η)·u_t, then θ + that: three roundings, and the
// converts between them keep it from contracting an FMA.
template <typename G, typename M, typename N, bool kNesterov, bool kDecay>
void MixedStepRange(StepScalars<float> s, const MixedLeaf& b, size_t begin, size_t end) {
  const auto* __restrict g = static_cast<const typename G::Stored*>(b.in[0]);
  auto* __restrict theta = static_cast<typename G::Stored*>(b.out[0]);
  auto* __restrict mu = static_cast<typename M::Stored*>(b.out[1]);
  auto* __restrict nu = static_cast<typename N::Stored*>(b.out[2]);
  const bool clip = s.clip.clip != 0;
  for (size_t i = begin; i < end; ++i) {
    float g_t = G::Lift(g[i]);
    float clipped = Clipped<float, true>(s.clip, g_t);
    g_t = clip ? clipped : g_t;  // g_t, or (g_t / ‖g‖) · c when clipping
    float u = MixedElement<G, M, N, kNesterov>(s.adam, g_t, mu[i], nu[i], b.seed, i);
    if constexpr (G::kExact) {
      if (kDecay) u = MulAdd(s.weight_decay, theta[i], u);  // u_t + λ·θ_{t-1}
      theta[i] = MulAdd(u, s.minus_lr, theta[i]);  // θ_t = θ_{t-1} + u_t·(−η)
    } else {
      float step = G::Lift(G::Round(G::Lift(G::Round(u, 0)) * s.minus_lr, 0));  // (−η)·u_t
      theta[i] = G::Round(G::Lift(theta[i]) + step, 0);                       // θ_{t-1} + that
    }
  }
}

template <typename F>
ffi::Error WithParamStorage(ffi::DataType type, F&& f) {
  switch (type) {
    case ffi::DataType::F32: return f(Float32Storage{});
    case ffi::DataType::BF16: return f(BFloat16Storage{});
    case ffi::DataType::F16: return f(Float16Storage{});
    default: return ffi::Error::InvalidArgument("optadam adam lowp kernel: gradient dtype");
  }
}

// A moment's storage: float32, or bfloat16 rounded as `BF16` says (to nearest or stochastically).
template <typename BF16, typename F>
ffi::Error WithMomentStorage(ffi::DataType type, F&& f) {
  switch (type) {
    case ffi::DataType::F32: return f(Float32Storage{});
    case ffi::DataType::BF16: return f(BF16{});
    default: return ffi::Error::InvalidArgument("optadam adam lowp kernel: moment dtype");
  }
}

// `f(G, M, N)` with the storage types of one call's (gradient, mu, nu) dtypes.
template <typename F>
ffi::Error WithStorage(ffi::DataType g, ffi::DataType mu, ffi::DataType nu, bool stochastic,
                       F&& f) {
  auto moments = [&](auto bf16) {
    using BF16 = decltype(bf16);
    return WithParamStorage(g, [&](auto g_type) {
      return WithMomentStorage<BF16>(mu, [&](auto mu_type) {
        return WithMomentStorage<BF16>(nu, [&](auto nu_type) { return f(g_type, mu_type, nu_type); });
      });
    });
  };
  return stochastic ? moments(BFloat16StochasticStorage{}) : moments(BFloat16Storage{});
}

// The leaves of a low-precision call: `ins` operands and `outs` results per leaf; result k is
// updated in place of operand `first_aliased + k` and has its dtype. Every leaf's dtypes must be
// the first leaf's (Python groups leaves by them). With stochastic rounding the scalars end in
// two seeds per leaf (uint32 bits in float32 slots).
ffi::Error GetMixedLeaves(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets,
                          size_t ins, size_t outs, const float* seeds,
                          std::vector<MixedLeaf>& leaves, std::vector<ffi::DataType>& types) {
  for (size_t leaf = 0; leaf < leaves.size(); ++leaf) {
    MixedLeaf& l = leaves[leaf];
    for (size_t k = 0; k < ins; ++k) {
      auto buffer = args.get<ffi::AnyBuffer>(1 + leaf * ins + k);
      if (buffer.has_error()) return buffer.error();
      if (leaf == 0) types.push_back(buffer->element_type());
      if (k == 0) l.n = buffer->element_count();
      if (buffer->element_type() != types[k] || buffer->element_count() != l.n) {
        return ffi::Error::InvalidArgument("optadam adam lowp kernel: operand dtype or size");
      }
      l.in[k] = buffer->untyped_data();
    }
    for (size_t k = 0; k < outs; ++k) {
      auto buffer = rets.get<ffi::AnyBuffer>(leaf * outs + k);
      if (buffer.has_error()) return buffer.error();
      if ((*buffer)->element_type() != types[ins - outs + k] || (*buffer)->element_count() != l.n) {
        return ffi::Error::InvalidArgument("optadam adam lowp kernel: result dtype or size");
      }
      l.out[k] = (*buffer)->untyped_data();
    }
    if (seeds != nullptr) std::memcpy(l.seed, seeds + 2 * leaf, sizeof(l.seed));
  }
  return ffi::Error::Success();
}

// Bytes [begin, end) (in elements of `size` bytes) of an operand into its result, unless aliased.
inline void AliasBytes(const void* in, void* out, size_t size, size_t begin, size_t end) {
  if (in != out && end > begin) {
    std::memcpy(static_cast<char*>(out) + begin * size,
                static_cast<const char*>(in) + begin * size, (end - begin) * size);
  }
}

// Operands: float32 scalars (AdamScalars, then the seeds), per leaf (g, mu, nu); results per leaf
// (mu, nu) in their operands' dtypes, in place (tx.update's: the direction stays jnp, as for Adam).
ffi::Future AdamLowp(ffi::ThreadPool pool, bool /*nesterov*/, bool stochastic,
                     ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if ((args.size() - 1) % 3 != 0 || (args.size() - 1) / 3 * 2 != rets.size()) {
    return Done(ffi::Error::InvalidArgument("optadam adam lowp kernel: operand count"));
  }
  std::vector<MixedLeaf> leaves(rets.size() / 2);
  auto packed = GetScalars<float>(args, kAdamScalars + (stochastic ? 2 * leaves.size() : 0));
  if (packed.has_error()) return Done(packed.error());
  AdamScalars<float> s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<ffi::DataType> types;
  const float* seeds = stochastic ? *packed + kAdamScalars : nullptr;
  if (ffi::Error error = GetMixedLeaves(args, rets, 3, 2, seeds, leaves, types); error.failure()) {
    return Done(error);
  }
  if (leaves.empty()) return Done();
  using Range = void (*)(AdamScalars<float>, const MixedLeaf&, size_t, size_t);
  Range update = nullptr;
  ffi::Error chosen = WithStorage(types[0], types[1], types[2], stochastic, [&](auto g, auto m, auto v) {
    update = MixedMomentsRange<decltype(g), decltype(m), decltype(v)>;
    return ffi::Error::Success();
  });
  if (chosen.failure()) return Done(chosen);
  size_t widths[2] = {ffi::ByteWidth(types[1]), ffi::ByteWidth(types[2])};
  return InParallel<float>(pool, std::move(leaves),
                           [s, update, widths](const MixedLeaf& b, size_t begin, size_t end) {
                             AliasBytes(b.in[1], b.out[0], widths[0], begin, end);  // mu
                             AliasBytes(b.in[2], b.out[1], widths[1], begin, end);  // nu
                             update(s, b, begin, end);
                           });
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
  if (ffi::Error error = GetMixedLeaves(args, rets, 4, 3, seeds, leaves, types); error.failure()) {
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
  ffi::Error chosen = WithStorage(types[0], types[2], types[3], stochastic, [&](auto g, auto m, auto v) {
    using G = decltype(g);
    using M = decltype(m);
    using N = decltype(v);
    Range ranges[2][2] = {{MixedStepRange<G, M, N, false, false>, MixedStepRange<G, M, N, false, true>},
                          {MixedStepRange<G, M, N, true, false>, MixedStepRange<G, M, N, true, true>}};
    step = ranges[nesterov][decay && G::kExact];
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

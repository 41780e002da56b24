// Low-precision storage, shared by the families' `optadam_<family>[_step]_lowp` kernels:
// bfloat16/float16 params and gradients, bfloat16 moments (rounded to nearest or stochastically),
// math in float32. The dtypes are read from the buffers, so one handler serves every mix.
//
// map_leaves (optadam/_leafwise.py) lifts every input to float32, computes in float32 and rounds
// each output once to its storage dtype; the direction reads each new moment as stored (rounded).
// A storage type says how one element is lifted and rounded. Conversions are on the bits, each
// equal to XLA:CPU's convert (tests/test_native_bf16.py): round to nearest even, subnormals kept,
// NaN stays NaN.
#pragma once

#include <array>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>

#include "leaves.h"

namespace optadam {

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

// A moment's 8-bit format (_quantize.quantize's `moment`, state_bits=8, block8.h), given by each
// family's kFormats: kSigned stores m / max_b |m| to the nearest signed code; kRoot stores
// √v / max_b √v (v >= 0) in unsigned codes, stochastically.
enum Format8 : int { kSigned = 1, kRoot = 2 };

// One leaf of a low-precision call: untyped buffers (their dtypes checked against the call's
// storage types) and, with stochastic rounding, the seeds of its moments.
constexpr size_t kMaxMoments = 3;
struct MixedLeaf {
  size_t n = 0;
  const void* in[2 + kMaxMoments] = {};  // g, (θ,) the moments
  void* out[1 + kMaxMoments] = {};       // (θ,) the moments
  uint32_t seed[kMaxMoments] = {};       // array_seed of each moment (its first element's position + seed)
};

template <typename F>
ffi::Error WithParamStorage(ffi::DataType type, F&& f) {
  switch (type) {
    case ffi::DataType::F32: return f(Float32Storage{});
    case ffi::DataType::BF16: return f(BFloat16Storage{});
    case ffi::DataType::F16: return f(Float16Storage{});
    default: return ffi::Error::InvalidArgument("optadam lowp kernel: gradient dtype");
  }
}

// A moment's storage: float32, or bfloat16 rounded as `BF16` says (to nearest or stochastically).
template <typename BF16, typename F>
ffi::Error WithMomentStorage(ffi::DataType type, F&& f) {
  switch (type) {
    case ffi::DataType::F32: return f(Float32Storage{});
    case ffi::DataType::BF16: return f(BF16{});
    default: return ffi::Error::InvalidArgument("optadam lowp kernel: moment dtype");
  }
}

// The leaves of a low-precision call: `ins` operands and `outs` results per leaf; result k is
// updated in place of operand `ins - outs + k` and has its dtype. Every leaf's dtypes must be
// the first leaf's (Python groups leaves by them). With stochastic rounding the scalars end in
// `moments` seeds per leaf (uint32 bits in float32 slots).
inline ffi::Error GetMixedLeaves(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets,
                          size_t ins, size_t outs, size_t moments, const float* seeds,
                          std::vector<MixedLeaf>& leaves, std::vector<ffi::DataType>& types) {
  for (size_t leaf = 0; leaf < leaves.size(); ++leaf) {
    MixedLeaf& l = leaves[leaf];
    for (size_t k = 0; k < ins; ++k) {
      auto buffer = args.get<ffi::AnyBuffer>(1 + leaf * ins + k);
      if (buffer.has_error()) return buffer.error();
      if (leaf == 0) types.push_back(buffer->element_type());
      if (k == 0) l.n = buffer->element_count();
      if (buffer->element_type() != types[k] || buffer->element_count() != l.n) {
        return ffi::Error::InvalidArgument("optadam lowp kernel: operand dtype or size");
      }
      l.in[k] = buffer->untyped_data();
    }
    for (size_t k = 0; k < outs; ++k) {
      auto buffer = rets.get<ffi::AnyBuffer>(leaf * outs + k);
      if (buffer.has_error()) return buffer.error();
      if ((*buffer)->element_type() != types[ins - outs + k] || (*buffer)->element_count() != l.n) {
        return ffi::Error::InvalidArgument("optadam lowp kernel: result dtype or size");
      }
      l.out[k] = (*buffer)->untyped_data();
    }
    if (seeds != nullptr) std::memcpy(l.seed, seeds + moments * leaf, moments * sizeof(float));
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


// `f(M_1, ..., M_K)` with the storage types of a call's K moments, `types[0..K)`.
template <size_t K, typename BF16, typename F, typename... Ms>
ffi::Error WithMomentStorages(const ffi::DataType* types, F&& f, Ms... ms) {
  if constexpr (sizeof...(Ms) == K) {
    return f(ms...);
  } else {
    return WithMomentStorage<BF16>(types[sizeof...(Ms)], [&](auto m) {
      return WithMomentStorages<K, BF16>(types, f, ms..., m);
    });
  }
}

// β · m + (1 − β) · x, an exponential moving average of x (g_t or |g_t|²) in a stored moment of
// type M, with gradients of type G: XLA:CPU (LLVM) contracts one of the two products into an
// FMA, the moment's, except where the moment is lifted from bfloat16 and g is not (then x's);
// measured (tests/test_native_bf16.py, tests/test_native_lowp.py).
template <typename G, typename M>
inline float Ema(float beta, float one_minus_beta, float m, float x) {
  constexpr bool kOnX = !std::is_same_v<M, Float32Storage> && !std::is_same_v<G, BFloat16Storage>;
  return kOnX ? MulAdd(one_minus_beta, x, beta * m) : MulAdd(beta, m, one_minus_beta * x);
}

// Elements [begin, end) of one leaf of tx.update with stored moments: each lifted, advanced by
// `Family::Moments<G, Ms...>(scalars, g, m)` in float32, and rounded once to its storage, in
// place. The scalars come by value (a result written through a pointer could alias them, and GCC
// would not vectorize the loop).
template <typename Family, typename G, typename... Ms, size_t... k>
void LowpMomentsRange(typename Family::Scalars s, const MixedLeaf& b, size_t begin, size_t end,
                      std::index_sequence<k...>) {
  const auto* __restrict g = static_cast<const typename G::Stored*>(b.in[0]);
  std::tuple<typename Ms::Stored*...> m{static_cast<typename Ms::Stored*>(b.out[k])...};
  for (size_t i = begin; i < end; ++i) {
    float v[sizeof...(Ms)] = {Ms::Lift(std::get<k>(m)[i])...};
    Family::template Moments<G, Ms...>(s, G::Lift(g[i]), v);
    ((std::get<k>(m)[i] = Ms::Round(v[k], b.seed[k] + static_cast<uint32_t>(i))), ...);
  }
}

template <typename Family, typename G, typename... Ms>
void LowpMoments(typename Family::Scalars s, const MixedLeaf& b, size_t begin, size_t end) {
  LowpMomentsRange<Family, G, Ms...>(s, b, begin, end, std::index_sequence_for<Ms...>{});
}

// A family's tx.update kernel with stored moments. Operands: float32 scalars (Family::Scalars,
// then, with `stochastic`, K seeds per leaf), per leaf (g, K moments); results per leaf the K
// moments in their operands' dtypes, in place. The direction stays jnp, as for float32.
// `Family` gives Scalars, kMoments (K) and Moments<G, Ms...>(scalars, g, float m[K]).
template <typename Family>
ffi::Future LowpMomentsCall(ffi::ThreadPool pool, bool stochastic, ffi::RemainingArgs args,
                            ffi::RemainingRets rets) {
  constexpr size_t K = Family::kMoments;
  static_assert(K <= kMaxMoments);
  using Scalars = typename Family::Scalars;
  constexpr size_t kScalars = sizeof(Scalars) / sizeof(float);
  if ((args.size() - 1) % (1 + K) != 0 || (args.size() - 1) / (1 + K) * K != rets.size()) {
    return Done(ffi::Error::InvalidArgument("optadam lowp kernel: operand count"));
  }
  std::vector<MixedLeaf> leaves(rets.size() / K);
  auto packed = GetScalars<float>(args, kScalars + (stochastic ? K * leaves.size() : 0));
  if (packed.has_error()) return Done(packed.error());
  Scalars s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<ffi::DataType> types;
  const float* seeds = stochastic ? *packed + kScalars : nullptr;
  if (ffi::Error error = GetMixedLeaves(args, rets, 1 + K, K, K, seeds, leaves, types);
      error.failure()) {
    return Done(error);
  }
  if (leaves.empty()) return Done();
  using Range = void (*)(Scalars, const MixedLeaf&, size_t, size_t);
  Range update = nullptr;
  auto choose = [&](auto bf16) {
    using BF16 = decltype(bf16);
    return WithParamStorage(types[0], [&](auto g) {
      return WithMomentStorages<K, BF16>(types.data() + 1, [&](auto... m) {
        update = LowpMoments<Family, decltype(g), decltype(m)...>;
        return ffi::Error::Success();
      });
    });
  };
  ffi::Error chosen = stochastic ? choose(BFloat16StochasticStorage{}) : choose(BFloat16Storage{});
  if (chosen.failure()) return Done(chosen);
  size_t widths[K];
  for (size_t k = 0; k < K; ++k) widths[k] = ffi::ByteWidth(types[1 + k]);
  return InParallel<float>(pool, std::move(leaves),
                           [s, update, widths](const MixedLeaf& b, size_t begin, size_t end) {
                             for (size_t k = 0; k < K; ++k) {
                               AliasBytes(b.in[1 + k], b.out[k], widths[k], begin, end);
                             }
                             update(s, b, begin, end);
                           });
}

// --- optadam.step with stored moments: the whole step in one pass ------------------------------

// A family's low-precision one-pass scalars: the global-norm clip in front ("no clip" without
// one), the family's, then −η (the sign as scale_by_learning_rate applies it) -- the layout of
// its float32 step kernel.
template <typename Scalars>
struct LowpStepScalars {
  ClipScalars<float> clip;
  Scalars family;
  float minus_lr;
};

// The same followed by β, a momentum trace's decay (Traced).
template <typename Scalars>
struct TracedStepScalars {
  ClipScalars<float> clip;
  Scalars family;
  float minus_lr;
  float beta;
};

// A family followed by a momentum trace over its scaled update: rmsprop(momentum=β) is
// chain(scale_by_rms, scale_by_learning_rate, scale_by_momentum). Its moments are the base
// family's, then the trace (last). Moments and Direction are the base's: the trace advances only
// once the step's direction is known (TracedApplied in the one pass).
template <typename Base, bool kNesterov>
struct Traced {
  using Scalars = typename Base::Scalars;
  static constexpr size_t kMoments = Base::kMoments + 1;
  static constexpr bool kTraceNesterov = kNesterov;
  static constexpr std::array<Format8, kMoments> kFormats = [] {  // state_bits=8 (block8.h)
    std::array<Format8, kMoments> formats{};
    for (size_t k = 0; k < Base::kMoments; ++k) formats[k] = Base::kFormats[k];
    formats[Base::kMoments] = kSigned;  // the trace, signed as scale_by_momentum stores it
    return formats;
  }();
  template <typename G, typename... Ms>  // Ms: the base's storages, then the trace's
  static void Moments(const Scalars& s, float g, float* m) {
    BaseMoments<G, std::tuple<Ms...>>(s, g, m, std::make_index_sequence<Base::kMoments>{});
  }
  static float Direction(const Scalars& s, float g, const float* m) {
    return Base::Direction(s, g, m);
  }

 private:
  template <typename G, typename Storages, size_t... k>
  static void BaseMoments(const Scalars& s, float g, float* m, std::index_sequence<k...>) {
    Base::template Moments<G, std::tuple_element_t<k, Storages>...>(s, g, m);
  }
};

template <typename Family, typename = void>
struct IsTraced : std::false_type {};
template <typename Family>
struct IsTraced<Family, std::void_t<decltype(Family::kTraceNesterov)>> : std::true_type {};

// The moments a family's Moments advances: all of them, or (Traced) all but the trace.
template <typename Family>
constexpr size_t kAdvanced = Family::kMoments - IsTraced<Family>::value;

// A family's one-pass scalars (LowpStepScalars, or TracedStepScalars).
template <typename Family>
using StepScalarsOf =
    std::conditional_t<IsTraced<Family>::value, TracedStepScalars<typename Family::Scalars>,
                       LowpStepScalars<typename Family::Scalars>>;

// θ_t from θ_{t-1} and u_t, rounded as update + apply_updates round them. float32 params: one FMA,
// θ + u_t·(−η), as XLA:CPU contracts the fused loop. bfloat16/float16 params: u_t rounded to their
// dtype (the update's), then (−η)·u_t (scale_by_learning_rate, in float32, rounded once), then
// θ + that: three roundings, and the converts between them keep XLA from contracting an FMA.
template <typename G>
inline typename G::Stored Applied(float u, float minus_lr, typename G::Stored theta) {
  if constexpr (G::kExact) {
    return MulAdd(u, minus_lr, theta);
  } else {
    float step = G::Lift(G::Round(G::Lift(G::Round(u, 0)) * minus_lr, 0));  // (−η)·u_t
    return G::Round(G::Lift(theta) + step, 0);                                // θ_{t-1} + that
  }
}

// θ_t through a momentum trace (Traced), rounded as the chain and apply_updates round it:
// v_t = (−η)·u_t (scale_by_learning_rate: u_t in the update's dtype, the product rounded to it),
// trace_t = v_t + β · trace_{t-1} stored (one FMA, as momentum.cc's), the step trace_t or (Nesterov)
// v_t + β · trace_t from the trace as stored, in the update's dtype, then θ + that (a plain add).
// float32 params: every rounding but the trace's is exact, as in rms.cc's float32 kernel.
template <typename G, typename T, bool kNesterov>
inline typename G::Stored TracedApplied(float u, float minus_lr, float beta,
                                        typename T::Stored& trace, uint32_t seed,
                                        typename G::Stored theta) {
  const float v = G::Lift(G::Round(G::Lift(G::Round(u, 0)) * minus_lr, 0));  // v_t = (−η)·u_t
  trace = T::Round(MulAdd(beta, T::Lift(trace), v), seed);   // trace_t = v_t + β · trace_{t-1}
  const float stored = T::Lift(trace);
  const float step = kNesterov ? MulAdd(beta, stored, v) : stored;
  return G::Round(G::Lift(theta) + G::Lift(G::Round(step, 0)), 0);  // θ_{t-1} + step
}

// Elements [begin, end) of one leaf of a whole step with stored moments: g_t lifted (and, with
// kClip, clipped: float32 params only, the Python falls back otherwise), the moments lifted,
// advanced and each rounded once to its storage, in place; then `Family::Direction(scalars, g_t,
// m)` from the moments as stored (as map_leaves reads them), then θ in place (Applied, or for a
// Traced family TracedApplied, which also advances the trace). The clip is a template switch:
// chosen per element by a select (as Adam's MixedStepRange does), it kept GCC from vectorizing
// these loops (the division sunk into a branch) and the step ran 4-7x slower.
template <typename Family, typename G, bool kClip, typename... Ms, size_t... k>
void LowpStepRange(StepScalarsOf<Family> s, const MixedLeaf& b, size_t begin, size_t end,
                   std::index_sequence<k...>) {
  using Storages = std::tuple<Ms...>;
  constexpr size_t kTrace = sizeof...(Ms) - 1;  // the trace's index, for a Traced family
  const auto* __restrict g = static_cast<const typename G::Stored*>(b.in[0]);
  auto* __restrict theta = static_cast<typename G::Stored*>(b.out[0]);
  std::tuple<typename Ms::Stored*...> m{static_cast<typename Ms::Stored*>(b.out[1 + k])...};
  for (size_t i = begin; i < end; ++i) {
    float g_t = Clipped<float, kClip>(s.clip, G::Lift(g[i]));  // g_t, or (g_t / ‖g‖) · c
    float v[sizeof...(Ms)] = {Ms::Lift(std::get<k>(m)[i])...};
    Family::template Moments<G, Ms...>(s.family, g_t, v);
    auto store = [&](auto moment) {  // the advanced moments (not a trace), rounded and reread
      constexpr size_t j = decltype(moment)::value;
      if constexpr (j < kAdvanced<Family>) {
        using M = std::tuple_element_t<j, Storages>;
        std::get<j>(m)[i] = M::Round(v[j], b.seed[j] + static_cast<uint32_t>(i));
        v[j] = M::Lift(std::get<j>(m)[i]);  // as stored
      }
    };
    (store(std::integral_constant<size_t, k>{}), ...);
    const float u = Family::Direction(s.family, g_t, v);
    if constexpr (IsTraced<Family>::value) {
      theta[i] = TracedApplied<G, std::tuple_element_t<kTrace, Storages>, Family::kTraceNesterov>(
          u, s.minus_lr, s.beta, std::get<kTrace>(m)[i],
          b.seed[kTrace] + static_cast<uint32_t>(i), theta[i]);
    } else {
      theta[i] = Applied<G>(u, s.minus_lr, theta[i]);
    }
  }
}

template <typename Family, typename G, bool kClip, typename... Ms>
void LowpStep(StepScalarsOf<Family> s, const MixedLeaf& b, size_t begin, size_t end) {
  LowpStepRange<Family, G, kClip, Ms...>(s, b, begin, end, std::index_sequence_for<Ms...>{});
}

// A family's optadam.step kernel with stored moments. Operands: float32 scalars
// (LowpStepScalars, then, with `stochastic`, K seeds per leaf), per leaf (g, θ, K moments), g and
// θ of one dtype; results per leaf (θ, K moments), in place. `Family` gives, beyond
// LowpMomentsCall's, Direction(scalars, g, const float m[K]), u_t from the moments as stored.
template <typename Family>
ffi::Future LowpStepCall(ffi::ThreadPool pool, bool stochastic, ffi::RemainingArgs args,
                         ffi::RemainingRets rets) {
  constexpr size_t K = Family::kMoments;
  static_assert(K <= kMaxMoments);
  using Scalars = StepScalarsOf<Family>;
  constexpr size_t kScalars = sizeof(Scalars) / sizeof(float);
  if ((args.size() - 1) % (2 + K) != 0 || (args.size() - 1) / (2 + K) * (1 + K) != rets.size()) {
    return Done(ffi::Error::InvalidArgument("optadam step lowp kernel: operand count"));
  }
  std::vector<MixedLeaf> leaves(rets.size() / (1 + K));
  auto packed = GetScalars<float>(args, kScalars + (stochastic ? K * leaves.size() : 0));
  if (packed.has_error()) return Done(packed.error());
  Scalars s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<ffi::DataType> types;
  const float* seeds = stochastic ? *packed + kScalars : nullptr;
  if (ffi::Error error = GetMixedLeaves(args, rets, 2 + K, 1 + K, K, seeds, leaves, types);
      error.failure()) {
    return Done(error);
  }
  if (leaves.empty()) return Done();
  if (types[0] != types[1] ||
      (types[0] != ffi::DataType::F32 && (s.clip.clip != 0 || s.clip.g_norm != 1))) {
    return Done(ffi::Error::InvalidArgument(
        "optadam step lowp kernel: params in the gradients' dtype; no clip with "
        "bfloat16/float16 params"));
  }
  using Range = void (*)(Scalars, const MixedLeaf&, size_t, size_t);
  Range step = nullptr;
  auto choose = [&](auto bf16) {
    using BF16 = decltype(bf16);
    return WithParamStorage(types[0], [&](auto g) {
      return WithMomentStorages<K, BF16>(types.data() + 2, [&](auto... m) {
        using G = decltype(g);
        step = LowpStep<Family, G, false, decltype(m)...>;
        if constexpr (G::kExact) {  // (no clip with bfloat16/float16 params: checked above)
          if (s.clip.clip != 0) step = LowpStep<Family, G, true, decltype(m)...>;
        }
        return ffi::Error::Success();
      });
    });
  };
  ffi::Error chosen = stochastic ? choose(BFloat16StochasticStorage{}) : choose(BFloat16Storage{});
  if (chosen.failure()) return Done(chosen);
  size_t widths[1 + K];
  for (size_t k = 0; k <= K; ++k) widths[k] = ffi::ByteWidth(types[1 + k]);
  return InParallel<float>(pool, std::move(leaves),
                           [s, step, widths](const MixedLeaf& b, size_t begin, size_t end) {
                             for (size_t k = 0; k <= K; ++k) {  // θ, the moments
                               AliasBytes(b.in[1 + k], b.out[k], widths[k], begin, end);
                             }
                             step(s, b, begin, end);
                           });
}


}  // namespace optadam

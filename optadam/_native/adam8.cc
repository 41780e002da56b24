// 8-bit Adam (and AdamW, NAdam) for optadam.step, one block at a time in one pass: what
// map_leaves does for a leaf whose moments are 8-bit codes (optadam/_leafwise.py: dequantize,
// adam_moments, quantize; the direction from the float32 moments before quantization), followed
// by the chain's decay, learning rate and apply_updates, as adam.py's one-pass recipe writes them.
// The formats are optadam/_quantize.py's (read its module docstring); each function below
// transcribes the Python function of the same name, in the same order, with the rewrites XLA:CPU
// makes to it where they change a rounding (said where they occur). The Python stays the
// definition; tests/test_native_8bit.py holds this file to it: identical codes and scales (where
// XLA contracts the moving averages into the FMAs written here; BUILD_NOTES.md, "8-bit Adam").
//
// Built with -fno-trapping-math (this file only, the pragma below; GCC, where clang's default is
// the same): the flag lets GCC vectorize the encoding loops (their float -> int conversions and
// selects) and changes no result -- it only stops GCC keeping the floating-point exception flags
// as a scalar loop would raise them; NaN and inf still propagate as IEEE says.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "leaves.h"

namespace optadam {
namespace {

// --- the dynamic map (_quantize.decode, _bins, encode, encode_stochastic) ----------------------

constexpr int kMaxKSigned = 6;    // _k_max(signed=True)
constexpr int kMaxKUnsigned = 7;  // _k_max(signed=False)

// 2^k for integer k in -126..127, from the float32 exponent bits (_pow2).
inline float Pow2(int k) {
  uint32_t bits = static_cast<uint32_t>(k + 127) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// The map's value of `code` (_quantize.decode), branch-free so that the decoding loop vectorizes.
inline float Decode(int code, bool is_signed) {
  int n = is_signed ? (code & 127) : code + 1;
  // k = max(bit_length(n) − 1, 0): n = 2^K + j; bit_length(n) − 1 is the exponent of float(n)
  const float n_float = static_cast<float>(n);
  uint32_t n_bits;
  std::memcpy(&n_bits, &n_float, sizeof(n_bits));
  int k = static_cast<int>(n_bits >> 23) - 127;
  k = k > 0 ? k : 0;
  float j = static_cast<float>(n - (1 << k));
  int e = (is_signed ? kMaxKSigned : kMaxKUnsigned) - k;
  // 10^-E (_pow10), float32 constants selected by E compared as a float: GCC turns a chain of
  // integer comparisons into a table lookup, which does not vectorize
  const float exponent = static_cast<float>(e);
  float pow10 = 1.0f;
  pow10 = exponent > 0.5f ? 1e-1f : pow10;
  pow10 = exponent > 1.5f ? 1e-2f : pow10;
  pow10 = exponent > 2.5f ? 1e-3f : pow10;
  pow10 = exponent > 3.5f ? 1e-4f : pow10;
  pow10 = exponent > 4.5f ? 1e-5f : pow10;
  pow10 = exponent > 5.5f ? 1e-6f : pow10;
  pow10 = exponent > 6.5f ? 1e-7f : pow10;
  // value(E, j) = 10^-E · (0.1 + 0.9 · (j + ½) / 2^K); the product with 2^-K is exact, so
  // whether XLA contracts the sum into an FMA does not matter
  float value = pow10 * (0.9f * (j + 0.5f) * Pow2(-k) + 0.1f);
  if (is_signed) {
    float special = code == 128 ? 1.0f : 0.0f;
    return n == 0 ? special : (code >= 128 ? -value : value);
  }
  return code == 0 ? 0.0f : (code == 255 ? 1.0f : value);
}

// ⌊x⌋ converted to int32 as XLA:CPU converts (NaN to 0, out-of-range values saturated), then
// clipped to [lo, hi] (jnp.clip): clamping first in float32 gives the same for every x, and keeps
// the loop vectorizable.
inline int32_t FloorClip(float x, int32_t lo, int32_t hi) {
  float f = std::floor(x);
  f = f > static_cast<float>(hi) ? static_cast<float>(hi) : f;
  f = f < static_cast<float>(lo) ? static_cast<float>(lo) : f;
  f = f != f ? 0.0f : f;  // NaN: 0, inside [lo, hi] for both callers (lo <= 0 <= hi)
  return static_cast<int32_t>(f);
}

// _bins: the decade E of a magnitude a (six comparisons), K = kmax − E, r = a · 10^E.
struct Bins {
  int k;
  float r;
  float width;  // 0.9 · 2^-K: a bin's width in units of r
};
inline Bins GetBins(float a, int kmax) {
  int exponent = (a < 1e-1f) + (a < 1e-2f) + (a < 1e-3f) + (a < 1e-4f) + (a < 1e-5f) + (a < 1e-6f);
  float r = a;  // a · 10^E, selected as _bins does (no table: the loop stays vectorizable)
  r = a < 1e-1f ? a * 1e1f : r;
  r = a < 1e-2f ? a * 1e2f : r;
  r = a < 1e-3f ? a * 1e3f : r;
  r = a < 1e-4f ? a * 1e4f : r;
  r = a < 1e-5f ? a * 1e5f : r;
  r = a < 1e-6f ? a * 1e6f : r;
  int k = kmax - exponent;
  return {k, r, 0.9f * Pow2(-k)};
}

// The signed code of the map value nearest to y, |y| <= 1 (_quantize.encode, signed=True).
inline uint8_t EncodeSigned(float y) {
  float a = std::fabs(y);
  Bins b = GetBins(a, kMaxKSigned);
  int32_t j = FloorClip((b.r - 0.1f) / b.width, 0, (1 << b.k) - 1);
  // width / 2 and width / 5 are exact scalings of 0.9 · 2^-K's constant (XLA folds them so):
  // the midpoints round the same either way
  bool last = b.k == kMaxKSigned - 6;
  float midpoint = last ? (0.1f + b.width / 2) / 2 : 0.1f + b.width / 5;
  // n = 2^K + j − (j == 0 and r < midpoint), the condition as an all-ones mask (a bool in that
  // sum keeps GCC from vectorizing the loop)
  const int32_t below = -static_cast<int32_t>(b.r < midpoint);
  const int32_t first = -static_cast<int32_t>(j == 0);
  int32_t n = (1 << b.k) + j + (below & first);
  const float near_one = static_cast<float>(1.0 - 0.225 * std::ldexp(1.0, -kMaxKSigned));
  // n = 128 (1.0) if nearer 1.0 and y > 0; then the sign bit if y < 0 and n > 0 (as masks)
  const int32_t one = -static_cast<int32_t>(a > near_one) & -static_cast<int32_t>(y > 0);
  n = (one & 128) | (~one & n);
  n |= -static_cast<int32_t>(y < 0) & -static_cast<int32_t>(n > 0) & 128;
  return static_cast<uint8_t>(n);
}

// Unsigned code for a in [0, 1] whose square is unbiased, `uniform` in [0, 1) choosing between
// the map values around a (_quantize.encode_stochastic).
inline uint8_t EncodeStochastic(float a, float uniform) {
  Bins b = GetBins(a, kMaxKUnsigned);
  int32_t top = (1 << b.k) - 1;
  int32_t j = FloorClip((b.r - 0.1f) / b.width - 0.5f, -1, top);  // centre <= r
  // lo = 0.1 + (j + ½) · width: XLA:CPU contracts it into one FMA
  float lo = MulAdd(static_cast<float>(j) + 0.5f, b.width, 0.1f);
  lo = j >= 0 ? lo : (b.k == 1 ? 0.0f : 0.1f - b.width / 10);
  float hi = j < top ? lo + b.width : (b.k == 7 ? 1.0f : 1 + 2.5f * b.width);
  hi = j >= 0 ? hi : 0.1f + b.width / 2;
  // up = uniform · (hi² − lo²) < r² − lo²: XLA:CPU contracts each x² − lo² into fma(x, x, −lo²)
  float lo2 = lo * lo;
  bool up = uniform * MulAdd(hi, hi, -lo2) < MulAdd(b.r, b.r, -lo2);
  return static_cast<uint8_t>((1 << b.k) + j - 1 + up);  // code n − 1 of the centre at or below
}

// --- random bits (_quantize._mix, random_bits, _uniform) -------------------------------------

// Mix: lowbias32, as _mix (leaves.h).

// The uniform in [0, 1) of the element at flat position `index` of an array seeded `seed`.
inline float Uniform(uint32_t index, uint32_t seed) {
  return static_cast<float>(Mix(index + seed) >> 8) * 0x1p-24f;
}

// --- Adam's element (adam.cc's AdamElement, the same lines: adam.py's scale_by_adam) ------------

template <typename T>
struct AdamScalars {
  T b1, one_minus_b1, b2, one_minus_b2, eps, eps_root;
  T c1, c2, c1_next;  // bias corrections 1 − β1^t, 1 − β2^t, 1 − β1^(t+1)
};

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

// optadam.step's scalars, as adam.py's one-pass recipe lists them: the global-norm clip in front
// (leaves.h; "no clip" without one), Adam's, −η, λ.
struct StepScalars {
  ClipScalars<float> clip;
  AdamScalars<float> adam;
  float minus_lr, weight_decay;
};
constexpr size_t kStepScalars = sizeof(StepScalars) / sizeof(float);

// --- one leaf -------------------------------------------------------------------------------

// One leaf's buffers. Results share their operands' buffers when XLA aliases them (the state
// donated); otherwise each block is copied over first (CopyUnlessAliased) and updated there.
struct Leaf8 {
  size_t n = 0;                // elements
  size_t row = 0;              // elements per row (_quantize._layout)
  size_t blocks_per_row = 0;   // ⌈row / block_size⌉: the last one of a row may be shorter
  uint32_t seed = 0;           // the second moment's array_seed
  const float* g = nullptr;
  const float* theta_in = nullptr;
  const uint8_t* mu_codes_in = nullptr;
  const float* mu_scales_in = nullptr;
  const uint8_t* nu_codes_in = nullptr;
  const float* nu_scales_in = nullptr;
  float* theta = nullptr;
  uint8_t* mu_codes = nullptr;
  float* mu_scales = nullptr;
  uint8_t* nu_codes = nullptr;
  float* nu_scales = nullptr;
};

// max(x, 0) as jnp.maximum: a NaN stays NaN.
inline float NonNegative(float x) { return std::isnan(x) ? x : (x > 0.0f ? x : 0.0f); }

// max_b |x| as quantize's reduce_max over abs computes it in XLA:CPU's step, where the reduction
// runs in YNNPACK: NaN elements are skipped (a block of NaN only has the reduction's initial value
// −inf), not propagated as jnp.max says -- so a NaN gradient leaves its block's other moments
// readable. (One case is not mirrored: there a NaN in the block's last element gives −inf, an
// artifact of YNNPACK's lane order; BUILD_NOTES.md.) The bits of |x| compared as integers order
// every non-negative float, NaN above inf, and an integer maximum vectorizes.
inline float MaxAbs(const float* __restrict x, size_t len) {
  int32_t most = -1;  // no number yet
  for (size_t i = 0; i < len; ++i) {
    int32_t bits;
    std::memcpy(&bits, &x[i], sizeof(bits));
    bits &= 0x7FFFFFFF;
    bits = bits > 0x7F800000 ? -1 : bits;  // NaN: skipped
    most = bits > most ? bits : most;
  }
  if (most < 0) return -std::numeric_limits<float>::infinity();
  float out;
  std::memcpy(&out, &most, sizeof(out));
  return out;
}

// The reciprocal quantize divides a block by: XLA:CPU rewrites blocks / scale into
// blocks · (1 / scale), one division per block.
inline float InverseScale(float scale) { return 1.0f / (scale > 0.0f ? scale : 1.0f); }

// Makes `len` elements of `out` at `at` hold `in`'s, so the block is updated in place: nothing to
// do when XLA aliased the two (a donated state), a copy otherwise.
template <typename T>
inline void CopyUnlessAliased(const T* in, T* out, size_t at, size_t len) {
  if (in != out) std::memcpy(out + at, in + at, len * sizeof(T));
}

// One block of `len` elements starting at flat position `start`, scales at `block`: the step of
// every element (map_leaves: dequantize, adam_moments, the direction from the float32 moments;
// then the chain and apply_updates), then the block's new scales, then its codes. `mu` and
// `root` hold the block's new m and √v between the passes. Each pass is a vectorizable loop.
// kUpdate: tx.update's instead -- the direction u_t written to `leaf.theta` (the update buffer),
// no clip, decay or learning rate (the chain applies them in XLA).
template <bool kNesterov, bool kDecay, bool kClip, bool kUpdate = false>
void StepBlock(const StepScalars& scalars, const Leaf8& leaf, size_t start, size_t len,
               size_t block, float* __restrict mu, float* __restrict root) {
  const StepScalars s = scalars;
  if (!kUpdate) CopyUnlessAliased(leaf.theta_in, leaf.theta, start, len);
  CopyUnlessAliased(leaf.mu_codes_in, leaf.mu_codes, start, len);
  CopyUnlessAliased(leaf.nu_codes_in, leaf.nu_codes, start, len);
  const float mu_scale = leaf.mu_scales_in[block], nu_scale = leaf.nu_scales_in[block];
  const float* __restrict g = leaf.g + start;
  float* __restrict theta = leaf.theta + start;
  uint8_t* __restrict mu_codes = leaf.mu_codes + start;
  uint8_t* __restrict nu_codes = leaf.nu_codes + start;
  for (size_t i = 0; i < len; ++i) {
    float m = Decode(mu_codes[i], true) * mu_scale;  // m_{t-1}, dequantized
    float r = Decode(nu_codes[i], false) * nu_scale;
    float v = r * r;  // v_{t-1}, dequantized: the codes store √v
    float g_t = Clipped<float, kClip>(s.clip, g[i]);  // g_t, or (g_t / ‖g‖) · c when clipping
    float u = AdamElement<float, kNesterov>(s.adam, g_t, m, v);
    if (kUpdate) {
      theta[i] = u;  // tx.update's u_t
    } else {
      if (kDecay) u = MulAdd(s.weight_decay, theta[i], u);  // u_t + λ·θ_{t-1}
      theta[i] = MulAdd(u, s.minus_lr, theta[i]);           // θ_t = θ_{t-1} + u_t·(−η)
    }
    mu[i] = m;
    root[i] = std::sqrt(NonNegative(v));  // quantize stores √max(v_t, 0)
  }
  const float mu_max = MaxAbs(mu, len), root_max = MaxAbs(root, len);
  leaf.mu_scales[block] = mu_max;    // s_b = max_b |m|
  leaf.nu_scales[block] = root_max;  // s_b = max_b √v
  const float mu_inverse = InverseScale(mu_max), root_inverse = InverseScale(root_max);
  const uint32_t seed = leaf.seed, first = static_cast<uint32_t>(start);
  for (size_t i = 0; i < len; ++i) {
    mu_codes[i] = EncodeSigned(mu[i] * mu_inverse);
    float uniform = Uniform(first + static_cast<uint32_t>(i), seed);
    nu_codes[i] = EncodeStochastic(root[i] * root_inverse, uniform);
  }
}

// The blocks of `leaf` that start in elements [begin, end): a block belongs to the range holding
// its first element, so ranges split at any element and every block is done exactly once.
template <bool kNesterov, bool kDecay, bool kClip, bool kUpdate = false>
void StepRange(const StepScalars& s, size_t block_size, const Leaf8& leaf, size_t begin,
               size_t end) {
  std::vector<float> scratch(2 * block_size);
  for (size_t row = begin / leaf.row; row * leaf.row < end; ++row) {
    const size_t row_start = row * leaf.row;
    for (size_t b = 0; b < leaf.blocks_per_row; ++b) {
      const size_t start = row_start + b * block_size;
      if (start < begin) continue;
      if (start >= end) break;
      const size_t len = std::min(block_size, leaf.row - b * block_size);
      StepBlock<kNesterov, kDecay, kClip, kUpdate>(s, leaf, start, len, row * leaf.blocks_per_row + b,
                                   scratch.data(), scratch.data() + block_size);
    }
  }
}

template <typename T>
ffi::ErrorOr<T*> Data(ffi::AnyBuffer buffer, ffi::DataType dtype, size_t count) {
  if (buffer.element_type() != dtype || buffer.element_count() != count) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("optadam adam8 kernel: operand of the wrong dtype or size"));
  }
  return static_cast<T*>(buffer.untyped_data());
}

// Per leaf, the step's operands: g, θ, mu codes, mu scales, nu codes, nu scales, seed; its
// results: θ, mu codes, mu scales, nu codes, nu scales. tx.update's have no θ operand, and u in
// θ's place among the results.
constexpr size_t kIns = 7;
constexpr size_t kOuts = 5;

// Leaf `leaf`'s operands and results (`update`: tx.update's); its row length from its shape as
// _quantize._layout takes it: the fewest last dimensions whose product reaches a block.
ffi::Error GetLeaf8(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets, size_t leaf,
                    size_t block_size, bool update, Leaf8& out) {
  const size_t ins = update ? kIns - 1 : kIns;
  // operand k of the step's list; tx.update's lacks θ (k = 1), so later ones come one earlier
  auto arg = [&](size_t k) {
    return args.get<ffi::AnyBuffer>(1 + leaf * ins + (update && k > 1 ? k - 1 : k));
  };
  auto ret = [&](size_t k) { return rets.get<ffi::AnyBuffer>(leaf * kOuts + k); };
  for (size_t k = 0; k < kIns; ++k) {
    if (update && k == 1) continue;
    if (arg(k).has_error()) return arg(k).error();
  }
  for (size_t k = 0; k < kOuts; ++k) {
    if (ret(k).has_error()) return ret(k).error();
  }
  auto dims = arg(0)->dimensions();
  out.n = arg(0)->element_count();
  out.row = 1;
  for (size_t d = dims.size(); d > 0 && (out.row < block_size || d == dims.size()); --d) {
    out.row *= static_cast<size_t>(dims[d - 1]);
  }
  if (out.n == 0 || out.row == 0) {
    return ffi::Error::InvalidArgument("optadam adam8 kernel: empty leaf");
  }
  out.blocks_per_row = (out.row + block_size - 1) / block_size;
  const size_t n = out.n, blocks = n / out.row * out.blocks_per_row;
  const auto F32 = ffi::DataType::F32, U8 = ffi::DataType::U8;
  ffi::Error error = ffi::Error::Success();
  auto take = [&error](auto found, auto& to) {  // the first error wins
    if (found.has_error()) {
      if (error.success()) error = found.error();
    } else {
      to = *found;
    }
  };
  const uint32_t* seed = nullptr;
  take(Data<const float>(*arg(0), F32, n), out.g);
  if (!update) take(Data<const float>(*arg(1), F32, n), out.theta_in);
  take(Data<const uint8_t>(*arg(2), U8, n), out.mu_codes_in);
  take(Data<const float>(*arg(3), F32, blocks), out.mu_scales_in);
  take(Data<const uint8_t>(*arg(4), U8, n), out.nu_codes_in);
  take(Data<const float>(*arg(5), F32, blocks), out.nu_scales_in);
  take(Data<const uint32_t>(*arg(6), ffi::DataType::U32, 1), seed);
  take(Data<float>(**ret(0), F32, n), out.theta);
  take(Data<uint8_t>(**ret(1), U8, n), out.mu_codes);
  take(Data<float>(**ret(2), F32, blocks), out.mu_scales);
  take(Data<uint8_t>(**ret(3), U8, n), out.nu_codes);
  take(Data<float>(**ret(4), F32, blocks), out.nu_scales);
  if (error.failure()) return error;
  out.seed = *seed;
  return ffi::Error::Success();
}

// Every leaf of a call (`update`: tx.update's), after checking the operand count and block size.
ffi::Error GetLeaves8(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets,
                      int64_t block_size, bool update, std::vector<Leaf8>& leaves) {
  const size_t ins = update ? kIns - 1 : kIns;
  if (block_size < 1 || (args.size() - 1) % ins != 0 ||
      (args.size() - 1) / ins * kOuts != rets.size()) {
    return ffi::Error::InvalidArgument("optadam adam8 kernel: operand count or block size");
  }
  leaves.resize(rets.size() / kOuts);
  for (size_t leaf = 0; leaf < leaves.size(); ++leaf) {
    ffi::Error error =
        GetLeaf8(args, rets, leaf, static_cast<size_t>(block_size), update, leaves[leaf]);
    if (error.failure()) return error;
  }
  return ffi::Error::Success();
}

// Operands: the scalars (float32, StepScalars), then per leaf (g, θ, mu codes, mu scales, nu codes, nu scales,
// seed); results per leaf (θ, mu codes, mu scales, nu codes, nu scales), in place. Split over
// XLA's thread pool as the other kernels are (InParallel), a block never split between ranges.
ffi::Future Adam8Step(ffi::ThreadPool pool, bool nesterov, bool decay, int64_t block_size,
                      ffi::RemainingArgs args, ffi::RemainingRets rets) {
  auto packed = GetScalars<float>(args, kStepScalars);
  if (packed.has_error()) return Done(packed.error());
  StepScalars s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<Leaf8> leaves;
  if (ffi::Error error = GetLeaves8(args, rets, block_size, false, leaves); error.failure()) {
    return Done(error);
  }
  const size_t bs = static_cast<size_t>(block_size);
  using Range = void (*)(const StepScalars&, size_t, const Leaf8&, size_t, size_t);
  // [nesterov][decay][clip]; whether to clip is known only now, from this step's norm
  static constexpr Range kRanges[2][2][2] = {
      {{StepRange<false, false, false>, StepRange<false, false, true>},
       {StepRange<false, true, false>, StepRange<false, true, true>}},
      {{StepRange<true, false, false>, StepRange<true, false, true>},
       {StepRange<true, true, false>, StepRange<true, true, true>}}};
  Range step = kRanges[nesterov][decay][s.clip.clip != 0];
  return InParallel<float>(pool, std::move(leaves),
                           [s, bs, step](const Leaf8& leaf, size_t begin, size_t end) {
                             step(s, bs, leaf, begin, end);
                           });
}

// tx.update's kernel: operands the scalars (float32 AdamScalars), then per leaf (g, mu codes, mu
// scales, nu codes, nu scales, seed); results per leaf (u, mu codes, mu scales, nu codes, nu
// scales), the moments in place. The direction comes from the float32 moments before their
// quantization (map_leaves' order for 8-bit state), which XLA cannot recompute from the codes, so
// unlike the other update kernels this one writes u.
ffi::Future Adam8Update(ffi::ThreadPool pool, bool nesterov, int64_t block_size,
                        ffi::RemainingArgs args, ffi::RemainingRets rets) {
  auto packed = GetScalars<float>(args, sizeof(AdamScalars<float>) / sizeof(float));
  if (packed.has_error()) return Done(packed.error());
  StepScalars s{};  // no clip (clip = 0), decay or learning rate: only Adam's are used
  std::memcpy(&s.adam, *packed, sizeof(s.adam));
  std::vector<Leaf8> leaves;
  if (ffi::Error error = GetLeaves8(args, rets, block_size, true, leaves); error.failure()) {
    return Done(error);
  }
  const size_t bs = static_cast<size_t>(block_size);
  using Range = void (*)(const StepScalars&, size_t, const Leaf8&, size_t, size_t);
  Range update = nesterov ? StepRange<true, false, false, true> : StepRange<false, false, false, true>;
  return InParallel<float>(pool, std::move(leaves),
                           [s, bs, update](const Leaf8& leaf, size_t begin, size_t end) {
                             update(s, bs, leaf, begin, end);
                           });
}

}  // namespace
}  // namespace optadam

XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_adam8_step_f32, optadam::Adam8Step,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("decay")
                                  .Attr<int64_t>("block_size")
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_adam8_f32, optadam::Adam8Update,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("nesterov")
                                  .Attr<int64_t>("block_size")
                                  .RemainingArgs()
                                  .RemainingRets());

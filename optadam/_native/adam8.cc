// 8-bit Adam (and AdamW, NAdam) for optadam.step, one block at a time in one pass: what
// map_leaves does for a leaf whose moments are 8-bit codes (optadam/_leafwise.py: dequantize,
// adam_moments, quantize; the direction from the float32 moments before quantization), followed
// by the chain's decay, learning rate and apply_updates, as adam.py's one-pass recipe writes them.
// The formats are optadam/_quantize.py's (read its module docstring); each function below
// transcribes the Python function of the same name, in the same order, with the rewrites XLA:CPU
// makes to it where they change a rounding (said where they occur). The Python stays the
// definition; tests/test_native_8bit.py holds this file to it: identical codes and scales.
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

// float32(10^-e) for e = 0..7, as _pow10(e, -1) selects them (Python floats rounded once).
constexpr float kPow10Down[8] = {1.0f, 1e-1f, 1e-2f, 1e-3f, 1e-4f, 1e-5f, 1e-6f, 1e-7f};
// float32(10^e), exact: the factor _bins scales a decade's magnitudes by.
constexpr float kPow10Up[7] = {1.0f, 1e1f, 1e2f, 1e3f, 1e4f, 1e5f, 1e6f};

// The map's value of `code` (_quantize.decode).
inline float Decode(int code, bool is_signed) {
  int n = is_signed ? (code & 127) : code + 1;
  int k = n == 0 ? 0 : 31 - __builtin_clz(static_cast<unsigned>(n));  // bit_length(n) − 1
  float j = static_cast<float>(n - (1 << k));
  int kmax = is_signed ? kMaxKSigned : kMaxKUnsigned;
  // value(E, j) = 10^-E · (0.1 + 0.9 · (j + ½) / 2^K); the product with 2^-K is exact, so
  // whether XLA contracts the sum into an FMA does not matter
  float value = kPow10Down[kmax - k] * (0.9f * (j + 0.5f) * Pow2(-k) + 0.1f);
  if (is_signed) {
    if (n == 0) return code == 128 ? 1.0f : 0.0f;
    return code >= 128 ? -value : value;
  }
  return code == 0 ? 0.0f : (code == 255 ? 1.0f : value);
}

// Both maps, one value per code, built once from Decode.
struct Maps {
  float signed_values[256];
  float unsigned_values[256];
  Maps() {
    for (int c = 0; c < 256; ++c) {
      signed_values[c] = Decode(c, true);
      unsigned_values[c] = Decode(c, false);
    }
  }
};
const Maps kMaps;

// float -> int32 as XLA:CPU converts: NaN to 0, out-of-range values saturated.
inline int32_t ToInt32(float x) {
  if (std::isnan(x)) return 0;
  if (x >= 2147483648.0f) return std::numeric_limits<int32_t>::max();
  if (x < -2147483648.0f) return std::numeric_limits<int32_t>::min();
  return static_cast<int32_t>(x);
}

inline int32_t Clip(int32_t x, int32_t lo, int32_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

// _bins: the decade E of a magnitude a (six comparisons), K = kmax − E, r = a · 10^E.
struct Bins {
  int k;
  float r;
  float width;  // 0.9 · 2^-K: a bin's width in units of r
};
inline Bins GetBins(float a, int kmax) {
  int exponent = (a < 1e-1f) + (a < 1e-2f) + (a < 1e-3f) + (a < 1e-4f) + (a < 1e-5f) + (a < 1e-6f);
  float r = exponent == 0 ? a : a * kPow10Up[exponent];
  int k = kmax - exponent;
  return {k, r, 0.9f * Pow2(-k)};
}

// The signed code of the map value nearest to y, |y| <= 1 (_quantize.encode, signed=True).
inline uint8_t EncodeSigned(float y) {
  float a = std::fabs(y);
  Bins b = GetBins(a, kMaxKSigned);
  int32_t j = Clip(ToInt32(std::floor((b.r - 0.1f) / b.width)), 0, (1 << b.k) - 1);
  // width / 2 and width / 5 are exact scalings of 0.9 · 2^-K's constant (XLA folds them so):
  // the midpoints round the same either way
  bool last = b.k == kMaxKSigned - 6;
  float midpoint = last ? (0.1f + b.width / 2) / 2 : 0.1f + b.width / 5;
  int32_t n = (1 << b.k) + j - ((j == 0) & (b.r < midpoint));
  const float near_one = static_cast<float>(1.0 - 0.225 * std::ldexp(1.0, -kMaxKSigned));
  bool one = a > near_one;
  n = (one && y > 0) ? 128 : n;
  n = (y < 0 && n > 0) ? (n | 128) : n;
  return static_cast<uint8_t>(n);
}

// Unsigned code for a in [0, 1] whose square is unbiased, `uniform` in [0, 1) choosing between
// the map values around a (_quantize.encode_stochastic).
inline uint8_t EncodeStochastic(float a, float uniform) {
  Bins b = GetBins(a, kMaxKUnsigned);
  int32_t top = (1 << b.k) - 1;
  int32_t j = Clip(ToInt32(std::floor((b.r - 0.1f) / b.width - 0.5f)), -1, top);  // centre <= r
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

// lowbias32 (C. Wellons), as _mix.
inline uint32_t Mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

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

// optadam.step's scalars, as adam.py's one-pass recipe lists them: Adam's, −η, λ.
struct StepScalars {
  AdamScalars<float> adam;
  float minus_lr, weight_decay;
};
constexpr size_t kStepScalars = sizeof(StepScalars) / sizeof(float);

// --- one leaf -------------------------------------------------------------------------------

// One leaf's buffers. Results may share their operands' buffers (XLA aliases them when the
// state is donated): each block reads all it needs before it writes, so no copy is needed.
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

// max(m, |x|) as XLA's reduce_max over abs: a NaN wins and stays.
inline float MaxAbs(float m, float x) {
  float a = std::fabs(x);
  return (a > m || std::isnan(a)) ? a : m;
}

// max(x, 0) as jnp.maximum: a NaN stays NaN.
inline float NonNegative(float x) { return std::isnan(x) ? x : (x > 0.0f ? x : 0.0f); }

// The reciprocal quantize divides a block by: XLA:CPU rewrites blocks / scale into
// blocks · (1 / scale), one division per block.
inline float InverseScale(float scale) { return 1.0f / (scale > 0.0f ? scale : 1.0f); }

// One block of `len` elements starting at flat position `start`, scales at `block`: the step of
// every element, then the block's new scales, then its codes. `mu` and `root` hold the block's
// new m and √v between the two passes.
template <bool kNesterov, bool kDecay>
void StepBlock(const StepScalars& s, const Leaf8& leaf, size_t start, size_t len, size_t block,
               float* __restrict mu, float* __restrict root) {
  const float mu_scale = leaf.mu_scales_in[block], nu_scale = leaf.nu_scales_in[block];
  float mu_max = 0.0f, root_max = 0.0f;
  for (size_t i = 0; i < len; ++i) {
    const size_t at = start + i;
    float m = kMaps.signed_values[leaf.mu_codes_in[at]] * mu_scale;  // dequantize m_{t-1}
    float r = kMaps.unsigned_values[leaf.nu_codes_in[at]] * nu_scale;
    float v = r * r;  // dequantize v_{t-1}: the codes store √v
    float u = AdamElement<float, kNesterov>(s.adam, leaf.g[at], m, v);
    if (kDecay) u = MulAdd(s.weight_decay, leaf.theta_in[at], u);  // u_t + λ·θ_{t-1}
    leaf.theta[at] = MulAdd(u, s.minus_lr, leaf.theta_in[at]);     // θ_t = θ_{t-1} + u_t·(−η)
    mu[i] = m;
    root[i] = std::sqrt(NonNegative(v));  // quantize stores √max(v_t, 0)
    mu_max = MaxAbs(mu_max, m);
    root_max = MaxAbs(root_max, root[i]);
  }
  leaf.mu_scales[block] = mu_max;  // s_b = max_b |m|
  leaf.nu_scales[block] = root_max;  // s_b = max_b √v
  const float mu_inverse = InverseScale(mu_max), root_inverse = InverseScale(root_max);
  for (size_t i = 0; i < len; ++i) {
    leaf.mu_codes[start + i] = EncodeSigned(mu[i] * mu_inverse);
    float uniform = Uniform(static_cast<uint32_t>(start + i), leaf.seed);
    leaf.nu_codes[start + i] = EncodeStochastic(root[i] * root_inverse, uniform);
  }
}

// The blocks of `leaf` that start in elements [begin, end): a block belongs to the range holding
// its first element, so ranges split at any element and every block is done exactly once.
template <bool kNesterov, bool kDecay>
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
      StepBlock<kNesterov, kDecay>(s, leaf, start, len, row * leaf.blocks_per_row + b,
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

constexpr size_t kIns = 7;   // g, θ, mu codes, mu scales, nu codes, nu scales, seed
constexpr size_t kOuts = 5;  // θ, mu codes, mu scales, nu codes, nu scales

// Leaf `leaf`'s operands and results; its row length from its shape as _quantize._layout takes
// it: the fewest last dimensions whose product reaches a block.
ffi::Error GetLeaf8(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets, size_t leaf,
                    size_t block_size, Leaf8& out) {
  auto arg = [&](size_t k) { return args.get<ffi::AnyBuffer>(1 + leaf * kIns + k); };
  auto ret = [&](size_t k) { return rets.get<ffi::AnyBuffer>(leaf * kOuts + k); };
  for (size_t k = 0; k < kIns; ++k) {
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
  take(Data<const float>(*arg(1), F32, n), out.theta_in);
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

// Operands: the scalars (float32), then per leaf (g, θ, mu codes, mu scales, nu codes, nu scales,
// seed); results per leaf (θ, mu codes, mu scales, nu codes, nu scales), in place. Split over
// XLA's thread pool as the other kernels are (InParallel), a block never split between ranges.
ffi::Future Adam8Step(ffi::ThreadPool pool, bool nesterov, bool decay, int64_t block_size,
                      ffi::RemainingArgs args, ffi::RemainingRets rets) {
  auto packed = GetScalars<float>(args, kStepScalars);
  if (packed.has_error()) return Done(packed.error());
  StepScalars s;
  std::memcpy(&s, *packed, sizeof(s));
  if (block_size < 1 || (args.size() - 1) % kIns != 0 ||
      (args.size() - 1) / kIns * kOuts != rets.size()) {
    return Done(ffi::Error::InvalidArgument("optadam adam8 kernel: operand count or block size"));
  }
  const size_t bs = static_cast<size_t>(block_size);
  std::vector<Leaf8> leaves(rets.size() / kOuts);
  for (size_t leaf = 0; leaf < leaves.size(); ++leaf) {
    if (ffi::Error error = GetLeaf8(args, rets, leaf, bs, leaves[leaf]); error.failure()) {
      return Done(error);
    }
  }
  auto step = nesterov ? (decay ? StepRange<true, true> : StepRange<true, false>)
                       : (decay ? StepRange<false, true> : StepRange<false, false>);
  return InParallel<float>(pool, std::move(leaves),
                           [s, bs, step](const Leaf8& leaf, size_t begin, size_t end) {
                             step(s, bs, leaf, begin, end);
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

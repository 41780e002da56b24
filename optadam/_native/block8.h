// Block-wise 8-bit moments (state_bits=8) in one pass, shared by the families' 8-bit kernels
// (adam8.cc for Adam, AdamW and NAdam; the generic Call8 below for RAdam, AMSGrad, Momentum
// and RMSProp): the dynamic map's codec, one leaf's codes and scales, and the walk over its
// blocks. The formats are optadam/_quantize.py's (read its module docstring); each codec function
// transcribes the Python function of the same name, in the same order, with the rewrites XLA:CPU
// makes to it where they change a rounding (said where they occur). The Python stays the
// definition; tests/test_native_8bit.py holds the kernels to it: identical codes and scales.
//
// The encoding loops vectorize only with -fno-trapping-math (a build flag, _native/__init__.py):
// it lets GCC convert floats to ints and select without keeping the floating-point exception
// flags a scalar loop would raise; it changes no result (NaN and inf still propagate as IEEE says).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "leaves.h"
#include "lowp.h"

namespace optadam {

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

// max(x, 0) as jnp.maximum: a NaN stays NaN.
inline float NonNegative(float x) { return Select(!(x <= 0.0f), x, 0.0f); }  // NaN: !(NaN <= 0)

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


// --- one leaf -------------------------------------------------------------------------------

// One leaf's buffers, K moments in 8-bit codes. Results share their operands' buffers when XLA
// aliases them (the state donated); otherwise each block is copied over first (CopyUnlessAliased)
// and updated there.
template <size_t K>
struct Leaf8 {
  size_t n = 0;               // elements
  size_t row = 0;             // elements per row (_quantize._layout)
  size_t blocks_per_row = 0;  // ⌈row / block_size⌉: the last one of a row may be shorter
  const float* g = nullptr;
  const float* theta_in = nullptr;
  float* theta = nullptr;  // θ, or tx.update's u
  const uint8_t* codes_in[K] = {};
  const float* scales_in[K] = {};
  uint8_t* codes[K] = {};
  float* scales[K] = {};
  uint32_t seed[K] = {};  // each kRoot moment's array_seed
};

template <typename T>
ffi::ErrorOr<T*> Data(ffi::AnyBuffer buffer, ffi::DataType dtype, size_t count) {
  if (buffer.element_type() != dtype || buffer.element_count() != count) {
    return ffi::Unexpected(
        ffi::Error::InvalidArgument("optadam 8-bit kernel: operand of the wrong dtype or size"));
  }
  return static_cast<T*>(buffer.untyped_data());
}

// The operands of one leaf: g, θ (not in tx.update's), each moment's codes and scales, then the
// seed of each kRoot moment in order; its results: θ (or u), each moment's codes and scales.
template <size_t K>
constexpr size_t Ins8(const Format8* formats, bool update) {
  size_t seeds = 0;
  for (size_t k = 0; k < K; ++k) seeds += formats[k] == kRoot;
  return (update ? 1 : 2) + 2 * K + seeds;
}

// Leaf `leaf`'s operands and results (`update`: tx.update's); its row length from its shape as
// _quantize._layout takes it: the fewest last dimensions whose product reaches a block.
template <size_t K>
ffi::Error GetLeaf8(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets, size_t leaf,
                    size_t block_size, const Format8* formats, bool update, Leaf8<K>& out) {
  const size_t ins = Ins8<K>(formats, update), outs = 1 + 2 * K, lead = update ? 1 : 2;
  std::vector<ffi::AnyBuffer> in, result;
  for (size_t k = 0; k < ins; ++k) {
    auto buffer = args.get<ffi::AnyBuffer>(1 + leaf * ins + k);
    if (buffer.has_error()) return buffer.error();
    in.push_back(*buffer);
  }
  for (size_t k = 0; k < outs; ++k) {
    auto buffer = rets.get<ffi::AnyBuffer>(leaf * outs + k);
    if (buffer.has_error()) return buffer.error();
    result.push_back(**buffer);
  }
  auto dims = in[0].dimensions();
  out.n = in[0].element_count();
  out.row = 1;
  for (size_t d = dims.size(); d > 0 && (out.row < block_size || d == dims.size()); --d) {
    out.row *= static_cast<size_t>(dims[d - 1]);
  }
  if (out.n == 0 || out.row == 0) {
    return ffi::Error::InvalidArgument("optadam 8-bit kernel: empty leaf");
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
  take(Data<const float>(in[0], F32, n), out.g);
  if (!update) take(Data<const float>(in[1], F32, n), out.theta_in);
  take(Data<float>(result[0], F32, n), out.theta);
  size_t seed = lead + 2 * K;
  for (size_t k = 0; k < K; ++k) {
    take(Data<const uint8_t>(in[lead + 2 * k], U8, n), out.codes_in[k]);
    take(Data<const float>(in[lead + 2 * k + 1], F32, blocks), out.scales_in[k]);
    take(Data<uint8_t>(result[1 + 2 * k], U8, n), out.codes[k]);
    take(Data<float>(result[2 + 2 * k], F32, blocks), out.scales[k]);
    if (formats[k] == kRoot) {
      const uint32_t* bits = nullptr;
      take(Data<const uint32_t>(in[seed++], ffi::DataType::U32, 1), bits);
      if (bits != nullptr) out.seed[k] = *bits;
    }
  }
  return error;
}

// Every leaf of a call (`update`: tx.update's), after checking the operand count and block size.
template <size_t K>
ffi::Error GetLeaves8(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets,
                      int64_t block_size, const Format8* formats, bool update,
                      std::vector<Leaf8<K>>& leaves) {
  const size_t ins = Ins8<K>(formats, update), outs = 1 + 2 * K;
  if (block_size < 1 || (args.size() - 1) % ins != 0 ||
      (args.size() - 1) / ins * outs != rets.size()) {
    return ffi::Error::InvalidArgument("optadam 8-bit kernel: operand count or block size");
  }
  leaves.resize(rets.size() / outs);
  for (size_t leaf = 0; leaf < leaves.size(); ++leaf) {
    ffi::Error error = GetLeaf8(args, rets, leaf, static_cast<size_t>(block_size), formats, update,
                                leaves[leaf]);
    if (error.failure()) return error;
  }
  return ffi::Error::Success();
}

// The blocks of `leaf` that start in elements [begin, end), each through `block(start, len,
// index)`: a block belongs to the range holding its first element, so ranges split at any element
// and every block is done exactly once.
template <size_t K, typename Block>
void ForBlocks(size_t block_size, const Leaf8<K>& leaf, size_t begin, size_t end, Block&& block) {
  for (size_t row = begin / leaf.row; row * leaf.row < end; ++row) {
    const size_t row_start = row * leaf.row;
    for (size_t b = 0; b < leaf.blocks_per_row; ++b) {
      const size_t start = row_start + b * block_size;
      if (start < begin) continue;
      if (start >= end) break;
      block(start, std::min(block_size, leaf.row - b * block_size), row * leaf.blocks_per_row + b);
    }
  }
}

// A block's new moment (the `len` floats in `x`, √v already for kRoot) as codes and scale:
// s_b = max_b |x|, then each x / s_b encoded (kRoot: with its element's random bits).
template <Format8 kFormat>
inline void EncodeBlock(const float* __restrict x, size_t len, uint32_t seed, uint32_t first,
                        uint8_t* __restrict codes, float* scale) {
  const float most = MaxAbs(x, len);
  *scale = most;
  const float inverse = InverseScale(most);
  for (size_t i = 0; i < len; ++i) {
    if constexpr (kFormat == kSigned) {
      codes[i] = EncodeSigned(x[i] * inverse);
    } else {
      codes[i] = EncodeStochastic(x[i] * inverse, Uniform(first + static_cast<uint32_t>(i), seed));
    }
  }
}

// --- a family's step and update with 8-bit moments (optadam.step, tx.update) ---------------

// Every moment of a block encoded (EncodeBlock), from `scratch`'s K rows of block_size floats.
template <typename Family, size_t... k>
inline void EncodeBlocks(const Leaf8<Family::kMoments>& leaf, const float* scratch,
                         size_t block_size, size_t start, size_t len, size_t block,
                         std::index_sequence<k...>) {
  const uint32_t first = static_cast<uint32_t>(start);
  (EncodeBlock<Family::kFormats[k]>(scratch + k * block_size, len, leaf.seed[k], first,
                                    leaf.codes[k] + start, leaf.scales[k] + block),
   ...);
}

template <size_t>
using Float32 = Float32Storage;

// A moment's element decoded (a kRoot code gives √v, squared: v) and as quantize stores it
// (√max(v, 0) for a kRoot moment).
template <Format8 kFormat>
inline float Decoded(uint8_t code, float scale) {
  const float x = Decode(code, kFormat == kSigned) * scale;
  return kFormat == kRoot ? x * x : x;
}
template <Format8 kFormat>
inline float ToEncode(float m) {
  return kFormat == kRoot ? std::sqrt(NonNegative(m)) : m;
}

// One block's element loop: the moments unrolled over k (a loop over them, with three, stayed
// rolled and kept GCC from vectorizing the element loop). kUpdate: tx.update's, u_t written to
// `theta` (the update buffer), no clip or learning rate.
template <typename Family, bool kClip, bool kUpdate, size_t... k>
inline void Step8Elements(const StepScalarsOf<Family>& s,
                          const float* __restrict g, float* __restrict theta,
                          const uint8_t* const* codes, const float* scale, size_t len,
                          size_t block_size, float* __restrict scratch, std::index_sequence<k...>) {
  constexpr size_t K = Family::kMoments;
  const uint8_t* __restrict code[K] = {codes[k]...};
  for (size_t i = 0; i < len; ++i) {
    float m[K] = {Decoded<Family::kFormats[k]>(code[k][i], scale[k])...};  // the moments at t − 1
    const float g_t = Clipped<float, kClip>(s.clip, g[i]);  // g_t, or (g_t / ‖g‖) · c
    Family::template Moments<Float32Storage, Float32<k>...>(s.family, g_t, m);
    const float u = Family::Direction(s.family, g_t, m);
    if constexpr (IsTraced<Family>::value) {  // the trace over v_t = (−η)·u_t, then θ + the step
      const float v = u * s.minus_lr;
      m[K - 1] = MulAdd(s.beta, m[K - 1], v);  // trace_t = v_t + β · trace_{t-1}
      theta[i] += Family::kTraceNesterov ? MulAdd(s.beta, m[K - 1], v) : m[K - 1];
    } else {
      theta[i] = kUpdate ? u : MulAdd(u, s.minus_lr, theta[i]);
    }
    ((scratch[k * block_size + i] = ToEncode<Family::kFormats[k]>(m[k])), ...);
  }
}

// One block of a family's step: per element each moment decoded, g_t clipped (kClip), the
// moments advanced (`Family::Moments`, as XLA contracts them when every operand is float32, as
// the dequantized moments are), the direction from them before quantization
// (`Family::Direction`: map_leaves' order for 8-bit state), θ_t = θ_{t-1} + u_t·(−η) (one
// FMA, as XLA contracts the fused loop); then each moment's scale and codes. `scratch` holds K
// block_size-long rows of the new moments between the passes. kUpdate: tx.update's (u_t in
// θ's place).
template <typename Family, bool kClip, bool kUpdate>
void Step8Block(const StepScalarsOf<Family>& s,
                const Leaf8<Family::kMoments>& leaf, size_t start, size_t len, size_t block,
                size_t block_size, float* __restrict scratch) {
  constexpr size_t K = Family::kMoments;
  if (!kUpdate) CopyUnlessAliased(leaf.theta_in, leaf.theta, start, len);
  float scale[K];
  const uint8_t* codes[K];
  for (size_t k = 0; k < K; ++k) {
    CopyUnlessAliased(leaf.codes_in[k], leaf.codes[k], start, len);
    scale[k] = leaf.scales_in[k][block];
    codes[k] = leaf.codes[k] + start;
  }
  Step8Elements<Family, kClip, kUpdate>(s, leaf.g + start, leaf.theta + start, codes, scale,
                                        len, block_size, scratch, std::make_index_sequence<K>{});
  EncodeBlocks<Family>(leaf, scratch, block_size, start, len, block,
                       std::make_index_sequence<K>{});
}

template <typename Family, bool kClip, bool kUpdate = false>
void Step8Range(const StepScalarsOf<Family>& s, size_t block_size,
                const Leaf8<Family::kMoments>& leaf, size_t begin, size_t end) {
  std::vector<float> scratch(Family::kMoments * block_size);
  ForBlocks(block_size, leaf, begin, end, [&](size_t start, size_t len, size_t block) {
    Step8Block<Family, kClip, kUpdate>(s, leaf, start, len, block, block_size, scratch.data());
  });
}

// A family's 8-bit kernel, optadam.step's or (kUpdate) tx.update's; float32 params and
// gradients. `Family` is a lowp.h family with `kFormats[K]`, its moments' formats.
// - optadam.step's: operands the scalars (float32 LowpStepScalars: the clip, the family's, −η),
//   then per leaf (g, θ, each moment's codes and scales, each kRoot moment's seed); results per
//   leaf (θ, each moment's codes and scales), in place.
// - tx.update's: operands the family's scalars (float32 Family::Scalars, as its other update
//   kernels take them), then per leaf (g, codes, scales, seeds as above); results per leaf (u,
//   each moment's codes and scales), the moments in place. It writes u, as Adam's 8-bit update
//   kernel does (adam8.cc): the direction needs the moments before quantization, which XLA
//   cannot rebuild from the codes.
// Split over XLA's thread pool as the other kernels are (InParallel), a block never split.
template <typename Family, bool kUpdate>
ffi::Future Call8(ffi::ThreadPool pool, int64_t block_size, ffi::RemainingArgs args,
                  ffi::RemainingRets rets) {
  constexpr size_t K = Family::kMoments;
  using Scalars = StepScalarsOf<Family>;
  Scalars s{};  // tx.update's: no clip (clip = 0) or learning rate
  auto packed = GetScalars<float>(
      args, (kUpdate ? sizeof(s.family) : sizeof(Scalars)) / sizeof(float));
  if (packed.has_error()) return Done(packed.error());
  if (kUpdate) {
    std::memcpy(&s.family, *packed, sizeof(s.family));
  } else {
    std::memcpy(&s, *packed, sizeof(s));
  }
  std::vector<Leaf8<K>> leaves;
  const Format8* formats = std::data(Family::kFormats);
  if (ffi::Error error = GetLeaves8(args, rets, block_size, formats, kUpdate, leaves);
      error.failure()) {
    return Done(error);
  }
  const size_t bs = static_cast<size_t>(block_size);
  auto range = Step8Range<Family, false, kUpdate>;
  if constexpr (!kUpdate) {  // whether to clip is known only now, from this step's norm
    if (s.clip.clip != 0) range = Step8Range<Family, true, false>;
  }
  return InParallel<float>(pool, std::move(leaves),
                           [s, bs, range](const Leaf8<K>& leaf, size_t begin, size_t end) {
                             range(s, bs, leaf, begin, end);
                           });
}

}  // namespace optadam

// 8-bit Adam (and AdamW, NAdam) for optadam.step, one block at a time in one pass: what
// map_leaves does for a leaf whose moments are 8-bit codes (optadam/_leafwise.py: dequantize,
// adam_moments, quantize; the direction from the float32 moments before quantization), followed
// by the chain's decay, learning rate and apply_updates, as adam.py's one-pass recipe writes them.
// The codec, leaves and blocks are block8.h's; tests/test_native_8bit.py holds this file to the
// Python: identical codes and scales (where XLA contracts the moving averages into the FMAs
// written here; BUILD_NOTES.md, "8-bit Adam").
#include <cmath>
#include <cstdint>
#include <cstring>

#include "block8.h"
#include "leaves.h"

namespace optadam {
namespace {

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

// --- one block ----------------------------------------------------------------------------

constexpr Format8 kAdamFormats[2] = {kSigned, kRoot};  // m, √v
using AdamLeaf = Leaf8<2>;

// One block of `len` elements starting at flat position `start`, scales at `block`: the step of
// every element (map_leaves: dequantize, adam_moments, the direction from the float32 moments;
// then the chain and apply_updates), then the block's new scales, then its codes. `mu` and
// `root` hold the block's new m and √v between the passes. Each pass is a vectorizable loop.
// kUpdate: tx.update's instead -- the direction u_t written to `leaf.theta` (the update buffer),
// no clip, decay or learning rate (the chain applies them in XLA).
template <bool kNesterov, bool kDecay, bool kClip, bool kUpdate = false>
void StepBlock(const StepScalars& scalars, const AdamLeaf& leaf, size_t start, size_t len,
               size_t block, float* __restrict mu, float* __restrict root) {
  const StepScalars s = scalars;
  if (!kUpdate) CopyUnlessAliased(leaf.theta_in, leaf.theta, start, len);
  CopyUnlessAliased(leaf.codes_in[0], leaf.codes[0], start, len);  // m
  CopyUnlessAliased(leaf.codes_in[1], leaf.codes[1], start, len);  // √v
  const float mu_scale = leaf.scales_in[0][block], nu_scale = leaf.scales_in[1][block];
  const float* __restrict g = leaf.g + start;
  float* __restrict theta = leaf.theta + start;
  uint8_t* __restrict mu_codes = leaf.codes[0] + start;
  uint8_t* __restrict nu_codes = leaf.codes[1] + start;
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
  leaf.scales[0][block] = mu_max;    // s_b = max_b |m|
  leaf.scales[1][block] = root_max;  // s_b = max_b √v
  const float mu_inverse = InverseScale(mu_max), root_inverse = InverseScale(root_max);
  const uint32_t seed = leaf.seed[1], first = static_cast<uint32_t>(start);
  for (size_t i = 0; i < len; ++i) {
    mu_codes[i] = EncodeSigned(mu[i] * mu_inverse);
    float uniform = Uniform(first + static_cast<uint32_t>(i), seed);
    nu_codes[i] = EncodeStochastic(root[i] * root_inverse, uniform);
  }
}

// The blocks of `leaf` that start in elements [begin, end) (block8.h's ForBlocks).
template <bool kNesterov, bool kDecay, bool kClip, bool kUpdate = false>
void StepRange(const StepScalars& s, size_t block_size, const AdamLeaf& leaf, size_t begin,
               size_t end) {
  std::vector<float> scratch(2 * block_size);
  ForBlocks(block_size, leaf, begin, end, [&](size_t start, size_t len, size_t block) {
    StepBlock<kNesterov, kDecay, kClip, kUpdate>(s, leaf, start, len, block, scratch.data(),
                                                 scratch.data() + block_size);
  });
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
  std::vector<AdamLeaf> leaves;
  if (ffi::Error error = GetLeaves8(args, rets, block_size, kAdamFormats, false, leaves);
      error.failure()) {
    return Done(error);
  }
  const size_t bs = static_cast<size_t>(block_size);
  using Range = void (*)(const StepScalars&, size_t, const AdamLeaf&, size_t, size_t);
  // [nesterov][decay][clip]; whether to clip is known only now, from this step's norm
  static constexpr Range kRanges[2][2][2] = {
      {{StepRange<false, false, false>, StepRange<false, false, true>},
       {StepRange<false, true, false>, StepRange<false, true, true>}},
      {{StepRange<true, false, false>, StepRange<true, false, true>},
       {StepRange<true, true, false>, StepRange<true, true, true>}}};
  Range step = kRanges[nesterov][decay][s.clip.clip != 0];
  return InParallel<float>(pool, std::move(leaves),
                           [s, bs, step](const AdamLeaf& leaf, size_t begin, size_t end) {
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
  std::vector<AdamLeaf> leaves;
  if (ffi::Error error = GetLeaves8(args, rets, block_size, kAdamFormats, true, leaves);
      error.failure()) {
    return Done(error);
  }
  const size_t bs = static_cast<size_t>(block_size);
  using Range = void (*)(const StepScalars&, size_t, const AdamLeaf&, size_t, size_t);
  Range update =
      nesterov ? StepRange<true, false, false, true> : StepRange<false, false, false, true>;
  return InParallel<float>(pool, std::move(leaves),
                           [s, bs, update](const AdamLeaf& leaf, size_t begin, size_t end) {
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

// Momentum, heavy-ball and Nesterov, each element in one pass: optadam/momentum.py's
// scale_by_momentum (its moments, then its direction) transcribed line for line, with the same
// names and order. The Python stays the definition; tests/test_native.py holds this file to it.
#include "block8.h"
#include "leaves.h"
#include "lowp.h"

namespace optadam {
namespace {

// This step's runtime scalars, in the order scale_by_momentum lists them for its Kernel.
template <typename T>
struct MomentumScalars {
  T decay;  // β
};
constexpr size_t kMomentumScalars = sizeof(MomentumScalars<float>) / sizeof(float);

// scale_by_momentum's moments: `trace` advanced in place.
template <typename T>
inline void MomentumMoments(const MomentumScalars<T>& s, T g, T& trace) {
  trace = MulAdd(s.decay, trace, g);  // trace_t = g_t + β · trace_{t-1}
}

// scale_by_momentum's direction: u_t from the new trace.
template <typename T, bool kNesterov>
inline T MomentumDirection(const MomentumScalars<T>& s, T g, T trace) {
  return kNesterov ? MulAdd(s.decay, trace, g)  // u_t = g_t + β · trace_t
                   : trace;                     // u_t = trace_t
}

// One element of scale_by_momentum's update; `trace` is updated in place, `u_t` returned.
template <typename T, bool kNesterov>
inline T MomentumElement(const MomentumScalars<T>& s, T g, T& trace) {
  MomentumMoments(s, g, trace);
  return MomentumDirection<T, kNesterov>(s, g, trace);
}

// Elements [begin, end) of one leaf of tx.update: the trace alone, in place. The direction stays jnp (map_leaves computes it from the state this
// returns), so XLA fuses it into the loop that consumes u_t (optax.apply_updates'); see adam.cc.
template <typename T>
void MomentsRange(const MomentumScalars<T>& s, const T* __restrict g, T* __restrict trace,
                  size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) MomentumMoments(s, g[i], trace[i]);
}

// Operands: the scalars, then per leaf (g, trace); results per leaf (trace), in place. Split
// over XLA's thread pool as adam.cc's kernels are (InParallel). `nesterov` changes only the
// direction; it is bound so that one Kernel's options serve this call and optadam.step's.
template <typename T>
ffi::Future Momentum(ffi::ThreadPool pool, bool /*nesterov*/, ffi::RemainingArgs args,
                     ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kMomentumScalars);
  if (packed.has_error()) return Done(packed.error());
  MomentumScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<Leaf<T, 2, 1>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  return InParallel<T>(pool, std::move(leaves),
                       [s](const Leaf<T, 2, 1>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // trace
                         MomentsRange(s, b.in[0], b.out[0], begin, end);
                       });
}

// optadam.step's scalars: the global-norm clip in front (leaves.h; "no clip" without one),
// Momentum's, then −η (the sign as scale_by_learning_rate applies it).
template <typename T>
struct MomentumStepScalars {
  ClipScalars<T> clip;
  MomentumScalars<T> momentum;
  T minus_lr;
};
constexpr size_t kMomentumStepScalars = sizeof(MomentumStepScalars<float>) / sizeof(float);

// Elements [begin, end) of one leaf of a whole step, as sgd's chain computes it followed by
// optax.apply_updates: g_t clipped (with kClip), u_t from scale_by_momentum, then
// scale_by_learning_rate's (−η)·u_t, then θ + that, which XLA:CPU fuses into one loop and
// contracts into an FMA, as MulAdd does here. No update buffer: θ and the trace are written in
// place.
template <typename T, bool kNesterov, bool kClip>
void MomentumStepRange(const MomentumStepScalars<T>& s, const T* __restrict g,
                       T* __restrict theta, T* __restrict trace, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    T g_t = Clipped<T, kClip>(s.clip, g[i]);  // g_t, or (g_t / ‖g‖) · c when clipping
    T u = MomentumElement<T, kNesterov>(s.momentum, g_t, trace[i]);
    theta[i] = MulAdd(u, s.minus_lr, theta[i]);  // θ_t = θ_{t-1} + u_t·(−η)
  }
}

// Operands: the scalars, then per leaf (g, θ, trace); results per leaf (θ, trace), both in place
// (aliased to their operands). Split over the pool as Momentum is.
template <typename T>
ffi::Future MomentumStep(ffi::ThreadPool pool, bool nesterov, ffi::RemainingArgs args,
                         ffi::RemainingRets rets) {
  auto packed = GetScalars<T>(args, kMomentumStepScalars);
  if (packed.has_error()) return Done(packed.error());
  MomentumStepScalars<T> s;
  std::memcpy(&s, *packed, sizeof(s));
  std::vector<Leaf<T, 3, 2>> leaves;
  if (ffi::Error error = GetLeaves(args, rets, leaves); error.failure()) return Done(error);
  using Range = void (*)(const MomentumStepScalars<T>&, const T*, T*, T*, size_t, size_t);
  // [nesterov][clip]; whether to clip is known only now, from this step's norm
  static constexpr Range kRanges[2][2] = {
      {MomentumStepRange<T, false, false>, MomentumStepRange<T, false, true>},
      {MomentumStepRange<T, true, false>, MomentumStepRange<T, true, true>}};
  Range step = kRanges[nesterov][s.clip.clip != 0];
  return InParallel<T>(pool, std::move(leaves),
                       [s, step](const Leaf<T, 3, 2>& b, size_t begin, size_t end) {
                         Alias(b, 1, 0, begin, end);  // θ
                         Alias(b, 2, 1, begin, end);  // trace
                         step(s, b.in[0], b.out[0], b.out[1], begin, end);
                       });
}

// --- Stored in bfloat16, or bfloat16/float16 gradients (lowp.h) ---------------------------------

// scale_by_momentum on the lifted trace, for LowpMomentsCall and LowpStepCall.
template <bool kNesterov = false>
struct MomentumLowpFamily {
  using Scalars = MomentumScalars<float>;
  static constexpr size_t kMoments = 1;
  static constexpr Format8 kFormats[1] = {kSigned};  // state_bits=8 (block8.h)
  template <typename G, typename M>
  static void Moments(const Scalars& s, float g, float m[1]) {
    MomentumMoments(s, g, m[0]);  // trace_t = g_t + β · trace_{t-1}
  }
  static float Direction(const Scalars& s, float g, const float m[1]) {
    return MomentumDirection<float, kNesterov>(s, g, m[0]);
  }
};

ffi::Future MomentumLowp(ffi::ThreadPool pool, bool /*nesterov*/, bool stochastic,
                         ffi::RemainingArgs args, ffi::RemainingRets rets) {
  return LowpMomentsCall<MomentumLowpFamily<>>(pool, stochastic, args, rets);
}

// Operands: float32 scalars (the step kernel's, then the seeds), per leaf (g, θ, trace); results
// per leaf (θ, trace), in place.
ffi::Future MomentumStepLowp(ffi::ThreadPool pool, bool nesterov, bool stochastic,
                             ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if (nesterov) return LowpStepCall<MomentumLowpFamily<true>>(pool, stochastic, args, rets);
  return LowpStepCall<MomentumLowpFamily<false>>(pool, stochastic, args, rets);
}

// 8-bit trace (block8.h): optadam.step's (kUpdate false) or tx.update's. Operands: the step
// kernel's or the update kernel's scalars, per leaf (g, θ (the step's), trace codes and scales);
// results per leaf (θ or u, codes, scales), in place.
template <bool kUpdate>
ffi::Future Momentum8(ffi::ThreadPool pool, bool nesterov, int64_t block_size,
                      ffi::RemainingArgs args, ffi::RemainingRets rets) {
  if (nesterov) return Call8<MomentumLowpFamily<true>, kUpdate>(pool, block_size, args, rets);
  return Call8<MomentumLowpFamily<false>, kUpdate>(pool, block_size, args, rets);
}

}  // namespace
}  // namespace optadam

#define OPTADAM_MOMENTUM_HANDLER(name, function, T)                     \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, function<T>,                      \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<bool>("nesterov")             \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

OPTADAM_MOMENTUM_HANDLER(optadam_momentum_f32, optadam::Momentum, float)
OPTADAM_MOMENTUM_HANDLER(optadam_momentum_f64, optadam::Momentum, double)
OPTADAM_MOMENTUM_HANDLER(optadam_momentum_step_f32, optadam::MomentumStep, float)
OPTADAM_MOMENTUM_HANDLER(optadam_momentum_step_f64, optadam::MomentumStep, double)

// Low-precision storage (lowp.h): tx.update's trace advanced in place, any mix of dtypes.
XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_momentum_lowp, optadam::MomentumLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(optadam_momentum_step_lowp, optadam::MomentumStepLowp,
                              xla::ffi::Ffi::Bind()
                                  .Ctx<xla::ffi::ThreadPool>()
                                  .Attr<bool>("nesterov")
                                  .Attr<bool>("stochastic")
                                  .RemainingArgs()
                                  .RemainingRets());

#define OPTADAM_MOMENTUM8_HANDLER(name, update)                         \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(name, optadam::Momentum8<update>,       \
                                xla::ffi::Ffi::Bind()                   \
                                    .Ctx<xla::ffi::ThreadPool>()        \
                                    .Attr<bool>("nesterov")             \
                                    .Attr<int64_t>("block_size")        \
                                    .RemainingArgs()                    \
                                    .RemainingRets());

// 8-bit trace (block8.h)
OPTADAM_MOMENTUM8_HANDLER(optadam_momentum8_step_f32, false)
OPTADAM_MOMENTUM8_HANDLER(optadam_momentum8_f32, true)

// The plumbing every optadam kernel shares: finding one call's leaves among its variadic buffers.
//
// A kernel call carries one dtype's leaves: first a small vector of runtime scalars (the
// hyperparameters, bias corrections and learning rate of this step, in the leaves' dtype), then
// each leaf's inputs in turn; its results are each leaf's outputs in turn. Moments and params are
// updated in place: Python aliases them to their results, so here an input and its result share
// one pointer.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace optadam {

namespace ffi = xla::ffi;

// a · b + c as XLA:CPU computes it: one fused multiply-add where the CPU has them (LLVM contracts
// the HLO's multiply and add), else two roundings. Kernels spell out with it each a · b + c that
// XLA contracts (and are built with -ffp-contract=off so the compiler adds no others), which
// makes the moments equal the XLA path's bit for bit.
template <typename T>
inline T MulAdd(T a, T b, T c) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  return std::fma(a, b, c);
#else
  return a * b + c;
#endif
}

// optadam/_quantize.py's _mix: the lowbias32 hash (C. Wellons), the random bits of stochastic
// rounding (lowp.h) and of the 8-bit second moment (adam8.cc).
inline uint32_t Mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  return x ^ (x >> 16);
}

// `pick ? a : b` on the bits, with no branch for the compiler to make: where an arm holds a
// division or a root used by that arm only, GCC sinks it into a branch, may not execute it
// unconditionally there (it could trap) and leaves the loop scalar. Both arms are computed.
template <typename T>
inline T Select(bool pick, T a, T b) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits x, y;
  std::memcpy(&x, &a, sizeof(T));
  std::memcpy(&y, &b, sizeof(T));
  const Bits mask = Bits{0} - static_cast<Bits>(pick);  // all ones where pick
  x = (x & mask) | (y & ~mask);
  std::memcpy(&a, &x, sizeof(T));
  return a;
}

template <typename T>
struct DtypeOf;
template <>
struct DtypeOf<float> {
  static constexpr ffi::DataType value = ffi::DataType::F32;
};
template <>
struct DtypeOf<double> {
  static constexpr ffi::DataType value = ffi::DataType::F64;
};

// Leaf `leaf`'s buffers: `kIns` inputs (read only) and `kOuts` results, all of `n` elements of T.
template <typename T, int kIns, int kOuts>
struct Leaf {
  size_t n = 0;
  const T* in[kIns] = {};
  T* out[kOuts] = {};
};

template <typename T, int kIns, int kOuts>
ffi::Error GetLeaf(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets, size_t leaf,
                   Leaf<T, kIns, kOuts>& out) {
  for (int k = 0; k < kIns; ++k) {
    auto buffer = args.get<ffi::AnyBuffer>(1 + leaf * kIns + k);
    if (buffer.has_error()) return buffer.error();
    if (buffer->element_type() != DtypeOf<T>::value) {
      return ffi::Error::InvalidArgument("optadam kernel: operand of the wrong dtype");
    }
    if (k == 0) out.n = buffer->element_count();
    if (buffer->element_count() != out.n) {
      return ffi::Error::InvalidArgument("optadam kernel: operands of one leaf differ in size");
    }
    out.in[k] = static_cast<const T*>(buffer->untyped_data());
  }
  for (int k = 0; k < kOuts; ++k) {
    auto buffer = rets.get<ffi::AnyBuffer>(leaf * kOuts + k);
    if (buffer.has_error()) return buffer.error();
    if ((*buffer)->element_type() != DtypeOf<T>::value || (*buffer)->element_count() != out.n) {
      return ffi::Error::InvalidArgument("optadam kernel: result of the wrong dtype or size");
    }
    out.out[k] = static_cast<T*>((*buffer)->untyped_data());
  }
  return ffi::Error::Success();
}

// All the leaves of one call, `kIns` inputs and `kOuts` results each, after checking that the
// operands (less the scalars) and the results make whole leaves of one count.
template <typename T, int kIns, int kOuts>
ffi::Error GetLeaves(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets,
                     std::vector<Leaf<T, kIns, kOuts>>& leaves) {
  if ((args.size() - 1) % kIns != 0 || (args.size() - 1) / kIns * kOuts != rets.size()) {
    return ffi::Error::InvalidArgument("optadam kernel: operand count");
  }
  leaves.resize(rets.size() / kOuts);
  for (size_t leaf = 0; leaf < leaves.size(); ++leaf) {
    if (ffi::Error error = GetLeaf<T, kIns, kOuts>(args, rets, leaf, leaves[leaf]);
        error.failure()) {
      return error;
    }
  }
  return ffi::Error::Success();
}

// Makes elements [begin, end) of result `out` hold input `in`'s, so the kernel can update them in
// place: nothing to do when XLA aliased the two buffers (the usual case), a copy otherwise.
template <typename T, int kIns, int kOuts>
void Alias(const Leaf<T, kIns, kOuts>& leaf, int in, int out, size_t begin, size_t end) {
  if (leaf.in[in] != leaf.out[out] && end > begin) {
    std::memcpy(leaf.out[out] + begin, leaf.in[in] + begin, (end - begin) * sizeof(T));
  }
}

// Splitting a call's elements over XLA's intra-op thread pool.
//
// The leaves' elements, taken one leaf after the other, are cut into ranges of whole 64 KiB chunks
// (a few ranges per pool thread, so a slow thread holds up little); the handler schedules all but
// the first range on the pool, runs the first itself, and returns a Future that the last range to
// finish completes. It never waits on the pool: the host devices of one process (pmap, sharded
// jit) share that pool, and a handler blocking on its own tasks there can deadlock. Calls with
// few elements run inline, where scheduling would cost more than it saves.
constexpr size_t kChunkBytes = size_t{64} << 10;
constexpr size_t kInlineElements = size_t{1} << 16;
constexpr size_t kRangesPerThread = 4;

// A ready Future: the call finished (or failed) on the calling thread.
inline ffi::Future Done(ffi::Error error = ffi::Error::Success()) {
  ffi::Promise promise;
  ffi::Future future(promise);
  if (error.success()) {
    promise.SetAvailable();
  } else {
    promise.SetError(std::move(error));
  }
  return future;
}

// `body(leaf, begin, end)` over every element of `leaves` (the leaf's index, then a range of its
// elements), split over `pool` as described above. `body` is copied once and shared by the tasks;
// it must only write the elements it is given.
template <typename T, typename L, typename Body>
ffi::Future InParallel(ffi::ThreadPool& pool, std::vector<L> leaves, Body body) {
  struct Work {
    std::vector<L> leaves;
    std::vector<size_t> starts;  // first element of each leaf, counted over all leaves
    Body body;

    // Elements [begin, end), counted over all leaves.
    void Run(size_t begin, size_t end) const {
      size_t leaf = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
      for (; leaf < leaves.size() && starts[leaf] < end; ++leaf) {
        size_t from = std::max(begin, starts[leaf]) - starts[leaf];
        size_t to = std::min(end, starts[leaf] + leaves[leaf].n) - starts[leaf];
        if (to > from) body(leaves[leaf], from, to);
      }
    }
  };
  auto work = std::make_shared<Work>(Work{std::move(leaves), {}, std::move(body)});
  size_t total = 0;
  for (const L& leaf : work->leaves) {
    work->starts.push_back(total);
    total += leaf.n;
  }
  const size_t chunk = kChunkBytes / sizeof(T);
  const size_t chunks = (total + chunk - 1) / chunk;
  const int64_t threads = total < kInlineElements ? 1 : pool.num_threads();
  size_t ranges = threads > 1 ? std::min(chunks, static_cast<size_t>(threads) * kRangesPerThread)
                              : size_t{1};
  const size_t per_range = (chunks + ranges - 1) / ranges * chunk;  // elements, whole chunks
  ranges = total == 0 ? 1 : (total + per_range - 1) / per_range;
  if (ranges <= 1) {
    work->Run(0, total);
    return Done();
  }
  ffi::CountDownPromise finished(static_cast<int64_t>(ranges));
  ffi::Future future(finished);
  for (size_t r = 1; r < ranges; ++r) {
    size_t begin = r * per_range, end = std::min(total, begin + per_range);
    pool.Schedule([work, finished, begin, end]() mutable {
      work->Run(begin, end);
      finished.CountDown();
    });
  }
  work->Run(0, per_range);
  finished.CountDown();
  return future;
}

// The runtime scalars, checked to hold at least `count` values of T.
template <typename T>
ffi::ErrorOr<const T*> GetScalars(const ffi::RemainingArgs& args, size_t count) {
  auto buffer = args.get<ffi::AnyBuffer>(0);
  if (buffer.has_error()) return ffi::Unexpected(buffer.error());
  if (buffer->element_type() != DtypeOf<T>::value || buffer->element_count() < count) {
    return ffi::Unexpected(ffi::Error::InvalidArgument("optadam kernel: bad scalars operand"));
  }
  return static_cast<const T*>(buffer->untyped_data());
}

// Global-norm clipping before a step kernel (optadam/clipping.py, chained in front of the
// optimizer): the first runtime scalars of every step kernel. `clip` is 1 when ‖g‖ >= c (or ‖g‖ is
// NaN), else 0; ‖g‖ is one reduction over all the gradients, computed by XLA before the call.
template <typename T>
struct ClipScalars {
  T clip, g_norm, max_norm;
};

// One gradient element as clip_leaf (clipping.py) hands it on: g' = (g / ‖g‖) · c, two roundings
// as XLA rounds them; kClip is false when ‖g‖ < c (g passes unchanged).
template <typename T, bool kClip>
inline T Clipped(const ClipScalars<T>& s, T g) {
  return kClip ? (g / s.g_norm) * s.max_norm : g;
}

}  // namespace optadam

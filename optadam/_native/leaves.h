// The plumbing every optadam kernel shares: finding one call's leaves among its variadic buffers.
//
// A kernel call carries one dtype's leaves: first a small vector of runtime scalars (the
// hyperparameters, bias corrections and learning rate of this step, in the leaves' dtype), then
// each leaf's inputs in turn; its results are each leaf's outputs in turn. Moments and params are
// updated in place: Python aliases them to their results, so here an input and its result share
// one pointer.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstring>

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

// Makes result `out` hold input `in`, so the kernel can update it in place: nothing to do when
// XLA aliased them (the usual case), a copy otherwise.
template <typename T, int kIns, int kOuts>
void Alias(Leaf<T, kIns, kOuts>& leaf, int in, int out) {
  if (leaf.in[in] != leaf.out[out] && leaf.n > 0) {
    std::memcpy(leaf.out[out], leaf.in[in], leaf.n * sizeof(T));
  }
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

}  // namespace optadam

// The thread driver shared by every step: contiguous ranges of rows spread over OpenMP threads
// only when the work pays for waking them, and the dtype dispatch of the entry points.
// Kept apart from the SIMD code: the per-target kernels are plain functions called per range.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

namespace fastaevb {

enum Reduction : int { kReductionNone = 0, kReductionRows = 1, kReductionSum = 2 };

// Waking the OpenMP team and joining it costs about 10 us here (2-core Zen 3, libgomp), so a
// thread is added only for every kNsPerThread of estimated work: with 2 threads a step is never
// slower than with 1 (measured by bench/, see docs/performance.md).
constexpr double kNsPerThread = 25000.0;

// Calls fn(begin, end) on contiguous sub-ranges covering [0, n). work_ns: the estimated cost
// of the whole range on one thread.
template <class Fn>
inline void parallel_for(int64_t n, double work_ns, int nthreads, Fn&& fn) {
  const int64_t by_work = static_cast<int64_t>(work_ns / kNsPerThread);
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({nthreads, by_work, n})));
  if (threads <= 1) {
    if (n > 0) fn(int64_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t begin = n * t / nt, end = n * (t + 1) / nt;
    if (begin < end) fn(begin, end);
  }
}

// dtype code: 0 = float32, 1 = float64.
template <class Fn>
inline auto dispatch_float(int dtype, Fn&& fn) {
  if (dtype == 0) return fn(float{});
  if (dtype == 1) return fn(double{});
  throw std::invalid_argument("fastaevb._C: dtype code must be 0 (float32) or 1 (float64)");
}

template <class T>
inline T* as_ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

}  // namespace fastaevb

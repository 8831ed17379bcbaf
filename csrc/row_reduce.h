// Shared driver of the fused kernels: the OpenMP loop over rows, the reduce modes and the
// dtype dispatch.
//
// Parallelism is over rows only (schedule static). With very few rows and a huge D (e.g.
// R = 1, D = 10^7) only one thread works; acceptable for the VAE sizes (R >= 100), a
// column split is future work.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace fastaevb {

enum Reduce : int { kElements = 0, kRows = 1, kTotal = 2 };

// Below this many elements a step runs on the calling thread: forking the team costs more.
constexpr int64_t kMinParallelWork = 16384;

// Calls fn(r) for every row r in [0, R), spread over `nthreads` OpenMP threads.
template <class Fn>
static inline void parallel_rows(int64_t R, int64_t work, int nthreads, Fn&& fn) {
  if (nthreads < 1) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) if (work >= kMinParallelWork && nthreads > 1)
  for (int64_t r = 0; r < R; ++r) fn(r);
}

// Runs row_fn(r, bad) for every row; row_fn returns the *unscaled* row sum (accumulated in
// T) and adds its out-of-range count to `bad`. Then, by reduce mode:
//   kElements: row_fn wrote its elementwise output itself; nothing else is written.
//   kRows:     out[r] = scale * row_sum(r).
//   kTotal:    out[0] = scale * sum_r row_sum(r), summed in double in row order
//              (deterministic for any thread count).
// Returns the total out-of-range count.
template <class T, class RowFn>
static inline int64_t reduce_rows(int64_t R, int64_t work, int reduce, double scale, T* out,
                                  int nthreads, RowFn&& row_fn) {
  std::vector<T> partial(reduce == kTotal ? static_cast<size_t>(R) : 0);
  T* sums = reduce == kTotal ? partial.data() : out;
  const T row_scale = reduce == kRows ? static_cast<T>(scale) : T(1);
  int64_t bad = 0;
  if (nthreads < 1) nthreads = 1;
#pragma omp parallel for schedule(static) num_threads(nthreads) reduction(+ : bad) if (work >= kMinParallelWork && nthreads > 1)
  for (int64_t r = 0; r < R; ++r) {
    int64_t row_bad = 0;
    const T s = row_fn(r, row_bad);
    if (reduce != kElements) sums[r] = row_scale * s;
    bad += row_bad;
  }
  if (reduce == kTotal) {
    double total = 0.0;
    for (int64_t r = 0; r < R; ++r) total += static_cast<double>(sums[r]);
    out[0] = static_cast<T>(scale * total);
  }
  return bad;
}

// Dtype dispatch. dtype: 0 = float32, 1 = float64. xtype (Bernoulli targets): 0 = the float
// type of the input, 1 = uint8 (torch.bool is passed as uint8).
template <class Fn>
static inline auto dispatch_float(int dtype, Fn&& fn) {
  if (dtype == 0) return fn(float{});
  if (dtype == 1) return fn(double{});
  throw std::invalid_argument("fastaevb._C: dtype code must be 0 (float32) or 1 (float64)");
}

template <class Fn>
static inline auto dispatch_float_target(int dtype, int xtype, Fn&& fn) {
  return dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    if (xtype == 0) return fn(T{}, T{});
    if (xtype == 1) return fn(T{}, uint8_t{});
    throw std::invalid_argument("fastaevb._C: target code must be 0 (float) or 1 (uint8/bool)");
  });
}

// Upstream gradient of row r, times scale: grad_out[r] for kRows, grad_out[0] for kTotal.
template <class T>
static inline T row_upstream(const T* grad_out, int reduce, int64_t r, T scale) {
  return (reduce == kTotal ? grad_out[0] : grad_out[r]) * scale;
}

template <class T> static inline T* as_ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

}  // namespace fastaevb

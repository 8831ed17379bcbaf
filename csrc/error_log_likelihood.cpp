// The error decoders (torch's mse_loss / l1_loss as log-likelihoods with a log-scale s, per element
// (R, D) or one shared value), forward and backward, as Highway vector code for every SIMD target:
//   ll = -sum_d (|x - m|^p exp(-s) + s),  p = 2 (squared error) or 1 (absolute error).
// The Gaussian decoder's structure (gaussian_log_likelihood.cpp). Shared log-scale: a row needs
// only S = sum_d |x - m|^p, and
//   ll_row = -(S exp(-s) + D s),  dll_row/ds = S exp(-s) - D,
// which cancels once the scale fits, so the drivers combine the row sums and take exp(-s) in double.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "error_log_likelihood.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "parallel.h"
#include "row_job.h"
#include "simd_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace fastaevb {
namespace HWY_NAMESPACE {

template <int kMode, bool kShared, int kPower, class T>
void RowsT(const ErrorJob& job, int64_t r0, int64_t r1) {
  using DT = hn::ScalableTag<T>;
  const DT d;
  const Rows& rows = job.rows;
  const T* x = static_cast<const T*>(job.x);
  const T* mean = static_cast<const T*>(job.mean);
  const T* log_scale = static_cast<const T*>(job.log_scale);
  const T* go = static_cast<const T*>(job.grad_out);
  T* gm = static_cast<T*>(job.grad_mean);
  T* gs = static_cast<T*>(job.grad_log_scale);
  const T scale = static_cast<T>(job.scale);
  for (int64_t r = r0; r < r1; ++r) {
    const size_t n = static_cast<size_t>(rows.length(r));
    const int64_t at = r * rows.D;
    const T* xr = x + (r % rows.B) * rows.D;
    T up = scale;
    if constexpr (kMode == kBwdRow) up = scale * go[job.upstream_total ? 0 : r];
    // Shared: d/dm = slope exp(-s) with one exp(-s), folded into the factor.
    const V<DT> up_v = hn::Set(d, kShared ? static_cast<T>(up * job.inv_scale) : up);
    V<DT> acc = hn::Zero(d);
    ForEachVector(d, n, [&](size_t i, size_t count, auto tail) {
      constexpr bool kTail = decltype(tail)::value;
      const auto xv = LoadAt<kTail>(d, xr, i, count);
      const auto m = LoadAt<kTail>(d, mean + at, i, count);
      if constexpr (kShared) {
        const auto diff = hn::Sub(xv, m);
        acc = AddLanes<kTail>(d, acc, Error<kPower>(d, diff), count);  // backward needs it too
        if constexpr (kMode != kFwdSum)
          StoreAt<kTail>(d, hn::Mul(up_v, ErrorSlope<kPower>(d, diff)), gm + at, i, count);
      } else {
        const auto t = ErrorLL<kPower>(d, xv, m, LoadAt<kTail>(d, log_scale + at, i, count));
        if constexpr (kMode != kBwdRow) acc = AddLanes<kTail>(d, acc, t.q, count);
        if constexpr (kMode != kFwdSum) {
          StoreAt<kTail>(d, hn::Mul(up_v, t.dm), gm + at, i, count);
          StoreAt<kTail>(d, hn::Mul(up_v, t.ds), gs + at, i, count);
        }
      }
    });
    if constexpr (kMode != kBwdRow || kShared) job.sums[r] = hn::GetLane(hn::SumOfLanes(d, acc));
  }
}

template <bool kShared, int kPower, class T>
void RowsByMode(const ErrorJob& job, int64_t r0, int64_t r1) {
  if (job.mode == kFwdSum) return RowsT<kFwdSum, kShared, kPower, T>(job, r0, r1);
  if (job.mode == kFwdSumGrad) return RowsT<kFwdSumGrad, kShared, kPower, T>(job, r0, r1);
  return RowsT<kBwdRow, kShared, kPower, T>(job, r0, r1);
}

template <int kPower, class T>
void RowsByLayout(const ErrorJob& job, int64_t r0, int64_t r1) {
  if (job.shared_log_scale)
    RowsByMode<true, kPower, T>(job, r0, r1);
  else
    RowsByMode<false, kPower, T>(job, r0, r1);
}

template <class T>
void RowsByPower(const ErrorJob& job, int64_t r0, int64_t r1) {
  if (job.power == 2)
    RowsByLayout<2, T>(job, r0, r1);
  else
    RowsByLayout<1, T>(job, r0, r1);
}

void ErrorRows(const ErrorJob& job, int64_t r0, int64_t r1) {
  dispatch_float(job.dtype, [&](auto t) { RowsByPower<decltype(t)>(job, r0, r1); });
}

}  // namespace HWY_NAMESPACE
}  // namespace fastaevb
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace fastaevb {
HWY_EXPORT(ErrorRows);

namespace {
constexpr double kNsPerElement = 1.2;  // the Gaussian kernel's (one exp per element), not measured here

ErrorJob make_job(int mode, addr x, addr mean, addr log_scale, addr grad_mean, addr grad_log_scale, int64_t R,
                  int64_t B, int64_t D, bool shared, double scale, int power, int dtype) {
  if (power != 1 && power != 2)
    throw std::invalid_argument("fastaevb: error_log_likelihood power must be 1 or 2");
  ErrorJob job{};
  job.rows = {R, B, D, R * D};
  job.mode = mode;
  job.dtype = dtype;
  job.power = power;
  job.shared_log_scale = shared;
  job.scale = scale;
  job.x = as_ptr<const void>(x);
  job.mean = as_ptr<const void>(mean);
  job.log_scale = as_ptr<const void>(log_scale);
  job.grad_mean = as_ptr<void>(grad_mean);
  job.grad_log_scale = as_ptr<void>(grad_log_scale);
  if (shared) {
    job.inv_scale = dispatch_float(dtype, [&](auto t) {
      using T = decltype(t);
      return std::exp(-static_cast<double>(as_ptr<const T>(log_scale)[0]));
    });
  }
  return job;
}

void run(const ErrorJob& job, int nthreads) {
  const auto kernel = HWY_DYNAMIC_DISPATCH(ErrorRows);
  parallel_for(job.rows.R, job.rows.total * kNsPerElement * (job.dtype + 1), nthreads,
               [&](int64_t r0, int64_t r1) { kernel(job, r0, r1); });
}

// sum_r upstream(r) * dll_row/ds for the shared log-scale, in double, row order.
template <class W>
double shared_log_scale_grad(const std::vector<double>& sum_err, double inv_scale, int64_t D, W&& upstream) {
  double total = 0.0;
  for (size_t r = 0; r < sum_err.size(); ++r)
    total += upstream(static_cast<int64_t>(r)) * (sum_err[r] * inv_scale - static_cast<double>(D));
  return total;
}
}  // namespace

void error_log_likelihood_forward(addr out, addr grad_mean, addr grad_log_scale, addr x, addr mean,
                                  addr log_scale, int64_t R, int64_t B, int64_t D, bool shared_log_scale,
                                  int reduction, double scale, int power, bool with_grad, int dtype,
                                  int nthreads) {
  ErrorJob job = make_job(with_grad ? kFwdSumGrad : kFwdSum, x, mean, log_scale, grad_mean, grad_log_scale, R,
                          B, D, shared_log_scale, scale, power, dtype);
  std::vector<double> sums(static_cast<size_t>(R));
  job.sums = sums.data();
  run(job, nthreads);
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    T* o = as_ptr<T>(out);
    const double s = shared_log_scale ? static_cast<double>(as_ptr<const T>(log_scale)[0]) : 0.0;
    double total = 0.0;
    for (int64_t r = 0; r < R; ++r) {
      const double row = shared_log_scale ? -(sums[r] * job.inv_scale + D * s) : -sums[r];
      if (reduction == kReductionRows)
        o[r] = static_cast<T>(scale * row);
      else
        total += row;
    }
    if (reduction == kReductionSum) o[0] = static_cast<T>(scale * total);
    if (shared_log_scale && with_grad)
      as_ptr<T>(grad_log_scale)[0] =
          static_cast<T>(shared_log_scale_grad(sums, job.inv_scale, D, [scale](int64_t) { return scale; }));
    return 0;
  });
}

void error_log_likelihood_backward(addr grad_mean, addr grad_log_scale, addr grad_out, addr x, addr mean,
                                   addr log_scale, int64_t R, int64_t B, int64_t D, bool shared_log_scale,
                                   int reduction, double scale, int power, int dtype, int nthreads) {
  // With a shared log-scale the pass also returns the row error sums its gradient needs.
  ErrorJob job = make_job(kBwdRow, x, mean, log_scale, grad_mean, grad_log_scale, R, B, D, shared_log_scale,
                          scale, power, dtype);
  job.grad_out = as_ptr<const void>(grad_out);
  job.upstream_total = reduction == kReductionSum;
  std::vector<double> sums(shared_log_scale ? static_cast<size_t>(R) : 0);
  job.sums = sums.data();
  run(job, nthreads);
  if (!shared_log_scale) return;
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    const T* go = as_ptr<const T>(grad_out);
    as_ptr<T>(grad_log_scale)[0] =
        static_cast<T>(shared_log_scale_grad(sums, job.inv_scale, D, [&](int64_t r) {
          return static_cast<double>(go[reduction == kReductionSum ? 0 : r]) * scale;
        }));
    return 0;
  });
}

}  // namespace fastaevb
#endif  // HWY_ONCE

// Gaussian decoder log-likelihood (Appendix C.2), forward and backward, with a log-variance
// per element (R, D) or one shared value, as Highway vector code for every SIMD target.
// Shared log-variance: a row needs only S2 = sum_d (x - m)^2, and
//   ll_row = -0.5 (D (log 2pi + v) + S2 exp(-v)),  dll_row/dv = -0.5 (D - S2 exp(-v)).
// dll/dv cancels (D ~ S2 exp(-v) once the variance fits), so the drivers combine the row sums
// and take exp(-v) (one scalar) in double.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "gaussian_log_likelihood.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "parallel.h"
#include "row_job.h"
#include "simd_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace fastaevb {
namespace HWY_NAMESPACE {

template <int kMode, bool kShared, class T>
void RowsT(const GaussianJob& job, int64_t r0, int64_t r1) {
  using DT = hn::ScalableTag<T>;
  const DT d;
  const Rows& rows = job.rows;
  const T* x = static_cast<const T*>(job.x);
  const T* mean = static_cast<const T*>(job.mean);
  const T* logvar = static_cast<const T*>(job.logvar);
  const T* go = static_cast<const T*>(job.grad_out);
  T* gm = static_cast<T*>(job.grad_mean);
  T* gv = static_cast<T*>(job.grad_logvar);
  const T scale = static_cast<T>(job.scale);
  for (int64_t r = r0; r < r1; ++r) {
    const size_t n = static_cast<size_t>(rows.length(r));
    const int64_t at = r * rows.D;
    const T* xr = x + (r % rows.B) * rows.D;
    T up = scale;
    if constexpr (kMode == kBwdRow) up = scale * go[job.upstream_total ? 0 : r];
    // Shared: d/dm = (x - m) exp(-v) with one exp(-v), folded into the factor.
    const V<DT> up_v = hn::Set(d, kShared ? static_cast<T>(up * job.inv_var) : up);
    V<DT> acc = hn::Zero(d);
    ForEachVector(d, n, [&](size_t i, size_t count, auto tail) {
      constexpr bool kTail = decltype(tail)::value;
      const auto xv = LoadAt<kTail>(d, xr, i, count);
      const auto m = LoadAt<kTail>(d, mean + at, i, count);
      if constexpr (kShared) {
        const auto diff = hn::Sub(xv, m);
        acc = AddLanes<kTail>(d, acc, hn::Mul(diff, diff), count);  // backward needs it too
        if constexpr (kMode != kFwdSum) StoreAt<kTail>(d, hn::Mul(up_v, diff), gm + at, i, count);
      } else {
        const auto t = Gaussian(d, xv, m, LoadAt<kTail>(d, logvar + at, i, count));
        if constexpr (kMode != kBwdRow) acc = AddLanes<kTail>(d, acc, t.q, count);
        if constexpr (kMode != kFwdSum) {
          StoreAt<kTail>(d, hn::Mul(up_v, t.dm), gm + at, i, count);
          StoreAt<kTail>(d, hn::Mul(up_v, t.dv), gv + at, i, count);
        }
      }
    });
    if constexpr (kMode != kBwdRow || kShared) job.sums[r] = hn::GetLane(hn::SumOfLanes(d, acc));
  }
}

template <bool kShared, class T>
void RowsByMode(const GaussianJob& job, int64_t r0, int64_t r1) {
  if (job.mode == kFwdSum) return RowsT<kFwdSum, kShared, T>(job, r0, r1);
  if (job.mode == kFwdSumGrad) return RowsT<kFwdSumGrad, kShared, T>(job, r0, r1);
  return RowsT<kBwdRow, kShared, T>(job, r0, r1);
}

template <class T>
void RowsByLayout(const GaussianJob& job, int64_t r0, int64_t r1) {
  if (job.shared_logvar)
    RowsByMode<true, T>(job, r0, r1);
  else
    RowsByMode<false, T>(job, r0, r1);
}

void GaussianRows(const GaussianJob& job, int64_t r0, int64_t r1) {
  dispatch_float(job.dtype, [&](auto t) { RowsByLayout<decltype(t)>(job, r0, r1); });
}

}  // namespace HWY_NAMESPACE
}  // namespace fastaevb
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <cmath>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace fastaevb {
HWY_EXPORT(GaussianRows);

namespace {
constexpr double kLog2Pi = 1.8378770664093454835606594728112;  // log(2 pi)
constexpr double kNsPerElement = 1.2;  // single thread, float32, per-element log-variance (bench/)

GaussianJob make_job(int mode, addr x, addr mean, addr logvar, addr grad_mean, addr grad_logvar, int64_t R,
                     int64_t B, int64_t D, bool shared, double scale, int dtype) {
  GaussianJob job{};
  job.rows = {R, B, D, R * D};
  job.mode = mode;
  job.dtype = dtype;
  job.shared_logvar = shared;
  job.scale = scale;
  job.x = as_ptr<const void>(x);
  job.mean = as_ptr<const void>(mean);
  job.logvar = as_ptr<const void>(logvar);
  job.grad_mean = as_ptr<void>(grad_mean);
  job.grad_logvar = as_ptr<void>(grad_logvar);
  if (shared) {
    job.inv_var = dispatch_float(dtype, [&](auto t) {
      using T = decltype(t);
      return std::exp(-static_cast<double>(as_ptr<const T>(logvar)[0]));
    });
  }
  return job;
}

void run(const GaussianJob& job, int nthreads) {
  const auto kernel = HWY_DYNAMIC_DISPATCH(GaussianRows);
  parallel_for(job.rows.R, job.rows.total * kNsPerElement * (job.dtype + 1), nthreads,
               [&](int64_t r0, int64_t r1) { kernel(job, r0, r1); });
}

// sum_r upstream(r) * dll_row/dv for the shared log-variance, in double, row order.
template <class W>
double shared_logvar_grad(const std::vector<double>& sum_sq, double inv_var, int64_t D, W&& upstream) {
  double total = 0.0;
  for (size_t r = 0; r < sum_sq.size(); ++r)
    total += upstream(static_cast<int64_t>(r)) * -0.5 * (static_cast<double>(D) - sum_sq[r] * inv_var);
  return total;
}
}  // namespace

void gaussian_log_likelihood_forward(addr out, addr grad_mean, addr grad_logvar, addr x, addr mean,
                                     addr logvar, int64_t R, int64_t B, int64_t D, bool shared_logvar,
                                     int reduction, double scale, bool with_grad, int dtype, int nthreads) {
  GaussianJob job = make_job(with_grad ? kFwdSumGrad : kFwdSum, x, mean, logvar, grad_mean, grad_logvar, R, B,
                             D, shared_logvar, scale, dtype);
  std::vector<double> sums(static_cast<size_t>(R));
  job.sums = sums.data();
  run(job, nthreads);
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    T* o = as_ptr<T>(out);
    const double v = shared_logvar ? static_cast<double>(as_ptr<const T>(logvar)[0]) : 0.0;
    double total = 0.0;
    for (int64_t r = 0; r < R; ++r) {
      const double row =
          shared_logvar ? -0.5 * (D * (kLog2Pi + v) + sums[r] * job.inv_var) : -0.5 * (D * kLog2Pi + sums[r]);
      if (reduction == kReductionRows)
        o[r] = static_cast<T>(scale * row);
      else
        total += row;
    }
    if (reduction == kReductionSum) o[0] = static_cast<T>(scale * total);
    if (shared_logvar && with_grad)
      as_ptr<T>(grad_logvar)[0] =
          static_cast<T>(shared_logvar_grad(sums, job.inv_var, D, [scale](int64_t) { return scale; }));
    return 0;
  });
}

void gaussian_log_likelihood_backward(addr grad_mean, addr grad_logvar, addr grad_out, addr x, addr mean,
                                      addr logvar, int64_t R, int64_t B, int64_t D, bool shared_logvar,
                                      int reduction, double scale, int dtype, int nthreads) {
  // With a shared log-variance the pass also returns the row sums of squares its gradient needs.
  GaussianJob job =
      make_job(kBwdRow, x, mean, logvar, grad_mean, grad_logvar, R, B, D, shared_logvar, scale, dtype);
  job.grad_out = as_ptr<const void>(grad_out);
  job.upstream_total = reduction == kReductionSum;
  std::vector<double> sums(shared_logvar ? static_cast<size_t>(R) : 0);
  job.sums = sums.data();
  run(job, nthreads);
  if (!shared_logvar) return;
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    const T* go = as_ptr<const T>(grad_out);
    as_ptr<T>(grad_logvar)[0] = static_cast<T>(shared_logvar_grad(sums, job.inv_var, D, [&](int64_t r) {
      return static_cast<double>(go[reduction == kReductionSum ? 0 : r]) * scale;
    }));
    return 0;
  });
}

}  // namespace fastaevb
#endif  // HWY_ONCE

// The location-scale decoders (row_job.h's forms), forward and backward, as Highway vector code
// for every SIMD target: the Gaussian decoder (Appendix C.2) here and the error decoders'
// entries (error_log_likelihood.cpp) share this one row kernel and driver,
//   ll = -sum_d (a |x - m|^p exp(-s) + a s + c),
// with the log-scale s per element (R, D) or one shared value. Shared: a row needs only
// S = sum_d |x - m|^p, and
//   ll_row = -a (D (c / a + s) + S exp(-s)),  dll_row/ds = -a (D - S exp(-s)).
// dll/ds cancels (D ~ S exp(-s) once the scale fits), so the driver combines the row sums and
// takes exp(-s) (one scalar) in double.
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

template <int kMode, bool kShared, int kForm, class T>
void RowsT(const LocScaleJob& job, int64_t r0, int64_t r1) {
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
        acc = AddLanes<kTail>(d, acc, Error<kForm>(d, diff), count);  // backward needs it too
        if constexpr (kMode != kFwdSum)
          StoreAt<kTail>(d, hn::Mul(up_v, Slope<kForm>(d, diff)), gm + at, i, count);
      } else {
        const auto t = LocScale<kForm>(d, xv, m, LoadAt<kTail>(d, log_scale + at, i, count));
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

template <bool kShared, int kForm, class T>
void RowsByMode(const LocScaleJob& job, int64_t r0, int64_t r1) {
  if (job.mode == kFwdSum) return RowsT<kFwdSum, kShared, kForm, T>(job, r0, r1);
  if (job.mode == kFwdSumGrad) return RowsT<kFwdSumGrad, kShared, kForm, T>(job, r0, r1);
  return RowsT<kBwdRow, kShared, kForm, T>(job, r0, r1);
}

template <int kForm, class T>
void RowsByLayout(const LocScaleJob& job, int64_t r0, int64_t r1) {
  if (job.shared)
    RowsByMode<true, kForm, T>(job, r0, r1);
  else
    RowsByMode<false, kForm, T>(job, r0, r1);
}

template <class T>
void RowsByForm(const LocScaleJob& job, int64_t r0, int64_t r1) {
  if (job.form == kGaussianForm)
    RowsByLayout<kGaussianForm, T>(job, r0, r1);
  else if (job.form == kSqErrorForm)
    RowsByLayout<kSqErrorForm, T>(job, r0, r1);
  else
    RowsByLayout<kAbsErrorForm, T>(job, r0, r1);
}

void LocScaleRows(const LocScaleJob& job, int64_t r0, int64_t r1) {
  dispatch_float(job.dtype, [&](auto t) { RowsByForm<decltype(t)>(job, r0, r1); });
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
HWY_EXPORT(LocScaleRows);

void location_scale_rows(const LocScaleJob& job, int64_t r0, int64_t r1) {
  HWY_DYNAMIC_DISPATCH(LocScaleRows)(job, r0, r1);
}

namespace {
constexpr double kNsPerElement = 1.2;  // single thread, float32, per-element log-variance (bench/)

LocScaleJob make_job(int mode, addr x, addr mean, addr log_scale, addr grad_mean, addr grad_log_scale,
                     int64_t R, int64_t B, int64_t D, bool shared, double scale, int form, int dtype) {
  LocScaleJob job{};
  job.rows = {R, B, D, R * D};
  job.mode = mode;
  job.dtype = dtype;
  job.form = form;
  job.shared = shared;
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

void run(const LocScaleJob& job, int nthreads) {
  const auto kernel = HWY_DYNAMIC_DISPATCH(LocScaleRows);
  parallel_for(job.rows.R, job.rows.total * kNsPerElement * (job.dtype + 1), nthreads,
               [&](int64_t r0, int64_t r1) { kernel(job, r0, r1); });
}

// sum_r upstream(r) * dll_row/ds for the shared log-scale, in double, row order.
template <class W>
double shared_log_scale_grad(const LocScaleJob& job, const std::vector<double>& sums, W&& upstream) {
  double total = 0.0;
  for (size_t r = 0; r < sums.size(); ++r)
    total += upstream(static_cast<int64_t>(r)) * location_scale_row_dlog_scale(job, sums[r]);
  return total;
}
}  // namespace

void location_scale_forward(addr out, addr grad_mean, addr grad_log_scale, addr x, addr mean, addr log_scale,
                            int64_t R, int64_t B, int64_t D, bool shared, int reduction, double scale,
                            int form, bool with_grad, int dtype, int nthreads) {
  LocScaleJob job = make_job(with_grad ? kFwdSumGrad : kFwdSum, x, mean, log_scale, grad_mean, grad_log_scale,
                             R, B, D, shared, scale, form, dtype);
  std::vector<double> sums(static_cast<size_t>(R));
  job.sums = sums.data();
  run(job, nthreads);
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    T* o = as_ptr<T>(out);
    const double s = shared ? static_cast<double>(as_ptr<const T>(log_scale)[0]) : 0.0;
    double total = 0.0;
    for (int64_t r = 0; r < R; ++r) {
      const double row = location_scale_row(job, sums[r], s);
      if (reduction == kReductionRows)
        o[r] = static_cast<T>(scale * row);
      else
        total += row;
    }
    if (reduction == kReductionSum) o[0] = static_cast<T>(scale * total);
    if (shared && with_grad)
      as_ptr<T>(grad_log_scale)[0] =
          static_cast<T>(shared_log_scale_grad(job, sums, [scale](int64_t) { return scale; }));
    return 0;
  });
}

void location_scale_backward(addr grad_mean, addr grad_log_scale, addr grad_out, addr x, addr mean,
                             addr log_scale, int64_t R, int64_t B, int64_t D, bool shared, int reduction,
                             double scale, int form, int dtype, int nthreads) {
  // With a shared log-scale the pass also returns the row sums its gradient needs.
  LocScaleJob job =
      make_job(kBwdRow, x, mean, log_scale, grad_mean, grad_log_scale, R, B, D, shared, scale, form, dtype);
  job.grad_out = as_ptr<const void>(grad_out);
  job.upstream_total = reduction == kReductionSum;
  std::vector<double> sums(shared ? static_cast<size_t>(R) : 0);
  job.sums = sums.data();
  run(job, nthreads);
  if (!shared) return;
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    const T* go = as_ptr<const T>(grad_out);
    as_ptr<T>(grad_log_scale)[0] = static_cast<T>(shared_log_scale_grad(job, sums, [&](int64_t r) {
      return static_cast<double>(go[reduction == kReductionSum ? 0 : r]) * scale;
    }));
    return 0;
  });
}

void gaussian_log_likelihood_forward(addr out, addr grad_mean, addr grad_logvar, addr x, addr mean,
                                     addr logvar, int64_t R, int64_t B, int64_t D, bool shared_logvar,
                                     int reduction, double scale, bool with_grad, int dtype, int nthreads) {
  location_scale_forward(out, grad_mean, grad_logvar, x, mean, logvar, R, B, D, shared_logvar, reduction,
                         scale, kGaussianForm, with_grad, dtype, nthreads);
}

void gaussian_log_likelihood_backward(addr grad_mean, addr grad_logvar, addr grad_out, addr x, addr mean,
                                      addr logvar, int64_t R, int64_t B, int64_t D, bool shared_logvar,
                                      int reduction, double scale, int dtype, int nthreads) {
  location_scale_backward(grad_mean, grad_logvar, grad_out, x, mean, logvar, R, B, D, shared_logvar,
                          reduction, scale, kGaussianForm, dtype, nthreads);
}

}  // namespace fastaevb
#endif  // HWY_ONCE

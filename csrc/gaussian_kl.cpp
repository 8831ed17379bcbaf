// Analytic Gaussian KL(q(z|x) || N(0, I)) per row (Appendix B), forward and backward, as
// Highway vector code compiled for every SIMD target and picked at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "gaussian_kl.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "parallel.h"
#include "row_job.h"
#include "simd_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace fastaevb {
namespace HWY_NAMESPACE {

template <int kMode, class T>
void RowsT(const KLJob& job, int64_t r0, int64_t r1) {
  using DT = hn::ScalableTag<T>;
  const DT d;
  const int64_t J = job.rows.D;
  const T* mu = static_cast<const T*>(job.mu);
  const T* logvar = static_cast<const T*>(job.logvar);
  const T* go = static_cast<const T*>(job.grad_out);
  T* gmu = static_cast<T*>(job.grad_mu);
  T* glv = static_cast<T*>(job.grad_logvar);
  const T scale = static_cast<T>(job.scale);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t at = r * J;
    V<DT> up = hn::Set(d, scale);
    if constexpr (kMode == kBwdRow) up = hn::Set(d, scale * go[job.upstream_total ? 0 : r]);
    const V<DT> half_up = hn::Mul(hn::Set(d, 0.5), up);
    V<DT> acc = hn::Zero(d);
    ForEachVector(d, static_cast<size_t>(J), [&](size_t i, size_t count, auto tail) {
      constexpr bool kTail = decltype(tail)::value;
      const auto m = LoadAt<kTail>(d, mu + at, i, count);
      const auto t = KL(d, m, LoadAt<kTail>(d, logvar + at, i, count));
      if constexpr (kMode != kBwdRow) acc = AddLanes<kTail>(d, acc, t.kl2, count);
      if constexpr (kMode != kFwdSum) {
        StoreAt<kTail>(d, hn::Mul(up, m), gmu + at, i, count);
        StoreAt<kTail>(d, hn::Mul(half_up, t.em1), glv + at, i, count);
      }
    });
    if constexpr (kMode != kBwdRow) job.sums[r] = hn::GetLane(hn::SumOfLanes(d, acc));
  }
}

template <class T>
void RowsByMode(const KLJob& job, int64_t r0, int64_t r1) {
  if (job.mode == kFwdSum) return RowsT<kFwdSum, T>(job, r0, r1);
  if (job.mode == kFwdSumGrad) return RowsT<kFwdSumGrad, T>(job, r0, r1);
  return RowsT<kBwdRow, T>(job, r0, r1);
}

void KLRows(const KLJob& job, int64_t r0, int64_t r1) {
  dispatch_float(job.dtype, [&](auto t) { RowsByMode<decltype(t)>(job, r0, r1); });
}

}  // namespace HWY_NAMESPACE
}  // namespace fastaevb
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace fastaevb {
HWY_EXPORT(KLRows);

namespace {
constexpr double kNsPerElement = 1.5;  // single thread, float32, measured (bench/)

void run(const KLJob& job, int nthreads) {
  const auto kernel = HWY_DYNAMIC_DISPATCH(KLRows);
  parallel_for(job.rows.R, job.rows.total * kNsPerElement * (job.dtype + 1), nthreads,
               [&](int64_t r0, int64_t r1) { kernel(job, r0, r1); });
}
}  // namespace

void gaussian_kl_forward(addr out, addr grad_mu, addr grad_logvar, addr mu, addr logvar, int64_t R, int64_t J,
                         int reduction, double scale, bool with_grad, int dtype, int nthreads) {
  std::vector<double> sums(static_cast<size_t>(R));
  KLJob job{};
  job.rows = {R, R, J, R * J};
  job.mode = with_grad ? kFwdSumGrad : kFwdSum;
  job.dtype = dtype;
  job.scale = scale;
  job.mu = as_ptr<const void>(mu);
  job.logvar = as_ptr<const void>(logvar);
  job.grad_mu = as_ptr<void>(grad_mu);
  job.grad_logvar = as_ptr<void>(grad_logvar);
  job.sums = sums.data();
  run(job, nthreads);
  // KL = 0.5 * sum kl2, then scaled, per row or in total (row order: deterministic).
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    T* o = as_ptr<T>(out);
    double total = 0.0;
    for (int64_t r = 0; r < R; ++r) {
      if (reduction == kReductionRows)
        o[r] = static_cast<T>(scale * 0.5 * sums[r]);
      else
        total += sums[r];
    }
    if (reduction == kReductionSum) o[0] = static_cast<T>(scale * 0.5 * total);
    return 0;
  });
}

void gaussian_kl_backward(addr grad_mu, addr grad_logvar, addr grad_out, addr mu, addr logvar, int64_t R,
                          int64_t J, int reduction, double scale, int dtype, int nthreads) {
  KLJob job{};
  job.rows = {R, R, J, R * J};
  job.mode = kBwdRow;
  job.dtype = dtype;
  job.scale = scale;
  job.mu = as_ptr<const void>(mu);
  job.logvar = as_ptr<const void>(logvar);
  job.grad_mu = as_ptr<void>(grad_mu);
  job.grad_logvar = as_ptr<void>(grad_logvar);
  job.grad_out = as_ptr<const void>(grad_out);
  job.upstream_total = reduction == kReductionSum;
  run(job, nthreads);
}

}  // namespace fastaevb
#endif  // HWY_ONCE

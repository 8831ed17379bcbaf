// Bernoulli decoder log-likelihood (Appendix C.1), from logits or from probabilities (exactly
// -F.binary_cross_entropy), forward and backward, in one pass over (R, D): the row sums, the
// out-of-range counts and, for a scalar result, the gradient come out of the same loop.
// Compiled for every SIMD target by Highway; the best one is picked at run time.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bernoulli.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "parallel.h"
#include "row_job.h"
#include "simd_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace fastaevb {
namespace HWY_NAMESPACE {

// ll and dll/d(input) of either parameterization; the unused one is dead code after inlining.
template <bool kProbs, class D>
HWY_INLINE LLGrad<D> Term(D d, V<D> in, V<D> x) {
  if constexpr (kProbs)
    return {BernoulliProbsLL(d, in, x), BernoulliProbsGrad(d, in, x)};
  else
    return BernoulliLogits(d, in, x);
}

template <bool kProbs, int kMode, class T, class X>
void RowsT(const BernoulliJob& job, int64_t r0, int64_t r1, int64_t* bad) {
  using DT = hn::ScalableTag<T>;
  const DT d;
  constexpr bool kForward = kMode <= kFwdSumGrad;
  const Rows& rows = job.rows;
  const T* in = static_cast<const T*>(job.in);
  const X* x = static_cast<const X*>(job.x);
  const T* go = static_cast<const T*>(job.grad_out);
  T* out = static_cast<T*>(job.out);
  T* grad = static_cast<T*>(job.grad);
  const T scale = static_cast<T>(job.scale);
  int64_t bad_in = 0, bad_x = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const size_t n = static_cast<size_t>(rows.length(r));
    const int64_t at = r * rows.D;
    const X* xr = x + (r % rows.B) * rows.D;
    const bool check_x = kForward && r < rows.B;  // later rows re-read the same data
    V<DT> acc = hn::Zero(d);
    V<DT> up = hn::Set(d, scale);
    if constexpr (kMode == kBwdRow) up = hn::Set(d, scale * go[job.upstream_total ? 0 : r]);
    ForEachVector(d, n, [&](size_t i, size_t count, auto tail) {
      constexpr bool kTail = decltype(tail)::value;
      const auto v = LoadAt<kTail>(d, in + at, i, count);
      const auto xv = LoadTarget<kTail>(d, xr, i, count);
      if (check_x) bad_x += CountOutOfUnit(d, xv);
      if constexpr (kForward && kProbs) bad_in += CountOutOfUnit(d, v);
      const auto t = Term<kProbs>(d, v, xv);
      if constexpr (kMode == kFwdElements) StoreAt<kTail>(d, hn::Mul(up, t.ll), out + at, i, count);
      if constexpr (kMode == kFwdSum || kMode == kFwdSumGrad) acc = AddLanes<kTail>(d, acc, t.ll, count);
      if constexpr (kMode == kFwdSumGrad || kMode == kBwdRow)
        StoreAt<kTail>(d, hn::Mul(up, t.dl), grad + at, i, count);
      if constexpr (kMode == kBwdElements) {
        const auto g = hn::Mul(up, LoadAt<kTail>(d, go + at, i, count));
        StoreAt<kTail>(d, hn::Mul(g, t.dl), grad + at, i, count);
      }
    });
    if constexpr (kMode == kFwdSum || kMode == kFwdSumGrad) job.sums[r] = hn::GetLane(hn::SumOfLanes(d, acc));
  }
  bad[0] += bad_in;
  bad[1] += bad_x;
}

template <bool kProbs, class T, class X>
void RowsByMode(const BernoulliJob& job, int64_t r0, int64_t r1, int64_t* bad) {
  switch (job.mode) {
    case kFwdElements:
      return RowsT<kProbs, kFwdElements, T, X>(job, r0, r1, bad);
    case kFwdSum:
      return RowsT<kProbs, kFwdSum, T, X>(job, r0, r1, bad);
    case kFwdSumGrad:
      return RowsT<kProbs, kFwdSumGrad, T, X>(job, r0, r1, bad);
    case kBwdRow:
      return RowsT<kProbs, kBwdRow, T, X>(job, r0, r1, bad);
    default:
      return RowsT<kProbs, kBwdElements, T, X>(job, r0, r1, bad);
  }
}

template <bool kProbs>
void RowsByType(const BernoulliJob& job, int64_t r0, int64_t r1, int64_t* bad) {
  dispatch_float(job.dtype, [&](auto t) {
    using T = decltype(t);
    if (job.xtype == 0) return RowsByMode<kProbs, T, T>(job, r0, r1, bad);
    return RowsByMode<kProbs, T, uint8_t>(job, r0, r1, bad);
  });
}

// Rows [r0, r1) of `job`; adds (out-of-range inputs, out-of-range targets) to bad[0], bad[1].
void BernoulliRows(const BernoulliJob& job, int64_t r0, int64_t r1, int64_t* bad) {
  if (job.probs)
    RowsByType<true>(job, r0, r1, bad);
  else
    RowsByType<false>(job, r0, r1, bad);
}

}  // namespace HWY_NAMESPACE
}  // namespace fastaevb
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <atomic>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace fastaevb {
HWY_EXPORT(BernoulliRows);

namespace {

// Single-thread cost per element (ns), measured with bench/ on a 2-core Zen 3 (AVX2): it only
// decides how many threads a call gets.
double ns_per_element(bool probs, int dtype) { return (probs ? 3.0 : 1.5) * (dtype == 1 ? 2.0 : 1.0); }

// Rows of the kernels: the caller's (R, D), or flat chunks when per-row results are not needed
// and the data is not broadcast (a few huge rows then still spread over the threads).
Rows layout(int64_t R, int64_t B, int64_t D, int reduce) {
  constexpr int64_t kChunk = 4096;
  if (reduce != kRows && R == B && D > kChunk) {
    const int64_t total = R * D;
    const int64_t chunks = (total + kChunk - 1) / kChunk;
    return {chunks, chunks, kChunk, total};
  }
  return {R, B, D, R * D};
}

std::pair<int64_t, int64_t> run(BernoulliJob& job, int nthreads) {
  std::atomic<int64_t> bad_in{0}, bad_x{0};
  const auto kernel = HWY_DYNAMIC_DISPATCH(BernoulliRows);
  parallel_for(job.rows.R, job.rows.total * ns_per_element(job.probs, job.dtype), nthreads,
               [&](int64_t r0, int64_t r1) {
                 int64_t bad[2] = {0, 0};
                 kernel(job, r0, r1, bad);
                 bad_in += bad[0];
                 bad_x += bad[1];
               });
  return {bad_in.load(), bad_x.load()};
}

// out[r] = scale * sums[r] ('rows') or out[0] = scale * sum_r sums[r] in row order ('total').
void write_reduced(addr out, const std::vector<double>& sums, int reduce, double scale, int dtype) {
  double total = 0.0;
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    T* o = as_ptr<T>(out);
    if (reduce == kRows) {
      for (size_t r = 0; r < sums.size(); ++r) o[r] = static_cast<T>(scale * sums[r]);
    } else {
      for (double s : sums) total += s;
      o[0] = static_cast<T>(scale * total);
    }
    return 0;
  });
}

std::pair<int64_t, int64_t> forward(bool probs, addr out, addr grad, addr in, addr x, int64_t R, int64_t B,
                                    int64_t D, int reduce, double scale, bool with_grad, int dtype, int xtype,
                                    int nthreads) {
  BernoulliJob job{};
  job.rows = layout(R, B, D, reduce);
  job.mode = reduce == kElements ? kFwdElements : (with_grad ? kFwdSumGrad : kFwdSum);
  job.dtype = dtype;
  job.xtype = xtype;
  job.probs = probs;
  job.scale = scale;
  job.in = as_ptr<const void>(in);
  job.x = as_ptr<const void>(x);
  job.out = as_ptr<void>(out);
  job.grad = as_ptr<void>(grad);
  std::vector<double> sums(reduce == kElements ? 0 : static_cast<size_t>(job.rows.R));
  job.sums = sums.data();
  const auto bad = run(job, nthreads);
  if (reduce != kElements) write_reduced(out, sums, reduce, scale, dtype);
  return bad;
}

void backward(bool probs, addr grad, addr grad_out, addr in, addr x, int64_t R, int64_t B, int64_t D,
              int reduce, double scale, int dtype, int xtype, int nthreads) {
  BernoulliJob job{};
  job.rows = layout(R, B, D, reduce);
  job.mode = reduce == kElements ? kBwdElements : kBwdRow;
  job.dtype = dtype;
  job.xtype = xtype;
  job.probs = probs;
  job.scale = scale;
  job.in = as_ptr<const void>(in);
  job.x = as_ptr<const void>(x);
  job.grad = as_ptr<void>(grad);
  job.grad_out = as_ptr<const void>(grad_out);
  job.upstream_total = reduce == kTotal;
  run(job, nthreads);
}

}  // namespace

int64_t bernoulli_logits_forward(addr out, addr grad, addr logits, addr x, int64_t R, int64_t B, int64_t D,
                                 int reduce, double scale, bool with_grad, int dtype, int xtype,
                                 int nthreads) {
  return forward(false, out, grad, logits, x, R, B, D, reduce, scale, with_grad, dtype, xtype, nthreads)
      .second;
}

void bernoulli_logits_backward(addr grad, addr grad_out, addr logits, addr x, int64_t R, int64_t B, int64_t D,
                               int reduce, double scale, int dtype, int xtype, int nthreads) {
  backward(false, grad, grad_out, logits, x, R, B, D, reduce, scale, dtype, xtype, nthreads);
}

std::pair<int64_t, int64_t> bernoulli_probs_forward(addr out, addr grad, addr probs, addr x, int64_t R,
                                                    int64_t B, int64_t D, int reduce, double scale,
                                                    bool with_grad, int dtype, int xtype, int nthreads) {
  return forward(true, out, grad, probs, x, R, B, D, reduce, scale, with_grad, dtype, xtype, nthreads);
}

void bernoulli_probs_backward(addr grad, addr grad_out, addr probs, addr x, int64_t R, int64_t B, int64_t D,
                              int reduce, double scale, int dtype, int xtype, int nthreads) {
  backward(true, grad, grad_out, probs, x, R, B, D, reduce, scale, dtype, xtype, nthreads);
}

}  // namespace fastaevb
#endif  // HWY_ONCE

// Bernoulli decoder log-likelihood (Appendix C.1), from logits or from probabilities (exactly
// -F.binary_cross_entropy), forward and backward, in one pass over (R, D): the row sums, the
// out-of-range counts and, for a scalar result, the gradient come out of the same loop.
// Compiled for every SIMD target by Highway; the best one is picked at run time.
#include <type_traits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "bernoulli_log_likelihood.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "parallel.h"
#include "row_job.h"
#include "simd_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace fastaevb {
namespace HWY_NAMESPACE {

// ll, dll/d(input) and dll/dx of one vector: the plain forms, or the drop-ins' pos-weighted
// one (kPos, q the pos_weight); dx is only computed when kTargetGrad (else a dead placeholder).
template <bool kProbs, bool kPos, bool kTargetGrad, class D>
HWY_INLINE LLGrads<D> Terms(D d, V<D> in, V<D> x, V<D> q) {
  if constexpr (kPos) {
    return BernoulliLogitsPosWeight(d, in, x, q);
  } else if constexpr (kProbs) {
    V<D> dx = in;
    if constexpr (kTargetGrad) dx = BernoulliProbsTargetGrad(d, in);
    return {BernoulliProbsLL(d, in, x), BernoulliProbsGrad(d, in, x), dx};
  } else {
    const auto t = BernoulliLogits(d, in, x);
    return {t.ll, t.dl, in};  // dll/dx = l
  }
}

template <bool kProbs, int kMode, class T, class X, int kExtras>
void RowsT(const BernoulliJob& job, int64_t r0, int64_t r1, int64_t* bad) {
  using DT = hn::ScalableTag<T>;
  const DT d;
  constexpr bool kForward = kMode <= kFwdSumGrad;
  constexpr bool kPos = (kExtras & kPosWeight) != 0, kTgt = (kExtras & kTargetGrad) != 0;
  const Rows& rows = job.rows;
  const T* in = static_cast<const T*>(job.in);
  const X* x = static_cast<const X*>(job.x);
  const T* go = static_cast<const T*>(job.grad_out);
  T* out = static_cast<T*>(job.out);
  T* grad = static_cast<T*>(job.grad);
  T* grad_x = static_cast<T*>(job.grad_x);
  const T* weight = static_cast<const T*>(job.weight.data);
  const T* pos_weight = static_cast<const T*>(job.pos_weight.data);
  const T scale = static_cast<T>(job.scale);
  int64_t bad_in = 0, bad_x = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const size_t n = static_cast<size_t>(rows.length(r));
    const int64_t at = r * rows.D;
    const X* xr = x + (r % rows.B) * rows.D;
    const T* wr = kExtras ? weight + r * job.weight.row_stride : nullptr;
    const T* qr = kPos ? pos_weight + r * job.pos_weight.row_stride : nullptr;
    const bool check_x = kForward && r < rows.B;  // later rows re-read the same data
    V<DT> acc = hn::Zero(d);
    V<DT> up = hn::Set(d, scale);
    if constexpr (kMode == kBwdRow) up = hn::Set(d, scale * go[job.upstream_total ? 0 : r]);
    ForEachVector(d, n, [&](size_t i, size_t count, auto tail) {
      constexpr bool kTail = decltype(tail)::value;
      const auto v = LoadAt<kTail>(d, in + at, i, count);
      const auto xv = LoadTarget<kTail>(d, xr, i, count);
      if (check_x) bad_x += CountOutOfUnit(d, xv);
      // probabilities outside [0, 1] are an error; logits all inside it look like probabilities
      // (sgvb_loss warns), counted in the sum modes of the loss only
      if constexpr (kForward && (kProbs || kMode != kFwdElements)) bad_in += CountOutOfUnit(d, v);
      const auto q = kPos ? LoadFactor<kTail>(d, qr, job.pos_weight.col_stride, i, count) : v;
      auto t = Terms<kProbs, kPos, kTgt>(d, v, xv, q);
      if constexpr (kExtras != 0) {  // weight (1 when only pos_weight / the target gradient is asked for)
        const auto w = LoadFactor<kTail>(d, wr, job.weight.col_stride, i, count);
        t = {hn::Mul(t.ll, w), hn::Mul(t.dl, w), kTgt ? hn::Mul(t.dx, w) : t.dx};
      }
      if constexpr (kMode == kFwdElements) StoreAt<kTail>(d, hn::Mul(up, t.ll), out + at, i, count);
      if constexpr (kMode == kFwdSum || kMode == kFwdSumGrad) acc = AddLanes<kTail>(d, acc, t.ll, count);
      if constexpr (kMode == kFwdSumGrad || kMode == kBwdRow) {
        StoreAt<kTail>(d, hn::Mul(up, t.dl), grad + at, i, count);
        if constexpr (kTgt) StoreAt<kTail>(d, hn::Mul(up, t.dx), grad_x + at, i, count);
      }
      if constexpr (kMode == kBwdElements) {
        const auto g = hn::Mul(up, LoadAt<kTail>(d, go + at, i, count));
        StoreAt<kTail>(d, hn::Mul(g, t.dl), grad + at, i, count);
        if constexpr (kTgt) StoreAt<kTail>(d, hn::Mul(g, t.dx), grad_x + at, i, count);
      }
    });
    if constexpr (kMode == kFwdSum || kMode == kFwdSumGrad) job.sums[r] = hn::GetLane(hn::SumOfLanes(d, acc));
  }
  bad[0] += bad_in;
  bad[1] += bad_x;
}

// The drop-ins' extras (job.extras) as template flags; only the combinations that can occur are
// compiled: pos_weight with logits, the target gradient with float targets in modes with gradients.
template <bool kProbs, int kMode, class T, class X>
void RowsByExtras(const BernoulliJob& job, int64_t r0, int64_t r1, int64_t* bad) {
  constexpr bool kCanTgt = kMode != kFwdElements && kMode != kFwdSum && std::is_same_v<T, X>;
  const int e = job.extras;
  if (e == 0) return RowsT<kProbs, kMode, T, X, 0>(job, r0, r1, bad);
  if constexpr (!kProbs) {
    if (e & kPosWeight) {
      if constexpr (kCanTgt)
        if (e & kTargetGrad)
          return RowsT<kProbs, kMode, T, X, kWeighted | kPosWeight | kTargetGrad>(job, r0, r1, bad);
      return RowsT<kProbs, kMode, T, X, kWeighted | kPosWeight>(job, r0, r1, bad);
    }
  }
  if constexpr (kCanTgt)
    if (e & kTargetGrad) return RowsT<kProbs, kMode, T, X, kWeighted | kTargetGrad>(job, r0, r1, bad);
  return RowsT<kProbs, kMode, T, X, kWeighted>(job, r0, r1, bad);
}

template <bool kProbs, class T, class X>
void RowsByMode(const BernoulliJob& job, int64_t r0, int64_t r1, int64_t* bad) {
  switch (job.mode) {
    case kFwdElements:
      return RowsByExtras<kProbs, kFwdElements, T, X>(job, r0, r1, bad);
    case kFwdSum:
      return RowsByExtras<kProbs, kFwdSum, T, X>(job, r0, r1, bad);
    case kFwdSumGrad:
      return RowsByExtras<kProbs, kFwdSumGrad, T, X>(job, r0, r1, bad);
    case kBwdRow:
      return RowsByExtras<kProbs, kBwdRow, T, X>(job, r0, r1, bad);
    default:
      return RowsByExtras<kProbs, kBwdElements, T, X>(job, r0, r1, bad);
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
#include <stdexcept>
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace fastaevb {
HWY_EXPORT(BernoulliRows);

void bernoulli_rows(const BernoulliJob& job, int64_t r0, int64_t r1, int64_t* bad) {
  HWY_DYNAMIC_DISPATCH(BernoulliRows)(job, r0, r1, bad);
}

namespace {

// Single-thread cost per element (ns), measured with bench/ on a 2-core Zen 3 (AVX2): it only
// decides how many threads a call gets.
double ns_per_element(bool probs, int dtype) { return (probs ? 3.0 : 1.5) * (dtype == 1 ? 2.0 : 1.0); }

// A factor is flat-indexable when element (r, c) sits at r * D * cs + c * cs: one value for all
// (strides 0) or the input's own layout (D, 1). Then it survives the flat chunks of `layout`.
bool flat_indexable(const Factor& f, int64_t R, int64_t D) {
  return !f.data || R <= 1 || f.row_stride == D * f.col_stride;
}

// Rows of the kernels: the caller's (R, D), or flat chunks when per-row results are not needed
// and the data is not broadcast (a few huge rows then still spread over the threads).
Rows layout(int64_t R, int64_t B, int64_t D, int reduction, const BernoulliExtras& extras) {
  constexpr int64_t kChunk = 4096;
  if (reduction != kReductionRows && R == B && D > kChunk && flat_indexable(extras.weight, R, D) &&
      flat_indexable(extras.pos_weight, R, D)) {
    const int64_t total = R * D;
    const int64_t chunks = (total + kChunk - 1) / kChunk;
    return {chunks, chunks, kChunk, total};
  }
  return {R, B, D, R * D};
}

// The extras of `job` (laid out as `job.rows`): flags, factor views in the row layout, grad_x.
// Any extra multiplies by a weight, 1 (a stride-0 constant) when none was given.
void set_extras(BernoulliJob& job, const BernoulliExtras& extras, int64_t D, bool with_grad) {
  static constexpr float kOneF = 1.0f;
  static constexpr double kOneD = 1.0;
  const bool target_grad = extras.grad_x != 0 && with_grad;
  const bool any = extras.weight.data || extras.pos_weight.data || target_grad;
  job.extras =
      any ? kWeighted | (extras.pos_weight.data ? kPosWeight : 0) | (target_grad ? kTargetGrad : 0) : 0;
  job.grad_x = as_ptr<void>(extras.grad_x);
  const auto view = [&](const Factor& f, const void* absent) -> FactorRows {
    if (!f.data) return {absent, 0, 0};
    // Chunked rows: element (r, c) of a chunk is flat element r * chunk + c.
    const int64_t row_stride = job.rows.D == D ? f.row_stride : job.rows.D * f.col_stride;
    return {as_ptr<const void>(f.data), row_stride, f.col_stride};
  };
  const void* one = job.dtype == 0 ? static_cast<const void*>(&kOneF) : static_cast<const void*>(&kOneD);
  job.weight = view(extras.weight, one);
  job.pos_weight = view(extras.pos_weight, one);
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
void write_reduced(addr out, const std::vector<double>& sums, int reduction, double scale, int dtype) {
  double total = 0.0;
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    T* o = as_ptr<T>(out);
    if (reduction == kReductionRows) {
      for (size_t r = 0; r < sums.size(); ++r) o[r] = static_cast<T>(scale * sums[r]);
    } else {
      for (double s : sums) total += s;
      o[0] = static_cast<T>(scale * total);
    }
    return 0;
  });
}

// The fields forward and backward share: layout, types, scale, input, target, gradient, extras.
BernoulliJob make_job(bool probs, addr grad, addr in, addr x, int64_t R, int64_t B, int64_t D, int reduction,
                      double scale, int dtype, int xtype, const BernoulliExtras& extras, bool with_grad) {
  BernoulliJob job{};
  job.rows = layout(R, B, D, reduction, extras);
  job.dtype = dtype;
  job.xtype = xtype;
  job.probs = probs;
  job.scale = scale;
  job.in = as_ptr<const void>(in);
  job.x = as_ptr<const void>(x);
  job.grad = as_ptr<void>(grad);
  set_extras(job, extras, D, with_grad);
  return job;
}

std::pair<int64_t, int64_t> forward(bool probs, addr out, addr grad, addr in, addr x, int64_t R, int64_t B,
                                    int64_t D, int reduction, double scale, bool with_grad, int dtype,
                                    int xtype, int nthreads, const BernoulliExtras& extras) {
  BernoulliJob job = make_job(probs, grad, in, x, R, B, D, reduction, scale, dtype, xtype, extras, with_grad);
  job.mode = reduction == kReductionNone ? kFwdElements : (with_grad ? kFwdSumGrad : kFwdSum);
  job.out = as_ptr<void>(out);
  std::vector<double> sums(reduction == kReductionNone ? 0 : static_cast<size_t>(job.rows.R));
  job.sums = sums.data();
  const auto bad = run(job, nthreads);
  if (reduction != kReductionNone) write_reduced(out, sums, reduction, scale, dtype);
  return bad;
}

void backward(bool probs, addr grad, addr grad_out, addr in, addr x, int64_t R, int64_t B, int64_t D,
              int reduction, double scale, int dtype, int xtype, int nthreads,
              const BernoulliExtras& extras) {
  BernoulliJob job = make_job(probs, grad, in, x, R, B, D, reduction, scale, dtype, xtype, extras, true);
  job.mode = reduction == kReductionNone ? kBwdElements : kBwdRow;
  job.grad_out = as_ptr<const void>(grad_out);
  job.upstream_total = reduction == kReductionSum;
  run(job, nthreads);
}

}  // namespace

std::pair<int64_t, int64_t> bernoulli_log_likelihood_forward(addr out, addr grad, addr logits, addr x,
                                                             int64_t R, int64_t B, int64_t D, int reduction,
                                                             double scale, bool with_grad, int dtype,
                                                             int xtype, int nthreads,
                                                             const BernoulliExtras& extras) {
  return forward(false, out, grad, logits, x, R, B, D, reduction, scale, with_grad, dtype, xtype, nthreads,
                 extras);
}

void bernoulli_log_likelihood_backward(addr grad, addr grad_out, addr logits, addr x, int64_t R, int64_t B,
                                       int64_t D, int reduction, double scale, int dtype, int xtype,
                                       int nthreads, const BernoulliExtras& extras) {
  backward(false, grad, grad_out, logits, x, R, B, D, reduction, scale, dtype, xtype, nthreads, extras);
}

std::pair<int64_t, int64_t> bernoulli_probs_log_likelihood_forward(
    addr out, addr grad, addr probs, addr x, int64_t R, int64_t B, int64_t D, int reduction, double scale,
    bool with_grad, int dtype, int xtype, int nthreads, const BernoulliExtras& extras) {
  if (extras.pos_weight.data) throw std::invalid_argument("fastaevb._C: pos_weight applies to logits only");
  return forward(true, out, grad, probs, x, R, B, D, reduction, scale, with_grad, dtype, xtype, nthreads,
                 extras);
}

void bernoulli_probs_log_likelihood_backward(addr grad, addr grad_out, addr probs, addr x, int64_t R,
                                             int64_t B, int64_t D, int reduction, double scale, int dtype,
                                             int xtype, int nthreads, const BernoulliExtras& extras) {
  if (extras.pos_weight.data) throw std::invalid_argument("fastaevb._C: pos_weight applies to logits only");
  backward(true, grad, grad_out, probs, x, R, B, D, reduction, scale, dtype, xtype, nthreads, extras);
}

}  // namespace fastaevb
#endif  // HWY_ONCE

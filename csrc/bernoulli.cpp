// Bernoulli decoder log-likelihood (Appendix C.1), from logits or from probabilities
// (exactly -F.binary_cross_entropy, logs clamped at -100), forward and backward.
// One pass over (R, D): the row sum, the out-of-range counts and, for reduce='total' with
// with_grad, the gradient are produced in the same loop. The row loops are written once,
// templated on the elementwise term (FromLogits / FromProbs); after inlining each
// instantiation is the same straight-line loop body gcc vectorizes.
#include <vector>

#include "kernels.h"
#include "row_reduce.h"
#include "sgvb_math.h"

namespace fastaevb {
namespace {

// ll = x*l - softplus(l), dl = x - sigmoid(l), both from one exp(-|l|). Any logit is valid:
// only targets are range-checked.
struct FromLogits {
  static constexpr bool kCheckInput = false;
  template <class T> static inline T ll(T l, T x) { return bernoulli_logits_term<T>(l, x).ll; }
  template <class T> static inline T dl(T l, T x) { return bernoulli_logits_term<T>(l, x).dl; }
  template <class T> static inline LLGrad<T> both(T l, T x) {
    return bernoulli_logits_term<T>(l, x);
  }
};

// ll = -BCE(p, x), dl = (x - p) / max(p (1 - p), 1e-12f). Probs outside [0, 1] are counted.
struct FromProbs {
  static constexpr bool kCheckInput = true;
  template <class T> static inline T ll(T p, T x) { return bernoulli_probs_term<T>(p, x); }
  template <class T> static inline T dl(T p, T x) { return bernoulli_probs_grad<T>(p, x); }
  template <class T> static inline LLGrad<T> both(T p, T x) {
    return {bernoulli_probs_term<T>(p, x), bernoulli_probs_grad<T>(p, x)};
  }
};

// Returns (out-of-range inputs, out-of-range targets); the first is 0 unless kCheckInput.
template <class Term, class T, class X>
std::pair<int64_t, int64_t> forward(T* out, T* grad, const T* in, const X* x, int64_t R,
                                    int64_t B, int64_t D, int reduce, double scale,
                                    bool with_grad, int nthreads) {
  const T s = static_cast<T>(scale);
  // Per row: reduce_rows carries one count, and no second reduction variable is needed.
  std::vector<int64_t> bad_in(Term::kCheckInput ? static_cast<size_t>(R) : 0, 0);
  const int64_t bad_x = reduce_rows<T>(R, R * D, reduce, scale, out, nthreads,
                                       [&](int64_t r, int64_t& bad) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = D;
    const T sc = s;
    const T* v = in + r * D;
    const X* xr = x + (r % B) * D;
    T acc = 0;
    int nbad_x = 0, nbad_in = 0;
    if (reduce == kElements) {
      T* o = out + r * D;
#pragma omp simd reduction(+ : nbad_x, nbad_in)
      for (int64_t d = 0; d < n; ++d) {
        o[d] = sc * Term::template ll<T>(v[d], static_cast<T>(xr[d]));
        if constexpr (Term::kCheckInput) nbad_in += out_of_range(v[d]);
        nbad_x += out_of_range(xr[d]);
      }
    } else if (with_grad) {
      T* g = grad + r * D;
#pragma omp simd reduction(+ : acc, nbad_x, nbad_in)
      for (int64_t d = 0; d < n; ++d) {
        const LLGrad<T> t = Term::template both<T>(v[d], static_cast<T>(xr[d]));
        acc += t.ll;
        g[d] = sc * t.dl;
        if constexpr (Term::kCheckInput) nbad_in += out_of_range(v[d]);
        nbad_x += out_of_range(xr[d]);
      }
    } else {
#pragma omp simd reduction(+ : acc, nbad_x, nbad_in)
      for (int64_t d = 0; d < n; ++d) {
        acc += Term::template ll<T>(v[d], static_cast<T>(xr[d]));
        if constexpr (Term::kCheckInput) nbad_in += out_of_range(v[d]);
        nbad_x += out_of_range(xr[d]);
      }
    }
    if (r < B) bad += nbad_x;  // broadcast rows r >= B re-read the same targets
    if constexpr (Term::kCheckInput) bad_in[r] = nbad_in;
    return acc;
  });
  int64_t total_bad_in = 0;
  for (int64_t c : bad_in) total_bad_in += c;
  return {total_bad_in, bad_x};
}

template <class Term, class T, class X>
void backward(T* grad, const T* grad_out, const T* in, const X* x, int64_t R, int64_t B,
              int64_t D, int reduce, double scale, int nthreads) {
  const T s = static_cast<T>(scale);
  parallel_rows(R, R * D, nthreads, [&](int64_t r) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = D;
    const T sc = s;
    const T* v = in + r * D;
    const X* xr = x + (r % B) * D;
    T* g = grad + r * D;
    if (reduce == kElements) {
      const T* go = grad_out + r * D;
#pragma omp simd
      for (int64_t d = 0; d < n; ++d) {
        g[d] = (go[d] * sc) * Term::template dl<T>(v[d], static_cast<T>(xr[d]));
      }
    } else {
      const T gr = row_upstream(grad_out, reduce, r, sc);
#pragma omp simd
      for (int64_t d = 0; d < n; ++d) {
        g[d] = gr * Term::template dl<T>(v[d], static_cast<T>(xr[d]));
      }
    }
  });
}

// The dtype/target dispatch of both entry points of one parameterization.
template <class Term>
std::pair<int64_t, int64_t> dispatch_forward(addr out, addr grad, addr in, addr x, int64_t R,
                                             int64_t B, int64_t D, int reduce, double scale,
                                             bool with_grad, int dtype, int xtype,
                                             int nthreads) {
  return dispatch_float_target(dtype, xtype, [&](auto t, auto xt) {
    using T = decltype(t);
    using X = decltype(xt);
    return forward<Term, T, X>(as_ptr<T>(out), as_ptr<T>(grad), as_ptr<const T>(in),
                               as_ptr<const X>(x), R, B, D, reduce, scale, with_grad, nthreads);
  });
}

template <class Term>
void dispatch_backward(addr grad, addr grad_out, addr in, addr x, int64_t R, int64_t B,
                       int64_t D, int reduce, double scale, int dtype, int xtype, int nthreads) {
  dispatch_float_target(dtype, xtype, [&](auto t, auto xt) {
    using T = decltype(t);
    using X = decltype(xt);
    backward<Term, T, X>(as_ptr<T>(grad), as_ptr<const T>(grad_out), as_ptr<const T>(in),
                         as_ptr<const X>(x), R, B, D, reduce, scale, nthreads);
  });
}

}  // namespace

int64_t bernoulli_logits_forward(addr out, addr grad, addr logits, addr x, int64_t R,
                                 int64_t B, int64_t D, int reduce, double scale,
                                 bool with_grad, int dtype, int xtype, int nthreads) {
  return dispatch_forward<FromLogits>(out, grad, logits, x, R, B, D, reduce, scale, with_grad,
                                      dtype, xtype, nthreads)
      .second;
}

void bernoulli_logits_backward(addr grad, addr grad_out, addr logits, addr x, int64_t R,
                               int64_t B, int64_t D, int reduce, double scale, int dtype,
                               int xtype, int nthreads) {
  dispatch_backward<FromLogits>(grad, grad_out, logits, x, R, B, D, reduce, scale, dtype,
                                xtype, nthreads);
}

std::pair<int64_t, int64_t> bernoulli_probs_forward(addr out, addr grad, addr probs, addr x,
                                                    int64_t R, int64_t B, int64_t D,
                                                    int reduce, double scale, bool with_grad,
                                                    int dtype, int xtype, int nthreads) {
  return dispatch_forward<FromProbs>(out, grad, probs, x, R, B, D, reduce, scale, with_grad,
                                     dtype, xtype, nthreads);
}

void bernoulli_probs_backward(addr grad, addr grad_out, addr probs, addr x, int64_t R,
                              int64_t B, int64_t D, int reduce, double scale, int dtype,
                              int xtype, int nthreads) {
  dispatch_backward<FromProbs>(grad, grad_out, probs, x, R, B, D, reduce, scale, dtype, xtype,
                               nthreads);
}

}  // namespace fastaevb

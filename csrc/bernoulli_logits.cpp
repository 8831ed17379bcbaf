// Bernoulli decoder log-likelihood from logits (Appendix C.1), forward and backward.
// One pass over (R, D): the row sum, the target range count and, for reduce='total' with
// with_grad, the gradient are produced in the same loop.
#include "kernels.h"
#include "row_reduce.h"
#include "sgvb_math.h"

namespace fastaevb {
namespace {

template <class T, class X>
int64_t forward(T* out, T* grad, const T* logits, const X* x, int64_t R, int64_t B, int64_t D,
                int reduce, double scale, bool with_grad, int nthreads) {
  const T s = static_cast<T>(scale);
  return reduce_rows<T>(R, R * D, reduce, scale, out, nthreads, [&](int64_t r, int64_t& bad) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = D;
    const T sc = s;
    const T* l = logits + r * D;
    const X* xr = x + (r % B) * D;
    T acc = 0;
    int nbad = 0;
    if (reduce == kElements) {
      T* o = out + r * D;
#pragma omp simd reduction(+ : nbad)
      for (int64_t d = 0; d < n; ++d) {
        o[d] = sc * bernoulli_logits_term<T>(l[d], static_cast<T>(xr[d])).ll;
        nbad += out_of_range(xr[d]);
      }
    } else if (with_grad) {
      T* g = grad + r * D;
#pragma omp simd reduction(+ : acc, nbad)
      for (int64_t d = 0; d < n; ++d) {
        const LLGrad<T> t = bernoulli_logits_term<T>(l[d], static_cast<T>(xr[d]));
        acc += t.ll;
        g[d] = sc * t.dl;
        nbad += out_of_range(xr[d]);
      }
    } else {
#pragma omp simd reduction(+ : acc, nbad)
      for (int64_t d = 0; d < n; ++d) {
        acc += bernoulli_logits_term<T>(l[d], static_cast<T>(xr[d])).ll;
        nbad += out_of_range(xr[d]);
      }
    }
    if (r < B) bad += nbad;  // broadcast rows r >= B re-read the same targets
    return acc;
  });
}

template <class T, class X>
void backward(T* grad, const T* grad_out, const T* logits, const X* x, int64_t R, int64_t B,
              int64_t D, int reduce, double scale, int nthreads) {
  const T s = static_cast<T>(scale);
  parallel_rows(R, R * D, nthreads, [&](int64_t r) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = D;
    const T sc = s;
    const T* l = logits + r * D;
    const X* xr = x + (r % B) * D;
    T* g = grad + r * D;
    if (reduce == kElements) {
      const T* go = grad_out + r * D;
#pragma omp simd
      for (int64_t d = 0; d < n; ++d) {
        g[d] = (go[d] * sc) * bernoulli_logits_term<T>(l[d], static_cast<T>(xr[d])).dl;
      }
    } else {
      const T gr = row_upstream(grad_out, reduce, r, sc);
#pragma omp simd
      for (int64_t d = 0; d < n; ++d) {
        g[d] = gr * bernoulli_logits_term<T>(l[d], static_cast<T>(xr[d])).dl;
      }
    }
  });
}

}  // namespace

int64_t bernoulli_logits_forward(addr out, addr grad, addr logits, addr x, int64_t R,
                                 int64_t B, int64_t D, int reduce, double scale,
                                 bool with_grad, int dtype, int xtype, int nthreads) {
  return dispatch_float_target(dtype, xtype, [&](auto t, auto xt) {
    using T = decltype(t);
    using X = decltype(xt);
    return forward<T, X>(as_ptr<T>(out), as_ptr<T>(grad), as_ptr<const T>(logits),
                         as_ptr<const X>(x), R, B, D, reduce, scale, with_grad, nthreads);
  });
}

void bernoulli_logits_backward(addr grad, addr grad_out, addr logits, addr x, int64_t R,
                               int64_t B, int64_t D, int reduce, double scale, int dtype,
                               int xtype, int nthreads) {
  dispatch_float_target(dtype, xtype, [&](auto t, auto xt) {
    using T = decltype(t);
    using X = decltype(xt);
    backward<T, X>(as_ptr<T>(grad), as_ptr<const T>(grad_out), as_ptr<const T>(logits),
                   as_ptr<const X>(x), R, B, D, reduce, scale, nthreads);
  });
}

}  // namespace fastaevb

// Bernoulli decoder log-likelihood from probabilities: exactly -F.binary_cross_entropy
// (logs clamped at -100), forward and backward. Counts probs and targets outside [0, 1]
// in the same pass.
#include "kernels.h"
#include "row_reduce.h"
#include "sgvb_math.h"

namespace fastaevb {
namespace {

template <class T, class X>
std::pair<int64_t, int64_t> forward(T* out, T* grad, const T* probs, const X* x, int64_t R,
                                    int64_t B, int64_t D, int reduce, double scale,
                                    bool with_grad, int nthreads) {
  const T s = static_cast<T>(scale);
  std::vector<int64_t> bad_p(static_cast<size_t>(R), 0);  // per row: no second reduction var
  const int64_t bad_x = reduce_rows<T>(R, R * D, reduce, scale, out, nthreads,
                                       [&](int64_t r, int64_t& bad) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = D;
    const T sc = s;
    const T* p = probs + r * D;
    const X* xr = x + (r % B) * D;
    T acc = 0;
    int nbad_x = 0, nbad_p = 0;
    if (reduce == kElements) {
      T* o = out + r * D;
#pragma omp simd reduction(+ : nbad_x, nbad_p)
      for (int64_t d = 0; d < n; ++d) {
        o[d] = sc * bernoulli_probs_term<T>(p[d], static_cast<T>(xr[d]));
        nbad_p += out_of_range(p[d]);
        nbad_x += out_of_range(xr[d]);
      }
    } else if (with_grad) {
      T* g = grad + r * D;
#pragma omp simd reduction(+ : acc, nbad_x, nbad_p)
      for (int64_t d = 0; d < n; ++d) {
        const T xv = static_cast<T>(xr[d]);
        acc += bernoulli_probs_term<T>(p[d], xv);
        g[d] = sc * bernoulli_probs_grad<T>(p[d], xv);
        nbad_p += out_of_range(p[d]);
        nbad_x += out_of_range(xr[d]);
      }
    } else {
#pragma omp simd reduction(+ : acc, nbad_x, nbad_p)
      for (int64_t d = 0; d < n; ++d) {
        acc += bernoulli_probs_term<T>(p[d], static_cast<T>(xr[d]));
        nbad_p += out_of_range(p[d]);
        nbad_x += out_of_range(xr[d]);
      }
    }
    if (r < B) bad += nbad_x;  // broadcast rows r >= B re-read the same targets
    bad_p[r] = nbad_p;
    return acc;
  });
  int64_t total_bad_p = 0;
  for (int64_t v : bad_p) total_bad_p += v;
  return {total_bad_p, bad_x};
}

template <class T, class X>
void backward(T* grad, const T* grad_out, const T* probs, const X* x, int64_t R, int64_t B,
              int64_t D, int reduce, double scale, int nthreads) {
  const T s = static_cast<T>(scale);
  parallel_rows(R, R * D, nthreads, [&](int64_t r) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = D;
    const T sc = s;
    const T* p = probs + r * D;
    const X* xr = x + (r % B) * D;
    T* g = grad + r * D;
    if (reduce == kElements) {
      const T* go = grad_out + r * D;
#pragma omp simd
      for (int64_t d = 0; d < n; ++d)
        g[d] = (go[d] * sc) * bernoulli_probs_grad<T>(p[d], static_cast<T>(xr[d]));
    } else {
      const T gr = row_upstream(grad_out, reduce, r, sc);
#pragma omp simd
      for (int64_t d = 0; d < n; ++d)
        g[d] = gr * bernoulli_probs_grad<T>(p[d], static_cast<T>(xr[d]));
    }
  });
}

}  // namespace

std::pair<int64_t, int64_t> bernoulli_probs_forward(addr out, addr grad, addr probs, addr x,
                                                    int64_t R, int64_t B, int64_t D,
                                                    int reduce, double scale, bool with_grad,
                                                    int dtype, int xtype, int nthreads) {
  return dispatch_float_target(dtype, xtype, [&](auto t, auto xt) {
    using T = decltype(t);
    using X = decltype(xt);
    return forward<T, X>(as_ptr<T>(out), as_ptr<T>(grad), as_ptr<const T>(probs),
                         as_ptr<const X>(x), R, B, D, reduce, scale, with_grad, nthreads);
  });
}

void bernoulli_probs_backward(addr grad, addr grad_out, addr probs, addr x, int64_t R,
                              int64_t B, int64_t D, int reduce, double scale, int dtype,
                              int xtype, int nthreads) {
  dispatch_float_target(dtype, xtype, [&](auto t, auto xt) {
    using T = decltype(t);
    using X = decltype(xt);
    backward<T, X>(as_ptr<T>(grad), as_ptr<const T>(grad_out), as_ptr<const T>(probs),
                   as_ptr<const X>(x), R, B, D, reduce, scale, nthreads);
  });
}

}  // namespace fastaevb

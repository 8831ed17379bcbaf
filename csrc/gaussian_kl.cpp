// Analytic Gaussian KL(q(z|x) || N(0, I)) per row (Appendix B), forward and backward.
#include "kernels.h"
#include "row_reduce.h"
#include "sgvb_math.h"

namespace fastaevb {
namespace {

template <class T>
void forward(T* out, T* grad_mu, T* grad_logvar, const T* mu, const T* logvar, int64_t R,
             int64_t J, int reduce, double scale, bool with_grad, int nthreads) {
  const T s = static_cast<T>(scale);
  const T half_s = T(0.5) * s;
  reduce_rows<T>(R, R * J, reduce, scale, out, nthreads, [&](int64_t r, int64_t&) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = J;
    const T sc = s, hsc = half_s;
    const T* m = mu + r * J;
    const T* v = logvar + r * J;
    T acc = 0;
    if (with_grad) {
      T* gm = grad_mu + r * J;
      T* gv = grad_logvar + r * J;
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < n; ++j) {
        const KLTerm<T> t = kl_term<T>(m[j], v[j]);
        acc += t.kl2;
        gm[j] = sc * m[j];
        gv[j] = hsc * t.em1;
      }
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t j = 0; j < n; ++j) acc += kl_term<T>(m[j], v[j]).kl2;
    }
    return T(0.5) * acc;
  });
}

template <class T>
void backward(T* grad_mu, T* grad_logvar, const T* grad_out, const T* mu, const T* logvar,
              int64_t R, int64_t J, int reduce, double scale, int nthreads) {
  const T s = static_cast<T>(scale);
  parallel_rows(R, R * J, nthreads, [&](int64_t r) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = J;
    const T* m = mu + r * J;
    const T* v = logvar + r * J;
    T* gm = grad_mu + r * J;
    T* gv = grad_logvar + r * J;
    const T g = row_upstream(grad_out, reduce, r, s);
    const T half_g = T(0.5) * g;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      gm[j] = g * m[j];
      gv[j] = half_g * kl_term<T>(m[j], v[j]).em1;
    }
  });
}

}  // namespace

void gaussian_kl_forward(addr out, addr grad_mu, addr grad_logvar, addr mu, addr logvar,
                         int64_t R, int64_t J, int reduce, double scale, bool with_grad,
                         int dtype, int nthreads) {
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    forward<T>(as_ptr<T>(out), as_ptr<T>(grad_mu), as_ptr<T>(grad_logvar), as_ptr<const T>(mu),
               as_ptr<const T>(logvar), R, J, reduce, scale, with_grad, nthreads);
  });
}

void gaussian_kl_backward(addr grad_mu, addr grad_logvar, addr grad_out, addr mu, addr logvar,
                          int64_t R, int64_t J, int reduce, double scale, int dtype,
                          int nthreads) {
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    backward<T>(as_ptr<T>(grad_mu), as_ptr<T>(grad_logvar), as_ptr<const T>(grad_out),
                as_ptr<const T>(mu), as_ptr<const T>(logvar), R, J, reduce, scale, nthreads);
  });
}

}  // namespace fastaevb

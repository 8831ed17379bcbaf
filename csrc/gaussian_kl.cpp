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
    const T* m = mu + r * J;
    const T* v = logvar + r * J;
    T acc = 0;
    T em1;
    if (with_grad) {
      T* gm = grad_mu + r * J;
      T* gv = grad_logvar + r * J;
#pragma omp simd reduction(+ : acc) private(em1)
      for (int64_t j = 0; j < J; ++j) {
        acc += kl_term<T>(m[j], v[j], em1);
        gm[j] = s * m[j];
        gv[j] = half_s * em1;
      }
    } else {
#pragma omp simd reduction(+ : acc) private(em1)
      for (int64_t j = 0; j < J; ++j) acc += kl_term<T>(m[j], v[j], em1);
    }
    return T(0.5) * acc;
  });
}

template <class T>
void backward(T* grad_mu, T* grad_logvar, const T* grad_out, const T* mu, const T* logvar,
              int64_t R, int64_t J, int reduce, double scale, int nthreads) {
  const T s = static_cast<T>(scale);
  parallel_rows(R, R * J, nthreads, [&](int64_t r) {
    const T* m = mu + r * J;
    const T* v = logvar + r * J;
    T* gm = grad_mu + r * J;
    T* gv = grad_logvar + r * J;
    const T g = row_upstream(grad_out, reduce, r, s);
    const T half_g = T(0.5) * g;
    T em1;
#pragma omp simd private(em1)
    for (int64_t j = 0; j < J; ++j) {
      kl_term<T>(m[j], v[j], em1);
      gm[j] = g * m[j];
      gv[j] = half_g * em1;
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

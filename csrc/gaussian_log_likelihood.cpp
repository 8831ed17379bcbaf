// Gaussian decoder log-likelihood (Appendix C.2), forward and backward, with a log-variance
// per element (R, D) or one shared value. For the shared case a row needs only
// S2 = sum_d (x - m)^2: ll_row = -0.5 (D (log 2pi + v) + S2 exp(-v)) and
// dll_row/dv = -0.5 (D - S2 exp(-v)); the per-row values are combined in double in row order.
// dll/dv cancels (D ~ S2 exp(-v) once the variance fits), so for this case S2 is accumulated
// in double and exp(-v) (one scalar) taken in double: float32 inputs then still match the
// float64 reference to ~1e-7 of D rather than to ~1e-7 of D times the cancellation.
#include "kernels.h"
#include "row_reduce.h"
#include "sgvb_math.h"

namespace fastaevb {
namespace {

// sum_r weight(r) * dll_row/dv over rows, in double, row order (0 for no rows, whatever
// the weight: a 'mean' over an empty batch has scale inf).
template <class W>
double shared_logvar_grad(const std::vector<double>& sum_sq, double inv_var, int64_t D,
                          W&& weight) {
  double total = 0.0;
  for (size_t r = 0; r < sum_sq.size(); ++r) {
    const double row = -0.5 * (static_cast<double>(D) - sum_sq[r] * inv_var);
    total += static_cast<double>(weight(static_cast<int64_t>(r))) * row;
  }
  return total;
}

template <class T>
void forward(T* out, T* grad_mean, T* grad_logvar, const T* x, const T* mean, const T* logvar,
             int64_t R, int64_t B, int64_t D, bool shared, int reduce, double scale,
             bool with_grad, int nthreads) {
  const T s = static_cast<T>(scale);
  const T log2pi = static_cast<T>(kLog2Pi);
  if (!shared) {
    reduce_rows<T>(R, R * D, reduce, scale, out, nthreads, [&](int64_t r, int64_t&) {
      // Locals, not captures: a loop bound or factor read through the closure may alias the
      // stores and keeps gcc from vectorizing.
      const int64_t n = D;
      const T sc = s;
      const T* xr = x + (r % B) * D;
      const T* m = mean + r * D;
      const T* v = logvar + r * D;
      T acc = 0;
      if (with_grad) {
        T* gm = grad_mean + r * D;
        T* gv = grad_logvar + r * D;
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < n; ++d) {
          const GaussTerm<T> t = gaussian_term<T>(xr[d], m[d], v[d]);
          acc += t.q;
          gm[d] = sc * t.dm;
          gv[d] = sc * t.dv;
        }
      } else {
#pragma omp simd reduction(+ : acc)
        for (int64_t d = 0; d < n; ++d) acc += gaussian_term<T>(xr[d], m[d], v[d]).q;
      }
      return T(-0.5) * (static_cast<T>(D) * log2pi + acc);
    });
    return;
  }
  const double v = static_cast<double>(logvar[0]);
  const double inv_var = std::exp(-v);
  std::vector<double> sum_sq(static_cast<size_t>(R));
  reduce_rows<T>(R, R * D, reduce, scale, out, nthreads, [&](int64_t r, int64_t&) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = D;
    const double iv = inv_var;
    const T* xr = x + (r % B) * D;
    const T* m = mean + r * D;
    double acc = 0;
    if (with_grad) {
      T* gm = grad_mean + r * D;
      const T s_iv = static_cast<T>(scale * iv);
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < n; ++d) {
        const T diff = xr[d] - m[d];
        acc += static_cast<double>(diff) * diff;
        gm[d] = s_iv * diff;
      }
    } else {
#pragma omp simd reduction(+ : acc)
      for (int64_t d = 0; d < n; ++d) {
        const double diff = static_cast<double>(xr[d] - m[d]);
        acc += diff * diff;
      }
    }
    sum_sq[r] = acc;
    return static_cast<T>(-0.5 * (static_cast<double>(n) * (kLog2Pi + v) + acc * iv));
  });
  if (with_grad)
    grad_logvar[0] = static_cast<T>(
        shared_logvar_grad(sum_sq, inv_var, D, [scale](int64_t) { return scale; }));
}

template <class T>
void backward(T* grad_mean, T* grad_logvar, const T* grad_out, const T* x, const T* mean,
              const T* logvar, int64_t R, int64_t B, int64_t D, bool shared, int reduce,
              double scale, int nthreads) {
  const T s = static_cast<T>(scale);
  if (!shared) {
    parallel_rows(R, R * D, nthreads, [&](int64_t r) {
      const int64_t n = D;
      const T* xr = x + (r % B) * D;
      const T* m = mean + r * D;
      const T* v = logvar + r * D;
      T* gm = grad_mean + r * D;
      T* gv = grad_logvar + r * D;
      const T g = row_upstream(grad_out, reduce, r, s);
#pragma omp simd
      for (int64_t d = 0; d < n; ++d) {
        const GaussTerm<T> t = gaussian_term<T>(xr[d], m[d], v[d]);
        gm[d] = g * t.dm;
        gv[d] = g * t.dv;
      }
    });
    return;
  }
  const double inv_var = std::exp(-static_cast<double>(logvar[0]));
  std::vector<double> sum_sq(static_cast<size_t>(R));
  parallel_rows(R, R * D, nthreads, [&](int64_t r) {
    const int64_t n = D;
    const T* xr = x + (r % B) * D;
    const T* m = mean + r * D;
    T* gm = grad_mean + r * D;
    const T g_iv = static_cast<T>(
        static_cast<double>(reduce == kTotal ? grad_out[0] : grad_out[r]) * scale * inv_var);
    double acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t d = 0; d < n; ++d) {
      const T diff = xr[d] - m[d];
      acc += static_cast<double>(diff) * diff;
      gm[d] = g_iv * diff;
    }
    sum_sq[r] = acc;
  });
  grad_logvar[0] = static_cast<T>(shared_logvar_grad(sum_sq, inv_var, D, [&](int64_t r) {
    return static_cast<double>(reduce == kTotal ? grad_out[0] : grad_out[r]) * scale;
  }));
}

}  // namespace

void gaussian_forward(addr out, addr grad_mean, addr grad_logvar, addr x, addr mean,
                      addr logvar, int64_t R, int64_t B, int64_t D, bool shared_logvar,
                      int reduce, double scale, bool with_grad, int dtype, int nthreads) {
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    forward<T>(as_ptr<T>(out), as_ptr<T>(grad_mean), as_ptr<T>(grad_logvar), as_ptr<const T>(x),
               as_ptr<const T>(mean), as_ptr<const T>(logvar), R, B, D, shared_logvar, reduce,
               scale, with_grad, nthreads);
  });
}

void gaussian_backward(addr grad_mean, addr grad_logvar, addr grad_out, addr x, addr mean,
                       addr logvar, int64_t R, int64_t B, int64_t D, bool shared_logvar,
                       int reduce, double scale, int dtype, int nthreads) {
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    backward<T>(as_ptr<T>(grad_mean), as_ptr<T>(grad_logvar), as_ptr<const T>(grad_out),
                as_ptr<const T>(x), as_ptr<const T>(mean), as_ptr<const T>(logvar), R, B, D,
                shared_logvar, reduce, scale, nthreads);
  });
}

}  // namespace fastaevb

// Reparameterized sample (eq. 4) + analytic KL (Appendix B) + optional importance-weight
// terms log q(z|x), log p(z), forward and backward. eps is never stored: it is read from
// the eps buffer when the caller passed one, otherwise regenerated from (seed, flat index
// l*R*J + r*J + j) with Triton's Philox randn, in forward and again in backward.
#include <algorithm>

#include "kernels.h"
#include "philox.h"
#include "row_reduce.h"
#include "sgvb_math.h"

namespace fastaevb {
namespace {

// The noise of flat index i: given, or Philox (float32, widened to T).
template <class T>
struct Noise {
  const T* eps;
  uint64_t seed;
  T operator()(int64_t i) const {
    return eps ? eps[i] : static_cast<T>(philox_randn(seed, i));
  }
};

template <class T>
void forward(T* z, T* kl, T* log_q, T* log_p, const T* mu, const T* logvar, const Noise<T> noise,
             int64_t L, int64_t R, int64_t J, bool log_weights, int nthreads) {
  const T half_j_log2pi = static_cast<T>(0.5 * kLog2Pi) * static_cast<T>(J);
  // KL rows go straight into kl (reduce 'rows', scale 1); the loop body also does the samples.
  reduce_rows<T>(R, L * R * J, kRows, 1.0, kl, nthreads, [&](int64_t r, int64_t&) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = J;
    const Noise<T> nz = noise;
    const T* m = mu + r * J;
    const T* v = logvar + r * J;
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < n; ++j) acc += kl_term<T>(m[j], v[j]).kl2;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t base = (l * R + r) * J;
      T* zr = z + base;
      T acc_q = 0, acc_p = 0;  // sum_j (v + eps^2), sum_j z^2
      if (log_weights) {
#pragma omp simd reduction(+ : acc_q, acc_p)
        for (int64_t j = 0; j < n; ++j) {
          const T e = nz(base + j);
          const T zz = reparam<T>(m[j], v[j], e).z;
          zr[j] = zz;
          acc_q += v[j] + e * e;
          acc_p += zz * zz;
        }
        log_q[l * R + r] = -half_j_log2pi - T(0.5) * acc_q;
        log_p[l * R + r] = -half_j_log2pi - T(0.5) * acc_p;
      } else {
#pragma omp simd
        for (int64_t j = 0; j < n; ++j) zr[j] = reparam<T>(m[j], v[j], nz(base + j)).z;
      }
    }
    return T(0.5) * acc;
  });
}

// g_zl = grad_z[l] - grad_log_p[l, r] * z_l
// grad_mu     = grad_kl[r] * mu + sum_l g_zl
// grad_logvar = grad_kl[r] * 0.5 * expm1(v) - 0.5 * sum_l grad_log_q[l, r]
//               + sum_l g_zl * 0.5 * eps_l * exp(0.5 v)
template <class T>
void backward(T* grad_mu, T* grad_logvar, const T* grad_z, const T* grad_kl,
              const T* grad_log_q, const T* grad_log_p, const T* mu, const T* logvar,
              const Noise<T> noise, int64_t L, int64_t R, int64_t J, int nthreads) {
  const bool through_z = grad_z || grad_log_p;  // else eps is not needed at all
  parallel_rows(R, (through_z ? L : 1) * R * J, nthreads, [&](int64_t r) {
    // Locals, not captures: a loop bound or factor read through the closure may alias the
    // stores and keeps gcc from vectorizing.
    const int64_t n = J;
    const Noise<T> nz = noise;
    const T* m = mu + r * J;
    const T* v = logvar + r * J;
    T* gm = grad_mu + r * J;
    T* gv = grad_logvar + r * J;
    const T gk = grad_kl ? grad_kl[r] : T(0);
    const T half_gk = T(0.5) * gk;
    T sum_gq = 0;
    if (grad_log_q)
      for (int64_t l = 0; l < L; ++l) sum_gq += grad_log_q[l * R + r];
    const T gq_term = T(-0.5) * sum_gq;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) {
      gm[j] = gk * m[j];
      gv[j] = half_gk * kl_term<T>(m[j], v[j]).em1 + gq_term;
    }
    if (!through_z) return;
    for (int64_t l = 0; l < L; ++l) {
      const int64_t base = (l * R + r) * J;
      const T gp = grad_log_p ? grad_log_p[l * R + r] : T(0);
      const T* gz = grad_z ? grad_z + base : nullptr;
#pragma omp simd
      for (int64_t j = 0; j < n; ++j) {
        const T e = nz(base + j);
        const Sample<T> smp = reparam<T>(m[j], v[j], e);
        const T g = (gz ? gz[j] : T(0)) - gp * smp.z;
        gm[j] += g;
        gv[j] += g * (T(0.5) * e * smp.sd);
      }
    }
  });
}

}  // namespace

void randn(addr out, addr offsets, int64_t n, uint64_t seed, int nthreads) {
  float* o = as_ptr<float>(out);
  const int64_t* off = as_ptr<const int64_t>(offsets);
  // Parallel over fixed chunks of the flat range (rows of 4096 values).
  const int64_t chunk = 4096;
  parallel_rows((n + chunk - 1) / chunk, n, nthreads, [&](int64_t c) {
    const int64_t end = std::min(n, (c + 1) * chunk);
    for (int64_t i = c * chunk; i < end; ++i) o[i] = philox_randn(seed, off[i]);
  });
}

void reparameterize_kl_forward(addr z, addr kl, addr log_q, addr log_p, addr mu, addr logvar,
                               addr eps, uint64_t seed, int64_t L, int64_t R, int64_t J,
                               bool log_weights, int dtype, int nthreads) {
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    forward<T>(as_ptr<T>(z), as_ptr<T>(kl), as_ptr<T>(log_q), as_ptr<T>(log_p),
               as_ptr<const T>(mu), as_ptr<const T>(logvar), Noise<T>{as_ptr<const T>(eps), seed},
               L, R, J, log_weights, nthreads);
  });
}

void reparameterize_kl_backward(addr grad_mu, addr grad_logvar, addr grad_z, addr grad_kl,
                                addr grad_log_q, addr grad_log_p, addr mu, addr logvar,
                                addr eps, uint64_t seed, int64_t L, int64_t R, int64_t J,
                                int dtype, int nthreads) {
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    backward<T>(as_ptr<T>(grad_mu), as_ptr<T>(grad_logvar), as_ptr<const T>(grad_z),
                as_ptr<const T>(grad_kl), as_ptr<const T>(grad_log_q),
                as_ptr<const T>(grad_log_p), as_ptr<const T>(mu), as_ptr<const T>(logvar),
                Noise<T>{as_ptr<const T>(eps), seed}, L, R, J, nthreads);
  });
}

}  // namespace fastaevb

// Reparameterized sample (eq. 4) + analytic KL (Appendix B) + optional importance-weight
// terms log q(z|x), log p(z), forward and backward, as Highway vector code for every SIMD
// target. eps is never stored: it is read from the eps buffer when the caller passed one,
// otherwise regenerated from (seed, flat index l*R*J + r*J + j) with Triton's Philox randn
// (simd_math-inl.h), in forward and again in backward.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "reparameterize_kl.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "parallel.h"
#include "row_job.h"
#include "simd_math-inl.h"

HWY_BEFORE_NAMESPACE();
namespace fastaevb {
namespace HWY_NAMESPACE {

constexpr double kHalfLog2Pi = 0.91893853320467274178032973640562;  // 0.5 log(2 pi)

// The noise of flat indices first .. first + lanes: given, or Philox.
template <bool kTail, class D, class T>
HWY_INLINE V<D> Noise(D d, const T* eps, uint64_t seed, int64_t first, size_t count) {
  if (eps) return LoadAt<kTail>(d, eps, static_cast<size_t>(first), count);
  return RandnAs(d, seed, first);
}

template <class T>
void ForwardT(const ReparamJob& job, int64_t r0, int64_t r1) {
  using DT = hn::ScalableTag<T>;
  const DT d;
  const int64_t L = job.L, R = job.R, J = job.J;
  const T* mu = static_cast<const T*>(job.mu);
  const T* logvar = static_cast<const T*>(job.logvar);
  const T* eps = static_cast<const T*>(job.eps);
  T* z = static_cast<T*>(job.z);
  T* log_q = static_cast<T*>(job.log_q);
  T* log_p = static_cast<T*>(job.log_p);
  const T half_j_log2pi = static_cast<T>(kHalfLog2Pi * static_cast<double>(J));
  for (int64_t r = r0; r < r1; ++r) {
    const T* m = mu + r * J;
    const T* v = logvar + r * J;
    if (job.kl_sums) {
      V<DT> acc = hn::Zero(d);
      ForEachVector(d, static_cast<size_t>(J), [&](size_t i, size_t count, auto tail) {
        constexpr bool kTail = decltype(tail)::value;
        const auto t = KL(d, LoadAt<kTail>(d, m, i, count), LoadAt<kTail>(d, v, i, count));
        acc = AddLanes<kTail>(d, acc, t.kl2, count);
      });
      job.kl_sums[r] = hn::GetLane(hn::SumOfLanes(d, acc));
    }
    for (int64_t l = 0; l < L; ++l) {
      const int64_t base = (l * R + r) * J;
      V<DT> acc_q = hn::Zero(d), acc_p = hn::Zero(d);  // sum_j (v + eps^2), sum_j z^2
      ForEachVector(d, static_cast<size_t>(J), [&](size_t i, size_t count, auto tail) {
        constexpr bool kTail = decltype(tail)::value;
        const auto vv = LoadAt<kTail>(d, v, i, count);
        const auto e = Noise<kTail>(d, eps, job.seed, base + static_cast<int64_t>(i), count);
        const auto zz = hn::MulAdd(StdDev(d, vv), e, LoadAt<kTail>(d, m, i, count));
        StoreAt<kTail>(d, zz, z + base, i, count);
        if (log_q) {
          acc_q = AddLanes<kTail>(d, acc_q, hn::MulAdd(e, e, vv), count);
          acc_p = AddLanes<kTail>(d, acc_p, hn::Mul(zz, zz), count);
        }
      });
      if (log_q) {
        log_q[l * R + r] = -half_j_log2pi - T(0.5) * hn::GetLane(hn::SumOfLanes(d, acc_q));
        log_p[l * R + r] = -half_j_log2pi - T(0.5) * hn::GetLane(hn::SumOfLanes(d, acc_p));
      }
    }
  }
}

// g_l = grad_z[l] - grad_log_p[l, r] z_l
// grad_mu     = grad_kl[r] mu + sum_l g_l
// grad_logvar = grad_kl[r] 0.5 expm1(v) - 0.5 sum_l grad_log_q[l, r] + sum_l g_l 0.5 eps_l exp(0.5 v)
template <class T>
void BackwardT(const ReparamJob& job, int64_t r0, int64_t r1) {
  using DT = hn::ScalableTag<T>;
  const DT d;
  const int64_t L = job.L, R = job.R, J = job.J;
  const T* mu = static_cast<const T*>(job.mu);
  const T* logvar = static_cast<const T*>(job.logvar);
  const T* eps = static_cast<const T*>(job.eps);
  const T* grad_z = static_cast<const T*>(job.grad_z);
  const T* grad_kl = static_cast<const T*>(job.grad_kl);
  const T* grad_log_q = static_cast<const T*>(job.grad_log_q);
  const T* grad_log_p = static_cast<const T*>(job.grad_log_p);
  T* grad_mu = static_cast<T*>(job.grad_mu);
  T* grad_logvar = static_cast<T*>(job.grad_logvar);
  const bool through_z = grad_z || grad_log_p;  // else eps is not needed at all
  for (int64_t r = r0; r < r1; ++r) {
    const T* m = mu + r * J;
    const T* v = logvar + r * J;
    T sum_gq = 0;
    if (grad_log_q)
      for (int64_t l = 0; l < L; ++l) sum_gq += grad_log_q[l * R + r];
    const auto gk = hn::Set(d, grad_kl ? grad_kl[r] : T(0));
    const auto gq_term = hn::Set(d, T(-0.5) * sum_gq);
    const auto half = hn::Set(d, 0.5);
    ForEachVector(d, static_cast<size_t>(J), [&](size_t i, size_t count, auto tail) {
      constexpr bool kTail = decltype(tail)::value;
      const auto mm = LoadAt<kTail>(d, m, i, count);
      const auto vv = LoadAt<kTail>(d, v, i, count);
      auto gm = hn::Zero(d), gv = gq_term;
      if (grad_kl) {
        gm = hn::Mul(gk, mm);
        gv = hn::MulAdd(hn::Mul(half, gk), KL(d, mm, vv).em1, gv);
      }
      if (through_z) {
        const auto half_sd = hn::Mul(half, StdDev(d, vv));
        for (int64_t l = 0; l < L; ++l) {
          const int64_t base = (l * R + r) * J;
          const auto e = Noise<kTail>(d, eps, job.seed, base + static_cast<int64_t>(i), count);
          auto g = grad_z ? LoadAt<kTail>(d, grad_z + base, i, count) : hn::Zero(d);
          if (grad_log_p) {
            const auto zz = hn::MulAdd(hn::Add(half_sd, half_sd), e, mm);
            g = hn::NegMulAdd(hn::Set(d, grad_log_p[l * R + r]), zz, g);
          }
          gm = hn::Add(gm, g);
          gv = hn::MulAdd(g, hn::Mul(e, half_sd), gv);
        }
      }
      StoreAt<kTail>(d, gm, grad_mu + r * J, i, count);
      StoreAt<kTail>(d, gv, grad_logvar + r * J, i, count);
    });
  }
}

// The sample alone (no KL, no log-weights, upstream gradient of z only): rows do not matter, so
// the (R, J) latents are one flat stream of R*J values (no partial vector at every row end).
// Elements [i0, i1) of that stream, for every sample l.
template <class T>
void FlatForwardT(const ReparamJob& job, int64_t i0, int64_t i1) {
  using DT = hn::ScalableTag<T>;
  const DT d;
  const int64_t n = job.R * job.J;
  const T* mu = static_cast<const T*>(job.mu) + i0;
  const T* logvar = static_cast<const T*>(job.logvar) + i0;
  const T* eps = static_cast<const T*>(job.eps);
  for (int64_t l = 0; l < job.L; ++l) {
    const int64_t base = l * n + i0;
    T* z = static_cast<T*>(job.z) + base;
    ForEachVector(d, static_cast<size_t>(i1 - i0), [&](size_t i, size_t count, auto tail) {
      constexpr bool kTail = decltype(tail)::value;
      const auto e = Noise<kTail>(d, eps, job.seed, base + static_cast<int64_t>(i), count);
      const auto zz =
          hn::MulAdd(StdDev(d, LoadAt<kTail>(d, logvar, i, count)), e, LoadAt<kTail>(d, mu, i, count));
      StoreAt<kTail>(d, zz, z, i, count);
    });
  }
}

template <class T>
void FlatBackwardT(const ReparamJob& job, int64_t i0, int64_t i1) {
  using DT = hn::ScalableTag<T>;
  const DT d;
  const int64_t n = job.R * job.J;
  const T* logvar = static_cast<const T*>(job.logvar) + i0;
  const T* eps = static_cast<const T*>(job.eps);
  const T* grad_z = static_cast<const T*>(job.grad_z);
  T* grad_mu = static_cast<T*>(job.grad_mu) + i0;
  T* grad_logvar = static_cast<T*>(job.grad_logvar) + i0;
  ForEachVector(d, static_cast<size_t>(i1 - i0), [&](size_t i, size_t count, auto tail) {
    constexpr bool kTail = decltype(tail)::value;
    const auto half_sd = hn::Mul(hn::Set(d, 0.5), StdDev(d, LoadAt<kTail>(d, logvar, i, count)));
    auto gm = hn::Zero(d), gv = hn::Zero(d);
    for (int64_t l = 0; l < job.L; ++l) {
      const int64_t at = l * n + i0 + static_cast<int64_t>(i);
      const auto e = Noise<kTail>(d, eps, job.seed, at, count);
      const auto g = LoadAt<kTail>(d, grad_z, static_cast<size_t>(at), count);
      gm = hn::Add(gm, g);
      gv = hn::MulAdd(g, hn::Mul(e, half_sd), gv);
    }
    StoreAt<kTail>(d, gm, grad_mu, i, count);
    StoreAt<kTail>(d, gv, grad_logvar, i, count);
  });
}

void ReparamFlatForward(const ReparamJob& job, int64_t i0, int64_t i1) {
  dispatch_float(job.dtype, [&](auto t) { FlatForwardT<decltype(t)>(job, i0, i1); });
}

void ReparamFlatBackward(const ReparamJob& job, int64_t i0, int64_t i1) {
  dispatch_float(job.dtype, [&](auto t) { FlatBackwardT<decltype(t)>(job, i0, i1); });
}

void ReparamForwardRows(const ReparamJob& job, int64_t r0, int64_t r1) {
  dispatch_float(job.dtype, [&](auto t) { ForwardT<decltype(t)>(job, r0, r1); });
}

void ReparamBackwardRows(const ReparamJob& job, int64_t r0, int64_t r1) {
  dispatch_float(job.dtype, [&](auto t) { BackwardT<decltype(t)>(job, r0, r1); });
}

// out[k] = randn(seed, offsets[k]) for k in [k0, k1): lane 0 of a vector at offsets[k].
void RandnAt(float* out, const int64_t* offsets, uint64_t seed, int64_t k0, int64_t k1) {
  const hn::ScalableTag<uint32_t> du;
  for (int64_t k = k0; k < k1; ++k) out[k] = hn::GetLane(Randn(du, seed, offsets[k]));
}

}  // namespace HWY_NAMESPACE
}  // namespace fastaevb
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include <vector>

#include "kernels.h"
#include "parallel.h"

namespace fastaevb {
HWY_EXPORT(ReparamForwardRows);
HWY_EXPORT(ReparamBackwardRows);
HWY_EXPORT(RandnAt);
HWY_EXPORT(ReparamFlatForward);
HWY_EXPORT(ReparamFlatBackward);

namespace {
// Single-thread cost per latent value with Philox noise and without (bench/, float32).
double ns_per_value(bool philox) { return philox ? 4.0 : 1.5; }
}  // namespace

void randn(addr out, addr offsets, int64_t n, uint64_t seed, int nthreads) {
  const auto kernel = HWY_DYNAMIC_DISPATCH(RandnAt);
  parallel_for(n, n * 20.0, nthreads, [&](int64_t k0, int64_t k1) {
    kernel(as_ptr<float>(out), as_ptr<const int64_t>(offsets), seed, k0, k1);
  });
}

// The fields forward and backward share.
static ReparamJob base_job(addr mu, addr logvar, addr eps, uint64_t seed, int64_t L, int64_t R, int64_t J,
                           int dtype) {
  ReparamJob job{};
  job.L = L;
  job.R = R;
  job.J = J;
  job.dtype = dtype;
  job.seed = seed;
  job.mu = as_ptr<const void>(mu);
  job.logvar = as_ptr<const void>(logvar);
  job.eps = as_ptr<const void>(eps);
  return job;
}

void reparameterize_kl_forward(addr z, addr kl, addr log_q, addr log_p, addr mu, addr logvar, addr eps,
                               uint64_t seed, int64_t L, int64_t R, int64_t J, bool log_weights, int dtype,
                               int nthreads) {
  std::vector<double> kl_sums(kl ? static_cast<size_t>(R) : 0);
  ReparamJob job = base_job(mu, logvar, eps, seed, L, R, J, dtype);
  job.z = as_ptr<void>(z);
  job.kl_sums = kl ? kl_sums.data() : nullptr;
  job.log_q = log_weights ? as_ptr<void>(log_q) : nullptr;
  job.log_p = log_weights ? as_ptr<void>(log_p) : nullptr;
  const double work = (L * ns_per_value(eps == 0) + (kl ? 1.5 : 0.0)) * R * J * (dtype + 1);
  if (!kl && !log_weights) {  // the sample alone: one flat stream, no per-row tails
    const auto flat = HWY_DYNAMIC_DISPATCH(ReparamFlatForward);
    parallel_for(R * J, work, nthreads, [&](int64_t i0, int64_t i1) { flat(job, i0, i1); });
    return;
  }
  const auto kernel = HWY_DYNAMIC_DISPATCH(ReparamForwardRows);
  parallel_for(R, work, nthreads, [&](int64_t r0, int64_t r1) { kernel(job, r0, r1); });
  if (!kl) return;
  dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    for (int64_t r = 0; r < R; ++r) as_ptr<T>(kl)[r] = static_cast<T>(0.5 * kl_sums[r]);
    return 0;
  });
}

void reparameterize_kl_backward(addr grad_mu, addr grad_logvar, addr grad_z, addr grad_kl, addr grad_log_q,
                                addr grad_log_p, addr mu, addr logvar, addr eps, uint64_t seed, int64_t L,
                                int64_t R, int64_t J, int dtype, int nthreads) {
  ReparamJob job = base_job(mu, logvar, eps, seed, L, R, J, dtype);
  job.grad_mu = as_ptr<void>(grad_mu);
  job.grad_logvar = as_ptr<void>(grad_logvar);
  job.grad_z = as_ptr<const void>(grad_z);
  job.grad_kl = as_ptr<const void>(grad_kl);
  job.grad_log_q = as_ptr<const void>(grad_log_q);
  job.grad_log_p = as_ptr<const void>(grad_log_p);
  const bool through_z = grad_z || grad_log_p;
  const double work = ((through_z ? L * ns_per_value(eps == 0) : 0.0) + 1.5) * R * J * (dtype + 1);
  if (grad_z && !grad_kl && !grad_log_q && !grad_log_p) {  // through z alone: one flat stream
    const auto flat = HWY_DYNAMIC_DISPATCH(ReparamFlatBackward);
    parallel_for(R * J, work, nthreads, [&](int64_t i0, int64_t i1) { flat(job, i0, i1); });
    return;
  }
  const auto kernel = HWY_DYNAMIC_DISPATCH(ReparamBackwardRows);
  parallel_for(R, work, nthreads, [&](int64_t r0, int64_t r1) { kernel(job, r0, r1); });
}

}  // namespace fastaevb
#endif  // HWY_ONCE

// The negative importance-weighted bound of Burda et al. (2016) (ops/table.py's iwae_loss) in one
// pass per datapoint b:
//   1. its K decoder rows k B + b by the decoder's own row kernel (bernoulli_rows or
//      location_scale_rows: the row sums and, with gradients, d ll / d decoded with scale 1);
//   2. log w_k = ll_k + 0.5 sum_j (eps_kj^2 - z_kj^2 + v_j), eps = (z - mu) exp(-v / 2), their
//      log-sum-exp and w~_k = exp(log w_k - lse), in double;
//   3. the K gradient rows scaled by c_k = -scale * upstream_b * w~_k while they are still in
//      cache (K D values: 157 KB at K = 50, D = 784), and the latents' gradients from c_k:
//      d/dz_k = c_k (eps_k exp(-v / 2) - z_k); 'iwae' only: d/dmu = -sum_k c_k eps_k exp(-v / 2),
//      d/dv = 0.5 sum_k c_k (1 - eps_k^2); the gate token gets -c_k (functional.dreg_gate).
// The forward entry writes the value (and the gradients when asked); the backward entry runs
// the same pass with the upstream gradient and writes only the gradients.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "kernels.h"
#include "parallel.h"
#include "row_job.h"

namespace fastaevb {
namespace {

constexpr double kNsPerElement = 2.0;  // single thread, float32: the row kernel plus the scaling pass

struct Pointers {
  addr out, grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate, grad_out;
};

template <class T>
std::pair<int64_t, int64_t> run(const Pointers& p, addr decoded, addr x, addr decoder_logvar, addr z, addr mu,
                                addr logvar, int64_t K, int64_t B, int64_t D, int64_t J, int likelihood,
                                bool shared, int gradient, int reduction, double scale, int dtype, int xtype,
                                int nthreads) {
  const int64_t R = K * B;
  const bool bernoulli = likelihood == kLikelihoodBernoulli || likelihood == kLikelihoodProbs;
  const bool row_grads = p.grad_decoded != 0;  // the decoder rows' gradients (then all are written)
  const int mode = row_grads ? kFwdSumGrad : kFwdSum;
  std::vector<double> sums(static_cast<size_t>(R)), bound(static_cast<size_t>(B));
  std::vector<double> shared_grad(shared && p.grad_decoder_logvar ? static_cast<size_t>(B) : 0);
  BernoulliJob bj{};
  LocScaleJob lj{};
  double s = 0.0;  // a shared log-scale
  if (bernoulli) {
    bj.rows = {R, B, D, R * D};
    bj.mode = mode;
    bj.dtype = dtype;
    bj.xtype = xtype;
    bj.probs = likelihood == kLikelihoodProbs;
    bj.scale = 1.0;
    bj.in = as_ptr<const void>(decoded);
    bj.x = as_ptr<const void>(x);
    bj.grad = as_ptr<void>(p.grad_decoded);
    bj.sums = sums.data();
  } else {
    lj.rows = {R, B, D, R * D};
    lj.mode = mode;
    lj.dtype = dtype;
    lj.form = likelihood == kLikelihoodMse  ? kSqErrorForm
              : likelihood == kLikelihoodL1 ? kAbsErrorForm
                                            : kGaussianForm;
    lj.shared = shared;
    lj.scale = 1.0;
    lj.x = as_ptr<const void>(x);
    lj.mean = as_ptr<const void>(decoded);
    lj.log_scale = as_ptr<const void>(decoder_logvar);
    lj.grad_mean = as_ptr<void>(p.grad_decoded);
    lj.grad_log_scale = as_ptr<void>(p.grad_decoder_logvar);
    lj.sums = sums.data();
    if (shared) {
      s = static_cast<double>(as_ptr<const T>(decoder_logvar)[0]);
      lj.inv_scale = std::exp(-s);
    }
  }
  const T* zp = as_ptr<const T>(z);
  const T* mp = as_ptr<const T>(mu);
  const T* vp = as_ptr<const T>(logvar);
  const T* go = as_ptr<const T>(p.grad_out);
  T* gd = as_ptr<T>(p.grad_decoded);
  T* gs = shared ? nullptr : as_ptr<T>(p.grad_decoder_logvar);  // per-element log-scale rows
  T* gz = as_ptr<T>(p.grad_z);
  T* gm = gradient == kGradientIwae ? as_ptr<T>(p.grad_mu) : nullptr;
  T* gv = gradient == kGradientIwae ? as_ptr<T>(p.grad_logvar) : nullptr;
  T* gg = as_ptr<T>(p.grad_gate);
  const bool grads = row_grads || gz || gm || gv || gg;
  const double log_k = std::log(static_cast<double>(K));
  std::atomic<int64_t> bad_in{0}, bad_x{0};

  parallel_for(
      B, static_cast<double>(R * D) * kNsPerElement * (dtype + 1), nthreads, [&](int64_t b0, int64_t b1) {
        std::vector<double> log_w(static_cast<size_t>(K)), inv_std(static_cast<size_t>(J));
        std::vector<double> acc_mu(static_cast<size_t>(J)), acc_v(static_cast<size_t>(J));
        int64_t bad[2] = {0, 0};
        for (int64_t b = b0; b < b1; ++b) {
          const T* m = mp + b * J;
          const T* v = vp + b * J;
          double half_v = 0.0;
          for (int64_t j = 0; j < J; ++j) {
            inv_std[j] = std::exp(-0.5 * static_cast<double>(v[j]));
            half_v += static_cast<double>(v[j]);
          }
          double top = -INFINITY;
          for (int64_t k = 0; k < K; ++k) {
            const int64_t r = k * B + b;
            if (bernoulli)
              bernoulli_rows(bj, r, r + 1, bad);
            else
              location_scale_rows(lj, r, r + 1);
            const double ll = bernoulli ? sums[r] : location_scale_row(lj, sums[r], s);
            const T* zk = zp + r * J;
            double q = 0.0;  // sum_j (eps^2 - z^2): log p(z) - log q(z|x) less 0.5 sum_j v_j
            for (int64_t j = 0; j < J; ++j) {
              const double zj = static_cast<double>(zk[j]), e = (zj - static_cast<double>(m[j])) * inv_std[j];
              q += e * e - zj * zj;
            }
            log_w[k] = ll + 0.5 * (q + half_v);
            top = std::max(top, log_w[k]);
          }
          double total = 0.0;
          for (int64_t k = 0; k < K; ++k) total += std::exp(log_w[k] - top);
          const double lse = top + std::log(total);
          bound[b] = lse - log_k;
          if (!grads) continue;
          const double up = go ? static_cast<double>(go[reduction == kReductionRows ? b : 0]) : 1.0;
          std::fill(acc_mu.begin(), acc_mu.end(), 0.0);
          std::fill(acc_v.begin(), acc_v.end(), 0.0);
          for (int64_t k = 0; k < K; ++k) {
            const int64_t r = k * B + b;
            const double c = -scale * up * std::exp(log_w[k] - lse);  // d loss / d log w_k
            if (row_grads) {
              const T ct = static_cast<T>(c);
              T* row = gd + r * D;
              for (int64_t i = 0; i < D; ++i) row[i] *= ct;
              if (gs) {
                T* srow = gs + r * D;
                for (int64_t i = 0; i < D; ++i) srow[i] *= ct;
              }
              if (!shared_grad.empty()) shared_grad[b] += c * location_scale_row_dlog_scale(lj, sums[r]);
            }
            const T* zk = zp + r * J;
            for (int64_t j = 0; j < J; ++j) {
              const double zj = static_cast<double>(zk[j]), e = (zj - static_cast<double>(m[j])) * inv_std[j];
              if (gz) gz[r * J + j] = static_cast<T>(c * (e * inv_std[j] - zj));
              acc_mu[j] -= c * e;
              acc_v[j] += c * (1.0 - e * e);
            }
            if (gg) gg[r] = static_cast<T>(-c);
          }
          for (int64_t j = 0; j < J && gm; ++j) gm[b * J + j] = static_cast<T>(acc_mu[j] * inv_std[j]);
          for (int64_t j = 0; j < J && gv; ++j) gv[b * J + j] = static_cast<T>(0.5 * acc_v[j]);
        }
        bad_in += bad[0];
        bad_x += bad[1];
      });

  if (p.out) {  // in datapoint order, in double
    T* o = as_ptr<T>(p.out);
    double sum = 0.0;
    for (int64_t b = 0; b < B; ++b) {
      if (reduction == kReductionRows)
        o[b] = static_cast<T>(-scale * bound[b]);
      else
        sum += bound[b];
    }
    if (reduction == kReductionSum) o[0] = static_cast<T>(-scale * sum);
  }
  if (!shared_grad.empty()) {
    double sum = 0.0;
    for (double g : shared_grad) sum += g;
    as_ptr<T>(p.grad_decoder_logvar)[0] = static_cast<T>(sum);
  }
  return {bad_in.load(), bad_x.load()};
}

std::pair<int64_t, int64_t> dispatch(const Pointers& p, addr decoded, addr x, addr decoder_logvar, addr z,
                                     addr mu, addr logvar, int64_t K, int64_t B, int64_t D, int64_t J,
                                     int likelihood, bool shared, int gradient, int reduction, double scale,
                                     int dtype, int xtype, int nthreads) {
  return dispatch_float(dtype, [&](auto t) {
    return run<decltype(t)>(p, decoded, x, decoder_logvar, z, mu, logvar, K, B, D, J, likelihood, shared,
                            gradient, reduction, scale, dtype, xtype, nthreads);
  });
}

}  // namespace

std::pair<int64_t, int64_t> iwae_loss_forward(addr out, addr grad_decoded, addr grad_decoder_logvar,
                                              addr grad_z, addr grad_mu, addr grad_logvar, addr grad_gate,
                                              addr decoded, addr x, addr decoder_logvar, addr z, addr mu,
                                              addr logvar, int64_t K, int64_t B, int64_t D, int64_t J,
                                              int likelihood, bool shared, int gradient, int reduction,
                                              double scale, int dtype, int xtype, int nthreads) {
  const Pointers p{out, grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate, 0};
  return dispatch(p, decoded, x, decoder_logvar, z, mu, logvar, K, B, D, J, likelihood, shared, gradient,
                  reduction, scale, dtype, xtype, nthreads);
}

void iwae_loss_backward(addr grad_decoded, addr grad_decoder_logvar, addr grad_z, addr grad_mu,
                        addr grad_logvar, addr grad_gate, addr grad_out, addr decoded, addr x,
                        addr decoder_logvar, addr z, addr mu, addr logvar, int64_t K, int64_t B, int64_t D,
                        int64_t J, int likelihood, bool shared, int gradient, int reduction, double scale,
                        int dtype, int xtype, int nthreads) {
  const Pointers p{0, grad_decoded, grad_decoder_logvar, grad_z, grad_mu, grad_logvar, grad_gate, grad_out};
  dispatch(p, decoded, x, decoder_logvar, z, mu, logvar, K, B, D, J, likelihood, shared, gradient, reduction,
           scale, dtype, xtype, nthreads);
}

}  // namespace fastaevb

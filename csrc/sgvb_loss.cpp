// The whole SGVB loss of one training step in one call (eq. 10 negated):
//   out = kl_scale * sum_r KL_r - ll_scale * sum_r log p(x_r | z_r),
// the analytic KL (gaussian_kl.cpp) and the decoder log-likelihood (bernoulli_log_likelihood.cpp, or
// the location-scale driver of gaussian_log_likelihood.cpp for the Gaussian and error decoders) run back
// to back, each with its own thread count,
// and the two totals are added here: one crossing of the Python boundary instead of two.
#include "kernels.h"
#include "parallel.h"
#include "row_job.h"

namespace fastaevb {

std::pair<int64_t, int64_t> sgvb_loss_forward(addr out, addr grad_decoded, addr grad_decoder_logvar,
                                              addr grad_mu, addr grad_logvar, addr decoded, addr x,
                                              addr decoder_logvar, addr mu, addr logvar, int64_t R, int64_t B,
                                              int64_t D, int64_t J, int likelihood, bool shared_logvar,
                                              double kl_scale, double ll_scale, bool with_grad, int dtype,
                                              int xtype, int nthreads) {
  return dispatch_float(dtype, [&](auto t) {
    using T = decltype(t);
    T kl = 0, ll = 0;  // the two scaled totals
    const addr kl_out = reinterpret_cast<addr>(&kl), ll_out = reinterpret_cast<addr>(&ll);
    gaussian_kl_forward(kl_out, grad_mu, grad_logvar, mu, logvar, B, J, kReductionSum, kl_scale, with_grad,
                        dtype, nthreads);
    std::pair<int64_t, int64_t> bad{0, 0};
    if (likelihood == kLikelihoodBernoulli) {
      // bad.first: the logits outside [0, 1] (none in a large batch: probabilities passed as logits)
      bad = bernoulli_log_likelihood_forward(ll_out, grad_decoded, decoded, x, R, B, D, kReductionSum,
                                             -ll_scale, with_grad, dtype, xtype, nthreads);
    } else if (likelihood == kLikelihoodProbs) {
      bad = bernoulli_probs_log_likelihood_forward(ll_out, grad_decoded, decoded, x, R, B, D, kReductionSum,
                                                   -ll_scale, with_grad, dtype, xtype, nthreads);
    } else {  // the location-scale decoders: one driver, the likelihood's form (row_job.h)
      const int form = likelihood == kLikelihoodMse  ? kSqErrorForm
                       : likelihood == kLikelihoodL1 ? kAbsErrorForm
                                                     : kGaussianForm;
      location_scale_forward(ll_out, grad_decoded, grad_decoder_logvar, x, decoded, decoder_logvar, R, B, D,
                             shared_logvar, kReductionSum, -ll_scale, form, with_grad, dtype, nthreads);
    }
    as_ptr<T>(out)[0] = kl + ll;
    return bad;
  });
}

}  // namespace fastaevb

// The error decoders (torch's mse_loss / l1_loss as log-likelihoods with a log-scale s, per element
// (R, D) or one shared value), forward and backward:
//   ll = -sum_d (|x - m|^p exp(-s) + s),  p = 2 (squared error) or 1 (absolute error),
// the location-scale form p of the Gaussian decoder's row kernel and driver
// (gaussian_log_likelihood.cpp, row_job.h).
#include <stdexcept>

#include "kernels.h"
#include "row_job.h"

namespace fastaevb {

namespace {
int error_form(int power) {
  if (power != 1 && power != 2)
    throw std::invalid_argument("fastaevb: error_log_likelihood power must be 1 or 2");
  return power == 2 ? kSqErrorForm : kAbsErrorForm;
}
}  // namespace

void error_log_likelihood_forward(addr out, addr grad_mean, addr grad_log_scale, addr x, addr mean,
                                  addr log_scale, int64_t R, int64_t B, int64_t D, bool shared_log_scale,
                                  int reduction, double scale, int power, bool with_grad, int dtype,
                                  int nthreads) {
  location_scale_forward(out, grad_mean, grad_log_scale, x, mean, log_scale, R, B, D, shared_log_scale,
                         reduction, scale, error_form(power), with_grad, dtype, nthreads);
}

void error_log_likelihood_backward(addr grad_mean, addr grad_log_scale, addr grad_out, addr x, addr mean,
                                   addr log_scale, int64_t R, int64_t B, int64_t D, bool shared_log_scale,
                                   int reduction, double scale, int power, int dtype, int nthreads) {
  location_scale_backward(grad_mean, grad_log_scale, grad_out, x, mean, log_scale, R, B, D, shared_log_scale,
                          reduction, scale, error_form(power), dtype, nthreads);
}

}  // namespace fastaevb

// Entry points of the fused CPU kernels, one .cpp per op named as the op (ops/table.py;
// bernoulli_log_likelihood.cpp holds both parameterizations), bound in bindings.cpp.
//
// Every tensor arrives as a raw address (torch's data_ptr()) of a contiguous buffer,
// allocated by fastaevb/ops/calls.py and handed over by fastaevb/backends/cpp.py. A pointer of 0 means
// "absent" (None / not requested). dtype: 0 = float32, 1 = float64; xtype: 0 = float like the input, 1 =
// uint8/bool. reduction: 0 = none (elementwise), 1 = rows, 2 = sum (parallel.h). Shapes follow
// docs/backends.md: decoder outputs are (R, D), data is (B, D), row r reads data row r % B.
#pragma once

#include <cstdint>
#include <utility>

namespace fastaevb {

using addr = uintptr_t;

// eps[i] = tl.randn(seed, offsets[i]) in float32.
void randn(addr out, addr offsets, int64_t n, uint64_t seed, int nthreads);

// z (L, R, J), kl (R,), log_q / log_p (L, R) (written when log_weights).
// eps (L, R, J) or 0: then eps[i] = randn(seed, i) for the flat index i.
void reparameterize_kl_forward(addr z, addr kl, addr log_q, addr log_p, addr mu, addr logvar, addr eps,
                               uint64_t seed, int64_t L, int64_t R, int64_t J, bool log_weights, int dtype,
                               int nthreads);
void reparameterize_kl_backward(addr grad_mu, addr grad_logvar, addr grad_z, addr grad_kl, addr grad_log_q,
                                addr grad_log_p, addr mu, addr logvar, addr eps, uint64_t seed, int64_t L,
                                int64_t R, int64_t J, int dtype, int nthreads);

void gaussian_kl_forward(addr out, addr grad_mu, addr grad_logvar, addr mu, addr logvar, int64_t R, int64_t J,
                         int reduction, double scale, bool with_grad, int dtype, int nthreads);
void gaussian_kl_backward(addr grad_mu, addr grad_logvar, addr grad_out, addr mu, addr logvar, int64_t R,
                          int64_t J, int reduction, double scale, int dtype, int nthreads);

// The BCE drop-ins' optional arguments of the Bernoulli entries: weight and pos_weight (logits
// only) broadcast over (R, D), element (r, c) at data[r * row_stride + c * col_stride] with
// col_stride 0 or 1 (data 0: absent), in the input's float type; grad_x (R, D): when nonzero the
// target's gradient dll/dx is written there too (forward: only with_grad).
struct Factor {
  addr data = 0;
  int64_t row_stride = 0, col_stride = 0;
};
struct BernoulliExtras {
  Factor weight, pos_weight;
  addr grad_x = 0;
};

// Returns (logits outside [0, 1] in the sum modes, else 0; out-of-range targets).
std::pair<int64_t, int64_t> bernoulli_log_likelihood_forward(addr out, addr grad, addr logits, addr x,
                                                             int64_t R, int64_t B, int64_t D, int reduction,
                                                             double scale, bool with_grad, int dtype,
                                                             int xtype, int nthreads,
                                                             const BernoulliExtras& extras = {});
void bernoulli_log_likelihood_backward(addr grad, addr grad_out, addr logits, addr x, int64_t R, int64_t B,
                                       int64_t D, int reduction, double scale, int dtype, int xtype,
                                       int nthreads, const BernoulliExtras& extras = {});

// Returns (out-of-range probs, out-of-range targets). extras.pos_weight must be absent.
std::pair<int64_t, int64_t> bernoulli_probs_log_likelihood_forward(
    addr out, addr grad, addr probs, addr x, int64_t R, int64_t B, int64_t D, int reduction, double scale,
    bool with_grad, int dtype, int xtype, int nthreads, const BernoulliExtras& extras = {});
void bernoulli_probs_log_likelihood_backward(addr grad, addr grad_out, addr probs, addr x, int64_t R,
                                             int64_t B, int64_t D, int reduction, double scale, int dtype,
                                             int xtype, int nthreads, const BernoulliExtras& extras = {});

// logvar is (R, D), or one shared value when shared_logvar (then grad_logvar has 1 element).
void gaussian_log_likelihood_forward(addr out, addr grad_mean, addr grad_logvar, addr x, addr mean,
                                     addr logvar, int64_t R, int64_t B, int64_t D, bool shared_logvar,
                                     int reduction, double scale, bool with_grad, int dtype, int nthreads);
void gaussian_log_likelihood_backward(addr grad_mean, addr grad_logvar, addr grad_out, addr x, addr mean,
                                      addr logvar, int64_t R, int64_t B, int64_t D, bool shared_logvar,
                                      int reduction, double scale, int dtype, int nthreads);

// The error decoders: ll = -sum_d (|x - m|^power exp(-s) + s), power 2 (squared) or 1 (absolute);
// log_scale s is (R, D), or one shared value when shared_log_scale (then grad_log_scale has 1 element).
void error_log_likelihood_forward(addr out, addr grad_mean, addr grad_log_scale, addr x, addr mean,
                                  addr log_scale, int64_t R, int64_t B, int64_t D, bool shared_log_scale,
                                  int reduction, double scale, int power, bool with_grad, int dtype,
                                  int nthreads);
void error_log_likelihood_backward(addr grad_mean, addr grad_log_scale, addr grad_out, addr x, addr mean,
                                   addr log_scale, int64_t R, int64_t B, int64_t D, bool shared_log_scale,
                                   int reduction, double scale, int power, int dtype, int nthreads);

// The whole loss of a step: kl_scale * sum KL - ll_scale * sum log p(x|z), mu/logvar (B, J),
// decoder output (R, D); likelihood: kLikelihoodBernoulli, kLikelihoodProbs, kLikelihoodGaussian
// (decoder_logvar (R, D), or one value when shared_logvar) or kLikelihoodMse / kLikelihoodL1 (the
// error decoders of power 2 / 1, decoder_logvar holding their log-scale, laid out the same).
// Gradients written when with_grad. Returns (out-of-range decoder inputs, out-of-range targets).
enum Likelihood : int {
  kLikelihoodBernoulli = 0,
  kLikelihoodProbs = 1,
  kLikelihoodGaussian = 2,
  kLikelihoodMse = 3,
  kLikelihoodL1 = 4,
};
std::pair<int64_t, int64_t> sgvb_loss_forward(addr out, addr grad_decoded, addr grad_decoder_logvar,
                                              addr grad_mu, addr grad_logvar, addr decoded, addr x,
                                              addr decoder_logvar, addr mu, addr logvar, int64_t R, int64_t B,
                                              int64_t D, int64_t J, int likelihood, bool shared_logvar,
                                              double kl_scale, double ll_scale, bool with_grad, int dtype,
                                              int xtype, int nthreads);

// The negative importance-weighted bound (iwae_loss.cpp): decoder output (K B, D) (row k B + b),
// x (B, D), z (K, B, J), mu / logvar (B, J), decoder_logvar as sgvb_loss's. Value: out (B,) for
// kReductionRows, one value for kReductionSum, times scale. A gradient output of address 0 is
// not written (grad_mu / grad_logvar: 'iwae' only; grad_gate (K, B): with a DReG gate);
// backward: the same gradients times grad_out ((B,) rows, or one value). Returns (out-of-range
// decoder inputs, out-of-range targets) as sgvb_loss_forward.
enum IwaeGradient : int { kGradientIwae = 0, kGradientStl = 1, kGradientDreg = 2 };
std::pair<int64_t, int64_t> iwae_loss_forward(addr out, addr grad_decoded, addr grad_decoder_logvar,
                                              addr grad_z, addr grad_mu, addr grad_logvar, addr grad_gate,
                                              addr decoded, addr x, addr decoder_logvar, addr z, addr mu,
                                              addr logvar, int64_t K, int64_t B, int64_t D, int64_t J,
                                              int likelihood, bool shared, int gradient, int reduction,
                                              double scale, int dtype, int xtype, int nthreads);
void iwae_loss_backward(addr grad_decoded, addr grad_decoder_logvar, addr grad_z, addr grad_mu,
                        addr grad_logvar, addr grad_gate, addr grad_out, addr decoded, addr x,
                        addr decoder_logvar, addr z, addr mu, addr logvar, int64_t K, int64_t B, int64_t D,
                        int64_t J, int likelihood, bool shared, int gradient, int reduction, double scale,
                        int dtype, int xtype, int nthreads);

}  // namespace fastaevb

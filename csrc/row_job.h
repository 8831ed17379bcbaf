// What a per-target row kernel is asked to do: one struct per step, shared between the SIMD
// code (compiled once per target) and the drivers that split rows over threads.
#pragma once

#include <cstdint>

namespace fastaevb {

// Row kernels' modes. Sums are unscaled row sums (in the input's float type, stored as double);
// gradients are scaled by `scale` (forward) or by the upstream gradient times `scale` (backward).
enum Mode : int {
  kFwdElements = 0,  // out[i] = scale * f_i                       (Bernoulli drop-ins, 'none')
  kFwdSum = 1,       // sums[r] = sum_i f_i
  kFwdSumGrad = 2,   // sums[r] = sum_i f_i and grad[i] = scale * df_i
  kBwdRow = 3,       // grad[i] = grad_out[r] * scale * df_i (grad_out[0] when upstream_total)
  kBwdElements = 4,  // grad[i] = grad_out[i] * scale * df_i
};

// Rows: row r covers elements [r * D, min((r + 1) * D, total)) of the decoder output and row
// (r % B) of the data. A caller that needs no per-row results may pass the data as flat chunks
// (D = chunk length, B = R, total = numel), which splits a few huge rows over threads.
struct Rows {
  int64_t R, B, D, total;
  int64_t length(int64_t r) const {
    const int64_t end = (r + 1) * D < total ? (r + 1) * D : total;
    return end - r * D;
  }
};

// A factor broadcast over the rows: element (r, c) at data[r * row_stride + c * col_stride],
// col_stride 0 or 1 (the BCE drop-ins' weight and pos_weight, views of the user's tensors).
struct FactorRows {
  const void* data;
  int64_t row_stride, col_stride;
};

// The drop-ins' extras of a Bernoulli job (bits of BernoulliJob::extras); 0 is the plain kernel.
enum BernoulliExtra : int {
  kWeighted = 1,    // multiply by `weight` (a constant 1 when only the others are asked for)
  kPosWeight = 2,   // torch's pos_weight form (logits)
  kTargetGrad = 4,  // also write dll/dx to grad_x (modes with gradients)
};

struct BernoulliJob {
  Rows rows;
  int mode, dtype, xtype;  // xtype: 0 = the input's float type, 1 = uint8 (bool)
  bool probs;              // false: logits (Appendix C.1), true: probabilities (BCE)
  double scale;
  const void* in;
  const void* x;
  void* out;
  void* grad;
  const void* grad_out;
  bool upstream_total;
  double* sums;
  int extras;  // BernoulliExtra bits
  FactorRows weight, pos_weight;
  void* grad_x;  // (R, D) like grad
};

// The location-scale decoders, ll = -sum_d (a |x - m|^p exp(-s) + a s + c), one row kernel and
// driver for both ops (gaussian_log_likelihood.cpp): the form says which constants.
enum LocScaleForm : int {
  kGaussianForm = 0,  // a = 1/2, p = 2, c = log(2 pi) / 2; s the log-variance
  kAbsErrorForm = 1,  // a = 1, p = 1, c = 0; s the log-scale (the error forms are their power)
  kSqErrorForm = 2,   // a = 1, p = 2, c = 0
};

struct LocScaleJob {
  Rows rows;
  int mode, dtype, form;
  bool shared;       // one log-scale for every element: log_scale[0]
  double inv_scale;  // exp(-log_scale[0]) when shared
  double scale;
  const void* x;
  const void* mean;
  const void* log_scale;
  void* grad_mean;
  void* grad_log_scale;  // per element; unused when shared (the driver sums it)
  const void* grad_out;
  bool upstream_total;
  double* sums;  // sum_d (|x - m|^p exp(-s) + s) (per-element s) or sum_d |x - m|^p (shared)
};

// -a and c / a of a location-scale form, in the order the Gaussian's row formulas always rounded.
inline double loc_scale_neg_a(int form) { return form == kGaussianForm ? -0.5 : -1.0; }
inline double loc_scale_norm(int form) {
  return form == kGaussianForm ? 1.8378770664093454835606594728112 : 0.0;
}

// A row's log-likelihood from its kernel sum (LocScaleJob::sums) and s = log_scale[0] when shared,
// and (shared only) its derivative in s: -a (D - S exp(-s)).
inline double location_scale_row(const LocScaleJob& job, double sum, double s) {
  const double D = static_cast<double>(job.rows.D), a = loc_scale_neg_a(job.form),
               c = loc_scale_norm(job.form);
  return job.shared ? a * (D * (c + s) + sum * job.inv_scale) : a * (D * c + sum);
}
inline double location_scale_row_dlog_scale(const LocScaleJob& job, double sum) {
  return loc_scale_neg_a(job.form) * (static_cast<double>(job.rows.D) - sum * job.inv_scale);
}

// The per-target row kernels (dispatched to the best SIMD target), for the drivers of other ops
// that run them a few rows at a time (iwae_loss.cpp). bad: (out-of-range inputs, targets) added.
void bernoulli_rows(const BernoulliJob& job, int64_t r0, int64_t r1, int64_t* bad);
void location_scale_rows(const LocScaleJob& job, int64_t r0, int64_t r1);

// The location-scale drivers behind both ops' entries (kernels.h, addresses as there).
void location_scale_forward(uintptr_t out, uintptr_t grad_mean, uintptr_t grad_log_scale, uintptr_t x,
                            uintptr_t mean, uintptr_t log_scale, int64_t R, int64_t B, int64_t D, bool shared,
                            int reduction, double scale, int form, bool with_grad, int dtype, int nthreads);
void location_scale_backward(uintptr_t grad_mean, uintptr_t grad_log_scale, uintptr_t grad_out, uintptr_t x,
                             uintptr_t mean, uintptr_t log_scale, int64_t R, int64_t B, int64_t D,
                             bool shared, int reduction, double scale, int form, int dtype, int nthreads);

struct KLJob {
  Rows rows;
  int mode, dtype;
  double scale;
  const void* mu;
  const void* logvar;
  void* grad_mu;
  void* grad_logvar;
  const void* grad_out;
  bool upstream_total;
  double* sums;  // sum_j (mu^2 + expm1(v) - v)
};

// Reparameterization: mu, logvar (R, J); samples L; eps given or Philox(seed, flat index).
struct ReparamJob {
  int64_t L, R, J;
  int dtype;
  uint64_t seed;
  const void* mu;
  const void* logvar;
  const void* eps;
  // forward
  void* z;
  double* kl_sums;  // sum_j kl2 per row, or null (no KL wanted)
  void* log_q;      // (L, R) or null
  void* log_p;
  // backward
  void* grad_mu;
  void* grad_logvar;
  const void* grad_z;
  const void* grad_kl;
  const void* grad_log_q;
  const void* grad_log_p;
};

}  // namespace fastaevb

// The elementwise SGVB formulas (design.md section 2), written once and templated on the
// float type T. Every kernel in csrc/ calls these; none repeats a formula.
//
// Everything here is branch-free (ternaries only) and inlinable so that the D-column loops
// of the kernels vectorize under `#pragma omp simd`. glibc's scalar expf/log1pf calls block
// vectorization without -ffast-math (which we never use: it flushes denormals process-wide),
// so the float path uses the small Cephes-style exp / log1p below (about 1 ulp); double
// keeps libm.
#pragma once

#include <cmath>
#include <cstdint>

namespace fastaevb {

constexpr double kLog2Pi = 1.8378770664093454835606594728112;  // log(2*pi)

// ---------------------------------------------------------------------------------------
// exp / log1p
// ---------------------------------------------------------------------------------------

// exp(x) for float: x = n*ln2 + r, |r| <= ln2/2, Cephes expf polynomial for exp(r), and
// 2^n applied as two power-of-two factors so results down to the denormal range and up to
// overflow (inf) come out right. NaN in -> NaN out.
static inline float exp_f32(float x) {
  float xc = x < -104.0f ? -104.0f : x;  // below: exp underflows to 0 anyway
  xc = xc > 88.8f ? 88.8f : xc;          // above: exp overflows to inf anyway
  // Round-to-nearest with the 1.5*2^23 trick (exact without -ffast-math, vectorizes on SSE2).
  const float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = (xc - fn * 0.693359375f) + fn * 2.12194440e-4f;  // ln2 split hi/lo
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * z + r + 1.0f;
  const int32_t n = static_cast<int32_t>(fn == fn ? fn : 0.0f);  // n in [-150, 128]
  const int32_t n1 = n / 2;
  const int32_t n2 = n - n1;
  const float s1 = __builtin_bit_cast(float, (n1 + 127) << 23);
  const float s2 = __builtin_bit_cast(float, (n2 + 127) << 23);
  return y * s1 * s2;
}

// log1p(e) for e in [0, 1] (or NaN), float: 1 + e = 2^k (1 + f) with f in
// [sqrt(1/2) - 1, sqrt(2) - 1] obtained without forming 1 + e, then the Cephes logf
// polynomial for log(1 + f).
static inline float log1p_unit_f32(float e) {
  const bool big = e > 0.41421356f;
  const float f = big ? (e - 1.0f) * 0.5f : e;
  const float k = big ? 1.0f : 0.0f;
  const float z = f * f;
  float p = 7.0376836292e-2f;
  p = p * f - 1.1514610310e-1f;
  p = p * f + 1.1676998740e-1f;
  p = p * f - 1.2420140846e-1f;
  p = p * f + 1.4249322787e-1f;
  p = p * f - 1.6668057665e-1f;
  p = p * f + 2.0000714765e-1f;
  p = p * f - 2.4999993993e-1f;
  p = p * f + 3.3333331174e-1f;
  float y = p * f * z;
  y += k * -2.12194440e-4f;
  y += -0.5f * z;
  return (f + y) + k * 0.693359375f;
}

template <class T> static inline T fexp(T x);
template <> inline float fexp<float>(float x) { return exp_f32(x); }
template <> inline double fexp<double>(double x) { return std::exp(x); }

template <class T> static inline T log1p_unit(T e);
template <> inline float log1p_unit<float>(float e) { return log1p_unit_f32(e); }
template <> inline double log1p_unit<double>(double e) { return std::log1p(e); }

// max(a, lo) that returns a when a is NaN (std::max(a, lo) semantics, as torch's kernels).
template <class T> static inline T max_keep_nan(T a, T lo) { return a < lo ? lo : a; }

// ---------------------------------------------------------------------------------------
// Value checks: out of range is v < 0 or v > 1 for floats (NaN is not flagged), anything
// but 0/1 for integer targets (bool tensors arrive as uint8).
// ---------------------------------------------------------------------------------------
template <class X> static inline int out_of_range(X v) { return (v < X(0)) | (v > X(1)); }
template <> inline int out_of_range<uint8_t>(uint8_t v) { return v > 1; }

// ---------------------------------------------------------------------------------------
// Gaussian KL (Appendix B). Elementwise kl2 = mu^2 + exp(v) - 1 - v (KL = 0.5 * sum kl2),
// with exp(v) - 1 as expm1(v) so small v keep their digits.
// dKL/dmu = mu, dKL/dv = 0.5 * expm1(v): kl_term hands back em1 = expm1(v).
// (Results come back as small structs, never through reference out-parameters: those
// become address-taken "simd arrays" under `omp simd` and stop gcc from vectorizing.)
// ---------------------------------------------------------------------------------------
template <class T> struct KLTerm { T kl2, em1; };
template <class T> static inline KLTerm<T> kl_term(T mu, T v) {
  const T em1 = std::expm1(v);
  return {mu * mu + (em1 - v), em1};
}

// ---------------------------------------------------------------------------------------
// Reparameterization (eq. 4): z = mu + exp(0.5 v) * eps; sd = exp(0.5 v) is returned for
// the backward term dz/dv = 0.5 * eps * sd.
// ---------------------------------------------------------------------------------------
template <class T> struct Sample { T z, sd; };
template <class T> static inline Sample<T> reparam(T mu, T v, T eps) {
  const T sd = fexp(T(0.5) * v);
  return {mu + sd * eps, sd};
}

// ---------------------------------------------------------------------------------------
// Bernoulli decoder from logits (Appendix C.1): ll = x*l - softplus(l)
//   = (x - [l > 0]) * l - log1p(exp(-|l|)),   dll/dl = x - sigmoid(l),
// sigmoid taken from the same e = exp(-|l|). When the caller ignores dl, the division
// is dead code and disappears after inlining.
// ---------------------------------------------------------------------------------------
template <class T> struct LLGrad { T ll, dl; };
template <class T> static inline LLGrad<T> bernoulli_logits_term(T l, T x) {
  const T e = fexp(-std::fabs(l));
  const bool pos = l > T(0);
  const T inv = T(1) / (T(1) + e);
  return {(x - (pos ? T(1) : T(0))) * l - log1p_unit(e), x - (pos ? inv : e * inv)};
}

// ---------------------------------------------------------------------------------------
// Bernoulli decoder from probabilities: exactly -F.binary_cross_entropy (ATen CPU kernel
// binary_cross_entropy_out_cpu / _backward_out_cpu): logs clamped at -100 with a max that
// keeps NaN, gradient (x - p) / max(p (1 - p), 1e-12f). Uses libm log/log1p (not
// vectorized; the logits form is the fast path).
// ---------------------------------------------------------------------------------------
template <class T> static inline T bernoulli_probs_term(T p, T x) {
  const T log_p = max_keep_nan(T(std::log(p)), T(-100));
  const T log_1mp = max_keep_nan(T(std::log1p(-p)), T(-100));
  return x * log_p - (x - T(1)) * log_1mp;
}
template <class T> static inline T bernoulli_probs_grad(T p, T x) {
  // ATen's EPSILON is a float constant: for double the floor is double(1e-12f), not 1e-12.
  return (x - p) / max_keep_nan((T(1) - p) * p, static_cast<T>(1e-12f));
}

// ---------------------------------------------------------------------------------------
// Gaussian decoder (Appendix C.2): ll = -0.5 * (log 2pi + v + (x - m)^2 exp(-v)).
// gaussian_term returns q = v + (x - m)^2 exp(-v) (ll = -0.5 (log 2pi + q)) and the grads
// dll/dm = (x - m) exp(-v), dll/dv = -0.5 (1 - (x - m)^2 exp(-v)).
// With one shared log-variance a row needs only sum (x - m)^2: gaussian_log_likelihood.cpp.
// ---------------------------------------------------------------------------------------
template <class T> struct GaussTerm { T q, dm, dv; };
template <class T> static inline GaussTerm<T> gaussian_term(T x, T m, T v) {
  const T d = x - m;
  const T iv = fexp(-v);
  const T q = d * d * iv;
  return {v + q, d * iv, T(-0.5) * (T(1) - q)};
}

}  // namespace fastaevb

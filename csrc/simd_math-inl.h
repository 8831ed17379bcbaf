// The elementwise SGVB formulas (docs/math.md), written once as Highway vector code and
// compiled for every SIMD target (SSE4, AVX2, AVX-512, NEON, ...) by the step files that
// include this header through hwy/foreach_target.h. exp / log / log1p / expm1 / cos come from
// Highway's hwy/contrib/math; this file only adds what the formulas need around them:
// NaN propagation (Highway's Exp returns 0 for NaN), overflow clamps, and the -100 clamp of
// torch's binary_cross_entropy.
//
// Per-target include guard: the toggle pattern of Highway's skeleton-inl.h.
#if defined(FASTAEVB_SIMD_MATH_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef FASTAEVB_SIMD_MATH_INL_H_
#undef FASTAEVB_SIMD_MATH_INL_H_
#else
#define FASTAEVB_SIMD_MATH_INL_H_
#endif

#include <cstdint>
#include <cstring>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"
#include "row_job.h"  // LocScaleForm

HWY_BEFORE_NAMESPACE();
namespace fastaevb {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

template <class D>
using V = hn::Vec<D>;

// ---------------------------------------------------------------------------------------
// Loads and stores of one vector, whole or the first `count` lanes (the row tail). The tail
// goes through a zeroed stack buffer, so it works for every lane type (the uint8 targets too)
// and the padding lanes hold 0, which no range check flags.
// ---------------------------------------------------------------------------------------
template <class D, class T>
HWY_INLINE V<D> LoadTail(D d, const T* HWY_RESTRICT p, size_t count) {
  HWY_ALIGN T buf[HWY_MAX_BYTES / sizeof(T)] = {};
  std::memcpy(buf, p, count * sizeof(T));
  return hn::Load(d, buf);
}

template <class D, class T>
HWY_INLINE void StoreTail(D d, V<D> v, T* HWY_RESTRICT p, size_t count) {
  HWY_ALIGN T buf[HWY_MAX_BYTES / sizeof(T)];
  hn::Store(v, d, buf);
  std::memcpy(p, buf, count * sizeof(T));
}

// Element `i` onward as a vector of T: whole (kTail false) or `count` lanes.
template <bool kTail, class D, class T>
HWY_INLINE V<D> LoadAt(D d, const T* HWY_RESTRICT p, size_t i, size_t count) {
  if constexpr (kTail)
    return LoadTail(d, p + i, count);
  else
    return hn::LoadU(d, p + i);
}

template <bool kTail, class D, class T>
HWY_INLINE void StoreAt(D d, V<D> v, T* HWY_RESTRICT p, size_t i, size_t count) {
  if constexpr (kTail)
    StoreTail(d, v, p + i, count);
  else
    hn::StoreU(v, d, p + i);
}

// Bernoulli targets: the input's float type, or uint8 (bool arrives as uint8) widened to T.
template <bool kTail, class D, class X>
HWY_INLINE V<D> LoadTarget(D d, const X* HWY_RESTRICT p, size_t i, size_t count) {
  using T = hn::TFromD<D>;
  if constexpr (sizeof(X) == sizeof(T)) {
    return LoadAt<kTail>(d, p, i, count);
  } else {
    const hn::Rebind<uint8_t, D> d8;
    const hn::Rebind<int32_t, D> di;
    const auto bytes = LoadAt<kTail>(d8, p, i, count);
    if constexpr (sizeof(T) == 4)
      return hn::ConvertTo(d, hn::PromoteTo(di, bytes));
    else
      return hn::PromoteTo(d, hn::PromoteTo(di, bytes));
  }
}

// Sum of the first `count` lanes into acc (all lanes when kTail is false).
template <bool kTail, class D>
HWY_INLINE V<D> AddLanes(D d, V<D> acc, V<D> v, size_t count) {
  if constexpr (kTail)
    return hn::Add(acc, hn::IfThenElseZero(hn::FirstN(d, count), v));
  else
    return hn::Add(acc, v);
}

// Calls body(i, count, tail) for the vectors covering [0, n): tail is std::true_type for the
// last, partial vector (count < Lanes) and std::false_type otherwise.
template <class D, class Body>
HWY_INLINE void ForEachVector(D d, size_t n, Body&& body) {
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) body(i, N, std::false_type{});
  if (i < n) body(i, n - i, std::true_type{});
}

// Out-of-range count of a vector of values that must lie in [0, 1] (NaN is not flagged).
template <class D>
HWY_INLINE int64_t CountOutOfUnit(D d, V<D> v) {
  const auto bad = hn::Or(hn::Lt(v, hn::Zero(d)), hn::Gt(v, hn::Set(d, 1)));
  return hn::AllFalse(d, bad) ? 0 : static_cast<int64_t>(hn::CountTrue(d, bad));
}

// ---------------------------------------------------------------------------------------
// exp / expm1 with NaN propagated and a clamp above the overflow threshold (Highway's
// versions are defined on the finite, non-overflowing range).
// ---------------------------------------------------------------------------------------
template <class D>
HWY_INLINE V<D> KeepNaN(V<D> from, V<D> result) {
  return hn::IfThenElse(hn::IsNaN(from), from, result);
}

template <class D>
HWY_INLINE V<D> ExpSafe(D d, V<D> x) {
  using T = hn::TFromD<D>;
  const V<D> hi = hn::Set(d, static_cast<T>(sizeof(T) == 4 ? 89.0 : 710.0));  // exp -> inf above
  const V<D> y = hn::Exp(d, hn::Min(x, hi));
  return KeepNaN<D>(x, hn::IfThenElse(hn::Ge(x, hi), hn::Set(d, HUGE_VAL), y));
}

template <class D>
HWY_INLINE V<D> Expm1Safe(D d, V<D> x) {
  using T = hn::TFromD<D>;
  const V<D> hi = hn::Set(d, static_cast<T>(sizeof(T) == 4 ? 89.0 : 710.0));
  const V<D> y = hn::Expm1(d, hn::Min(x, hi));
  return KeepNaN<D>(x, hn::IfThenElse(hn::Ge(x, hi), hn::Set(d, HUGE_VAL), y));
}

// Lanes i.. of a factor row broadcast over (R, D) (the BCE drop-ins' weight / pos_weight):
// contiguous when col_stride is 1, one value for the whole row when it is 0.
template <bool kTail, class D, class T>
HWY_INLINE V<D> LoadFactor(D d, const T* HWY_RESTRICT row, int64_t col_stride, size_t i, size_t count) {
  return col_stride == 0 ? hn::Set(d, row[0]) : LoadAt<kTail>(d, row, i, count);
}

// max(a, lo) that returns a when a is NaN (std::max semantics, as torch's kernels).
template <class D>
HWY_INLINE V<D> MaxKeepNaN(D /*d*/, V<D> a, V<D> lo) {
  return hn::IfThenElse(hn::Lt(a, lo), lo, a);
}

// ---------------------------------------------------------------------------------------
// Bernoulli decoder from logits (Appendix C.1): ll = x l - softplus(l)
//   = x l - max(l, 0) - log1p(exp(-|l|)),   dll/dl = x - sigmoid(l),
// sigmoid from the same e = exp(-|l|). Unused results are dead code after inlining.
// ---------------------------------------------------------------------------------------
template <class D>
struct LLGrad {
  V<D> ll, dl;
};

template <class D>
HWY_INLINE V<D> ExpNegAbs(D d, V<D> l) {
  return KeepNaN<D>(l, hn::Exp(d, hn::Neg(hn::Abs(l))));  // in (0, 1]; NaN stays NaN
}

// e = exp(-|l|), log1p(e) and 1 / (1 + e), the pieces of softplus(l) and sigmoid(l). log1p(e) is
// log(u) + (e - (u - 1)) / u with u = 1 + e (the rounding of u corrected to first order), so the
// sigmoid's one division serves both; u lies in [1, 2], so Highway's Log runs without its
// subnormal handling, as Highway's own Log1p calls it. Against Highway's Log1p and a second
// division: 1.9 instead of 2.6 ulp at worst over logits in [-120, 120], 9% less time per element.
template <class D>
struct SoftplusTerms {
  V<D> e, log1p_e, inv;
};

template <class D>
HWY_INLINE SoftplusTerms<D> Softplus(D d, V<D> l) {
  const V<D> one = hn::Set(d, 1);
  const V<D> e = ExpNegAbs(d, l);
  const V<D> u = hn::Add(one, e);
  const V<D> inv = hn::Div(one, u);
  const V<D> log_u = hn::impl::Log<D, V<D>, /*kAllowSubnormals=*/false>(d, u);
  return {e, hn::MulAdd(hn::Sub(e, hn::Sub(u, one)), inv, log_u), inv};
}

// sigmoid(l): 1 / (1 + e) for l > 0, e / (1 + e) otherwise.
template <class D>
HWY_INLINE V<D> SigmoidFrom(D d, V<D> l, const SoftplusTerms<D>& s) {
  return hn::IfThenElse(hn::Gt(l, hn::Zero(d)), s.inv, hn::Mul(s.e, s.inv));
}

template <class D>
HWY_INLINE LLGrad<D> BernoulliLogits(D d, V<D> l, V<D> x) {
  const SoftplusTerms<D> s = Softplus(d, l);
  const V<D> ll = hn::Sub(hn::MulSub(x, l, hn::Max(l, hn::Zero(d))), s.log1p_e);
  return {ll, hn::Sub(x, SigmoidFrom(d, l, s))};
}

// ---------------------------------------------------------------------------------------
// The drop-ins' general forms: ll, dll/d(input) and dll/dx (the target's gradient).
// From logits with pos_weight q, torch's binary_cross_entropy_with_logits negated, in its form:
//   ll = (1 + (q - 1) x) logsig(l) - (1 - x) l,   dll/dl = q x - (q x + 1 - x) sigmoid(l),
//   dll/dx = q logsig(l) - logsig(-l),   logsig(l) = min(l, 0) - log1p(exp(-|l|)) (torch's).
// Without q, dll/dx = l; from probabilities, dll/dx = logit(p) = log(p / (1 - p)), unclamped
// as torch's binary_cross_entropy target gradient (-inf at p = 0, inf at 1).
// ---------------------------------------------------------------------------------------
template <class D>
struct LLGrads {
  V<D> ll, dl, dx;
};

template <class D>
HWY_INLINE LLGrads<D> BernoulliLogitsPosWeight(D d, V<D> l, V<D> x, V<D> q) {
  const V<D> zero = hn::Zero(d), one = hn::Set(d, 1);
  const SoftplusTerms<D> s = Softplus(d, l);
  const V<D> tail = s.log1p_e;
  const V<D> neg = hn::Neg(l);
  const V<D> log_sig = hn::Sub(hn::IfThenElse(hn::Lt(l, zero), l, zero), tail);
  const V<D> log_sig_neg = hn::Sub(hn::IfThenElse(hn::Lt(neg, zero), neg, zero), tail);
  const V<D> qx = hn::Mul(q, x);
  const V<D> ll =
      hn::Sub(hn::Mul(hn::Add(hn::Mul(hn::Sub(q, one), x), one), log_sig), hn::Mul(hn::Sub(one, x), l));
  const V<D> dl = hn::Sub(qx, hn::Mul(hn::Sub(hn::Add(qx, one), x), SigmoidFrom(d, l, s)));
  return {ll, dl, KeepNaN<D>(l, hn::Sub(hn::Mul(q, log_sig), log_sig_neg))};
}

template <class D>
HWY_INLINE V<D> BernoulliProbsTargetGrad(D d, V<D> p) {
  const V<D> zero = hn::Zero(d), one = hn::Set(d, 1);
  const auto at0 = hn::Eq(p, zero), at1 = hn::Eq(p, one);
  const V<D> ratio = hn::IfThenElse(hn::Or(at0, at1), one, hn::Div(p, hn::Sub(one, p)));
  const V<D> lg = hn::IfThenElse(at0, hn::Set(d, -HUGE_VAL),
                                 hn::IfThenElse(at1, hn::Set(d, HUGE_VAL), hn::Log(d, ratio)));
  return KeepNaN<D>(p, lg);
}

// ---------------------------------------------------------------------------------------
// Bernoulli decoder from probabilities: exactly -F.binary_cross_entropy (ATen's CPU kernel):
//   ll = x max(log p, -100) + (1 - x) max(log1p(-p), -100),
//   dll/dp = (x - p) / max(p (1 - p), 1e-12f)   (ATen's EPSILON is a float constant).
// log(0) and log1p(-1) are -inf (clamped to -100) explicitly: Highway's Log is defined for
// positive inputs only.
// ---------------------------------------------------------------------------------------
template <class D>
HWY_INLINE V<D> BernoulliProbsLL(D d, V<D> p, V<D> x) {
  const V<D> zero = hn::Zero(d), one = hn::Set(d, 1), floor = hn::Set(d, -100);
  const V<D> ninf = hn::Set(d, -HUGE_VAL);
  V<D> log_p = hn::IfThenElse(hn::Eq(p, zero), ninf, hn::Log(d, p));
  V<D> log_1mp = hn::IfThenElse(hn::Eq(p, one), ninf, hn::Log1p(d, hn::Neg(p)));
  log_p = KeepNaN<D>(p, MaxKeepNaN(d, log_p, floor));
  log_1mp = KeepNaN<D>(p, MaxKeepNaN(d, log_1mp, floor));
  return hn::NegMulAdd(hn::Sub(x, one), log_1mp, hn::Mul(x, log_p));  // x lp - (x - 1) l1mp
}

template <class D>
HWY_INLINE V<D> BernoulliProbsGrad(D d, V<D> p, V<D> x) {
  using T = hn::TFromD<D>;
  const V<D> eps = hn::Set(d, static_cast<T>(1e-12f));
  const V<D> denom = MaxKeepNaN(d, hn::Mul(hn::Sub(hn::Set(d, 1), p), p), eps);
  return hn::Div(hn::Sub(x, p), denom);
}

// ---------------------------------------------------------------------------------------
// Location-scale decoders (row_job.h's forms): the Gaussian (Appendix C.2, s = v) and the error
// decoders (torch's mse / l1 losses with a log-scale s), ll = -a q - c with
//   q = |x - m|^p exp(-s) + s,  dll/dm = a p |x - m|^(p-1) sign(x - m) exp(-s),
//   dll/ds = a (|x - m|^p exp(-s) - 1).
// Error<form> is |d|^p; Slope<form> is dll/dm without exp(-s) (the Gaussian's a p = 1: d).
// ---------------------------------------------------------------------------------------
template <int kForm, class D>
HWY_INLINE V<D> Error(D /*d*/, V<D> diff) {
  if constexpr (kForm == kAbsErrorForm)
    return hn::Abs(diff);
  else
    return hn::Mul(diff, diff);
}

// d, 2 d, or sign(d) with sign(0) = 0 and NaN kept (torch's abs backward).
template <int kForm, class D>
HWY_INLINE V<D> Slope(D d, V<D> diff) {
  if constexpr (kForm == kGaussianForm) {
    return diff;
  } else if constexpr (kForm == kSqErrorForm) {
    return hn::Add(diff, diff);
  } else {
    const V<D> one = hn::Set(d, 1);
    return hn::IfThenElse(hn::Gt(diff, hn::Zero(d)), one,
                          hn::IfThenElse(hn::Lt(diff, hn::Zero(d)), hn::Neg(one), diff));
  }
}

template <class D>
struct LocScaleTerm {
  V<D> q, dm, ds;
};

template <int kForm, class D>
HWY_INLINE LocScaleTerm<D> LocScale(D d, V<D> x, V<D> m, V<D> s) {
  const V<D> diff = hn::Sub(x, m);
  const V<D> is = ExpSafe(d, hn::Neg(s));
  const V<D> e = hn::Mul(Error<kForm>(d, diff), is);
  const V<D> one = hn::Set(d, 1);
  V<D> ds;
  if constexpr (kForm == kGaussianForm)
    ds = hn::Mul(hn::Set(d, -0.5), hn::Sub(one, e));  // the Gaussian's rounding: -0 where e = 1
  else
    ds = hn::Sub(e, one);
  return {hn::Add(e, s), hn::Mul(Slope<kForm>(d, diff), is), ds};
}

// ---------------------------------------------------------------------------------------
// Gaussian KL (Appendix B): KL = 0.5 sum_j kl2, kl2 = mu^2 + expm1(v) - v;
// dKL/dmu = mu, dKL/dv = 0.5 expm1(v) (expm1 keeps the digits of small v).
// ---------------------------------------------------------------------------------------
template <class D>
struct KLTerm {
  V<D> kl2, em1;
};

template <class D>
HWY_INLINE KLTerm<D> KL(D d, V<D> mu, V<D> v) {
  const V<D> em1 = Expm1Safe(d, v);
  return {hn::MulAdd(mu, mu, hn::Sub(em1, v)), em1};
}

// Reparameterization (eq. 4): z = mu + exp(0.5 v) eps; sd = exp(0.5 v) for dz/dv = 0.5 eps sd.
template <class D>
HWY_INLINE V<D> StdDev(D d, V<D> v) {
  return ExpSafe(d, hn::Mul(hn::Set(d, 0.5), v));
}

// ---------------------------------------------------------------------------------------
// Noise: Triton's tl.randn(seed, offset) for int64 offsets, lane by lane (Philox4x32-10 on
// counter (offset lo32, offset hi32, 0, 0) with key (seed lo32, seed hi32), the first two words
// to uniforms by uint_to_uniform_float, then Box-Muller r cos(th)), all in float32. The integer
// stream and the uniforms are bit-exact; only Log / Cos / Sqrt rounding can differ from a GPU.
// ---------------------------------------------------------------------------------------

// hi and lo words of a * k for every u32 lane (MulEven gives the 64-bit products of the even
// lanes; the odd lanes are shifted down and multiplied the same way).
template <class DU>
HWY_INLINE void MulHiLo(DU du, V<DU> a, uint32_t k, V<DU>& hi, V<DU>& lo) {
#if HWY_TARGET == HWY_SCALAR  // one lane: no wider lanes to repartition into
  const uint64_t product = static_cast<uint64_t>(hn::GetLane(a)) * k;
  hi = hn::Set(du, static_cast<uint32_t>(product >> 32));
  lo = hn::Set(du, static_cast<uint32_t>(product));
#else
  const hn::Repartition<uint64_t, DU> du64;
  const V<DU> vk = hn::Set(du, k);
  const auto even = hn::MulEven(a, vk);
  const auto odd = hn::MulEven(hn::BitCast(du, hn::ShiftRight<32>(hn::BitCast(du64, a))), vk);
  lo = hn::OddEven(hn::BitCast(du, hn::ShiftLeft<32>(odd)), hn::BitCast(du, even));
  hi = hn::OddEven(hn::BitCast(du, odd), hn::BitCast(du, hn::ShiftRight<32>(even)));
#endif
}

// uint_to_uniform_float: int32 view, negatives folded with ~x, times 2^-31 (just below 1).
template <class DU>
HWY_INLINE hn::Vec<hn::Rebind<float, DU>> UniformFloat(DU du, V<DU> bits) {
  const hn::RebindToSigned<DU> di;
  const hn::Rebind<float, DU> df;
  const auto x = hn::BitCast(di, bits);
  const auto folded = hn::IfThenElse(hn::Lt(x, hn::Zero(di)), hn::Not(x), x);
  return hn::Mul(hn::ConvertTo(df, folded), hn::Set(df, 4.6566127342e-10f));
}

// randn(seed, first + lane) for the lanes of du (u32 lanes), as float32.
template <class DU>
HWY_INLINE hn::Vec<hn::Rebind<float, DU>> Randn(DU du, uint64_t seed, int64_t first) {
  const hn::Rebind<float, DU> df;
  const uint64_t off = static_cast<uint64_t>(first);
  const V<DU> base_lo = hn::Set(du, static_cast<uint32_t>(off));
  V<DU> c0 = hn::Add(base_lo, hn::Iota(du, 0));
  // Carry into the high word where the low word wrapped (unsigned c0 < base_lo).
  const V<DU> flip = hn::Set(du, 0x80000000u);
  const hn::RebindToSigned<DU> di;
  const auto wrapped = hn::Lt(hn::BitCast(di, hn::Xor(c0, flip)), hn::BitCast(di, hn::Xor(base_lo, flip)));
  const uint32_t hi32 = static_cast<uint32_t>(off >> 32);
  V<DU> c1 = hn::IfThenElse(hn::RebindMask(du, wrapped), hn::Set(du, hi32 + 1u), hn::Set(du, hi32));
  V<DU> c2 = hn::Zero(du), c3 = hn::Zero(du);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    V<DU> hi_a, lo_a, hi_b, lo_b;
    MulHiLo(du, c0, 0xD2511F53u, hi_a, lo_a);
    MulHiLo(du, c2, 0xCD9E8D57u, hi_b, lo_b);
    const V<DU> n0 = hn::Xor(hn::Xor(hi_b, c1), hn::Set(du, k0));
    const V<DU> n2 = hn::Xor(hn::Xor(hi_a, c3), hn::Set(du, k1));
    c1 = lo_b;
    c3 = lo_a;
    c0 = n0;
    c2 = n2;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const auto u1 = hn::Max(UniformFloat(du, c0), hn::Set(df, 1.0e-7f));  // never NaN
  const auto th = hn::Mul(hn::Set(df, 6.283185307179586f), UniformFloat(du, c1));
  const auto r = hn::Sqrt(hn::Mul(hn::Set(df, -2.0f), hn::Log(df, u1)));
  return hn::Mul(r, hn::Cos(df, th));
}

// eps for the lanes of d (float or double) at flat indices first + lane.
template <class D>
HWY_INLINE V<D> RandnAs(D d, uint64_t seed, int64_t first) {
  const hn::Rebind<uint32_t, D> du;
  const auto eps = Randn(du, seed, first);
  if constexpr (sizeof(hn::TFromD<D>) == 4)
    return eps;
  else
    return hn::PromoteTo(d, eps);
}

}  // namespace HWY_NAMESPACE
}  // namespace fastaevb
HWY_AFTER_NAMESPACE();

#endif  // include guard

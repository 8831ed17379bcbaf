// Philox4x32-10 normal noise, bit-for-bit the algorithm of Triton's tl.randn(seed, offset)
// (triton/language/random.py: philox_impl, randint4x, uint_to_uniform_float,
// pair_uniform_to_normal) for an int64 offset. Only the libm rounding of log/cos/sqrt may
// differ from a GPU run; the integer stream and the uniforms are identical.
#pragma once

#include <cmath>
#include <cstdint>

namespace fastaevb {

// Ten Philox rounds on counter (c0..c3) with key (k0, k1); returns the first two words,
// the only ones randn uses.
static inline void philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                 uint32_t k0, uint32_t k1, uint32_t& out0, uint32_t& out1) {
  const uint32_t kKeyA = 0x9E3779B9u, kKeyB = 0xBB67AE85u;
  const uint32_t kRoundA = 0xD2511F53u, kRoundB = 0xCD9E8D57u;
  for (int round = 0; round < 10; ++round) {
    const uint64_t pa = static_cast<uint64_t>(kRoundA) * c0;  // A * c0 -> hi: c2, lo: c3
    const uint64_t pb = static_cast<uint64_t>(kRoundB) * c2;  // B * c2 -> hi: c0, lo: c1
    const uint32_t n0 = static_cast<uint32_t>(pb >> 32) ^ c1 ^ k0;
    const uint32_t n2 = static_cast<uint32_t>(pa >> 32) ^ c3 ^ k1;
    c1 = static_cast<uint32_t>(pb);
    c3 = static_cast<uint32_t>(pa);
    c0 = n0;
    c2 = n2;
    k0 += kKeyA;
    k1 += kKeyB;
  }
  out0 = c0;
  out1 = c1;
}

// uint_to_uniform_float for 32-bit words: bitcast to int32, fold negatives with ~x,
// scale so that INT32_MAX maps just below 1.0f. Result in [0, 1).
static inline float uint_to_uniform_float(uint32_t bits) {
  const int32_t x = static_cast<int32_t>(bits);
  const int32_t folded = x < 0 ? ~x : x;
  return static_cast<float>(folded) * 4.6566127342e-10f;
}

// tl.randn(seed, offset): first Box-Muller output of the first two Philox words.
// key = (seed lo32, seed hi32), counter = (offset lo32, offset hi32, 0, 0). All float32.
static inline float philox_randn(uint64_t seed, int64_t offset) {
  const uint64_t off = static_cast<uint64_t>(offset);
  uint32_t i1, i2;
  philox4x32_10(static_cast<uint32_t>(off), static_cast<uint32_t>(off >> 32), 0u, 0u,
                static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), i1, i2);
  float u1 = uint_to_uniform_float(i1);
  const float u2 = uint_to_uniform_float(i2);
  u1 = u1 > 1.0e-7f ? u1 : 1.0e-7f;  // tl.maximum(1e-7, u1); u1 is never NaN
  const float th = 6.283185307179586f * u2;
  const float r = std::sqrt(-2.0f * std::log(u1));
  return r * std::cos(th);
}

}  // namespace fastaevb

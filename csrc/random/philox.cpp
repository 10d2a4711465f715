#include "random/philox.h"

#include "common.h"  // FASTGEN_SIMD

#include <algorithm>
#include <cmath>
#include <cstring>

namespace fastgen {

namespace {
constexpr uint32_t kMul0 = 0xD2511F53u;
constexpr uint32_t kMul1 = 0xCD9E8D57u;
constexpr uint32_t kWeyl0 = 0x9E3779B9u;
constexpr uint32_t kWeyl1 = 0xBB67AE85u;

inline void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

inline std::array<uint32_t, 4> block(uint64_t seed, uint64_t index) {
  return philox4x32_10({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0u},
                       {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
}

inline float bits_to_float(uint32_t b) {
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b;
}

// Natural log of x in (0, 1] with plain IEEE float operations (fdlibm's logf kernel), so the
// result is the same on every platform and the loop over many values vectorises.
inline float log_unit(float x) {
  uint32_t ix = float_to_bits(x);
  int k = static_cast<int>(ix >> 23) - 127;
  ix &= 0x007FFFFFu;
  // normalise the mantissa into [sqrt(2)/2, sqrt(2))
  const uint32_t i = (ix + (0x95F64u << 3)) & 0x00800000u;
  const float m = bits_to_float(ix | (i ^ 0x3F800000u));
  k += static_cast<int>(i >> 23);
  const float f = m - 1.0f;
  const float s = f / (2.0f + f);
  const float z = s * s;
  const float w = z * z;
  const float t1 = w * (0.40000972152f + w * 0.24279078841f);
  const float t2 = z * (0.66666662693f + w * 0.28498786688f);
  const float R = t2 + t1;
  const float hfsq = 0.5f * f * f;
  const float dk = static_cast<float>(k);
  return dk * 6.9313812256e-01f - ((hfsq - (s * (hfsq + R) + dk * 9.0580006145e-06f)) - f);
}

// sin and cos of 2*pi*u for u in [0, 1): quadrant reduction in turns (exact), then Taylor
// polynomials on [-pi/4, pi/4] (error < 2e-9 before rounding).
inline void sincos_turns(float u, float& s_out, float& c_out) {
  const float q = static_cast<float>(static_cast<int>(u * 4.0f + 0.5f));  // nearest quarter turn, 0..4
  const float a = (u - q * 0.25f) * 6.28318530717958647692f;           // |a| <= pi/4
  const float a2 = a * a;
  const float s = a * (1.0f + a2 * (-1.6666667163e-01f + a2 * (8.3333337680e-03f + a2 * (-1.9841270114e-04f +
                                                                                              a2 * 2.7557314297e-06f))));
  const float c = 1.0f + a2 * (-0.5f + a2 * (4.1666667908e-02f + a2 * (-1.3888889225e-03f + a2 * (2.4801587642e-05f +
                                                                                                   a2 * -2.7557314297e-07f))));
  const int qi = static_cast<int>(q) & 3;
  // rotate by qi quarter turns: (sin, cos) -> 0: (s, c), 1: (c, -s), 2: (-s, -c), 3: (-c, s)
  const bool swap = qi & 1;
  const float ss = swap ? c : s;
  const float cc = swap ? s : c;
  s_out = (qi == 2 || qi == 3) ? -ss : ss;
  c_out = (qi == 1 || qi == 2) ? -cc : cc;
}

// 24 random bits -> float in (0, 1], never 0 so log() is finite.
inline float to_unit_open0(uint32_t x) { return static_cast<float>((x >> 8) + 1u) * (1.0f / 16777216.0f); }
// 24 random bits -> float in [0, 1).
inline float to_unit(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }

constexpr size_t kChunkBlocks = 256;  // 1024 values per chunk: fits in L1
}  // namespace

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(kMul0, c[0], hi0, lo0);
    mulhilo(kMul1, c[2], hi1, lo1);
    c = {hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0};
    k[0] += kWeyl0;
    k[1] += kWeyl1;
  }
  return c;
}

// Philox-4x32-10 of the counters (index, 0, 0) for index = first .. first + count - 1, in
// structure-of-arrays form (c0[j] .. c3[j] is block first + j) so the rounds vectorise across blocks.
static void philox_blocks(uint64_t seed, uint64_t first, size_t count, uint32_t* c0, uint32_t* c1, uint32_t* c2,
                          uint32_t* c3) {
  for (size_t j = 0; j < count; ++j) {
    const uint64_t index = first + j;
    c0[j] = static_cast<uint32_t>(index);
    c1[j] = static_cast<uint32_t>(index >> 32);
    c2[j] = 0u;
    c3[j] = 0u;
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    FASTGEN_SIMD for (size_t j = 0; j < count; ++j) {
      const uint64_t p0 = static_cast<uint64_t>(kMul0) * c0[j];
      const uint64_t p1 = static_cast<uint64_t>(kMul1) * c2[j];
      const uint32_t n0 = static_cast<uint32_t>(p1 >> 32) ^ c1[j] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(p0 >> 32) ^ c3[j] ^ k1;
      c0[j] = n0;
      c1[j] = static_cast<uint32_t>(p1);
      c2[j] = n2;
      c3[j] = static_cast<uint32_t>(p0);
    }
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
}

// Box-Muller of the uniform pairs (a[j], b[j]) -> (rad * cos, rad * sin) into x[j], y[j].
static void box_muller(const uint32_t* a, const uint32_t* b, float* x, float* y, size_t count) {
  FASTGEN_SIMD for (size_t j = 0; j < count; ++j) {
    const float u1 = to_unit_open0(a[j]);
    const float u2 = to_unit(b[j]);
    const float rad = std::sqrt(-2.0f * log_unit(u1));
    float s, c;
    sincos_turns(u2, s, c);
    x[j] = rad * c;
    y[j] = rad * s;
  }
}

uint64_t fill_normal(float* out, size_t n, uint64_t seed, uint64_t block_offset) {
  // Block b yields values 4b..4b+3: two Box-Muller pairs (u1, u2) = (r0, r1) and (r2, r3).
  alignas(64) uint32_t c0[kChunkBlocks], c1[kChunkBlocks], c2[kChunkBlocks], c3[kChunkBlocks];
  alignas(64) float v0[kChunkBlocks], v1[kChunkBlocks], v2[kChunkBlocks], v3[kChunkBlocks];
  uint64_t b = block_offset;
  size_t i = 0;
  while (i < n) {
    const size_t blocks = std::min<size_t>(kChunkBlocks, (n - i + 3) / 4);
    philox_blocks(seed, b, blocks, c0, c1, c2, c3);
    box_muller(c0, c1, v0, v1, blocks);
    box_muller(c2, c3, v2, v3, blocks);
    const size_t take = std::min(n - i, 4 * blocks);
    float* o = out + i;
    if (take == 4 * blocks) {
      FASTGEN_SIMD for (size_t j = 0; j < blocks; ++j) {
        o[4 * j] = v0[j];
        o[4 * j + 1] = v1[j];
        o[4 * j + 2] = v2[j];
        o[4 * j + 3] = v3[j];
      }
    } else {
      const float* v[4] = {v0, v1, v2, v3};
      for (size_t k = 0; k < take; ++k) o[k] = v[k % 4][k / 4];
    }
    i += take;
    b += blocks;
  }
  return b;
}

uint64_t fill_uniform(float* out, size_t n, uint64_t seed, uint64_t block_offset) {
  size_t i = 0;
  uint64_t b = block_offset;
  for (; i < n; ++b) {
    const auto r = block(seed, b);
    for (int j = 0; j < 4 && i < n; ++j) out[i++] = to_unit(r[j]);
  }
  return b;
}

}  // namespace fastgen

#include "random/philox.h"

#include <cmath>

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

// 24 random bits -> float in (0, 1], never 0 so log() is finite.
inline float to_unit_open0(uint32_t x) { return (static_cast<float>(x >> 8) + 1.0f) * (1.0f / 16777216.0f); }
// 24 random bits -> float in [0, 1).
inline float to_unit(uint32_t x) { return static_cast<float>(x >> 8) * (1.0f / 16777216.0f); }

inline std::array<uint32_t, 4> block(uint64_t seed, uint64_t index) {
  return philox4x32_10({static_cast<uint32_t>(index), static_cast<uint32_t>(index >> 32), 0u, 0u},
                       {static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32)});
}
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

uint64_t fill_normal(float* out, size_t n, uint64_t seed, uint64_t block_offset) {
  constexpr double kTwoPi = 6.283185307179586476925286766559;
  size_t i = 0;
  uint64_t b = block_offset;
  for (; i < n; ++b) {
    const auto r = block(seed, b);
    // Box-Muller in double for accuracy, two normals per pair of uniforms.
    for (int pair = 0; pair < 2 && i < n; ++pair) {
      const double u1 = to_unit_open0(r[2 * pair]);
      const double u2 = to_unit(r[2 * pair + 1]);
      const double rad = std::sqrt(-2.0 * std::log(u1));
      out[i++] = static_cast<float>(rad * std::cos(kTwoPi * u2));
      if (i < n) out[i++] = static_cast<float>(rad * std::sin(kTwoPi * u2));
    }
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

// Counter-based random numbers: Philox-4x32-10 (Salmon et al., SC'11) and Box-Muller normals.
//
// A (seed, offset) pair fully determines the stream, independent of thread count, platform or
// backend, so a seed gives the same latents everywhere. Element i of a draw uses counter
// (offset + i / 2) ... see fill_normal: each Philox block yields 4 uniforms -> 4 normals.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace fastgen {

std::array<uint32_t, 4> philox4x32_10(std::array<uint32_t, 4> counter, std::array<uint32_t, 2> key);

// Fill out[0..n) with standard normal float32 values for stream `seed`, starting at block
// `block_offset` (each block of 4 values consumes one counter). Returns the next block offset.
uint64_t fill_normal(float* out, size_t n, uint64_t seed, uint64_t block_offset = 0);

// Uniform floats in [0, 1).
uint64_t fill_uniform(float* out, size_t n, uint64_t seed, uint64_t block_offset = 0);

// A small stateful generator over the counter stream, for schedulers that draw noise each step.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed), offset_(0) {}
  void manual_seed(uint64_t seed) { seed_ = seed; offset_ = 0; }
  void normal(float* out, size_t n) { offset_ = fill_normal(out, n, seed_, offset_); }
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }

 private:
  uint64_t seed_;
  uint64_t offset_;
};

}  // namespace fastgen

// Model-output history buffers of the multistep schedulers (DPM-Solver, PNDM's PLMS).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastgen {

// The model-output history of a multistep solver: `count` buffers of n floats, oldest first. A step
// streams them together with the sample and the model input, so each buffer is placed at its own
// 1 KiB-granular offset (mod 4 KiB) from the sample: buffers whose addresses agree in the low 12 bits
// falsely alias in the load/store unit (4K aliasing) and the step runs 2-4x slower.
class History {
 public:
  explicit History(int count = 0) : bufs_(static_cast<size_t>(count)), data_(static_cast<size_t>(count)) {}
  size_t count() const { return bufs_.size(); }
  size_t size() const { return n_; }
  // Allocate zeroed buffers of n floats when n changed; (re)place them relative to `sample` then or
  // when `replace` (the first step of a schedule: the sample buffer may have moved).
  void ensure(size_t n, const float* sample, bool replace) {
    const uintptr_t page = 4096;
    const bool alloc = n != n_ || bufs_.empty() || !data_[0];
    if (!alloc && !replace) return;
    n_ = n;
    const uintptr_t base = reinterpret_cast<uintptr_t>(sample) % page;
    for (size_t k = 0; k < bufs_.size(); ++k) {
      if (alloc) bufs_[k].assign(n + page / sizeof(float), 0.0f);
      const uintptr_t want = (base + 1024 + 2048 * (k % 2) + 512 * (k / 2)) % page;
      const uintptr_t have = reinterpret_cast<uintptr_t>(bufs_[k].data()) % page;
      data_[k] = bufs_[k].data() + ((want + page - have) % page) / sizeof(float);
    }
  }
  float* operator[](size_t k) { return data_[k]; }
  float* newest() { return data_.back(); }
  // The oldest buffer becomes the newest (its contents are overwritten by the caller).
  void rotate() {
    std::rotate(bufs_.begin(), bufs_.begin() + 1, bufs_.end());
    std::rotate(data_.begin(), data_.begin() + 1, data_.end());
  }

 private:
  std::vector<std::vector<float>> bufs_;
  std::vector<float*> data_;
  size_t n_ = 0;
};

}  // namespace fastgen

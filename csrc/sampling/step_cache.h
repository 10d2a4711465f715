// Step caching decisions: which denoising steps run the whole network and what the cached steps reuse.
//
// Three policies, each reproducing its reference exactly:
//  - DeepCache (Ma et al. 2023; the authors' `deepcache` package): a fixed set of full steps, uniform
//    (every `interval`-th step from the first) or non-uniform (the package's sample_from_quad_center).
//  - First-Block Cache (diffusers' apply_first_block_cache): the rest of the transformer runs when the
//    relative L1 change of the first block's residual since the last full step exceeds a threshold.
//  - TaylorSeer (diffusers' TaylorSeerCacheConfig): full steps on a fixed pattern; a cached step's output
//    is the Taylor expansion (finite differences between full steps) of the last full outputs.
// Pure C++, no Python: the bindings expose one policy object per call.
#pragma once

#include <cstddef>
#include <vector>

namespace fastgen {

// Steps (0-based, among `steps`) that DeepCache computes in full, ascending.
std::vector<int> deepcache_full_steps(int steps, int interval, bool uniform, double pow, int center);

// diffusers' FBCHeadBlockHook._should_compute_remaining_blocks and its state.
class FirstBlockCache {
 public:
  explicit FirstBlockCache(double threshold);
  // The decision for this step from the first block's residual (output - input, `n` floats). A full
  // step keeps the residual as the reference of the next decisions (a cached step does not).
  bool should_compute(const float* residual, size_t n);
  // relative L1 of the last decision (mean|r - prev| / mean|prev|); negative before the first
  double last_change() const { return last_change_; }

 private:
  double threshold_;
  std::vector<float> prev_;
  double last_change_ = -1.0;
};

// diffusers' TaylorSeerCacheHook / TaylorSeerState for one cached output (factors in float32).
class TaylorSeer {
 public:
  TaylorSeer(int interval, int disable_before, int disable_after, int max_order);
  // Advances to the next step and says whether it runs in full (the hook's _measure_should_compute).
  bool next_step();
  // After a full step: the new output (n floats) updates the Taylor factors.
  void update(const float* out, size_t n);
  // At a cached step: the extrapolated output into `out` (n floats).
  void predict(float* out, size_t n) const;
  int step() const { return step_; }

 private:
  int interval_, before_, after_, max_order_;
  int step_ = -1, last_update_ = -1;
  std::vector<std::vector<float>> factors_;
};

}  // namespace fastgen

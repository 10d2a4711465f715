// Greedy and beam search for captioning decoders, numerically following transformers 5.x
// (GenerationMixin._sample without sampling and the vectorised GenerationMixin._beam_search).
// The network step is a callback: it receives the new input ids of this step and, when the beam
// order changed, the row indices the caller must gather its KV cache with before running.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

namespace fastgen {

enum class EarlyStopping { False = 0, True = 1, Never = 2 };

struct SearchOptions {
  int max_new_tokens = 20;
  int num_beams = 1;
  int num_return_sequences = 1;
  double length_penalty = 1.0;
  EarlyStopping early_stopping = EarlyStopping::False;
  int no_repeat_ngram_size = 0;
  double repetition_penalty = 1.0;
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = -1;
  bool has_pad = false;
};

// step(ids, rows, step_len, reorder) -> logits: `ids` holds rows*step_len int64 ids (the whole
// prompt on the first call, one token per row afterwards); `reorder` is null or rows source-row
// indices. Returns a pointer to rows*vocab float32 logits (valid until the next call) and sets vocab.
using SearchStepFn = std::function<const float*(const std::vector<int64_t>& ids, size_t rows, size_t step_len,
                                                const std::vector<int64_t>* reorder, size_t& vocab)>;

struct SearchResult {
  // batch * num_return_sequences rows of `length` ids (prompt included), padded like transformers.
  std::vector<int64_t> sequences;
  size_t rows = 0, length = 0;
  std::vector<float> scores;  // beam search: length-penalised sequence scores; greedy: empty
  int steps = 0;              // decoder calls made
};

// prompt: batch rows of prompt_len ids (the decoder start / bos and any text prompt).
SearchResult search(const std::vector<int64_t>& prompt, size_t batch, size_t prompt_len, const SearchOptions& opt,
                    const SearchStepFn& step);

// Logits processors (exposed for tests): applied in transformers' order to one row of scores.
void apply_repetition_penalty(float* scores, size_t vocab, const int64_t* seq, size_t len, float penalty);
void apply_no_repeat_ngram(float* scores, size_t vocab, const int64_t* seq, size_t len, int n);

}  // namespace fastgen

#include "text/search.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>

#include "common.h"

namespace fastgen {

namespace {

constexpr float kNeg = -1.0e9f;

bool is_eos(const SearchOptions& o, int64_t t) {
  return std::find(o.eos_token_ids.begin(), o.eos_token_ids.end(), t) != o.eos_token_ids.end();
}

void process(float* s, size_t vocab, const int64_t* seq, size_t len, const SearchOptions& o) {
  if (o.repetition_penalty != 1.0) apply_repetition_penalty(s, vocab, seq, len, static_cast<float>(o.repetition_penalty));
  if (o.no_repeat_ngram_size > 0) apply_no_repeat_ngram(s, vocab, seq, len, o.no_repeat_ngram_size);
}

void log_softmax(const float* x, float* out, size_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  double sum = 0.0;
  for (size_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i] - mx));
  const float lse = static_cast<float>(std::log(sum));
  for (size_t i = 0; i < n; ++i) out[i] = (x[i] - mx) - lse;
}

// Indices of the k largest values, descending; ties keep the lower index first.
void topk(const float* v, size_t n, size_t k, std::vector<size_t>& idx) {
  idx.resize(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  auto cmp = [v](size_t a, size_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
  k = std::min(k, n);
  std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(k), idx.end(), cmp);
  idx.resize(k);
}

float pen_div(double len, double lp) { return static_cast<float>(std::pow(len, lp)); }

SearchResult greedy(const std::vector<int64_t>& prompt, size_t batch, size_t plen, const SearchOptions& o,
                    const SearchStepFn& step) {
  const size_t max_len = plen + static_cast<size_t>(o.max_new_tokens);
  std::vector<std::vector<int64_t>> seqs(batch);
  for (size_t b = 0; b < batch; ++b) seqs[b].assign(prompt.begin() + b * plen, prompt.begin() + (b + 1) * plen);
  std::vector<char> unfinished(batch, 1);
  const bool has_eos = !o.eos_token_ids.empty();
  int64_t pad = o.has_pad ? o.pad_token_id : (has_eos ? o.eos_token_ids[0] : 0);
  std::vector<int64_t> ids(prompt);
  size_t step_len = plen, cur = plen;
  std::vector<float> row;
  SearchResult r;
  while (true) {
    size_t vocab = 0;
    const float* logits = step(ids, batch, step_len, nullptr, vocab);
    ++r.steps;
    if (vocab == 0) throw ShapeError("the decoder step returned an empty vocabulary");
    ids.assign(batch, 0);
    bool all_done = true;
    for (size_t b = 0; b < batch; ++b) {
      row.assign(logits + b * vocab, logits + (b + 1) * vocab);
      process(row.data(), vocab, seqs[b].data(), seqs[b].size(), o);
      size_t best = 0;
      for (size_t i = 1; i < vocab; ++i)
        if (row[i] > row[best] || (std::isnan(row[i]) && !std::isnan(row[best]))) best = i;
      int64_t tok = static_cast<int64_t>(best);
      if (has_eos && !unfinished[b]) tok = pad;
      seqs[b].push_back(tok);
      ids[b] = tok;
      if (has_eos && is_eos(o, tok)) unfinished[b] = 0;
      if (seqs[b].size() >= max_len) unfinished[b] = 0;
      all_done = all_done && !unfinished[b];
    }
    ++cur;
    step_len = 1;
    if (all_done) break;
  }
  r.rows = batch;
  r.length = cur;
  r.sequences.reserve(batch * cur);
  for (auto& s : seqs) r.sequences.insert(r.sequences.end(), s.begin(), s.end());
  return r;
}

SearchResult beam(const std::vector<int64_t>& prompt, size_t batch, size_t plen, const SearchOptions& o,
                  const SearchStepFn& step) {
  const size_t nb = static_cast<size_t>(o.num_beams);
  const size_t max_len = plen + static_cast<size_t>(o.max_new_tokens);
  const size_t n_eos = o.eos_token_ids.size();
  const size_t K = std::max<size_t>(2, 1 + n_eos) * nb;
  // transformers: `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1`
  int64_t fill = -1;
  if (n_eos) fill = (o.has_pad && o.pad_token_id != 0) ? o.pad_token_id : o.eos_token_ids[0];
  const double lp = o.length_penalty;
  const size_t rows = batch * nb;

  std::vector<int64_t> run_seq(rows * max_len, fill), fin_seq;
  for (size_t b = 0; b < batch; ++b)
    for (size_t j = 0; j < nb; ++j)
      std::copy(prompt.begin() + b * plen, prompt.begin() + (b + 1) * plen, run_seq.begin() + (b * nb + j) * max_len);
  fin_seq = run_seq;
  std::vector<float> run_score(rows, 0.f), fin_score(rows, kNeg);
  for (size_t b = 0; b < batch; ++b)
    for (size_t j = 1; j < nb; ++j) run_score[b * nb + j] = kNeg;
  std::vector<size_t> fin_gen(rows, 0);  // generated length of each finished slot (beam_indices != -1)
  std::vector<char> fin_done(rows, 0);
  std::vector<char> unsatisfied(batch, 1);

  std::vector<int64_t> ids(rows * plen);
  for (size_t b = 0; b < batch; ++b)
    for (size_t j = 0; j < nb; ++j)
      std::copy(prompt.begin() + b * plen, prompt.begin() + (b + 1) * plen, ids.begin() + (b * nb + j) * plen);
  size_t step_len = plen, cur = plen;
  std::vector<int64_t> reorder;
  bool have_reorder = false;
  std::vector<float> acc, topv(K), run_v(K), fin_v(K), merged(nb + K);
  std::vector<size_t> idx, idx2, idx3;
  std::vector<int64_t> top_tok(K), top_beam(K);
  std::vector<char> hits(rows * 0 + batch * K);
  std::vector<int64_t> new_run(rows * max_len), new_fin(rows * max_len);
  std::vector<float> new_run_score(rows), new_fin_score(rows);
  std::vector<size_t> new_fin_gen(rows);
  std::vector<char> new_fin_done(rows);
  std::vector<int64_t> next_reorder(rows);
  SearchResult r;
  while (true) {
    size_t vocab = 0;
    const float* logits = step(ids, rows, step_len, have_reorder ? &reorder : nullptr, vocab);
    ++r.steps;
    if (vocab == 0) throw ShapeError("the decoder step returned an empty vocabulary");
    if (nb * vocab < K) throw ArgumentError("num_beams is too large for this vocabulary");
    acc.resize(nb * vocab);
    const size_t gen_after = cur + 1 - plen;
    const float div = pen_div(static_cast<double>(gen_after), lp);
    bool all_hit = true;
    ids.assign(rows, 0);
    for (size_t b = 0; b < batch; ++b) {
      for (size_t j = 0; j < nb; ++j) {
        const size_t rrow = b * nb + j;
        float* a = acc.data() + j * vocab;
        log_softmax(logits + rrow * vocab, a, vocab);
        process(a, vocab, run_seq.data() + rrow * max_len, cur, o);
        for (size_t i = 0; i < vocab; ++i) a[i] = a[i] + run_score[rrow];
      }
      topk(acc.data(), nb * vocab, K, idx);
      char* hb = hits.data() + b * K;
      for (size_t k = 0; k < K; ++k) {
        topv[k] = acc[idx[k]];
        top_beam[k] = static_cast<int64_t>(idx[k] / vocab);
        top_tok[k] = static_cast<int64_t>(idx[k] % vocab);
        hb[k] = (is_eos(o, top_tok[k]) || cur + 1 >= max_len) ? 1 : 0;
        all_hit = all_hit && hb[k];
        run_v[k] = topv[k] + (hb[k] ? kNeg : 0.f);
      }
      auto cand_seq = [&](size_t k, int64_t* dst) {
        const int64_t* src = run_seq.data() + (b * nb + static_cast<size_t>(top_beam[k])) * max_len;
        std::copy(src, src + max_len, dst);
        dst[cur] = top_tok[k];
      };
      // e. next running beams
      topk(run_v.data(), K, nb, idx2);
      for (size_t j = 0; j < nb; ++j) {
        const size_t k = idx2[j], dst = b * nb + j;
        cand_seq(k, new_run.data() + dst * max_len);
        new_run_score[dst] = run_v[k];
        next_reorder[dst] = static_cast<int64_t>(b * nb + static_cast<size_t>(top_beam[k]));
        ids[dst] = top_tok[k];
      }
      // f. finished beams
      bool full = o.early_stopping == EarlyStopping::True;
      for (size_t j = 0; j < nb && full; ++j) full = fin_done[b * nb + j];
      for (size_t k = 0; k < K; ++k) {
        const bool did = hb[k] && k < nb;
        float s = topv[k] / div;
        s += full ? kNeg : -0.f;
        s += unsatisfied[b] ? -0.f : kNeg;
        s += did ? -0.f : kNeg;
        fin_v[k] = s;
      }
      for (size_t j = 0; j < nb; ++j) merged[j] = fin_score[b * nb + j];
      for (size_t k = 0; k < K; ++k) merged[nb + k] = fin_v[k];
      topk(merged.data(), nb + K, nb, idx3);
      for (size_t j = 0; j < nb; ++j) {
        const size_t m = idx3[j], dst = b * nb + j;
        if (m < nb) {
          const size_t src = b * nb + m;
          std::copy(fin_seq.begin() + src * max_len, fin_seq.begin() + (src + 1) * max_len,
                    new_fin.begin() + dst * max_len);
          new_fin_score[dst] = fin_score[src];
          new_fin_gen[dst] = fin_gen[src];
          new_fin_done[dst] = fin_done[src];
        } else {
          const size_t k = m - nb;
          cand_seq(k, new_fin.data() + dst * max_len);
          new_fin_score[dst] = fin_v[k];
          new_fin_gen[dst] = gen_after;
          new_fin_done[dst] = (hb[k] && k < nb) ? 1 : 0;
        }
      }
    }
    std::swap(run_seq, new_run);
    std::swap(fin_seq, new_fin);
    std::swap(run_score, new_run_score);
    std::swap(fin_score, new_fin_score);
    std::swap(fin_gen, new_fin_gen);
    std::swap(fin_done, new_fin_done);
    ++cur;
    // early-stop heuristic
    const double best_len =
        (o.early_stopping == EarlyStopping::Never && lp > 0.0) ? static_cast<double>(max_len - plen)
                                                               : static_cast<double>(cur - plen);
    const float bdiv = pen_div(best_len, lp);
    bool any_unsat = false, all_fin = true;
    for (size_t b = 0; b < batch; ++b) {
      const float best = run_score[b * nb] / bdiv;
      bool all_done_b = true;
      float mn = std::numeric_limits<float>::infinity();
      for (size_t j = 0; j < nb; ++j) {
        all_done_b = all_done_b && fin_done[b * nb + j];
        mn = std::min(mn, fin_score[b * nb + j]);
      }
      bool any_better = false;
      for (size_t j = 0; j < nb; ++j) any_better = any_better || best > (fin_done[b * nb + j] ? mn : kNeg);
      unsatisfied[b] = unsatisfied[b] && any_better;
      any_unsat = any_unsat || unsatisfied[b];
      all_fin = all_fin && all_done_b;
    }
    const bool open = !(all_fin && o.early_stopping == EarlyStopping::True);
    if (!(any_unsat && open && !all_hit)) break;
    have_reorder = false;
    for (size_t i = 0; i < rows; ++i)
      if (next_reorder[i] != static_cast<int64_t>(i)) have_reorder = true;
    reorder = next_reorder;
    step_len = 1;
  }
  const size_t nret = static_cast<size_t>(o.num_return_sequences);
  size_t gen = 0;
  for (size_t b = 0; b < batch; ++b)
    for (size_t j = 0; j < nret; ++j) gen = std::max(gen, fin_gen[b * nb + j]);
  r.rows = batch * nret;
  r.length = plen + gen;
  for (size_t b = 0; b < batch; ++b)
    for (size_t j = 0; j < nret; ++j) {
      const size_t s = b * nb + j;
      r.sequences.insert(r.sequences.end(), fin_seq.begin() + s * max_len, fin_seq.begin() + s * max_len + r.length);
      r.scores.push_back(fin_score[s]);
    }
  return r;
}

}  // namespace

void apply_repetition_penalty(float* scores, size_t vocab, const int64_t* seq, size_t len, float penalty) {
  std::vector<char> seen(vocab, 0);
  for (size_t i = 0; i < len; ++i) {
    const int64_t t = seq[i];
    if (t < 0 || static_cast<size_t>(t) >= vocab || seen[static_cast<size_t>(t)]) continue;
    seen[static_cast<size_t>(t)] = 1;
    float& s = scores[t];
    s = s < 0 ? s * penalty : s / penalty;
  }
}

void apply_no_repeat_ngram(float* scores, size_t vocab, const int64_t* seq, size_t len, int n) {
  const size_t ng = static_cast<size_t>(n);
  if (len < ng || ng == 0) return;
  const int64_t* prefix = seq + len + 1 - ng;  // the last n-1 tokens
  for (size_t i = 0; i + ng <= len; ++i) {
    if (std::equal(seq + i, seq + i + ng - 1, prefix)) {
      const int64_t t = seq[i + ng - 1];
      if (t >= 0 && static_cast<size_t>(t) < vocab) scores[t] = -std::numeric_limits<float>::infinity();
    }
  }
}

SearchResult search(const std::vector<int64_t>& prompt, size_t batch, size_t prompt_len, const SearchOptions& o,
                    const SearchStepFn& step) {
  if (batch < 1) throw ArgumentError("search needs at least one row");
  if (prompt_len < 1) throw ArgumentError("the decoder prompt needs at least one token (decoder start / bos)");
  if (prompt.size() != batch * prompt_len) throw ShapeError("prompt size does not match batch * prompt_len");
  if (o.max_new_tokens < 1) throw ArgumentError("max_new_tokens must be >= 1, got " + std::to_string(o.max_new_tokens));
  if (o.num_beams < 1) throw ArgumentError("num_beams must be >= 1, got " + std::to_string(o.num_beams));
  if (o.num_return_sequences < 1 || o.num_return_sequences > o.num_beams)
    throw ArgumentError("num_return_sequences must be in [1, num_beams=" + std::to_string(o.num_beams) + "], got " +
                        std::to_string(o.num_return_sequences));
  if (o.no_repeat_ngram_size < 0) throw ArgumentError("no_repeat_ngram_size must be >= 0");
  if (!(o.repetition_penalty > 0.0) || !std::isfinite(o.repetition_penalty))
    throw ArgumentError("repetition_penalty must be a finite number > 0, got " + fmt(o.repetition_penalty));
  if (!std::isfinite(o.length_penalty)) throw ArgumentError("length_penalty must be finite");
  return o.num_beams == 1 ? greedy(prompt, batch, prompt_len, o, step) : beam(prompt, batch, prompt_len, o, step);
}

}  // namespace fastgen

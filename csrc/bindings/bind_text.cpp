// Caption search (greedy / beam) over a Python decoder-step callback.
#include <cstring>

#include <pybind11/stl.h>

#include "bindings/bindings.h"
#include "common.h"
#include "text/search.h"

namespace fastgen::py_bind {

namespace {

EarlyStopping parse_early(const py::object& v) {
  if (py::isinstance<py::bool_>(v)) return py::cast<bool>(v) ? EarlyStopping::True : EarlyStopping::False;
  if (py::isinstance<py::str>(v) && py::cast<std::string>(v) == "never") return EarlyStopping::Never;
  throw ArgumentError("early_stopping must be True, False or \"never\", got " + std::string(py::repr(v)));
}

}  // namespace

void bind_text(py::module_& m) {
  m.def(
      "caption_search",
      [](const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& prompt, const py::function& step,
         int max_new_tokens, int num_beams, int num_return_sequences, double length_penalty,
         const py::object& early_stopping, int no_repeat_ngram_size, double repetition_penalty,
         const std::vector<int64_t>& eos_token_ids, const py::object& pad_token_id) {
        if (prompt.ndim() != 2 || prompt.shape(0) < 1 || prompt.shape(1) < 1)
          throw ShapeError("prompt must have shape (batch, prompt_len) with both >= 1, got " +
                           shape_str(shape_of(prompt)));
        SearchOptions o;
        o.max_new_tokens = max_new_tokens;
        o.num_beams = num_beams;
        o.num_return_sequences = num_return_sequences;
        o.length_penalty = length_penalty;
        o.early_stopping = parse_early(early_stopping);
        o.no_repeat_ngram_size = no_repeat_ngram_size;
        o.repetition_penalty = repetition_penalty;
        o.eos_token_ids = eos_token_ids;
        if (!pad_token_id.is_none()) {
          o.has_pad = true;
          o.pad_token_id = py::cast<int64_t>(pad_token_id);
        }
        const size_t batch = static_cast<size_t>(prompt.shape(0)), plen = static_cast<size_t>(prompt.shape(1));
        std::vector<int64_t> p(prompt.data(), prompt.data() + prompt.size());
        py::object keep;  // the last logits array, alive until the next call
        SearchStepFn fn = [&](const std::vector<int64_t>& ids, size_t rows, size_t len,
                              const std::vector<int64_t>* reorder, size_t& vocab) -> const float* {
          py::gil_scoped_acquire gil;
          py::array_t<int64_t> a({static_cast<ssize_t>(rows), static_cast<ssize_t>(len)});
          std::memcpy(a.mutable_data(), ids.data(), ids.size() * sizeof(int64_t));
          py::object ro = py::none();
          if (reorder) {
            py::array_t<int64_t> rr(static_cast<ssize_t>(reorder->size()));
            std::memcpy(rr.mutable_data(), reorder->data(), reorder->size() * sizeof(int64_t));
            ro = rr;
          }
          py::object res = step(a, ro);
          auto arr = require_f32(res, "step() result");
          if (arr.ndim() != 2 || arr.shape(0) != static_cast<ssize_t>(rows) || arr.shape(1) < 1)
            throw ShapeError("step() must return float32 logits of shape (" + std::to_string(rows) +
                             ", vocab), got " + shape_str(shape_of(arr)));
          vocab = static_cast<size_t>(arr.shape(1));
          keep = arr;
          return arr.data();
        };
        SearchResult r;
        {
          py::gil_scoped_release nogil;
          r = search(p, batch, plen, o, fn);
        }
        keep = py::object();
        py::array_t<int64_t> seq({static_cast<ssize_t>(r.rows), static_cast<ssize_t>(r.length)});
        if (!r.sequences.empty()) std::memcpy(seq.mutable_data(), r.sequences.data(), r.sequences.size() * sizeof(int64_t));
        py::object scores = py::none();
        if (!r.scores.empty()) {
          py::array_t<float> s(static_cast<ssize_t>(r.scores.size()));
          std::memcpy(s.mutable_data(), r.scores.data(), r.scores.size() * sizeof(float));
          scores = s;
        }
        return py::make_tuple(seq, scores, r.steps);
      },
      py::arg("prompt"), py::arg("step"), py::kw_only(), py::arg("max_new_tokens") = 20, py::arg("num_beams") = 1,
      py::arg("num_return_sequences") = 1, py::arg("length_penalty") = 1.0, py::arg("early_stopping") = false,
      py::arg("no_repeat_ngram_size") = 0, py::arg("repetition_penalty") = 1.0,
      py::arg("eos_token_ids") = std::vector<int64_t>{}, py::arg("pad_token_id") = py::none(),
      "Greedy (num_beams=1) or beam search like transformers' generate(do_sample=False).\n"
      "step(input_ids[rows, n] int64, reorder[rows] int64 or None) -> logits[rows, vocab] float32;\n"
      "gather the KV cache rows with `reorder` (when not None) before running the step.\n"
      "Returns (sequences[rows, length] int64 incl. the prompt, scores or None, decoder calls).");
}

}  // namespace fastgen::py_bind

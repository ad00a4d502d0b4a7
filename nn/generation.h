// Text generation with a KV cache: greedy, sampling (temperature, top-k, top-p, repetition
// penalty) and beam search (with length penalty, and sampled beams when do_sample).
#pragma once

#include <optional>
#include <vector>

#include "nn/transformer.h"

namespace kiln::nn {

struct GenerationOptions {
  int64_t max_new_tokens = 64;
  bool do_sample = false;         // false: greedy (or deterministic beam search)
  double temperature = 1.0;       // divides the logits before sampling
  int64_t top_k = 0;              // keep the k most likely tokens (0: all)
  double top_p = 1.0;             // keep the smallest set whose probability reaches top_p
  double repetition_penalty = 1.0;  // > 1 discourages tokens already in the sequence (CTRL's rule)
  int64_t num_beams = 1;
  double length_penalty = 1.0;    // beam score = sum log p / length^length_penalty
  std::optional<int64_t> eos_token;  // stop when generated
  uint64_t seed = 0;              // the sampling stream

  GenerationOptions& max_new(int64_t v) { max_new_tokens = v; return *this; }
  GenerationOptions& sample(bool v = true) { do_sample = v; return *this; }
  GenerationOptions& temp(double v) { temperature = v; return *this; }
  GenerationOptions& topk(int64_t v) { top_k = v; return *this; }
  GenerationOptions& topp(double v) { top_p = v; return *this; }
  GenerationOptions& repetition(double v) { repetition_penalty = v; return *this; }
  GenerationOptions& beams(int64_t v) { num_beams = v; return *this; }
  GenerationOptions& length(double v) { length_penalty = v; return *this; }
  GenerationOptions& eos(int64_t v) { eos_token = v; return *this; }
  GenerationOptions& with_seed(uint64_t v) { seed = v; return *this; }
};

struct GenerationResult {
  std::vector<int64_t> tokens;  // the prompt followed by the generated tokens
  double score = 0.0;           // beam search: the length-penalised log-probability
};

// Runs the model in eval mode under no_grad; deterministic for a given seed. Beam search when
// num_beams > 1, else greedy or sampled decoding.
GenerationResult generate(Transformer& model, const std::vector<int64_t>& prompt, const GenerationOptions& options);
// Beam search with options.num_beams beams (one beam is allowed: it must agree with greedy).
GenerationResult beam_search(Transformer& model, const std::vector<int64_t>& prompt, const GenerationOptions& options);

// The processed next-token log-probabilities (V) for one sequence: repetition penalty, then
// temperature, top-k and top-p filtering (filtered tokens get -inf), then log-softmax.
std::vector<double> next_token_log_probs(const std::vector<float>& logits, const std::vector<int64_t>& sequence,
                                         const GenerationOptions& options);

}  // namespace kiln::nn

// Generation: logits processing, greedy/sampled decoding and beam search over a KV cache.
#include "nn/generation.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <set>

#include "autograd/ops.h"

namespace kiln::nn {
namespace {

constexpr double kNegativeInfinity = -std::numeric_limits<double>::infinity();

void check_options(const GenerationOptions& options, const Transformer& model, size_t prompt_length) {
  KILN_CHECK(prompt_length > 0, "generate: the prompt is empty");
  KILN_CHECK(options.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", options.max_new_tokens);
  KILN_CHECK(options.temperature > 0.0, "generate: temperature must be > 0, got ", options.temperature);
  KILN_CHECK(options.top_k >= 0, "generate: top_k must be >= 0, got ", options.top_k);
  KILN_CHECK(options.top_p > 0.0 && options.top_p <= 1.0, "generate: top_p must be in (0, 1], got ", options.top_p);
  KILN_CHECK(options.repetition_penalty > 0.0, "generate: repetition_penalty must be > 0, got ",
             options.repetition_penalty);
  KILN_CHECK(options.num_beams >= 1, "generate: num_beams must be >= 1, got ", options.num_beams);
  int64_t total = static_cast<int64_t>(prompt_length) + options.max_new_tokens;
  KILN_CHECK(model.config.is_llama() || total <= model.config.block_size, "generate: prompt of ", prompt_length,
             " tokens plus ", options.max_new_tokens, " new tokens exceeds block_size ", model.config.block_size);
}

// Logits of the last position of each sequence in the batch: (B, T, V) -> B vectors.
std::vector<std::vector<float>> last_logits(const Tensor& logits) {
  int64_t batch = logits.size(0), vocab = logits.size(2);
  std::vector<float> values = logits.select(1, logits.size(1) - 1).to(DType::f32).to_vector<float>();
  std::vector<std::vector<float>> rows(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) {
    rows[static_cast<size_t>(b)].assign(values.begin() + b * vocab, values.begin() + (b + 1) * vocab);
  }
  return rows;
}

Tensor token_batch(const std::vector<int64_t>& tokens, int64_t batch, int64_t steps, Device device) {
  return from_vector(tokens, {batch, steps}, TensorOptions(DType::i64).device(device));
}

// A draw from the categorical distribution with these log-probabilities.
size_t sample_index(const std::vector<double>& log_probs, Generator& generator) {
  double u = rand({1}, DType::f64, &generator).item(), cumulative = 0.0;
  size_t last = 0;
  for (size_t i = 0; i < log_probs.size(); ++i) {
    if (log_probs[i] == kNegativeInfinity) continue;
    last = i;
    cumulative += std::exp(log_probs[i]);
    if (u < cumulative) return i;
  }
  return last;  // rounding left u just above the total
}

size_t argmax_of(const std::vector<double>& values) {
  return static_cast<size_t>(std::max_element(values.begin(), values.end()) - values.begin());
}

GenerationResult decode_one(Transformer& model, const std::vector<int64_t>& prompt, const GenerationOptions& options) {
  Device device = model.token_embedding->weight.device();
  std::vector<KVCache> caches = model.make_caches(static_cast<int64_t>(prompt.size()) + options.max_new_tokens);
  Generator generator(options.seed);
  GenerationResult result{prompt, 0.0};
  Tensor logits = model.forward(token_batch(prompt, 1, static_cast<int64_t>(prompt.size()), device), &caches);
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    std::vector<double> log_probs = next_token_log_probs(last_logits(logits)[0], result.tokens, options);
    size_t next = options.do_sample ? sample_index(log_probs, generator) : argmax_of(log_probs);
    result.tokens.push_back(static_cast<int64_t>(next));
    result.score += log_probs[next];
    if (options.eos_token && static_cast<int64_t>(next) == *options.eos_token) break;
    if (step + 1 < options.max_new_tokens) logits = model.forward(token_batch({result.tokens.back()}, 1, 1, device), &caches);
  }
  return result;
}

struct Beam {
  std::vector<int64_t> tokens;
  double log_prob = 0.0;  // sum over generated tokens
};

struct Candidate {
  size_t beam;
  int64_t token;
  double log_prob;
};

double penalised(double log_prob, int64_t generated, double length_penalty) {
  return log_prob / std::pow(static_cast<double>(std::max<int64_t>(generated, 1)), length_penalty);
}

}  // namespace

std::vector<double> next_token_log_probs(const std::vector<float>& logits, const std::vector<int64_t>& sequence,
                                         const GenerationOptions& options) {
  std::vector<double> scores(logits.begin(), logits.end());
  if (options.repetition_penalty != 1.0) {
    for (int64_t token : std::set<int64_t>(sequence.begin(), sequence.end())) {
      double& s = scores[static_cast<size_t>(token)];
      s = s > 0 ? s / options.repetition_penalty : s * options.repetition_penalty;
    }
  }
  if (options.do_sample) {
    for (double& s : scores) s /= options.temperature;
    if (options.top_k > 0 && options.top_k < static_cast<int64_t>(scores.size())) {
      std::vector<double> sorted = scores;
      std::nth_element(sorted.begin(), sorted.begin() + (options.top_k - 1), sorted.end(), std::greater<double>());
      double threshold = sorted[static_cast<size_t>(options.top_k - 1)];
      for (double& s : scores) {
        if (s < threshold) s = kNegativeInfinity;
      }
    }
  }
  double maximum = *std::max_element(scores.begin(), scores.end());
  double total = 0.0;
  for (double s : scores) total += s == kNegativeInfinity ? 0.0 : std::exp(s - maximum);
  double log_total = maximum + std::log(total);
  for (double& s : scores) s = s == kNegativeInfinity ? s : s - log_total;
  if (options.do_sample && options.top_p < 1.0) {
    // Keep the most likely tokens until their mass reaches top_p (always at least one).
    std::vector<size_t> order(scores.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
    double mass = 0.0;
    size_t kept = 0;
    while (kept < order.size() && (kept == 0 || mass < options.top_p)) mass += std::exp(scores[order[kept++]]);
    for (size_t i = kept; i < order.size(); ++i) scores[order[i]] = kNegativeInfinity;
    double log_mass = std::log(mass);
    for (double& s : scores) s = s == kNegativeInfinity ? s : s - log_mass;
  }
  return scores;
}

static GenerationResult run_beam_search(Transformer& model, const std::vector<int64_t>& prompt,
                                 const GenerationOptions& options) {
  Device device = model.token_embedding->weight.device();
  int64_t width = options.num_beams;
  std::vector<KVCache> caches = model.make_caches(static_cast<int64_t>(prompt.size()) + options.max_new_tokens);
  Generator generator(options.seed);
  Tensor logits = model.forward(token_batch(prompt, 1, static_cast<int64_t>(prompt.size()), device), &caches);
  std::vector<Beam> beams{Beam{prompt, 0.0}};
  std::vector<std::pair<double, Beam>> finished;  // (penalised score, hypothesis)

  for (int64_t step = 0; step < options.max_new_tokens && !beams.empty(); ++step) {
    std::vector<std::vector<float>> rows = last_logits(logits);
    std::vector<Candidate> candidates;
    for (size_t b = 0; b < beams.size(); ++b) {
      std::vector<double> log_probs = next_token_log_probs(rows[b], beams[b].tokens, options);
      for (size_t token = 0; token < log_probs.size(); ++token) {
        if (log_probs[token] != kNegativeInfinity) {
          candidates.push_back({b, static_cast<int64_t>(token), beams[b].log_prob + log_probs[token]});
        }
      }
    }
    // 2 * width candidates: the best ones, or drawn in proportion to exp(score) when sampling.
    size_t wanted = std::min(candidates.size(), static_cast<size_t>(2 * width));
    std::vector<Candidate> chosen;
    if (options.do_sample) {
      std::vector<double> weights;
      for (const Candidate& c : candidates) weights.push_back(c.log_prob);
      for (size_t i = 0; i < wanted; ++i) {
        double top = *std::max_element(weights.begin(), weights.end());
        double total = 0.0;
        for (double w : weights) total += w == kNegativeInfinity ? 0.0 : std::exp(w - top);
        std::vector<double> normalised;
        for (double w : weights) normalised.push_back(w - top - std::log(total));
        size_t pick = sample_index(normalised, generator);
        chosen.push_back(candidates[pick]);
        weights[pick] = kNegativeInfinity;
      }
      std::stable_sort(chosen.begin(), chosen.end(), [](const Candidate& a, const Candidate& b) {
        return a.log_prob > b.log_prob;
      });
    } else {
      std::stable_sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
        return a.log_prob > b.log_prob;
      });
      chosen.assign(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(wanted));
    }

    std::vector<Beam> next_beams;
    std::vector<int64_t> parents, tokens;
    int64_t generated = step + 1;
    for (const Candidate& c : chosen) {
      if (static_cast<int64_t>(next_beams.size()) == width) break;
      Beam extended = beams[c.beam];
      extended.tokens.push_back(c.token);
      extended.log_prob = c.log_prob;
      if (options.eos_token && c.token == *options.eos_token) {
        finished.emplace_back(penalised(c.log_prob, generated, options.length_penalty), extended);
        continue;
      }
      parents.push_back(static_cast<int64_t>(c.beam));
      tokens.push_back(c.token);
      next_beams.push_back(std::move(extended));
    }
    std::stable_sort(finished.begin(), finished.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    if (static_cast<int64_t>(finished.size()) > width) finished.resize(static_cast<size_t>(width));
    beams = std::move(next_beams);
    // Done when width hypotheses are finished and no running beam can still beat the worst.
    if (static_cast<int64_t>(finished.size()) == width && !beams.empty() &&
        penalised(beams.front().log_prob, generated, options.length_penalty) <= finished.back().first) {
      beams.clear();
    }
    if (beams.empty() || step + 1 == options.max_new_tokens) break;
    Tensor order = from_vector(parents, {}, TensorOptions(DType::i64).device(device));
    for (KVCache& cache : caches) cache.reorder(order);
    logits = model.forward(token_batch(tokens, static_cast<int64_t>(tokens.size()), 1, device), &caches);
  }
  for (const Beam& beam : beams) {
    int64_t generated = static_cast<int64_t>(beam.tokens.size() - prompt.size());
    finished.emplace_back(penalised(beam.log_prob, generated, options.length_penalty), beam);
  }
  KILN_CHECK(!finished.empty(), "beam search: no hypothesis survived");
  auto best = std::max_element(finished.begin(), finished.end(), [](const auto& a, const auto& b) {
    return a.first < b.first;
  });
  return GenerationResult{best->second.tokens, best->first};
}

namespace {
// Checks, eval mode and no_grad around one decoding strategy.
template <typename Strategy>
GenerationResult run_decoding(Transformer& model, const std::vector<int64_t>& prompt, const GenerationOptions& options,
                              Strategy strategy) {
  check_options(options, model, prompt.size());
  for (int64_t token : prompt) {
    KILN_CHECK(token >= 0 && token < model.config.vocab_size, "generate: prompt token ", token,
               " is out of range for vocabulary size ", model.config.vocab_size);
  }
  NoGradGuard no_grad;
  bool was_training = model.is_training();
  model.eval();
  GenerationResult result = strategy(model, prompt, options);
  model.train(was_training);
  return result;
}
}  // namespace

GenerationResult generate(Transformer& model, const std::vector<int64_t>& prompt, const GenerationOptions& options) {
  return run_decoding(model, prompt, options, options.num_beams > 1 ? run_beam_search : decode_one);
}

GenerationResult beam_search(Transformer& model, const std::vector<int64_t>& prompt, const GenerationOptions& options) {
  return run_decoding(model, prompt, options, run_beam_search);
}

}  // namespace kiln::nn

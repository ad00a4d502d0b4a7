// Generation: the KV cache against full recomputation, the decoding strategies against each
// other, and beam search against a brute-force enumeration on a tiny vocabulary.
#include <catch2/catch.hpp>
#include <cmath>

#include "kiln.h"

using namespace kiln;
using Catch::Contains;

namespace {

std::shared_ptr<nn::Transformer> tiny_model(const std::string& family, int64_t vocab = 13, uint64_t seed = 3) {
  Generator generator(seed);
  nn::TransformerConfig config = family == "llama" ? nn::TransformerConfig::llama(vocab, 32, 2, 4, 2, 16)
                                                   : nn::TransformerConfig::gpt2(vocab, 32, 2, 2, 16);
  config.init_std = 0.3;  // sharper distributions than the default make decoding choices distinct
  auto model = std::make_shared<nn::Transformer>(config, &generator);
  model->eval();
  return model;
}

// log p(sequence[prompt..] | prompt) by full recomputation without a cache.
double sequence_log_prob(nn::Transformer& model, const std::vector<int64_t>& sequence, size_t prompt) {
  NoGradGuard no_grad;
  Tensor logits = model.forward(from_vector(sequence, {1, static_cast<int64_t>(sequence.size())}));
  Tensor log_probs = log_softmax(logits, -1);
  double total = 0;
  for (size_t t = prompt; t < sequence.size(); ++t) {
    total += log_probs.select(0, 0).select(0, static_cast<int64_t>(t - 1)).select(0, sequence[t]).item();
  }
  return total;
}

}  // namespace

TEST_CASE("cached logits equal full recomputation", "[generation]") {
  for (std::string family : {"gpt2", "llama"}) {
    auto owner = tiny_model(family);
    nn::Transformer& model = *owner;
    NoGradGuard no_grad;
    std::vector<int64_t> sequence = {3, 1, 4, 1, 5, 9, 2, 6};
    Tensor full = model.forward(from_vector(sequence, {1, 8}));
    std::vector<nn::KVCache> caches = model.make_caches(8);
    Tensor first = model.forward(from_vector(std::vector<int64_t>(sequence.begin(), sequence.begin() + 5), {1, 5}), &caches);
    CHECK(allclose(first, full.narrow(1, 0, 5), 1e-5, 1e-5));
    for (int64_t t = 5; t < 8; ++t) {
      Tensor step = model.forward(from_vector(std::vector<int64_t>{sequence[static_cast<size_t>(t)]}, {1, 1}), &caches);
      INFO(family << " position " << t);
      CHECK(allclose(step, full.narrow(1, t, 1), 1e-5, 1e-5));
    }
  }
}

TEST_CASE("top_k = 1 and a vanishing temperature reproduce greedy decoding", "[generation]") {
  auto owner = tiny_model("llama");
    nn::Transformer& model = *owner;
  std::vector<int64_t> prompt = {1, 2, 3};
  auto greedy = nn::generate(model, prompt, nn::GenerationOptions().max_new(10)).tokens;
  CHECK(greedy.size() == 13);
  auto top1 = nn::generate(model, prompt, nn::GenerationOptions().max_new(10).sample().topk(1).with_seed(7)).tokens;
  CHECK(top1 == greedy);
  auto cold = nn::generate(model, prompt, nn::GenerationOptions().max_new(10).sample().temp(1e-4).with_seed(8)).tokens;
  CHECK(cold == greedy);
  auto one_beam = nn::beam_search(model, prompt, nn::GenerationOptions().max_new(10).beams(1)).tokens;
  CHECK(one_beam == greedy);
}

TEST_CASE("sampling is deterministic under a seed and respects top-p", "[generation]") {
  auto owner = tiny_model("gpt2");
    nn::Transformer& model = *owner;
  std::vector<int64_t> prompt = {4};
  nn::GenerationOptions options = nn::GenerationOptions().max_new(12).sample().temp(1.5).topp(0.9).repetition(1.3);
  auto a = nn::generate(model, prompt, options.with_seed(1)).tokens;
  auto b = nn::generate(model, prompt, options.with_seed(1)).tokens;
  auto c = nn::generate(model, prompt, options.with_seed(2)).tokens;
  CHECK(a == b);
  CHECK(a != c);
  // top-p keeps the smallest most-likely set reaching p: the kept mass is >= p and dropping its
  // least likely member would fall below p.
  std::vector<float> logits = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f};
  nn::GenerationOptions nucleus = nn::GenerationOptions().sample().topp(0.7);
  std::vector<double> filtered = nn::next_token_log_probs(logits, {}, nucleus);
  std::vector<double> plain = nn::next_token_log_probs(logits, {}, nn::GenerationOptions().sample());
  double kept = 0, smallest = 1;
  for (size_t i = 0; i < plain.size(); ++i) {
    if (std::isfinite(filtered[i])) {
      kept += std::exp(plain[i]);
      smallest = std::min(smallest, std::exp(plain[i]));
    }
  }
  CHECK(kept >= 0.7);
  CHECK(kept - smallest < 0.7);
  // The repetition penalty divides positive logits and multiplies negative ones.
  std::vector<double> penalised = nn::next_token_log_probs({1.0f, -1.0f, 0.0f}, {0, 1}, nn::GenerationOptions().repetition(2.0));
  std::vector<double> expected = nn::next_token_log_probs({0.5f, -2.0f, 0.0f}, {}, nn::GenerationOptions());
  for (size_t i = 0; i < 3; ++i) CHECK(penalised[i] == Approx(expected[i]));
}

TEST_CASE("two-beam search keeps the two best expansions at every step (brute force)", "[generation][beam]") {
  int64_t vocab = 5;
  auto owner = tiny_model("gpt2", vocab, 9);
    nn::Transformer& model = *owner;
  std::vector<int64_t> prompt = {2};
  int64_t steps = 3;
  nn::GenerationResult result =
      nn::beam_search(model, prompt, nn::GenerationOptions().max_new(steps).beams(2).length(0.0));
  // Brute force: beam search by enumeration with every score recomputed from scratch.
  std::vector<std::vector<int64_t>> beams = {prompt};
  for (int64_t step = 0; step < steps; ++step) {
    std::vector<std::pair<double, std::vector<int64_t>>> expansions;
    for (const auto& beam : beams) {
      for (int64_t token = 0; token < vocab; ++token) {
        std::vector<int64_t> extended = beam;
        extended.push_back(token);
        expansions.emplace_back(sequence_log_prob(model, extended, prompt.size()), extended);
      }
    }
    std::stable_sort(expansions.begin(), expansions.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    beams = {expansions[0].second, expansions[1].second};
  }
  CHECK(result.tokens == beams[0]);
  CHECK(result.score == Approx(sequence_log_prob(model, beams[0], prompt.size())).epsilon(1e-4));
  // And the enumeration of every sequence confirms the beam's score is a real sequence score.
  double best_overall = -INFINITY;
  for (int64_t code = 0; code < vocab * vocab * vocab; ++code) {
    std::vector<int64_t> sequence = prompt;
    for (int64_t c = code, k = 0; k < steps; ++k, c /= vocab) sequence.push_back(c % vocab);
    best_overall = std::max(best_overall, sequence_log_prob(model, sequence, prompt.size()));
  }
  CHECK(result.score <= best_overall + 1e-6);
}

TEST_CASE("beam search stops at the end token and sampled beams are seeded", "[generation][beam]") {
  auto owner = tiny_model("llama");
    nn::Transformer& model = *owner;
  std::vector<int64_t> prompt = {1, 2};
  nn::GenerationOptions options = nn::GenerationOptions().max_new(8).beams(3).eos(0).sample().with_seed(5);
  auto a = nn::beam_search(model, prompt, options).tokens;
  auto b = nn::beam_search(model, prompt, options).tokens;
  CHECK(a == b);
  for (size_t i = prompt.size(); i + 1 < a.size(); ++i) CHECK(a[i] != 0);  // eos only at the end
  auto greedy_eos = nn::generate(model, prompt, nn::GenerationOptions().max_new(8).eos(0)).tokens;
  for (size_t i = prompt.size(); i + 1 < greedy_eos.size(); ++i) CHECK(greedy_eos[i] != 0);
}

TEST_CASE("generation rejects bad options", "[generation][errors]") {
  auto owner = tiny_model("gpt2");
    nn::Transformer& model = *owner;
  CHECK_THROWS_WITH(nn::generate(model, {}, nn::GenerationOptions().max_new(4)), Contains("prompt is empty"));
  CHECK_THROWS_WITH(nn::generate(model, {99}, nn::GenerationOptions().max_new(4)), Contains("prompt token 99"));
  CHECK_THROWS_WITH(nn::generate(model, {1}, nn::GenerationOptions().topp(0.0)), Contains("top_p"));
  CHECK_THROWS_WITH(nn::generate(model, {1}, nn::GenerationOptions().max_new(40)), Contains("block_size 32"));
}

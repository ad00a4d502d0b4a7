// A character-level MLP language model (Bengio et al., 2003) trained with kiln's autograd and a
// hand-written SGD loop: the end-to-end demo that scripts/train.sh runs.
//
//   context (B, 3) chars -> embedding (B, 3, 24) -> flatten (B, 72) -> tanh(linear) (B, 256)
//   -> linear (B, V) logits -> cross-entropy against the next char.
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>

#include "kiln.h"

using namespace kiln;

namespace {

constexpr int64_t kContext = 3, kEmbed = 24, kHidden = 256, kBatch = 128, kSteps = 4000;

struct Corpus {
  std::string chars;             // the vocabulary, sorted
  std::vector<int64_t> encoded;  // the text as vocabulary indices
};

Corpus read_corpus(const std::string& path) {
  std::ifstream in(path);
  KILN_CHECK(in.good(), "char_mlp: cannot read corpus ", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  KILN_CHECK(text.size() > 1000, "char_mlp: corpus ", path, " is too small (", text.size(), " bytes)");
  std::map<char, int64_t> index;
  for (char c : text) index[c] = 0;
  Corpus corpus;
  for (auto& [c, i] : index) {
    i = static_cast<int64_t>(corpus.chars.size());
    corpus.chars.push_back(c);
  }
  for (char c : text) corpus.encoded.push_back(index[c]);
  return corpus;
}

// Random (contexts (B, 3), targets (B)) from positions [begin, end) of the corpus.
std::pair<Tensor, Tensor> batch(const Corpus& corpus, size_t begin, size_t end, Generator& generator) {
  std::vector<double> draws = rand({kBatch}, DType::f64, &generator).to_vector<double>();
  std::vector<int64_t> contexts, targets;
  for (double u : draws) {
    size_t position = begin + static_cast<size_t>(u * static_cast<double>(end - begin - kContext - 1));
    for (int64_t k = 0; k < kContext; ++k) contexts.push_back(corpus.encoded[position + k]);
    targets.push_back(corpus.encoded[position + kContext]);
  }
  return {from_vector(contexts, {kBatch, kContext}), from_vector(targets)};
}

struct Model {
  Tensor embedding_table, hidden_weight, hidden_bias, output_weight, output_bias;

  Model(int64_t vocab, Generator& generator) {
    auto init = [&](Shape shape, double scale) {
      Tensor t = randn(shape, DType::f32, &generator) * scale;
      return t.detach().set_requires_grad(true);
    };
    embedding_table = init({vocab, kEmbed}, 1.0);
    hidden_weight = init({kHidden, kContext * kEmbed}, 1.0 / std::sqrt(double(kContext * kEmbed)));
    hidden_bias = zeros({kHidden}, TensorOptions(DType::f32).requires_grad(true));
    output_weight = init({vocab, kHidden}, 0.1 / std::sqrt(double(kHidden)));
    output_bias = zeros({vocab}, TensorOptions(DType::f32).requires_grad(true));
  }
  std::vector<Tensor> parameters() const {
    return {embedding_table, hidden_weight, hidden_bias, output_weight, output_bias};
  }
  // contexts (B, 3) -> logits (B, V)
  Tensor forward(const Tensor& contexts) const {
    Tensor embedded = embedding(contexts, embedding_table).reshape({contexts.size(0), kContext * kEmbed});
    return linear(tanh(linear(embedded, hidden_weight, hidden_bias)), output_weight, output_bias);
  }
};

std::string sample(const Model& model, const Corpus& corpus, int64_t length, Generator& generator) {
  NoGradGuard no_grad;
  std::vector<int64_t> context(kContext, corpus.encoded[0]);
  std::string text;
  for (int64_t i = 0; i < length; ++i) {
    std::vector<float> probabilities =
        softmax(model.forward(from_vector(context, {1, kContext})), -1).to_vector<float>();
    double u = rand({1}, DType::f64, &generator).item(), cumulative = 0;
    size_t next = probabilities.size() - 1;
    for (size_t c = 0; c < probabilities.size(); ++c) {
      cumulative += probabilities[c];
      if (u < cumulative) {
        next = c;
        break;
      }
    }
    text.push_back(corpus.chars[next]);
    context.erase(context.begin());
    context.push_back(static_cast<int64_t>(next));
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string path = argc > 1 ? argv[1] : "../shared/data/tinyshakespeare.txt";
    Corpus corpus = read_corpus(path);
    size_t split = corpus.encoded.size() * 9 / 10;
    std::printf("corpus %s: %zu chars, vocabulary %zu\n", path.c_str(), corpus.encoded.size(), corpus.chars.size());
    Generator generator(1337);
    Model model(static_cast<int64_t>(corpus.chars.size()), generator);
    for (int64_t step = 1; step <= kSteps; ++step) {
      auto [contexts, targets] = batch(corpus, 0, split, generator);
      Tensor loss = cross_entropy(model.forward(contexts), targets);
      for (Tensor& p : model.parameters()) p.set_grad(Tensor());
      loss.backward();
      double learning_rate = step < kSteps * 3 / 4 ? 0.1 : 0.01;
      {
        NoGradGuard no_grad;
        for (Tensor& p : model.parameters()) p.sub_(p.grad(), learning_rate);
      }
      if (step % 500 == 0 || step == 1) {
        NoGradGuard no_grad;
        auto [val_contexts, val_targets] = batch(corpus, split, corpus.encoded.size(), generator);
        double val_loss = cross_entropy(model.forward(val_contexts), val_targets).item();
        std::printf("step %5ld  train loss %.4f  val loss %.4f\n", static_cast<long>(step), loss.item(), val_loss);
      }
    }
    std::printf("--- sample ---\n%s\n", sample(model, corpus, 300, generator).c_str());
  } catch (const Error& error) {
    std::fprintf(stderr, "error: %s\n", error.what());
    return 1;
  }
  return 0;
}

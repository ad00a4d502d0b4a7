// Whole models: GPT-2, Llama and MoE transformers against PyTorch reference implementations
// (tests/reference/torch_models.py) with identical weights; parameter counts against their
// analytic formulas; activation checkpointing; config JSON.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "kiln.h"

using namespace kiln;
using Catch::Contains;

namespace {

struct TorchResult {
  double loss = 0, cross_entropy = 0;
  std::map<std::string, Tensor> grads;
  Tensor logits;
};

// Runs tests/reference/torch_models.py on the model's weights and this batch.
TorchResult run_torch(nn::Transformer& model, const Tensor& tokens, const Tensor& targets) {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("kiln-models-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << model.config.to_json().dump();
  std::map<std::string, Tensor> inputs = model.state_dict();
  inputs["tokens"] = tokens;
  inputs["targets"] = targets;
  save_safetensors((dir / "inputs.safetensors").string(), inputs);
  std::string command = std::string(KILN_PYTHON) + " " + KILN_TEST_REFERENCE_DIR + "/torch_models.py " +
                        (dir / "config.json").string() + " " + (dir / "inputs.safetensors").string() + " " +
                        (dir / "results.safetensors").string();
  REQUIRE(std::system(command.c_str()) == 0);
  SafetensorsFile file = load_safetensors((dir / "results.safetensors").string());
  fs::remove_all(dir);
  TorchResult result;
  result.loss = file.tensors.at("loss").item();
  result.cross_entropy = file.tensors.at("cross_entropy").item();
  result.logits = file.tensors.at("logits");
  for (auto& [name, tensor] : file.tensors) {
    if (name.rfind("grad/", 0) == 0) result.grads[name.substr(5)] = tensor;
  }
  return result;
}

// Largest |a - b| relative to the largest |b| of the tensor (a normwise relative error).
double relative_error(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double worst = 0, scale = 1e-12;
  for (size_t i = 0; i < x.size(); ++i) {
    worst = std::max(worst, std::abs(x[i] - y[i]));
    scale = std::max(scale, std::abs(y[i]));
  }
  return worst / scale;
}

// Loss, logits and every parameter gradient agree with PyTorch within 1e-4 (f32).
void check_against_torch(nn::Transformer& model, uint64_t seed) {
  Generator generator(seed);
  int64_t batch = 2, steps = 7;
  auto draw = [&] {
    Tensor u = rand({batch, steps}, DType::f64, &generator) * static_cast<double>(model.config.vocab_size);
    return clamp(u, 0.0, model.config.vocab_size - 1.0).to(DType::i64);
  };
  Tensor tokens = draw(), targets = draw();
  model.zero_grad();
  Tensor loss = model.loss(tokens, targets);
  loss.backward();
  TorchResult torch = run_torch(model, tokens, targets);
  CHECK(loss.item() == Approx(torch.loss).epsilon(1e-5));
  CHECK(model.last_cross_entropy.item() == Approx(torch.cross_entropy).epsilon(1e-5));
  CHECK(relative_error(model.forward(tokens), torch.logits) < 1e-5);
  size_t compared = 0;
  for (const NamedParameter& p : model.named_parameters()) {
    INFO("parameter " << p.name);
    REQUIRE(torch.grads.count(p.name) == 1);
    REQUIRE(p.tensor.grad().defined());
    CHECK(relative_error(p.tensor.grad(), torch.grads.at(p.name)) < 1e-4);
    ++compared;
  }
  CHECK(compared == model.named_parameters().size());
}

}  // namespace

TEST_CASE("a GPT-2-style model matches PyTorch: loss and every gradient", "[models][parity]") {
  Generator generator(1);
  nn::Transformer model(nn::TransformerConfig::gpt2(37, 16, 2, 2, 16), &generator);
  check_against_torch(model, 11);
}

TEST_CASE("a Llama-style model (RoPE, RMSNorm, SwiGLU, GQA) matches PyTorch", "[models][parity]") {
  Generator generator(2);
  nn::Transformer model(nn::TransformerConfig::llama(41, 16, 2, 4, 2, 16), &generator);
  check_against_torch(model, 12);
}

TEST_CASE("MoE models match PyTorch: routing, capacity, losses and gradients", "[models][parity][moe]") {
  Generator generator(3);
  SECTION("Mixtral-style softmax top-2 with capacity and z-loss") {
    nn::TransformerConfig config = nn::TransformerConfig::llama(29, 16, 2, 2, 2, 12);
    config.moe.n_experts = 4;
    config.moe.top_k = 2;
    config.moe.every = 2;
    config.moe.capacity_factor = 1.0;
    config.moe.z_loss_weight = 1e-3;
    config.resolve();
    nn::Transformer model(config, &generator);
    check_against_torch(model, 13);
  }
  SECTION("DeepSeek-V3-style sigmoid group-limited routing with a shared expert") {
    nn::TransformerConfig config = nn::TransformerConfig::llama(29, 16, 2, 2, 1, 12);
    config.moe.n_experts = 8;
    config.moe.top_k = 2;
    config.moe.scoring = nn::RouterScoring::sigmoid;
    config.moe.n_groups = 4;
    config.moe.topk_groups = 2;
    config.moe.routed_scaling = 2.0;
    config.moe.n_shared_experts = 1;
    config.resolve();
    nn::Transformer model(config, &generator);
    check_against_torch(model, 14);
  }
}

TEST_CASE("parameter counts match the analytic formulas", "[models]") {
  SECTION("Llama layout with a 4d two-matrix FFN and no biases: 2Vd + 12d^2 L + (2L+1)d") {
    // Derivation: untied embedding and head 2Vd; per layer attention 4d^2 (qkv 3d^2, proj d^2)
    // and FFN 8d^2 (4d up and down); two norms per layer and the final norm (2L+1)d.
    int64_t V = 50, d = 32, L = 3;
    nn::TransformerConfig config = nn::TransformerConfig::llama(V, 64, L, 4, 4, d);
    config.family = "gpt2";  // a GELU MLP with two matrices ...
    config.bias = false;     // ... RMSNorm-like norms without bias, untied head, no positions:
    config.ffn_hidden = 4 * d;
    config.resolve();
    nn::Transformer model(config);
    // gpt2 adds the position table (block_size * d) and LayerNorm weights (no biases here).
    CHECK(model.count_parameters() == 2 * V * d + 12 * d * d * L + (2 * L + 1) * d + 64 * d);
  }
  SECTION("GPT-2: Vd + Td + L(12d^2 + 13d) + 2d (tied head)") {
    // Per layer: qkv 3d^2 + 3d, proj d^2 + d, fc 4d^2 + 4d, proj 4d^2 + d, two LayerNorms 4d.
    int64_t V = 50, T = 32, d = 24, L = 2;
    nn::Transformer model(nn::TransformerConfig::gpt2(V, T, L, 4, d));
    CHECK(model.count_parameters() == V * d + T * d + L * (12 * d * d + 13 * d) + 2 * d);
  }
  SECTION("Llama with GQA and SwiGLU: 2Vd + L(d(H + 2 Hkv)D + d^2 + 3dh + 2d) + d") {
    int64_t V = 50, d = 32, L = 2, H = 4, Hkv = 2, D = d / H;
    nn::Transformer model(nn::TransformerConfig::llama(V, 64, L, H, Hkv, d));
    int64_t h = model.config.ffn_hidden;
    CHECK(model.count_parameters() == 2 * V * d + L * (d * (H + 2 * Hkv) * D + d * d + 3 * d * h + 2 * d) + d);
  }
  SECTION("MoE layers: router dE, E experts 3dh_e, shared experts 3d(s h_e)") {
    int64_t V = 50, d = 16, L = 2, E = 4, s = 1;
    nn::TransformerConfig config = nn::TransformerConfig::llama(V, 64, L, 2, 2, d);
    config.moe.n_experts = E;
    config.moe.every = 2;
    config.moe.n_shared_experts = s;
    config.resolve();
    nn::Transformer model(config);
    int64_t h = config.ffn_hidden, he = config.moe.expert_hidden;
    int64_t attention = d * 3 * d + d * d, norms = 2 * d;
    int64_t dense_layer = attention + norms + 3 * d * h;
    int64_t moe_layer = attention + norms + d * E + E * 3 * d * he + 3 * d * (s * he);
    CHECK(model.count_parameters() == 2 * V * d + dense_layer + moe_layer + d);
  }
}

TEST_CASE("activation checkpointing leaves the gradients unchanged", "[models][checkpointing]") {
  nn::TransformerConfig config = nn::TransformerConfig::gpt2(31, 16, 2, 2, 16);
  config.dropout = 0.1;  // the recompute must replay the same dropout masks
  Generator init_a(4), init_b(4);
  nn::Transformer plain(config, &init_a);
  config.activation_checkpointing = true;
  nn::Transformer checkpointed(config, &init_b);
  Tensor tokens = from_vector<int64_t>({1, 5, 9, 2, 30, 7, 7, 0}, {2, 4});
  Tensor targets = from_vector<int64_t>({5, 9, 2, 30, 7, 7, 0, 3}, {2, 4});
  Tensor loss_plain = plain.loss(tokens, targets);
  Tensor loss_checkpointed = checkpointed.loss(tokens, targets);
  CHECK(loss_plain.item() == loss_checkpointed.item());
  loss_plain.backward();
  loss_checkpointed.backward();
  auto a = plain.named_parameters(), b = checkpointed.named_parameters();
  for (size_t i = 0; i < a.size(); ++i) {
    INFO(a[i].name);
    CHECK(a[i].tensor.grad().to_vector<float>() == b[i].tensor.grad().to_vector<float>());
  }
}

TEST_CASE("model configs round-trip through JSON and reject bad input", "[models][config]") {
  nn::TransformerConfig config = nn::TransformerConfig::llama(100, 64, 2, 4, 2, 32);
  config.moe.n_experts = 4;
  config.resolve();
  nn::TransformerConfig back = nn::TransformerConfig::from_json(config.to_json());
  CHECK(back.to_json() == config.to_json());
  nlohmann::json json = config.to_json();
  json["n_layer"] = 3;
  CHECK_THROWS_WITH(nn::TransformerConfig::from_json(json), Contains("model.n_layer: unknown key") &&
                                                            Contains("did you mean n_layers"));
  json = config.to_json();
  json["n_heads"] = "four";
  CHECK_THROWS_WITH(nn::TransformerConfig::from_json(json), Contains("model.n_heads: expected an integer"));
  json = config.to_json();
  json["moe"]["top_k"] = 9;
  CHECK_THROWS_WITH(nn::TransformerConfig::from_json(json), Contains("model.moe.top_k 9"));
  json = config.to_json();
  json["n_heads"] = 5;
  CHECK_THROWS_WITH(nn::TransformerConfig::from_json(json), Contains("n_heads 5 does not divide model.d_model 32"));
}

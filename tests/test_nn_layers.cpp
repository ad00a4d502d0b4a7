// Layers: f64 gradient checks of every layer with respect to its input and its parameters,
// attention options, the KV cache and MoE routing rules.
#include <catch2/catch.hpp>

#include "kiln.h"
#include "support/gradcheck.h"

using namespace kiln;
using kiln::testing::random_leaf;
using Catch::Contains;

namespace {

// Checks gradients of module(x) with respect to x and every parameter of the module.
template <typename M, typename Forward>
void check_layer(M& module, const Tensor& x, Forward forward) {
  module.to(DType::f64);
  std::vector<Tensor> inputs{x};
  for (const Tensor& p : module.parameters()) inputs.push_back(p);
  REQUIRE_GRADCHECK([&](const std::vector<Tensor>& in) { return forward(in[0]); }, inputs);
}

}  // namespace

TEST_CASE("gradcheck: Linear, Embedding, norms and FFNs", "[nn][gradcheck]") {
  Generator generator(5);
  SECTION("Linear") {
    nn::Linear layer(5, 3, true, &generator);
    check_layer(layer, random_leaf({2, 4, 5}, 1), [&](const Tensor& x) { return layer.forward(x); });
  }
  SECTION("Embedding with padding") {
    nn::Embedding layer(6, 4, 2, &generator);
    layer.to(DType::f64);
    Tensor tokens = from_vector<int64_t>({0, 5, 3, 3}, {2, 2});
    REQUIRE_GRADCHECK([&](const std::vector<Tensor>&) { return layer.forward(tokens); }, {layer.weight});
  }
  SECTION("LayerNorm and RMSNorm") {
    nn::LayerNorm layer_norm(6);
    check_layer(layer_norm, random_leaf({3, 6}, 2), [&](const Tensor& x) { return layer_norm.forward(x); });
    nn::RMSNorm rms(6);
    check_layer(rms, random_leaf({3, 6}, 3), [&](const Tensor& x) { return rms.forward(x); });
  }
  SECTION("MLP and SwiGLU") {
    nn::MLP mlp(4, 8, true, GeluApproximation::tanh, &generator);
    check_layer(mlp, random_leaf({3, 4}, 4), [&](const Tensor& x) { return mlp.forward(x); });
    nn::SwiGLU swiglu(4, 6, false, &generator);
    check_layer(swiglu, random_leaf({3, 4}, 5), [&](const Tensor& x) { return swiglu.forward(x); });
  }
}

TEST_CASE("gradcheck: attention in its MHA, GQA, MQA and RoPE forms", "[nn][gradcheck][attention]") {
  Generator generator(6);
  struct Case {
    int64_t heads, kv_heads;
    bool bias, rope;
  };
  for (Case c : {Case{2, 2, true, false}, Case{4, 2, false, true}, Case{4, 1, false, true}}) {
    nn::CausalSelfAttention attention(nn::AttentionOptions{8, c.heads, c.kv_heads, c.bias, c.rope, 100.0}, &generator);
    check_layer(attention, random_leaf({2, 5, 8}, 7), [&](const Tensor& x) { return attention.forward(x); });
  }
}

TEST_CASE("gradcheck: MoE layer with both routers and shared experts", "[nn][gradcheck][moe]") {
  Generator generator(8);
  nn::MoEConfig softmax_router;
  softmax_router.n_experts = 4;
  softmax_router.top_k = 2;
  softmax_router.expert_hidden = 6;
  softmax_router.z_loss_weight = 0.1;
  nn::MoE moe(4, softmax_router, &generator);
  check_layer(moe, random_leaf({5, 4}, 9), [&](const Tensor& x) { return add(moe.forward(x), moe.aux_loss); });

  nn::MoEConfig deepseek = softmax_router;
  deepseek.scoring = nn::RouterScoring::sigmoid;
  deepseek.n_experts = 8;
  deepseek.n_groups = 4;
  deepseek.topk_groups = 2;
  deepseek.routed_scaling = 2.5;
  deepseek.n_shared_experts = 1;
  nn::MoE grouped(4, deepseek, &generator);
  check_layer(grouped, random_leaf({5, 4}, 10), [&](const Tensor& x) { return grouped.forward(x); });
}

TEST_CASE("MoE routing respects groups, capacity and reports loads", "[nn][moe]") {
  Generator generator(9);
  nn::MoEConfig config;
  config.n_experts = 8;
  config.top_k = 2;
  config.expert_hidden = 4;
  config.scoring = nn::RouterScoring::sigmoid;
  config.n_groups = 4;
  config.topk_groups = 1;
  nn::MoE moe(6, config, &generator);
  Tensor x = randn({32, 6}, DType::f32, &generator);
  nn::MoERouting routing = moe.route(x);
  std::vector<int64_t> chosen = routing.indices.to_vector<int64_t>();
  for (int64_t t = 0; t < 32; ++t) {
    // With one eligible group of two experts, both choices come from the same group.
    CHECK(chosen[static_cast<size_t>(2 * t)] / 2 == chosen[static_cast<size_t>(2 * t + 1)] / 2);
  }
  std::vector<float> weights = routing.weights.to_vector<float>();
  for (int64_t t = 0; t < 32; ++t) CHECK(weights[2 * t] + weights[2 * t + 1] == Approx(1.0));

  config.scoring = nn::RouterScoring::softmax;
  config.n_groups = 1;
  config.topk_groups = 1;
  config.capacity_factor = 0.5;  // room for half of the assignments
  nn::MoE limited(6, config, &generator);
  limited.forward(x);
  const nn::MoEStatistics& stats = limited.statistics;
  int64_t assigned = 0, expected_dropped = 0;
  int64_t capacity = static_cast<int64_t>(std::ceil(0.5 * 32 * 2 / 8.0));
  for (int64_t load : stats.tokens_per_expert) {
    assigned += load;
    expected_dropped += std::max<int64_t>(0, load - capacity);
  }
  CHECK(assigned == 64);
  CHECK(stats.dropped == expected_dropped);
  CHECK(stats.dropped > 0);
  CHECK(stats.dropped_fraction == Approx(expected_dropped / 64.0));
}

TEST_CASE("attention configuration errors are explained", "[nn][attention][errors]") {
  CHECK_THROWS_WITH(nn::CausalSelfAttention(nn::AttentionOptions{10, 4, 0}),
                    Contains("n_heads 4 does not divide d_model 10"));
  CHECK_THROWS_WITH(nn::CausalSelfAttention(nn::AttentionOptions{12, 4, 3}),
                    Contains("n_kv_heads 3 does not divide n_heads 4"));
  nn::CausalSelfAttention attention(nn::AttentionOptions{8, 2, 2});
  CHECK_THROWS_WITH(attention.forward(randn({2, 3, 6})), Contains("(2, 3, 6)") && Contains("(B, T, 8)"));
  nn::KVCache cache(4);
  CHECK_THROWS_WITH(attention.forward(randn({1, 5, 8}), Tensor(), &cache), Contains("capacity of 4"));
}

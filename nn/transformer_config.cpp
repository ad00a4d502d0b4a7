// TransformerConfig defaults, validation and JSON.
#include "nn/transformer_config.h"

#include "autograd/json_reader.h"

namespace kiln::nn {

TransformerConfig TransformerConfig::gpt2(int64_t vocab, int64_t block, int64_t layers, int64_t heads, int64_t d) {
  TransformerConfig config;
  config.family = "gpt2";
  config.vocab_size = vocab;
  config.block_size = block;
  config.n_layers = layers;
  config.n_heads = heads;
  config.d_model = d;
  config.resolve();
  return config;
}

TransformerConfig TransformerConfig::llama(int64_t vocab, int64_t block, int64_t layers, int64_t heads,
                                           int64_t kv_heads, int64_t d) {
  TransformerConfig config;
  config.family = "llama";
  config.vocab_size = vocab;
  config.block_size = block;
  config.n_layers = layers;
  config.n_heads = heads;
  config.n_kv_heads = kv_heads;
  config.d_model = d;
  config.bias = false;
  config.tie_embeddings = false;
  config.norm_eps = 1e-6;
  config.resolve();
  return config;
}

void TransformerConfig::resolve() {
  KILN_CHECK(family == "gpt2" || family == "llama", "model.family: unknown family '", family,
             "' (expected gpt2 or llama)");
  KILN_CHECK(vocab_size > 0, "model.vocab_size must be positive, got ", vocab_size);
  KILN_CHECK(block_size > 0, "model.block_size must be positive, got ", block_size);
  KILN_CHECK(n_layers > 0, "model.n_layers must be positive, got ", n_layers);
  KILN_CHECK(n_heads > 0 && d_model > 0, "model.n_heads and model.d_model must be positive, got ", n_heads, " and ",
             d_model);
  KILN_CHECK(d_model % n_heads == 0, "model.n_heads ", n_heads, " does not divide model.d_model ", d_model);
  if (n_kv_heads == 0) n_kv_heads = n_heads;
  KILN_CHECK(n_kv_heads > 0 && n_heads % n_kv_heads == 0, "model.n_kv_heads ", n_kv_heads,
             " does not divide model.n_heads ", n_heads);
  if (ffn_hidden == 0) {
    // gpt2: 4d. llama: the SwiGLU width 8d/3 (same parameter count as a 4d two-matrix MLP),
    // rounded up to a multiple of 64.
    ffn_hidden = is_llama() ? (8 * d_model / 3 + 63) / 64 * 64 : 4 * d_model;
  }
  KILN_CHECK(ffn_hidden > 0, "model.ffn_hidden must be positive, got ", ffn_hidden);
  KILN_CHECK(dropout >= 0.0 && dropout < 1.0, "model.dropout must be in [0, 1), got ", dropout);
  KILN_CHECK(norm_eps > 0.0, "model.norm_eps must be positive, got ", norm_eps);
  KILN_CHECK(!is_llama() || (d_model / n_heads) % 2 == 0, "model: RoPE needs an even head dim, got ", d_model / n_heads);
  if (moe.n_experts > 0) {
    KILN_CHECK(moe.every > 0, "model.moe.every must be positive, got ", moe.every);
    KILN_CHECK(moe.top_k > 0 && moe.top_k <= moe.n_experts, "model.moe.top_k ", moe.top_k, " must be in [1, ",
               moe.n_experts, "]");
    KILN_CHECK(moe.n_groups > 0 && moe.n_experts % moe.n_groups == 0, "model.moe.n_groups ", moe.n_groups,
               " does not divide model.moe.n_experts ", moe.n_experts);
    KILN_CHECK(moe.topk_groups > 0 && moe.topk_groups <= moe.n_groups, "model.moe.topk_groups ", moe.topk_groups,
               " must be in [1, ", moe.n_groups, "]");
    KILN_CHECK(moe.top_k <= moe.topk_groups * (moe.n_experts / moe.n_groups), "model.moe.top_k ", moe.top_k,
               " exceeds the experts in the ", moe.topk_groups, " eligible groups");
    KILN_CHECK(moe.capacity_factor >= 0.0, "model.moe.capacity_factor must be >= 0, got ", moe.capacity_factor);
    if (moe.expert_hidden == 0) moe.expert_hidden = ffn_hidden;
  }
}

nlohmann::json TransformerConfig::to_json() const {
  nlohmann::json moe_json = {
      {"n_experts", moe.n_experts}, {"every", moe.every}, {"top_k", moe.top_k}, {"expert_hidden", moe.expert_hidden},
      {"n_shared_experts", moe.n_shared_experts},
      {"scoring", moe.scoring == RouterScoring::softmax ? "softmax" : "sigmoid"}, {"n_groups", moe.n_groups},
      {"topk_groups", moe.topk_groups}, {"normalize_topk", moe.normalize_topk}, {"routed_scaling", moe.routed_scaling},
      {"aux_loss_weight", moe.aux_loss_weight}, {"z_loss_weight", moe.z_loss_weight},
      {"capacity_factor", moe.capacity_factor}};
  return {{"family", family},       {"vocab_size", vocab_size},
          {"block_size", block_size}, {"n_layers", n_layers},
          {"n_heads", n_heads},     {"n_kv_heads", n_kv_heads},
          {"d_model", d_model},     {"ffn_hidden", ffn_hidden},
          {"bias", bias},           {"tie_embeddings", tie_embeddings},
          {"dropout", dropout},     {"norm_eps", norm_eps},
          {"rope_theta", rope_theta}, {"init_std", init_std},
          {"activation_checkpointing", activation_checkpointing}, {"moe", moe_json}};
}

TransformerConfig TransformerConfig::from_json(const nlohmann::json& json, const std::string& path) {
  JsonReader reader(json, path);
  TransformerConfig config;
  reader.read("family", config.family);
  if (config.is_llama()) {
    config.bias = false;
    config.tie_embeddings = false;
    config.norm_eps = 1e-6;
  }
  reader.require("vocab_size", config.vocab_size);
  reader.require("block_size", config.block_size);
  reader.require("n_layers", config.n_layers);
  reader.require("n_heads", config.n_heads);
  reader.require("d_model", config.d_model);
  reader.read("n_kv_heads", config.n_kv_heads);
  reader.read("ffn_hidden", config.ffn_hidden);
  reader.read("bias", config.bias);
  reader.read("tie_embeddings", config.tie_embeddings);
  reader.read("dropout", config.dropout);
  reader.read("norm_eps", config.norm_eps);
  reader.read("rope_theta", config.rope_theta);
  reader.read("init_std", config.init_std);
  reader.read("activation_checkpointing", config.activation_checkpointing);
  JsonReader moe = reader.child("moe");
  moe.read("n_experts", config.moe.n_experts);
  moe.read("every", config.moe.every);
  moe.read("top_k", config.moe.top_k);
  moe.read("expert_hidden", config.moe.expert_hidden);
  moe.read("n_shared_experts", config.moe.n_shared_experts);
  std::string scoring = "softmax";
  moe.read("scoring", scoring);
  KILN_CHECK(scoring == "softmax" || scoring == "sigmoid", moe.where("scoring"), ": unknown scoring '", scoring,
             "' (expected softmax or sigmoid)");
  config.moe.scoring = scoring == "softmax" ? RouterScoring::softmax : RouterScoring::sigmoid;
  moe.read("n_groups", config.moe.n_groups);
  moe.read("topk_groups", config.moe.topk_groups);
  moe.read("normalize_topk", config.moe.normalize_topk);
  moe.read("routed_scaling", config.moe.routed_scaling);
  moe.read("aux_loss_weight", config.moe.aux_loss_weight);
  moe.read("z_loss_weight", config.moe.z_loss_weight);
  moe.read("capacity_factor", config.moe.capacity_factor);
  moe.finish();
  reader.finish();
  config.resolve();
  return config;
}

}  // namespace kiln::nn

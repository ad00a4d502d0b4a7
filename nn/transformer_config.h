// TransformerConfig: everything that defines a model's architecture, serialisable to JSON.
//
// Two families share one pre-norm transformer:
//   gpt2:  learned positions, LayerNorm, GELU MLP (4d), biases, tied input/output embeddings;
//   llama: RoPE, RMSNorm, SwiGLU, grouped-query attention, no biases, untied head.
// Every field can be overridden; the family only chooses the defaults. An MoE FFN replaces the
// dense one every `moe.every` layers when moe.n_experts > 0.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace kiln::nn {

enum class RouterScoring { softmax, sigmoid };

struct MoEConfig {
  int64_t n_experts = 0;  // 0: no MoE layers
  int64_t every = 1;      // an MoE FFN in every k-th layer (layers k-1, 2k-1, ...)
  int64_t top_k = 2;
  int64_t expert_hidden = 0;  // 0: the dense FFN's hidden width
  int64_t n_shared_experts = 0;
  RouterScoring scoring = RouterScoring::softmax;  // Switch/Mixtral softmax, or DeepSeek-V3 sigmoid
  int64_t n_groups = 1;      // DeepSeek-V3 group-limited routing: experts in n_groups groups,
  int64_t topk_groups = 1;   // of which the top topk_groups (by their best two scores) are eligible
  bool normalize_topk = true;       // renormalise the k chosen weights to sum to 1
  double routed_scaling = 1.0;      // multiplies the routed experts' output
  double aux_loss_weight = 0.01;    // Switch load-balancing loss coefficient
  double z_loss_weight = 0.0;       // router z-loss coefficient (0: off)
  double capacity_factor = 0.0;     // 0: no capacity limit; else tokens per expert = cf * N k / E
};

struct TransformerConfig {
  std::string family = "gpt2";
  int64_t vocab_size = 0;
  int64_t block_size = 0;  // the longest sequence (the size of the position table for gpt2)
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // 0: n_heads
  int64_t d_model = 0;
  int64_t ffn_hidden = 0;  // 0: 4 d (gpt2) or the Llama rule 256 * ceil(8d/3 / 256)... see resolve()
  bool bias = true;
  bool tie_embeddings = true;
  double dropout = 0.0;
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  double init_std = 0.02;
  bool activation_checkpointing = false;  // recompute each block's forward during backward
  MoEConfig moe;

  // Family defaults, then checks; throws kiln::Error naming the field and the value.
  static TransformerConfig gpt2(int64_t vocab_size, int64_t block_size, int64_t n_layers, int64_t n_heads, int64_t d_model);
  static TransformerConfig llama(int64_t vocab_size, int64_t block_size, int64_t n_layers, int64_t n_heads,
                                 int64_t n_kv_heads, int64_t d_model);
  // Fills derived defaults (n_kv_heads, ffn_hidden) and validates every field.
  void resolve();
  bool is_llama() const { return family == "llama"; }

  nlohmann::json to_json() const;
  // Strict: unknown keys and wrong types are errors naming the JSON path ("model.n_heads") and,
  // for unknown keys, the closest valid key. `path` prefixes the messages.
  static TransformerConfig from_json(const nlohmann::json& json, const std::string& path = "model");
};

}  // namespace kiln::nn

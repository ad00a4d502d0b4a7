// The pre-norm decoder-only transformer behind kiln's GPT-2 and Llama-style models.
//
//   tokens (B, T) -> embeddings (+ learned positions for gpt2) (B, T, d)
//   -> L x [ x + attn(norm(x)); x + ffn(norm(x)) ] -> final norm -> head -> logits (B, T, V)
//
// The FFN is a GELU MLP (gpt2), SwiGLU (llama), or an MoE layer every moe.every layers.
#pragma once

#include "nn/activation.h"
#include "nn/attention.h"
#include "nn/containers.h"
#include "nn/feed_forward.h"
#include "nn/moe.h"
#include "nn/normalization.h"
#include "nn/transformer_config.h"

namespace kiln::nn {

class TransformerBlock : public Module {
 public:
  TransformerBlock(const TransformerConfig& config, int64_t layer, Generator* generator);
  // x (B, T, d) -> (B, T, d)
  Tensor forward(const Tensor& x, const Tensor& positions = Tensor(), KVCache* cache = nullptr);
  // The block's MoE auxiliary loss from the last forward (undefined for dense blocks).
  Tensor aux_loss() const { return moe ? moe->aux_loss : Tensor(); }

  std::shared_ptr<LayerNorm> layer_norm1, layer_norm2;  // gpt2
  std::shared_ptr<RMSNorm> rms_norm1, rms_norm2;        // llama
  std::shared_ptr<CausalSelfAttention> attn;
  std::shared_ptr<MLP> mlp;
  std::shared_ptr<SwiGLU> swiglu;
  std::shared_ptr<MoE> moe;
  std::shared_ptr<Dropout> dropout;

 private:
  Tensor norm1(const Tensor& x);
  // {x + update, norm2 of it}: the attention's residual add fused into the second norm.
  ResidualNorm add_norm2(const Tensor& x, const Tensor& update);
  Tensor ffn(const Tensor& x);
};

class Transformer : public Module {
 public:
  explicit Transformer(const TransformerConfig& config, Generator* generator = nullptr);

  // tokens (B, T) i64 -> logits (B, T, V). With caches (one per layer), the tokens continue the
  // cached sequence; positions (T) override the default 0..T-1 (context parallel passes global ones).
  Tensor forward(const Tensor& tokens, std::vector<KVCache>* caches = nullptr, const Tensor& positions = Tensor());
  // Mean next-token cross-entropy of tokens (B, T) against targets (B, T) (ignore_index -100),
  // plus the MoE layers' auxiliary losses.
  Tensor loss(const Tensor& tokens, const Tensor& targets);
  // The cross-entropy part of the last loss() (without auxiliary losses), for logging.
  Tensor last_cross_entropy;
  std::vector<KVCache> make_caches(int64_t capacity) const;
  // Sum of the MoE blocks' auxiliary losses from the last forward (a zero scalar without MoE).
  Tensor aux_loss() const;

  TransformerConfig config;
  std::shared_ptr<Embedding> token_embedding;
  std::shared_ptr<Embedding> position_embedding;  // gpt2 only
  std::shared_ptr<Dropout> dropout;
  std::shared_ptr<ModuleList> blocks;
  std::shared_ptr<LayerNorm> final_layer_norm;  // gpt2
  std::shared_ptr<RMSNorm> final_rms_norm;      // llama
  std::shared_ptr<Linear> head;                 // null when tied to the token embedding

 private:
  Generator* generator_;
};

}  // namespace kiln::nn

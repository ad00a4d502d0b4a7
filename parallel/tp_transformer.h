// ParallelTransformer: kiln's dense decoder-only transformer (GPT-2 and Llama layouts of
// nn::Transformer) under Megatron-style tensor parallelism.
//
//   tokens (B, T) -> VocabParallelEmbedding (+ replicated positions for gpt2)       (B, T, d)
//   -> L x [ x + ParallelSelfAttention(norm(x)); x + ParallelMLP / SwiGLU(norm(x)) ]
//   -> norm -> column-parallel head (or the tied embedding's rows)           logits (B, T, V / n)
//   -> vocab_parallel_cross_entropy
//
// Norms, position embeddings and the residual stream are replicated on every tensor-parallel
// rank; attention is split by heads, the FFN by hidden features, the embedding and the head by
// vocabulary rows. It is built from an nn::Transformer, the master model (every rank builds the
// same one from the same seed, or the constructor taking a Generator builds it), and keeps the
// same parameter names, so TP = n trains what nn::Transformer trains alone.
//
// Sequence parallelism (optional, Korthikanti et al. 2022): between the tensor-parallel
// regions the residual stream is (B, T / n, d), this rank's chunk of the sequence, so the norms
// (and their activations) are split too. The region boundaries all-gather the sequence going
// in and reduce-scatter it coming out; the replicated norm and position parameters then see
// only this rank's tokens, so their gradients are summed over the group (they are read through
// copy_to_tensor_parallel_region). T must be divisible by n.
//
// Not supported yet (each rejected with an error): MoE layers, dropout (which would need the
// same random stream on the ranks of a replicated region), activation checkpointing, KV caches.
#pragma once

#include "nn/containers.h"
#include "nn/normalization.h"
#include "nn/transformer.h"
#include "parallel/tp_blocks.h"

namespace kiln::parallel {

class ParallelTransformerBlock : public nn::Module {
 public:
  ParallelTransformerBlock(const nn::TransformerBlock& master, Group group, bool sequence_parallel);
  // x (B, T, d) (or (B, T / n, d) with sequence parallelism) -> the same; positions (T) i64
  Tensor forward(const Tensor& x, const Tensor& positions);

  std::shared_ptr<nn::LayerNorm> layer_norm1, layer_norm2;  // gpt2
  std::shared_ptr<nn::RMSNorm> rms_norm1, rms_norm2;        // llama
  std::shared_ptr<ParallelSelfAttention> attn;
  std::shared_ptr<ParallelMLP> mlp;
  std::shared_ptr<ParallelSwiGLU> swiglu;

 private:
  Group group_;
  bool sequence_parallel_;
};

class ParallelTransformer : public nn::Module {
 public:
  // Builds nn::Transformer(config, generator) as the master, then keeps this rank's slices.
  ParallelTransformer(const nn::TransformerConfig& config, Group group, Generator* generator = nullptr,
                      bool sequence_parallel = false);
  ParallelTransformer(const nn::Transformer& master, Group group, bool sequence_parallel = false);

  // tokens (B, T) i64 -> this rank's vocabulary columns of the logits (B, T, V / n)
  Tensor forward(const Tensor& tokens);
  // Mean next-token cross-entropy of tokens (B, T) against targets (B, T) (ignore_index -100),
  // the same number on every rank of the group.
  Tensor loss(const Tensor& tokens, const Tensor& targets);

  nn::TransformerConfig config;
  std::shared_ptr<VocabParallelEmbedding> token_embedding;
  std::shared_ptr<nn::Embedding> position_embedding;  // gpt2 only
  std::shared_ptr<nn::ModuleList> blocks;
  std::shared_ptr<nn::LayerNorm> final_layer_norm;  // gpt2
  std::shared_ptr<nn::RMSNorm> final_rms_norm;      // llama
  std::shared_ptr<ColumnParallelLinear> head;       // null when tied to the token embedding

 private:
  Group group_;
  bool sequence_parallel_;
};

}  // namespace kiln::parallel

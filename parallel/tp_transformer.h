// ParallelTransformer: kiln's decoder-only transformer (GPT-2 and Llama layouts of
// nn::Transformer, dense or MoE) as one rank's part of a model spread over a mesh:
//
//   tensor parallel (Megatron-LM)    attention split by heads, the FFN by hidden features, the
//                                    embedding and the head by vocabulary rows;
//   context parallel (ring attention) every rank holds 2 of the 2 cp chunks of each sequence
//                                    (context_parallel.h); attention passes K/V around the cp
//                                    ring; positions are global;
//   expert parallel                  MoE experts spread over the ep group (expert_parallel.h);
//   pipeline parallel                this rank holds only the layers of its pipeline stages:
//                                    virtual stages rank, rank + p, ... of p v (pipeline_schedule.h),
//                                    the embedding on the first, the final norm and head on the last.
//
//   tokens (B, T) -> VocabParallelEmbedding (+ replicated positions for gpt2)       (B, T, d)
//   -> L x [ x + ParallelSelfAttention(norm(x)); x + FFN(norm(x)) ]
//   -> norm -> column-parallel head (or the tied embedding's rows)           logits (B, T, V / tp)
//   -> vocab_parallel_cross_entropy
//
// Norms, position embeddings, routers and the residual stream are replicated on every
// tensor-parallel rank. It is built from an nn::Transformer, the master model (every rank builds
// the same one from the same seed), keeping the master's parameter names ("blocks.5.attn.qkv.weight"
// on whichever stage holds layer 5), so that checkpoints move between layouts and any layout
// trains what nn::Transformer trains alone.
//
// Tied embeddings under pipeline parallelism: the last stage keeps its own copy of the token
// embedding as the head; the two copies start equal and stay equal because their gradients are
// summed across the first and last stage before every step (ModelParallelRunner does it).
//
// Sequence parallelism (optional, Korthikanti et al. 2022): between the tensor-parallel regions
// the residual stream is (B, T / tp, d), this rank's chunk of the sequence; replicated norm and
// position parameters are read through copy_to_tensor_parallel_region, so their gradients are
// summed over the group.
//
// Dropout (embedding and residual, as nn::Transformer) draws from options.dropout_generator. Its
// masks apply to the replicated residual stream, so without sequence parallelism every rank of a
// tensor-parallel group must hold the same generator state (the same seed), and with it each rank
// its own (its tokens differ). A generator seeded as the master's after construction makes TP = n
// draw exactly the masks nn::Transformer draws.
//
// Not supported (each rejected with an error): activation checkpointing, KV caches, MoE layers
// with sequence parallelism.
#pragma once

#include <map>
#include <utility>

#include "nn/containers.h"
#include "nn/normalization.h"
#include "nn/transformer.h"
#include "parallel/expert_parallel.h"
#include "parallel/tp_blocks.h"

namespace kiln::parallel {

class ParallelTransformerOptions {
 public:
  // Groups left unset are groups of one.
  ParallelTransformerOptions& tensor_parallel(Group value) { tp = std::move(value); return *this; }
  ParallelTransformerOptions& context_parallel(Group value) { cp = std::move(value); return *this; }
  ParallelTransformerOptions& expert_parallel(Group value) { ep = std::move(value); return *this; }
  ParallelTransformerOptions& sequence_parallel(bool value) { sequence = value; return *this; }
  // The random stream of dropout (needed when the config's dropout is above 0; see above).
  ParallelTransformerOptions& dropout_generator(Generator* value) { generator = value; return *this; }
  // This rank's place in a pipeline of `size` ranks, each holding `virtual_stages` model chunks.
  ParallelTransformerOptions& pipeline(int size, int rank, int virtual_stages = 1) {
    pipeline_size = size;
    pipeline_rank = rank;
    chunks = virtual_stages;
    return *this;
  }

  Group tp, cp, ep;
  bool sequence = false;
  Generator* generator = nullptr;
  int pipeline_size = 1, pipeline_rank = 0, chunks = 1;
};

// Layers [first, last) of virtual stage `stage` of `stages`: as even as possible, earlier stages
// taking the remainder.
std::pair<int64_t, int64_t> pipeline_stage_layers(int64_t layers, int stage, int stages);

class ParallelTransformerBlock : public nn::Module {
 public:
  ParallelTransformerBlock(const nn::TransformerBlock& master, const ParallelTransformerOptions& options);
  // x (B, T, d) (or (B, T / tp, d) with sequence parallelism) -> the same; positions (T) i64,
  // global under context parallelism
  Tensor forward(const Tensor& x, const Tensor& positions);
  // The MoE auxiliary loss of the last forward (undefined for dense blocks).
  Tensor aux_loss() const { return moe ? moe->aux_loss : Tensor(); }

  std::shared_ptr<nn::LayerNorm> layer_norm1, layer_norm2;  // gpt2
  std::shared_ptr<nn::RMSNorm> rms_norm1, rms_norm2;        // llama
  std::shared_ptr<ParallelSelfAttention> attn;
  std::shared_ptr<ParallelMLP> mlp;
  std::shared_ptr<ParallelSwiGLU> swiglu;
  std::shared_ptr<ExpertParallelMoE> moe;
  std::shared_ptr<nn::Dropout> dropout;  // on each sublayer's output, when the config has dropout

 private:
  Group tp_;
  bool sequence_parallel_;
};

// The blocks this rank holds, registered under their layer index in the whole model.
class StageBlocks : public nn::Module {
 public:
  StageBlocks() : nn::Module("StageBlocks") {}
  void add(int64_t layer, std::shared_ptr<ParallelTransformerBlock> block);
  ParallelTransformerBlock& at(int64_t layer) const;
  bool holds(int64_t layer) const { return layers_.count(layer) > 0; }
  size_t size() const { return layers_.size(); }

 private:
  std::map<int64_t, std::shared_ptr<ParallelTransformerBlock>> layers_;
};

class ParallelTransformer : public nn::Module {
 public:
  // Builds nn::Transformer(config, generator) as the master, then keeps this rank's part; dropout
  // continues to draw from `generator`.
  ParallelTransformer(const nn::TransformerConfig& config, Group tp, Generator* generator = nullptr,
                      bool sequence_parallel = false);
  ParallelTransformer(const nn::Transformer& master, Group tp, bool sequence_parallel = false);
  ParallelTransformer(const nn::Transformer& master, const ParallelTransformerOptions& options);

  // ---- the whole model (a pipeline of one stage) --------------------------------------------
  // tokens (B, T) i64 (this rank's T / cp tokens under context parallelism) -> this rank's
  // vocabulary columns of the logits (B, T, V / tp)
  Tensor forward(const Tensor& tokens);
  // Mean next-token cross-entropy of tokens (B, T) against targets (B, T) (ignore_index -100) over
  // this rank's tokens, the same on every rank of the tensor-parallel group, plus the MoE layers'
  // auxiliary losses. The cross-entropy alone is left in last_cross_entropy.
  Tensor loss(const Tensor& tokens, const Tensor& targets);
  Tensor last_cross_entropy;

  // ---- pipeline stages ---------------------------------------------------------------------
  int chunks() const { return options_.chunks; }
  int virtual_stage(int chunk) const { return chunk * options_.pipeline_size + options_.pipeline_rank; }
  bool is_first(int chunk) const { return virtual_stage(chunk) == 0; }
  bool is_last(int chunk) const { return virtual_stage(chunk) == options_.pipeline_size * options_.chunks - 1; }
  std::pair<int64_t, int64_t> chunk_layers(int chunk) const;
  // Virtual stage `chunk` of this rank. input: tokens (B, T) i64 on the first stage, else the
  // previous stage's hidden state (B, T, d) (T / tp with sequence parallelism). Returns the
  // hidden state, or on the last stage the loss against targets (cross-entropy plus the stage's
  // MoE auxiliary losses). The auxiliary losses of the other stages enter backward through
  // their output, weighted by aux_weight (the caller's loss scale, 1 / micro-batches).
  Tensor forward_chunk(int chunk, const Tensor& input, const Tensor& targets, double aux_weight = 1.0);

  const ParallelTransformerOptions& options() const { return options_; }

  nn::TransformerConfig config;
  std::shared_ptr<VocabParallelEmbedding> token_embedding;  // first stage, and the last when tied
  std::shared_ptr<nn::Embedding> position_embedding;        // gpt2, first stage
  std::shared_ptr<nn::Dropout> dropout;                     // on the embeddings (first stage), with dropout
  std::shared_ptr<StageBlocks> blocks;
  std::shared_ptr<nn::LayerNorm> final_layer_norm;  // gpt2, last stage
  std::shared_ptr<nn::RMSNorm> final_rms_norm;      // llama, last stage
  std::shared_ptr<ColumnParallelLinear> head;       // last stage; null when tied to the token embedding

 private:
  // Global positions (T) of this rank's tokens, from its local sequence length.
  Tensor positions(int64_t local_steps, Device device) const;
  Tensor embed(const Tensor& tokens, const Tensor& where);
  Tensor logits(const Tensor& x);

  ParallelTransformerOptions options_;
};

}  // namespace kiln::parallel

// Tensor-parallel layers (Megatron-LM): linear layers split by output or input features, an
// embedding split by vocabulary rows, and the cross-entropy of vocabulary-split logits.
//
//   ColumnParallelLinear   W (out, in) split by rows: rank r computes out/n output features.
//   RowParallelLinear      W (out, in) split by columns: rank r reads in/n input features and
//                          holds a partial sum of the output, all-reduced (or reduce-scattered
//                          along the sequence under sequence parallelism).
//   VocabParallelEmbedding rows [r V/n, (r+1) V/n) of the table; other tokens give zeros here,
//                          and the all-reduce fills them in from their owners.
//   vocab_parallel_cross_entropy  the loss of logits split by vocabulary, from three all-reduces
//                          of per-token numbers (max, sum of exps, target logit): no rank ever
//                          holds a full row of logits.
//
// Every layer is built from the full master weight, drawn exactly as nn::Linear / nn::Embedding
// draw it from the same Generator, and keeps its rank's slice. A model built with TP = n from a
// seed therefore computes what the nn:: model built with TP = 1 from that seed computes, which
// is what the equivalence tests check. (Each rank briefly holds the full weight while building.)
//
// A column-parallel layer followed by a row-parallel one (input_is_parallel) needs one
// all-reduce in forward and one in backward: the MLP and attention of tp_blocks.h.
#pragma once

#include <utility>
#include <vector>

#include "autograd/ops/softmax.h"
#include "nn/module.h"
#include "parallel/tp_mappings.h"

namespace kiln::parallel {

class ColumnParallelOptions {
 public:
  ColumnParallelOptions& bias(bool value) { bias_ = value; return *this; }
  // All-gather the output's features (for a layer whose consumer is not tensor-parallel).
  ColumnParallelOptions& gather_output(bool value) { gather_output_ = value; return *this; }
  // The input is (B, T/n, in), this rank's chunk of the sequence: all-gather it along the
  // sequence (backward: reduce-scatter) instead of copying it into the region.
  ColumnParallelOptions& sequence_parallel(bool value) { sequence_parallel_ = value; return *this; }
  // The output features are several blocks packed side by side (attention's q, k, v), each
  // split evenly across ranks, so that a rank's slice holds its part of every block. Empty: one
  // block of all output features.
  ColumnParallelOptions& blocks(std::vector<int64_t> sizes) { blocks_ = std::move(sizes); return *this; }
  bool bias() const { return bias_; }
  bool gather_output() const { return gather_output_; }
  bool sequence_parallel() const { return sequence_parallel_; }
  const std::vector<int64_t>& blocks() const { return blocks_; }

 private:
  bool bias_ = true;
  bool gather_output_ = false;
  bool sequence_parallel_ = false;
  std::vector<int64_t> blocks_;
};

class RowParallelOptions {
 public:
  RowParallelOptions& bias(bool value) { bias_ = value; return *this; }
  // The input is already split by features (the output of a ColumnParallelLinear); otherwise
  // the layer keeps its rank's chunk of the full input.
  RowParallelOptions& input_is_parallel(bool value) { input_is_parallel_ = value; return *this; }
  // Reduce-scatter the output along the sequence (B, T, out) -> (B, T/n, out) instead of
  // all-reducing it.
  RowParallelOptions& sequence_parallel(bool value) { sequence_parallel_ = value; return *this; }
  bool bias() const { return bias_; }
  bool input_is_parallel() const { return input_is_parallel_; }
  bool sequence_parallel() const { return sequence_parallel_; }

 private:
  bool bias_ = true;
  bool input_is_parallel_ = true;
  bool sequence_parallel_ = false;
};

class ColumnParallelLinear : public nn::Module {
 public:
  // Draws the master weight as nn::Linear(in, out, bias, generator) would.
  ColumnParallelLinear(int64_t in_features, int64_t out_features, Group group, ColumnParallelOptions options = {},
                       Generator* generator = nullptr);
  // From the full master weight (out, in) and bias (out) (undefined without bias).
  ColumnParallelLinear(const Tensor& master_weight, const Tensor& master_bias, Group group,
                       ColumnParallelOptions options = {});
  // x (..., in) -> (..., out / n), or (..., out) with gather_output
  Tensor forward(const Tensor& x);

  int64_t in_features, out_features;
  Tensor weight;  // (out / n, in), partition_dim 0
  Tensor bias;    // (out / n), partition_dim 0
  // Checkpoints across layouts (collective over the group): the master tensor of one of this
  // layer's parameters (or of a parameter-shaped optimizer buffer) from this rank's slice, and
  // this rank's slice of a master tensor. 2-D tensors are weights, 1-D ones biases.
  Tensor to_master(const Tensor& local) const;
  Tensor from_master(const Tensor& master) const;

 private:
  ColumnParallelLinear(const std::pair<Tensor, Tensor>& master, Group group, ColumnParallelOptions options);
  Group group_;
  ColumnParallelOptions options_;
};

class RowParallelLinear : public nn::Module {
 public:
  RowParallelLinear(int64_t in_features, int64_t out_features, Group group, RowParallelOptions options = {},
                    Generator* generator = nullptr);
  RowParallelLinear(const Tensor& master_weight, const Tensor& master_bias, Group group, RowParallelOptions options = {});
  // x (..., in / n) (or (..., in) without input_is_parallel) -> (..., out), every rank the same;
  // with sequence_parallel (B, T, in / n) -> (B, T / n, out)
  Tensor forward(const Tensor& x);

  int64_t in_features, out_features;
  Tensor weight;  // (out, in / n), partition_dim 1
  Tensor bias;    // (out), replicated: added once, after the reduction
  // Checkpoints across layouts (collective over the group): the master tensor of one of this
  // layer's parameters (or of a parameter-shaped optimizer buffer) from this rank's slice, and
  // this rank's slice of a master tensor. 2-D tensors are weights, 1-D ones biases.
  Tensor to_master(const Tensor& local) const;
  Tensor from_master(const Tensor& master) const;

 private:
  RowParallelLinear(const std::pair<Tensor, Tensor>& master, Group group, RowParallelOptions options);
  Group group_;
  RowParallelOptions options_;
};

class VocabParallelEmbedding : public nn::Module {
 public:
  // Draws the master table as nn::Embedding(num_embeddings, dim, nullopt, generator) would.
  VocabParallelEmbedding(int64_t num_embeddings, int64_t embedding_dim, Group group, Generator* generator = nullptr,
                         bool sequence_parallel = false);
  VocabParallelEmbedding(const Tensor& master_weight, Group group, bool sequence_parallel = false);
  // indices (...) i64 -> (..., dim); with sequence_parallel (B, T) -> (B, T / n, dim)
  Tensor forward(const Tensor& indices);

  int64_t num_embeddings, embedding_dim;
  int64_t vocab_start, vocab_end;  // this rank's rows [vocab_start, vocab_end)
  Tensor weight;                   // (V / n, dim), partition_dim 0
  // Checkpoints across layouts (collective over the group): the master tensor of one of this
  // layer's parameters (or of a parameter-shaped optimizer buffer) from this rank's slice, and
  // this rank's slice of a master tensor. 2-D tensors are weights, 1-D ones biases.
  Tensor to_master(const Tensor& local) const;
  Tensor from_master(const Tensor& master) const;

 private:
  Group group_;
  bool sequence_parallel_;
};

// logits (..., V / n), this rank's vocabulary columns [r V/n, (r+1) V/n); targets (...) i64
// over the full vocabulary -> the loss as cross_entropy(full logits, targets, options) would
// give it (mean over non-ignored targets, sum, or per target). Label smoothing is not
// supported. The backward is softmax - one_hot(target) on this rank's columns only.
Tensor vocab_parallel_cross_entropy(const Tensor& logits, const Tensor& targets, const Group& group,
                                    CrossEntropyOptions options = {});

}  // namespace kiln::parallel

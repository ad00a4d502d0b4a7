// Tensor-parallel transformer sublayers: a column-parallel projection into a region split by
// heads or hidden features, the per-rank computation, and a row-parallel projection back, so
// that each sublayer costs one all-reduce forward and one backward (Megatron-LM, figure 3).
//
//   ParallelMLP          fc column-parallel, GELU on d_hidden / n features, proj row-parallel
//   ParallelSwiGLU       gate and up column-parallel, down row-parallel
//   ParallelSelfAttention  q, k, v column-parallel by heads (n_heads / n query heads and
//                        n_kv_heads / n key/value heads per rank, so GQA groups stay whole),
//                        causal attention on the local heads, proj row-parallel
//
// Each is built from its nn:: counterpart (nn::MLP, nn::SwiGLU, nn::CausalSelfAttention), the
// master module, keeping this rank's slices; the constructors that take a Generator build that
// master from it first. TP = n therefore computes what the nn:: module built from the same seed
// computes. With sequence_parallel the input and output are
// (B, T / n, d), this rank's chunk of the sequence (gathered before the first projection,
// reduce-scattered after the last).
#pragma once

#include "autograd/ops/elementwise.h"
#include "nn/attention.h"
#include "nn/feed_forward.h"
#include "parallel/tp_layers.h"

namespace kiln::parallel {

class ParallelMLP : public nn::Module {
 public:
  ParallelMLP(int64_t d_model, int64_t hidden, Group group, bool bias = true,
              GeluApproximation approximation = GeluApproximation::tanh, Generator* generator = nullptr,
              bool sequence_parallel = false);
  ParallelMLP(const nn::MLP& master, Group group, bool sequence_parallel = false);
  Tensor forward(const Tensor& x);  // (..., d) -> (..., d)

  std::shared_ptr<ColumnParallelLinear> fc;
  std::shared_ptr<RowParallelLinear> proj;
  GeluApproximation approximation;
};

class ParallelSwiGLU : public nn::Module {
 public:
  ParallelSwiGLU(int64_t d_model, int64_t hidden, Group group, bool bias = false, Generator* generator = nullptr,
                 bool sequence_parallel = false);
  ParallelSwiGLU(const nn::SwiGLU& master, Group group, bool sequence_parallel = false);
  Tensor forward(const Tensor& x);  // (..., d) -> (..., d)

  std::shared_ptr<ColumnParallelLinear> gate, up;
  std::shared_ptr<RowParallelLinear> down;
};

class ParallelSelfAttention : public nn::Module {
 public:
  ParallelSelfAttention(const nn::AttentionOptions& options, Group group, Generator* generator = nullptr,
                        bool sequence_parallel = false);
  ParallelSelfAttention(const nn::CausalSelfAttention& master, Group group, bool sequence_parallel = false);
  // x (B, T, d) -> (B, T, d); positions (T) i64 for RoPE (default 0..T-1). Under sequence
  // parallelism x is (B, T / n, d) and positions still cover the whole sequence.
  Tensor forward(const Tensor& x, const Tensor& positions = Tensor());

  nn::AttentionOptions options;
  // With more than one rank, x holds this rank's two chunks of each sequence (context_parallel.h)
  // and attention runs around the ring (ring_attention.h); positions are then global.
  Group context_parallel_group;
  int64_t head_dim;
  int64_t local_heads, local_kv_heads;  // n_heads / n, n_kv_heads / n
  std::shared_ptr<ColumnParallelLinear> qkv;  // d -> (local_heads + 2 local_kv_heads) head_dim
  std::shared_ptr<RowParallelLinear> proj;    // local_heads head_dim -> d
};

}  // namespace kiln::parallel

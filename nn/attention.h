// Causal self-attention: multi-head, grouped-query (n_kv_heads < n_heads) and multi-query
// (n_kv_heads = 1), optional biases, optional rotary embeddings, and a KV cache for generation.
// The scores go through the fused flash-style scaled_dot_product_attention op.
#pragma once

#include "nn/linear.h"

namespace kiln::nn {

// One layer's keys and values of the positions generated so far.
class KVCache {
 public:
  // keys/values are allocated on first use with room for `capacity` positions.
  explicit KVCache(int64_t capacity) : capacity_(capacity) {}
  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  // Appends k, v (B, Hkv, T, D) and returns views of all cached positions (B, Hkv, length, D).
  std::pair<Tensor, Tensor> append(const Tensor& k, const Tensor& v);
  // Keeps batch rows `order` (i64, (B')) for beam search; B' may differ from B.
  void reorder(const Tensor& order);
  void reset() { length_ = 0; }

 private:
  int64_t capacity_;
  int64_t length_ = 0;
  Tensor keys_, values_;
};

struct AttentionOptions {
  int64_t d_model = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;  // 0 means n_heads (plain multi-head attention)
  bool bias = true;
  bool rope = false;
  double rope_theta = 10000.0;
};

class CausalSelfAttention : public Module {
 public:
  explicit CausalSelfAttention(const AttentionOptions& options, Generator* generator = nullptr);
  // x (B, T, d) -> (B, T, d). positions (T) i64 are the tokens' global positions for RoPE
  // (default: the cache length + 0..T-1). With a cache, keys and values are appended to it.
  Tensor forward(const Tensor& x, const Tensor& positions = Tensor(), KVCache* cache = nullptr);

  AttentionOptions options;
  int64_t head_dim;
  std::shared_ptr<Linear> qkv;   // d -> (n_heads + 2 n_kv_heads) * head_dim
  std::shared_ptr<Linear> proj;  // d -> d, writes into the residual stream
};

}  // namespace kiln::nn

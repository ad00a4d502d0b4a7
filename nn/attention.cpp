// Causal self-attention and its KV cache.
//   x (B, T, d) -> qkv (B, T, (H + 2 Hkv) D) -> q (B, T, H, D), k, v (B, T, Hkv, D)
//   -> RoPE on q, k -> (B, H, T, D) views -> flash attention -> (B, T, d) -> proj
#include "nn/attention.h"

#include "autograd/ops.h"

namespace kiln::nn {

std::pair<Tensor, Tensor> KVCache::append(const Tensor& k, const Tensor& v) {
  int64_t steps = k.size(2);
  KILN_CHECK(length_ + steps <= capacity_, "KVCache: appending ", steps, " positions to ", length_,
             " exceeds the capacity of ", capacity_);
  NoGradGuard no_grad;
  if (!keys_.defined() || keys_.size(0) != k.size(0)) {
    KILN_CHECK(length_ == 0, "KVCache: batch size changed from ", keys_.size(0), " to ", k.size(0),
               " mid-sequence (use reorder)");
    Shape shape{k.size(0), k.size(1), capacity_, k.size(3)};
    keys_ = empty(shape, TensorOptions(k.dtype()).device(k.device()));
    values_ = empty(shape, TensorOptions(v.dtype()).device(v.device()));
  }
  keys_.narrow(2, length_, steps).copy_(k);
  values_.narrow(2, length_, steps).copy_(v);
  length_ += steps;
  return {keys_.narrow(2, 0, length_), values_.narrow(2, 0, length_)};
}

void KVCache::reorder(const Tensor& order) {
  if (!keys_.defined()) return;
  NoGradGuard no_grad;
  keys_ = index_select(keys_, 0, order);
  values_ = index_select(values_, 0, order);
}

CausalSelfAttention::CausalSelfAttention(const AttentionOptions& attention_options, Generator* generator)
    : Module("CausalSelfAttention"), options(attention_options) {
  if (options.n_kv_heads == 0) options.n_kv_heads = options.n_heads;
  KILN_CHECK(options.n_heads > 0 && options.d_model % options.n_heads == 0, "CausalSelfAttention: n_heads ",
             options.n_heads, " does not divide d_model ", options.d_model);
  KILN_CHECK(options.n_kv_heads > 0 && options.n_heads % options.n_kv_heads == 0, "CausalSelfAttention: n_kv_heads ",
             options.n_kv_heads, " does not divide n_heads ", options.n_heads);
  head_dim = options.d_model / options.n_heads;
  KILN_CHECK(!options.rope || head_dim % 2 == 0, "CausalSelfAttention: RoPE needs an even head dim, got ", head_dim);
  int64_t qkv_width = (options.n_heads + 2 * options.n_kv_heads) * head_dim;
  qkv = register_module("qkv", std::make_shared<Linear>(options.d_model, qkv_width, options.bias, generator));
  proj = register_module("proj", std::make_shared<Linear>(options.d_model, options.d_model, options.bias, generator));
}

Tensor CausalSelfAttention::forward(const Tensor& x, const Tensor& positions, KVCache* cache) {
  return with_hooks(x, [&] {
    KILN_CHECK(x.ndim() == 3 && x.size(2) == options.d_model, "CausalSelfAttention: input of shape ",
               shape_str(x.sizes()), " is not (B, T, ", options.d_model, ")");
    int64_t batch = x.size(0), steps = x.size(1);
    int64_t heads = options.n_heads, kv_heads = options.n_kv_heads;
    Tensor packed = qkv->forward(x);  // (B, T, (H + 2 Hkv) D)
    std::vector<Tensor> parts = split(packed, {heads * head_dim, kv_heads * head_dim, kv_heads * head_dim}, 2);
    Tensor q = parts[0].reshape({batch, steps, heads, head_dim});
    Tensor k = parts[1].reshape({batch, steps, kv_heads, head_dim});
    Tensor v = parts[2].reshape({batch, steps, kv_heads, head_dim});
    if (options.rope) {
      Tensor where = positions;
      if (!where.defined()) {
        double start = cache ? static_cast<double>(cache->length()) : 0.0;
        where = arange(start, start + static_cast<double>(steps), 1.0, TensorOptions(DType::i64).device(x.device()));
      }
      q = rope(q, where, options.rope_theta);
      k = rope(k, where, options.rope_theta);
    }
    q = q.transpose(1, 2);  // (B, H, T, D)
    k = k.transpose(1, 2);  // (B, Hkv, T, D)
    v = v.transpose(1, 2);
    if (cache) std::tie(k, v) = cache->append(k, v);
    Tensor attended = scaled_dot_product_attention(q, k, v, true);  // (B, H, T, D)
    return proj->forward(attended.transpose(1, 2).reshape({batch, steps, options.d_model}));
  });
}

}  // namespace kiln::nn

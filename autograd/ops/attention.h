// Attention ops: fused scaled-dot-product attention (flash-style, no T x T matrix), the plain
// reference built from matmul and softmax, and rotary position embeddings.
#pragma once

#include <optional>

#include "autograd/tensor.h"

namespace kiln {

// softmax(q k^T * scale + mask) v with the fused kernel, forward and backward.
//   q (B, Hq, Tq, D), k and v (B, Hkv, Tk, D) with Hq % Hkv == 0 (grouped-query attention: query
//   head h reads kv head h / (Hq / Hkv); Hkv == 1 is multi-query) -> (B, Hq, Tq, D).
// scale defaults to 1 / sqrt(D). With `causal`, query i sits at position Tk - Tq + i and sees keys
// j <= Tk - Tq + i (bottom-right aligned, as a KV cache needs when Tq < Tk); Tq must be <= Tk.
// Extra memory is O(T) per head; any strides are accepted (views of (B, T, H, D) transposed).
Tensor scaled_dot_product_attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal = true,
                                    std::optional<double> scale = std::nullopt);

// The same function computed the plain way, materialising the (B, Hq, Tq, Tk) scores: kept as the
// reference for tests and benchmarks.
Tensor attention_reference(const Tensor& q, const Tensor& k, const Tensor& v, bool causal = true,
                           std::optional<double> scale = std::nullopt);

// Rotary position embedding: x (B, T, H, D), D even, positions (T) i64 -> (B, T, H, D), the pair
// (2i, 2i+1) of token t rotated by positions[t] * theta^(-2i/D). Differentiable in x.
Tensor rope(const Tensor& x, const Tensor& positions, double theta = 10000.0);

}  // namespace kiln

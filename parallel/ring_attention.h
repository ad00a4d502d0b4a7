// Ring attention: causal attention over a sequence split across the ranks of a context-parallel
// group, each rank holding chunks r and 2 cp - 1 - r (context_parallel.h), without any rank ever
// holding the whole sequence's keys and values (Liu et al., "Ring Attention", 2023, with the
// load-balanced layout of Megatron-LM's context parallelism).
//
// Forward, cp steps: at step s rank r holds the keys and values of rank (r - s) mod cp. It posts
// their send to rank r + 1 and the receive of the next ones from rank r - 1 before computing on
// them, so the transfer runs under the compute. Each step is one call of the fused attention
// kernel on the part of the (local queries x held keys) block that causality leaves
// (ring_attention_block), and its (out, lse) is merged into the running result by log-sum-exp,
// accumulated in f32 (f64 for f64 inputs).
//
// Backward, flash-attention style: the keys and values travel the ring again, and with them
// their gradients. At each step the kernel's backward, given the FINAL out and lse (from which
// it recomputes P = exp(S - lse) and D = rowsum(dO * O) exactly), gives this block's dQ, kept
// locally, and dK, dV, added to the travelling accumulator that is passed on with the keys; one
// hop after the last step brings every rank's dK, dV home.
//
// Memory per rank is O(T / cp) per head; no (T x T) or (T / cp x T) score matrix is stored. The
// price of overlapping communication is double buffers: the held and the next K, V, and the
// dK, dV in flight beside the ones being summed, about ten (B, H, T / cp, D) tensors at the peak
// of the backward against five (B, H, T, D) for fused attention over the whole sequence (with
// Hkv = Hq; GQA shrinks the K, V buffers); at
// cp 2 the two are about equal, at cp 4 ring attention needs about 0.6 of it
// (benchmarks/bench_context_parallel.cpp).
//
// Communication per rank per call: forward (cp - 1) x |K, V|; backward (cp - 1) x |K, V| plus
// cp x |dK, dV| (in the accumulation dtype), all point to point with the ring neighbours.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "autograd/tensor.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

// Causal attention over the whole sequence when every rank of `cp` holds its two chunks:
//   q (B, Hq, T / cp, D), k and v (B, Hkv, T / cp, D) with Hq % Hkv == 0 (GQA: query head h reads
//   kv head h / (Hq / Hkv)) -> (B, Hq, T / cp, D), in the same layout.
// Differentiable in q, k and v; collective over `cp` (forward and backward: every rank calls it
// with the same shapes, dtype and scale). scale defaults to 1 / sqrt(D). At cp size 1 it is causal
// scaled_dot_product_attention (the same kernel call, the same bits).
// Any strides are accepted; the last dim is copied to unit stride where it is not.
Tensor ring_attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::shared_ptr<Communicator>& cp,
                      std::optional<double> scale = std::nullopt);

// What one ring step computes: the rows [query_start, query_start + query_length) of the local
// queries against the rows [key_start, key_start + key_length) of the held keys, with the
// causal mask (query i sees key j <= i, Tq == Tk) or without. From the rule on global chunk
// indices (a key chunk before the query chunk: full; the same chunk: causal; after: skipped):
//   owner == rank: the whole local block, causal (the local order is the global order);
//   owner <  rank: all local queries against the owner's early chunk, full;
//   owner >  rank: the local late chunk of queries against all held keys, full.
// Every step therefore does the same work (T/cp x T/(2cp) scores) except the causal first one.
struct RingAttentionBlock {
  int64_t query_start, query_length;
  int64_t key_start, key_length;
  bool causal;
};
RingAttentionBlock ring_attention_block(int rank, int owner, int cp_size, int64_t local_length);

}  // namespace kiln::parallel

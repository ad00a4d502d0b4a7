// Ring attention (see ring_attention.h): the block each step computes, the forward ring with its
// log-sum-exp merge, the backward ring that carries dK and dV home, and the autograd Function
// that joins them.
//
// Every step posts its sends and receives before computing, and the messages between two
// neighbours are matched in the order they were sent, so each rank issues them in one fixed
// order: per forward step K, V (if a next step exists); per backward step K, V (if a next step
// exists) at its start, then dK, dV after its compute. Each rank posts its receives in that same
// order (the K, V of the next step at the start, the dK, dV after the compute), before any wait
// that depends on them, so no rank waits on a message its neighbour will not send.
#include "parallel/ring_attention.h"

#include <cmath>
#include <utility>
#include <vector>

#include "autograd/function.h"
#include "autograd/ops.h"
#include "autograd/ops/op_helpers.h"

namespace kiln::parallel {
namespace {

constexpr const char* kOp = "ring_attention";

using Group = std::shared_ptr<Communicator>;

// Validates q, k, v and the group; returns the softmax scale.
double check_arguments(const Tensor& q, const Tensor& k, const Tensor& v, const Group& cp,
                       std::optional<double> scale) {
  KILN_CHECK(cp != nullptr, kOp, ": the context-parallel group is null");
  detail::check_defined(kOp, q, "query");
  detail::check_defined(kOp, k, "key");
  detail::check_defined(kOp, v, "value");
  detail::check_floating(kOp, q);
  for (const Tensor* other : {&k, &v}) {
    detail::check_same_dtype(kOp, q, *other);
    detail::check_same_device(kOp, q, *other);
  }
  for (const Tensor* operand : {&q, &k, &v}) {
    KILN_CHECK(operand->ndim() == 4, kOp, ": q, k and v must be (B, H, T / cp, D), got shapes ",
               shape_str(q.sizes()), ", ", shape_str(k.sizes()), " and ", shape_str(v.sizes()));
  }
  KILN_CHECK(k.sizes() == v.sizes(), kOp, ": key shape ", shape_str(k.sizes()), " and value shape ",
             shape_str(v.sizes()), " differ");
  KILN_CHECK(q.size(0) == k.size(0) && q.size(2) == k.size(2) && q.size(3) == k.size(3), kOp, ": query shape ",
             shape_str(q.sizes()), " and key shape ", shape_str(k.sizes()),
             " must agree in batch, local sequence length and head dim (all but the heads)");
  KILN_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, kOp, ": ", q.size(1), " query heads (shape ",
             shape_str(q.sizes()), ") are not a multiple of ", k.size(1), " kv heads (shape ", shape_str(k.sizes()), ")");
  KILN_CHECK(q.size(3) > 0, kOp, ": query shape ", shape_str(q.sizes()), " has an empty head dim");
  // Each rank holds two chunks of T / (2 cp): T = cp x local length must divide by 2 cp.
  KILN_CHECK(q.size(2) > 0 && q.size(2) % 2 == 0, kOp, ": local sequence length ", q.size(2), " (query shape ",
             shape_str(q.sizes()), ") must be even: the sequence length ", q.size(2) * cp->size(),
             " is not divisible by 2 x cp = ", 2 * cp->size(), " (use context_parallel_shard)");
  double value = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  KILN_CHECK(std::isfinite(value), kOp, ": scale must be finite, got ", value);
  return value;
}

// The kernels need unit stride in the last dim, and the communicator contiguous tensors.
Tensor with_unit_last_stride(const Tensor& tensor) {
  return tensor.stride(-1) == 1 || tensor.size(-1) <= 1 ? tensor : tensor.contiguous();
}

// f32 for every floating dtype but f64: where partial results are merged and gradients summed.
DType accumulation_dtype(const Tensor& q) { return q.dtype() == DType::f64 ? DType::f64 : DType::f32; }

TensorOptions options(DType dtype, const Tensor& like) { return TensorOptions(dtype).device(like.device()); }

// Keys and values, or their gradients: (B, Hkv, T / cp, D) each, contiguous.
struct KeyValue {
  Tensor key, value;
};

// Posts the receive of a pair shaped like `like`, in `dtype`, from the previous rank.
KeyValue post_receive(const KeyValue& like, DType dtype, Communicator& cp, std::vector<WorkHandle>& handles) {
  const int from = (cp.rank() + cp.size() - 1) % cp.size();
  KeyValue pair{empty(like.key.sizes(), options(dtype, like.key)), empty(like.value.sizes(), options(dtype, like.key))};
  handles.push_back(cp.recv_async(pair.key, from));
  handles.push_back(cp.recv_async(pair.value, from));
  return pair;
}

// Posts the send of `pair` to the next rank.
void post_send(const KeyValue& pair, Communicator& cp, std::vector<WorkHandle>& handles) {
  const int to = (cp.rank() + 1) % cp.size();
  handles.push_back(cp.send_async(pair.key, to));
  handles.push_back(cp.send_async(pair.value, to));
}

void wait_all(std::vector<WorkHandle>& handles) {
  for (const WorkHandle& handle : handles) handle.wait();
  handles.clear();
}

// lse (B, H, rows) := logaddexp(lse, lse_block); out (B, H, rows, D) := out exp(lse_old - lse) +
// out_block exp(lse_block - lse). out and lse are views into the accumulators, updated in place;
// out_block is scratch and may be overwritten.
void merge_block(Tensor& out, Tensor& lse, const Tensor& out_block, const Tensor& lse_block) {
  // Every row of a computed block sees at least one key, so both lse are finite.
  Tensor largest = maximum(lse, lse_block);
  Tensor merged = largest + log(exp(lse - largest) + exp(lse_block - largest));
  out.mul_(exp(lse - merged).unsqueeze(-1));
  Tensor weighted = out_block.to(out.dtype());  // out_block itself when the dtypes agree
  weighted.mul_(exp(lse_block - merged).unsqueeze(-1));
  out.add_(weighted);
  lse.copy_(merged);
}

// Before every step but the last: posts the receive of the previous rank's K/V and the send of
// the held ones to the next rank, so that they travel while this step computes.
KeyValue start_rotation(const KeyValue& held, DType dtype, Communicator& cp, int step, std::vector<WorkHandle>& pending) {
  if (step + 1 >= cp.size()) return {};
  KeyValue next = post_receive(held, dtype, cp, pending);
  post_send(held, cp, pending);
  return next;
}

// q (B, Hq, L, D), k, v (B, Hkv, L, D), L = T / cp -> out (B, Hq, L, D) in q's dtype and
// lse (B, Hq, L) in the accumulation dtype.
std::pair<Tensor, Tensor> ring_attention_forward(const Tensor& q, const KeyValue& own, Communicator& cp,
                                                 double scale) {
  const int n = cp.size(), rank = cp.rank();
  const int64_t batch = q.size(0), heads = q.size(1), local = q.size(2);
  const DType accumulate = accumulation_dtype(q);
  kernels::Backend& backend = detail::backend_of(q);
  Tensor out, lse;  // the running result, (B, Hq, L, D) and (B, Hq, L) in `accumulate`
  KeyValue held = own;
  for (int step = 0; step < n; ++step) {
    std::vector<WorkHandle> pending;
    KeyValue next = start_rotation(held, q.dtype(), cp, step, pending);
    RingAttentionBlock block = ring_attention_block(rank, (rank - step + n) % n, n, local);
    Tensor block_out = empty({batch, heads, block.query_length, q.size(3)}, options(q.dtype(), q));
    Tensor block_lse = empty({batch, heads, block.query_length}, options(accumulate, q));
    backend.attention(q.narrow(2, block.query_start, block.query_length).view_for_kernels(),
                      held.key.narrow(2, block.key_start, block.key_length).view_for_kernels(),
                      held.value.narrow(2, block.key_start, block.key_length).view_for_kernels(),
                      block_out.view_for_kernels(), block_lse.view_for_kernels(), block.causal, scale);
    if (step == 0) {
      // The first block is this rank's own, causal over every local query.
      out = block_out.to(accumulate);
      lse = block_lse;
    } else {
      Tensor out_rows = out.narrow(2, block.query_start, block.query_length);
      Tensor lse_rows = lse.narrow(2, block.query_start, block.query_length);
      merge_block(out_rows, lse_rows, block_out, block_lse);
    }
    wait_all(pending);
    if (step + 1 < n) held = std::move(next);
  }
  return {out.to(q.dtype()), lse};
}

struct Gradients {
  Tensor query, key, value;
};

// The backward ring: grad_out (B, Hq, L, D) with the forward's q, k, v, out and lse ->
// dq (B, Hq, L, D), dk and dv (B, Hkv, L, D), in q's dtype.
Gradients ring_attention_backward(const Tensor& q, const KeyValue& own, const Tensor& out, const Tensor& lse,
                                  const Tensor& grad_out, Communicator& cp, double scale) {
  const int n = cp.size(), rank = cp.rank();
  const int64_t batch = q.size(0), heads = q.size(1), local = q.size(2), dim = q.size(3);
  const int64_t kv_heads = own.key.size(1);
  const DType accumulate = accumulation_dtype(q);
  kernels::Backend& backend = detail::backend_of(q);

  // dQ of the local queries; dK, dV of the held keys and values, summed over the ranks they have
  // visited, travel with them. Step 0's block is the whole local block (causal): it sets every
  // element, so neither needs zeroing.
  Tensor grad_q = empty(q.sizes(), options(accumulate, q));
  KeyValue travelling;
  // dK, dV from the previous rank: the next step's accumulator, and after the last step this
  // rank's own gradients. Posted after the compute, so the buffer is not held during it.
  KeyValue arriving;
  std::vector<WorkHandle> arrival, departure;
  KeyValue held = own;
  for (int step = 0; step < n; ++step) {
    std::vector<WorkHandle> pending;
    KeyValue next = start_rotation(held, q.dtype(), cp, step, pending);
    {
      // The block gradients live only in this scope, so they are freed before the next buffers.
      RingAttentionBlock block = ring_attention_block(rank, (rank - step + n) % n, n, local);
      auto query_rows = [&](const Tensor& t) { return t.narrow(2, block.query_start, block.query_length); };
      auto key_rows = [&](const Tensor& t) { return t.narrow(2, block.key_start, block.key_length); };
      // The kernel writes (never adds): at step 0 straight into the accumulators where their dtype
      // is q's, otherwise into block gradients that are then added.
      const bool direct = step == 0 && accumulate == q.dtype();
      if (direct) travelling = {empty_like(held.key), empty_like(held.value)};
      auto block_gradient = [&](const Tensor& accumulator, int64_t heads_of, int64_t rows) {
        return direct ? accumulator : empty({batch, heads_of, rows, dim}, options(q.dtype(), q));
      };
      Tensor block_grad_q = block_gradient(grad_q, heads, block.query_length);
      Tensor block_grad_k = block_gradient(travelling.key, kv_heads, block.key_length);
      Tensor block_grad_v = block_gradient(travelling.value, kv_heads, block.key_length);
      backend.attention_backward(query_rows(q).view_for_kernels(), key_rows(held.key).view_for_kernels(),
                                 key_rows(held.value).view_for_kernels(), query_rows(out).view_for_kernels(),
                                 query_rows(lse).view_for_kernels(), query_rows(grad_out).view_for_kernels(),
                                 block_grad_q.view_for_kernels(), block_grad_k.view_for_kernels(),
                                 block_grad_v.view_for_kernels(), block.causal, scale);
      if (step == 0) {
        if (!direct) {
          grad_q.copy_(block_grad_q);
          travelling = {block_grad_k.to(accumulate), block_grad_v.to(accumulate)};
        }
      } else {
        query_rows(grad_q).add_(block_grad_q.to(accumulate));
        wait_all(arrival);
        wait_all(departure);
        travelling = std::move(arriving);
        key_rows(travelling.key).add_(block_grad_k.to(accumulate));
        key_rows(travelling.value).add_(block_grad_v.to(accumulate));
      }
    }
    wait_all(pending);
    held = std::move(next);  // empty after the last step
    if (n > 1) {
      // The communicator keeps the sent buffers alive until they are sent.
      post_send(travelling, cp, departure);
      travelling = {};
      arriving = post_receive(own, accumulate, cp, arrival);
    }
  }
  if (n > 1) {
    wait_all(arrival);
    wait_all(departure);
    travelling = std::move(arriving);
  }
  return {grad_q.to(q.dtype()), travelling.key.to(q.dtype()), travelling.value.to(q.dtype())};
}

// forward: the forward ring; backward: the backward ring. Saves q, k, v, out and lse.
struct RingAttentionFunction : Function<RingAttentionFunction> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, const Group& cp,
                                     double scale) {
    Tensor q = with_unit_last_stride(inputs[0]);
    KeyValue own{inputs[1].contiguous(), inputs[2].contiguous()};
    auto [out, lse] = ring_attention_forward(q, own, *cp, scale);
    ctx.save_for_backward({q, own.key, own.value, out, lse});
    ctx.set("cp", cp);
    ctx.set("scale", scale);
    return {out};
  }

  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    std::vector<Tensor> saved = ctx.saved_tensors();
    Gradients gradients = ring_attention_backward(saved[0], {saved[1], saved[2]}, saved[3], saved[4],
                                                  with_unit_last_stride(grads[0]), *ctx.get<Group>("cp"),
                                                  ctx.get<double>("scale"));
    return {gradients.query, gradients.key, gradients.value};
  }
};

}  // namespace

RingAttentionBlock ring_attention_block(int rank, int owner, int cp_size, int64_t local_length) {
  KILN_CHECK(cp_size >= 1 && rank >= 0 && rank < cp_size && owner >= 0 && owner < cp_size,
             "ring_attention_block: rank ", rank, " and owner ", owner, " must lie in [0, ", cp_size, ")");
  KILN_CHECK(local_length > 0 && local_length % 2 == 0, "ring_attention_block: local length ", local_length,
             " must be even (two chunks per rank)");
  const int64_t chunk = local_length / 2;
  if (owner == rank) return {0, local_length, 0, local_length, true};
  if (owner < rank) return {0, local_length, 0, chunk, false};
  return {chunk, chunk, 0, local_length, false};
}

Tensor ring_attention(const Tensor& q, const Tensor& k, const Tensor& v, const std::shared_ptr<Communicator>& cp,
                      std::optional<double> scale) {
  double value = check_arguments(q, k, v, cp, scale);
  return RingAttentionFunction::apply_with(kOp, {q, k, v}, cp, value)[0];
}

}  // namespace kiln::parallel

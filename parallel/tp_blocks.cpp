// Tensor-parallel MLP, SwiGLU and self-attention (see tp_blocks.h).
#include "parallel/tp_blocks.h"

#include "parallel/ring_attention.h"

#include "autograd/ops.h"

namespace kiln::parallel {
namespace {

std::shared_ptr<ColumnParallelLinear> column(const nn::Linear& master, const Group& group, bool sequence_parallel,
                                             std::vector<int64_t> blocks = {}) {
  return std::make_shared<ColumnParallelLinear>(
      master.weight, master.bias, group,
      ColumnParallelOptions().sequence_parallel(sequence_parallel).blocks(std::move(blocks)));
}

std::shared_ptr<RowParallelLinear> row(const nn::Linear& master, const Group& group, bool sequence_parallel) {
  return std::make_shared<RowParallelLinear>(master.weight, master.bias, group,
                                             RowParallelOptions().sequence_parallel(sequence_parallel));
}

}  // namespace

ParallelMLP::ParallelMLP(int64_t d_model, int64_t hidden, Group group, bool bias, GeluApproximation gelu_form,
                         Generator* generator, bool sequence_parallel)
    : ParallelMLP(nn::MLP(d_model, hidden, bias, gelu_form, generator), std::move(group), sequence_parallel) {}

ParallelMLP::ParallelMLP(const nn::MLP& master, Group group, bool sequence_parallel)
    : nn::Module("ParallelMLP"), approximation(master.approximation) {
  fc = register_module("fc", column(*master.fc, group, sequence_parallel));
  proj = register_module("proj", row(*master.proj, group, sequence_parallel));
}

Tensor ParallelMLP::forward(const Tensor& x) {
  return with_hooks(x, [&] { return proj->forward(gelu(fc->forward(x), approximation)); });
}

ParallelSwiGLU::ParallelSwiGLU(int64_t d_model, int64_t hidden, Group group, bool bias, Generator* generator,
                               bool sequence_parallel)
    : ParallelSwiGLU(nn::SwiGLU(d_model, hidden, bias, generator), std::move(group), sequence_parallel) {}

ParallelSwiGLU::ParallelSwiGLU(const nn::SwiGLU& master, Group group, bool sequence_parallel)
    : nn::Module("ParallelSwiGLU") {
  gate = register_module("gate", column(*master.gate, group, sequence_parallel));
  up = register_module("up", column(*master.up, group, sequence_parallel));
  down = register_module("down", row(*master.down, group, sequence_parallel));
}

Tensor ParallelSwiGLU::forward(const Tensor& x) {
  // Under sequence parallelism gate and up each gather x; their backwards each reduce-scatter
  // their share of x's gradient, which sums to the whole.
  return with_hooks(x, [&] { return down->forward(mul(silu(gate->forward(x)), up->forward(x))); });
}

ParallelSelfAttention::ParallelSelfAttention(const nn::AttentionOptions& attention_options, Group group,
                                             Generator* generator, bool sequence_parallel)
    : ParallelSelfAttention(nn::CausalSelfAttention(attention_options, generator), std::move(group), sequence_parallel) {}

ParallelSelfAttention::ParallelSelfAttention(const nn::CausalSelfAttention& master, Group group, bool sequence_parallel)
    : nn::Module("ParallelSelfAttention"), options(master.options), head_dim(master.head_dim) {
  KILN_CHECK(group != nullptr, "ParallelSelfAttention: the tensor-parallel group is null");
  const int tp = group->size();
  KILN_CHECK(options.n_heads % tp == 0, "ParallelSelfAttention: n_heads ", options.n_heads, " is not divisible by tp ", tp);
  KILN_CHECK(options.n_kv_heads % tp == 0, "ParallelSelfAttention: n_kv_heads ", options.n_kv_heads,
             " is not divisible by tp ", tp, " (key/value heads are split across ranks too)");
  local_heads = options.n_heads / tp;
  local_kv_heads = options.n_kv_heads / tp;
  const int64_t q_width = options.n_heads * head_dim, kv_width = options.n_kv_heads * head_dim;
  // The master packs [q | k | v]; each rank keeps its heads of each, so GQA groups stay whole.
  qkv = register_module("qkv", column(*master.qkv, group, sequence_parallel, {q_width, kv_width, kv_width}));
  proj = register_module("proj", row(*master.proj, group, sequence_parallel));
}

Tensor ParallelSelfAttention::forward(const Tensor& x, const Tensor& positions) {
  return with_hooks(x, [&] {
    KILN_CHECK(x.ndim() == 3 && x.size(2) == options.d_model, "ParallelSelfAttention: input of shape ",
               shape_str(x.sizes()), " is not (B, T, ", options.d_model, ")");
    Tensor packed = qkv->forward(x);  // (B, T, (h + 2 hkv) D), T the whole sequence
    const int64_t batch = packed.size(0), steps = packed.size(1);
    std::vector<Tensor> parts =
        split(packed, {local_heads * head_dim, local_kv_heads * head_dim, local_kv_heads * head_dim}, 2);
    Tensor q = parts[0].reshape({batch, steps, local_heads, head_dim});
    Tensor k = parts[1].reshape({batch, steps, local_kv_heads, head_dim});
    Tensor v = parts[2].reshape({batch, steps, local_kv_heads, head_dim});
    if (options.rope) {
      Tensor where = positions.defined()
                         ? positions
                         : arange(0.0, static_cast<double>(steps), 1.0, TensorOptions(DType::i64).device(x.device()));
      q = rope(q, where, options.rope_theta);
      k = rope(k, where, options.rope_theta);
    }
    Tensor attended = context_parallel_group && context_parallel_group->size() > 1
                          ? ring_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), context_parallel_group)
                          : scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), true);
    return proj->forward(attended.transpose(1, 2).reshape({batch, steps, local_heads * head_dim}));  // (B, T, d)
  });
}

}  // namespace kiln::parallel

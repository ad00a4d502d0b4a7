// Tensor-parallel layers (see tp_layers.h): slicing the master weights, the forwards built from
// the mappings, and the vocabulary-parallel cross-entropy as one autograd Function.
#include "parallel/tp_layers.h"

#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "nn/linear.h"

namespace kiln::parallel {
namespace {

Communicator& checked_group(const Group& group, const char* layer) {
  KILN_CHECK(group != nullptr, layer, ": the tensor-parallel group is null");
  return *group;
}

// Rank r's part of each of `blocks` (sizes along dim 0 that sum to master.size(0)), each split
// evenly into group.size() chunks, concatenated in block order.
Tensor slice_blocks(const char* layer, const Tensor& master, std::vector<int64_t> blocks, const Communicator& group) {
  if (blocks.empty()) blocks = {master.size(0)};
  int64_t total = 0;
  for (int64_t block : blocks) total += block;
  KILN_CHECK(total == master.size(0), layer, ": blocks sum to ", total, " features, but the layer has ",
             master.size(0));
  NoGradGuard no_grad;
  std::vector<Tensor> parts;
  int64_t offset = 0;
  for (int64_t block : blocks) {
    KILN_CHECK(block % group.size() == 0, layer, ": ", block, " output features are not divisible by tp ",
               group.size());
    const int64_t chunk = block / group.size();
    parts.push_back(master.detach().narrow(0, offset + group.rank() * chunk, chunk));
    offset += block;
  }
  return cat(parts, 0);
}

Tensor slice_columns(const char* layer, const Tensor& master, const Communicator& group) {
  const int64_t features = master.size(1);
  KILN_CHECK(features % group.size() == 0, layer, ": ", features, " input features are not divisible by tp ",
             group.size());
  NoGradGuard no_grad;
  const int64_t chunk = features / group.size();
  return master.detach().narrow(1, group.rank() * chunk, chunk).clone();
}

std::pair<Tensor, Tensor> master_linear(int64_t in, int64_t out, bool bias, Generator* generator) {
  nn::Linear master(in, out, bias, generator);
  return {master.weight, master.bias};
}

void check_master(const char* layer, const Tensor& weight, const Tensor& bias) {
  KILN_CHECK(weight.defined() && weight.ndim() == 2, layer, ": the master weight must be (out, in), got ",
             weight.defined() ? shape_str(weight.sizes()) : std::string("undefined"));
  KILN_CHECK(!bias.defined() || (bias.ndim() == 1 && bias.size(0) == weight.size(0)), layer, ": the master bias of shape ",
             bias.defined() ? shape_str(bias.sizes()) : std::string(), " does not match ", weight.size(0), " output features");
}

}  // namespace

// ---- ColumnParallelLinear ---------------------------------------------------------------------

ColumnParallelLinear::ColumnParallelLinear(int64_t in, int64_t out, Group group, ColumnParallelOptions options,
                                           Generator* generator)
    : ColumnParallelLinear(master_linear(in, out, options.bias(), generator), std::move(group), options) {}

ColumnParallelLinear::ColumnParallelLinear(const std::pair<Tensor, Tensor>& master, Group group,
                                           ColumnParallelOptions options)
    : ColumnParallelLinear(master.first, master.second, std::move(group), std::move(options)) {}

ColumnParallelLinear::ColumnParallelLinear(const Tensor& master_weight, const Tensor& master_bias, Group group,
                                           ColumnParallelOptions options)
    : nn::Module("ColumnParallelLinear"), group_(std::move(group)), options_(std::move(options)) {
  const char* layer = "ColumnParallelLinear";
  Communicator& communicator = checked_group(group_, layer);
  check_master(layer, master_weight, master_bias);
  KILN_CHECK(!(options_.gather_output() && options_.blocks().size() > 1), layer,
             ": gather_output would interleave the ", options_.blocks().size(), " packed blocks by rank");
  out_features = master_weight.size(0);
  in_features = master_weight.size(1);
  weight = register_parameter("weight", slice_blocks(layer, master_weight, options_.blocks(), communicator),
                              ParameterInfo{.partition_dim = 0});
  if (master_bias.defined()) {
    Tensor local = slice_blocks(layer, master_bias, options_.blocks(), communicator);
    bias = register_parameter("bias", local, ParameterInfo{.weight_decay = false, .partition_dim = 0});
  }
}

Tensor ColumnParallelLinear::forward(const Tensor& x) {
  return with_hooks(x, [&] {
    // Every rank needs the whole input: its backward sums the ranks' input gradients.
    Tensor input = options_.sequence_parallel() ? gather_from_sequence_parallel_region(x, group_)
                                                : copy_to_tensor_parallel_region(x, group_);
    Tensor local = linear(input, weight, bias);  // (..., out / n)
    return options_.gather_output() ? gather_from_tensor_parallel_region(local, group_) : local;
  });
}

// ---- RowParallelLinear ------------------------------------------------------------------------

RowParallelLinear::RowParallelLinear(int64_t in, int64_t out, Group group, RowParallelOptions options,
                                     Generator* generator)
    : RowParallelLinear(master_linear(in, out, options.bias(), generator), std::move(group), options) {}

RowParallelLinear::RowParallelLinear(const std::pair<Tensor, Tensor>& master, Group group, RowParallelOptions options)
    : RowParallelLinear(master.first, master.second, std::move(group), options) {}

RowParallelLinear::RowParallelLinear(const Tensor& master_weight, const Tensor& master_bias, Group group,
                                     RowParallelOptions options)
    : nn::Module("RowParallelLinear"), group_(std::move(group)), options_(options) {
  const char* layer = "RowParallelLinear";
  Communicator& communicator = checked_group(group_, layer);
  check_master(layer, master_weight, master_bias);
  out_features = master_weight.size(0);
  in_features = master_weight.size(1);
  weight = register_parameter("weight", slice_columns(layer, master_weight, communicator),
                              ParameterInfo{.partition_dim = 1});
  if (master_bias.defined()) {
    NoGradGuard no_grad;
    bias = register_parameter("bias", master_bias.detach().clone(), ParameterInfo{.weight_decay = false});
  }
}

Tensor RowParallelLinear::forward(const Tensor& x) {
  return with_hooks(x, [&] {
    Tensor input = options_.input_is_parallel() ? x : scatter_to_tensor_parallel_region(x, group_);
    Tensor partial = linear(input, weight);  // (..., out), this rank's share of the sum
    if (!options_.sequence_parallel()) {
      Tensor y = reduce_from_tensor_parallel_region(partial, group_);
      return bias.defined() ? y + bias : y;
    }
    Tensor y = reduce_scatter_to_sequence_parallel_region(partial, group_);  // (B, T / n, out)
    // Each rank adds the bias to its own tokens only: the gradient is summed over the ranks.
    return bias.defined() ? y + copy_to_tensor_parallel_region(bias, group_) : y;
  });
}

// ---- VocabParallelEmbedding -------------------------------------------------------------------

namespace {
Tensor master_embedding(int64_t count, int64_t dim, Generator* generator) {
  return nn::Embedding(count, dim, std::nullopt, generator).weight;
}
}  // namespace

VocabParallelEmbedding::VocabParallelEmbedding(int64_t count, int64_t dim, Group group, Generator* generator,
                                               bool sequence_parallel)
    : VocabParallelEmbedding(master_embedding(count, dim, generator), std::move(group), sequence_parallel) {}

VocabParallelEmbedding::VocabParallelEmbedding(const Tensor& master_weight, Group group, bool sequence_parallel)
    : nn::Module("VocabParallelEmbedding"), group_(std::move(group)), sequence_parallel_(sequence_parallel) {
  const char* layer = "VocabParallelEmbedding";
  Communicator& communicator = checked_group(group_, layer);
  KILN_CHECK(master_weight.defined() && master_weight.ndim() == 2, layer, ": the master table must be (V, dim)");
  num_embeddings = master_weight.size(0);
  embedding_dim = master_weight.size(1);
  KILN_CHECK(num_embeddings % communicator.size() == 0, layer, ": the vocabulary of ", num_embeddings,
             " is not divisible by tp ", communicator.size(), " (pad it to a multiple)");
  const int64_t rows = num_embeddings / communicator.size();
  vocab_start = communicator.rank() * rows;
  vocab_end = vocab_start + rows;
  weight = register_parameter("weight", slice_blocks(layer, master_weight, {}, communicator),
                              ParameterInfo{.partition_dim = 0});
}

Tensor VocabParallelEmbedding::forward(const Tensor& indices) {
  return with_hooks(indices, [&] {
    KILN_CHECK(indices.defined() && !is_floating(indices.dtype()) && indices.dtype() != DType::boolean,
               "VocabParallelEmbedding: indices must be an integer tensor");
    if (indices.numel() > 0) {
      const int64_t low = static_cast<int64_t>(amin(indices).item());
      const int64_t high = static_cast<int64_t>(amax(indices).item());
      KILN_CHECK(low >= 0 && high < num_embeddings, "VocabParallelEmbedding: index ", low < 0 ? low : high,
                 " is out of range for ", num_embeddings, " embeddings");
    }
    // Tokens owned by another rank look up row 0 here and are zeroed; their owner supplies them.
    Tensor elsewhere = logical_or(lt(indices, static_cast<double>(vocab_start)), ge(indices, static_cast<double>(vocab_end)));
    Tensor local = masked_fill(indices - static_cast<double>(vocab_start), elsewhere, 0.0);
    Tensor rows = masked_fill(embedding(local, weight), elsewhere.unsqueeze(-1), 0.0);  // (..., dim)
    return sequence_parallel_ ? reduce_scatter_to_sequence_parallel_region(rows, group_)
                              : reduce_from_tensor_parallel_region(rows, group_);
  });
}

// ---- vocab_parallel_cross_entropy -------------------------------------------------------------

namespace {

// inputs: logits (..., V / n), targets (...). Output: the loss per target (...), 0 where ignored.
struct VocabParallelCrossEntropy : Function<VocabParallelCrossEntropy> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, const Group& group,
                                     int64_t ignore_index) {
    const Tensor& logits = inputs[0];
    const Tensor& targets = inputs[1];
    const int64_t last = logits.ndim() - 1;
    const int64_t columns = logits.size(last);
    const double start = static_cast<double>(group->rank() * columns);
    // The softmax over the full row from per-row numbers: the global max (for stability), the
    // sum of exps, and the target's logit from the rank that holds it.
    Tensor row_max = amax(logits, {last}, true).contiguous();  // (..., 1)
    group->all_reduce(row_max, ReduceOp::max);
    Tensor exps = exp(logits - row_max);  // (..., V / n)
    Tensor sum_exps = exps.sum({last}, true).contiguous();  // (..., 1)
    group->all_reduce(sum_exps, ReduceOp::sum);
    Tensor here = logical_and(ge(targets, start), lt(targets, start + static_cast<double>(columns)));
    Tensor local_target = masked_fill(targets - start, logical_not(here), 0.0).unsqueeze(-1);  // (..., 1)
    Tensor target_logit = masked_fill(gather(logits, last, local_target), logical_not(here).unsqueeze(-1), 0.0)
                              .contiguous();  // (..., 1)
    group->all_reduce(target_logit, ReduceOp::sum);
    Tensor valid = ne(targets, static_cast<double>(ignore_index));
    // loss = log(sum exp(z - max)) - (z_target - max)
    Tensor loss = (log(sum_exps) - (target_logit - row_max)).squeeze(last);
    loss = masked_fill(loss, logical_not(valid), 0.0);
    ctx.save_for_backward({exps / sum_exps, local_target, here, valid});
    return {loss};
  }

  // d loss / d z = softmax(z) - one_hot(target), on this rank's columns.
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    std::vector<Tensor> saved = ctx.saved_tensors();
    const Tensor& softmax = saved[0];
    const int64_t columns = softmax.size(softmax.ndim() - 1);
    Tensor target_one_hot = mul(one_hot(saved[1].squeeze(-1), columns).to(softmax.dtype()),
                                saved[2].unsqueeze(-1).to(softmax.dtype()));
    Tensor scale = masked_fill(grads[0], logical_not(saved[3]), 0.0).unsqueeze(-1);
    return {(softmax - target_one_hot) * scale, Tensor()};
  }
};

}  // namespace

Tensor vocab_parallel_cross_entropy(const Tensor& logits, const Tensor& targets, const Group& group,
                                    CrossEntropyOptions options) {
  const char* op = "vocab_parallel_cross_entropy";
  checked_group(group, op);
  KILN_CHECK(logits.defined() && targets.defined(), op, ": logits and targets must be defined");
  KILN_CHECK(is_floating(logits.dtype()), op, ": logits must be floating point, got ", dtype_name(logits.dtype()));
  KILN_CHECK(targets.dtype() == DType::i64 || targets.dtype() == DType::i32, op, ": targets must be i64 or i32, got ",
             dtype_name(targets.dtype()));
  KILN_CHECK(logits.ndim() >= 1 && targets.sizes() == Shape(logits.sizes().begin(), logits.sizes().end() - 1), op,
             ": logits ", shape_str(logits.sizes()), " and targets ", shape_str(targets.sizes()),
             " do not match (expected targets of the logits' shape without the last dim)");
  KILN_CHECK(options.label_smoothing == 0.0, op, ": label smoothing is not supported, got ", options.label_smoothing);
  Tensor per_target = VocabParallelCrossEntropy::apply_with(op, {logits, targets}, group, options.ignore_index)[0];
  switch (options.reduction) {
    case Reduction::none: return per_target;
    case Reduction::sum: return per_target.sum();
    case Reduction::mean: break;
  }
  Tensor counted = ne(targets, static_cast<double>(options.ignore_index)).to(per_target.dtype()).sum();
  return per_target.sum() / counted;
}

// ---- checkpoints across layouts -----------------------------------------------------------------

Tensor ColumnParallelLinear::to_master(const Tensor& local) const {
  Communicator& group = *group_;
  NoGradGuard no_grad;
  // The gather stacks the ranks' slices, each holding its part of every block: regroup by block.
  Tensor gathered = gather_along(local.detach().contiguous(), 0, group);
  std::vector<int64_t> blocks = options_.blocks();
  if (blocks.empty()) blocks = {out_features};
  const int64_t per_rank = local.size(0);
  std::vector<Tensor> parts;
  int64_t offset = 0;
  for (int64_t block : blocks) {
    const int64_t chunk = block / group.size();
    for (int r = 0; r < group.size(); ++r) parts.push_back(gathered.narrow(0, r * per_rank + offset, chunk));
    offset += chunk;
  }
  return cat(parts, 0);
}

Tensor ColumnParallelLinear::from_master(const Tensor& master) const {
  return slice_blocks("ColumnParallelLinear", master, options_.blocks(), *group_).clone();
}

Tensor RowParallelLinear::to_master(const Tensor& local) const {
  NoGradGuard no_grad;
  return local.ndim() == 2 ? gather_along(local.detach().contiguous(), 1, *group_) : local.detach().clone();
}

Tensor RowParallelLinear::from_master(const Tensor& master) const {
  NoGradGuard no_grad;
  return master.ndim() == 2 ? slice_columns("RowParallelLinear", master, *group_) : master.detach().clone();
}

Tensor VocabParallelEmbedding::to_master(const Tensor& local) const {
  NoGradGuard no_grad;
  return gather_along(local.detach().contiguous(), 0, *group_);
}

Tensor VocabParallelEmbedding::from_master(const Tensor& master) const {
  return slice_blocks("VocabParallelEmbedding", master, {}, *group_).clone();
}

}  // namespace kiln::parallel

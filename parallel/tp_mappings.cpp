// Tensor-parallel mappings (see tp_mappings.h): three collectives along a dim, then one small
// autograd Function per mapping whose backward is the opposite collective.
#include "parallel/tp_mappings.h"

#include "autograd/function.h"
#include "autograd/ops.h"

namespace kiln::parallel {
namespace {

int64_t normalized_dim(const char* op, const Tensor& x, int64_t dim) {
  KILN_CHECK(x.defined(), op, ": the input is undefined");
  const int64_t rank = x.ndim();
  KILN_CHECK(dim >= -rank && dim < rank, op, ": dim ", dim, " is out of range for a tensor of ", rank, " dims");
  return dim < 0 ? dim + rank : dim;
}

void check_divisible(const char* op, const Tensor& x, int64_t dim, const Communicator& group) {
  KILN_CHECK(x.size(dim) % group.size() == 0, op, ": dim ", dim, " of shape ", shape_str(x.sizes()),
             " is not divisible by the ", group.size(), " ranks of ", group.describe());
}

TensorOptions options_of(const Tensor& x) { return TensorOptions(x.dtype()).device(x.device()); }

Tensor all_reduced(const Tensor& x, Communicator& group) {
  Tensor out = x.clone();  // fresh memory: x may be saved by the op that produced it
  group.all_reduce(out, ReduceOp::sum);
  return out;
}

void check_group(const Group& group, const char* op) {
  KILN_CHECK(group != nullptr, op, ": the tensor-parallel group is null");
}

}  // namespace

Tensor split_along(const Tensor& x, int64_t dim, Communicator& group) {
  dim = normalized_dim("split_along", x, dim);
  check_divisible("split_along", x, dim, group);
  const int64_t chunk = x.size(dim) / group.size();
  return x.narrow(dim, group.rank() * chunk, chunk).clone();
}

// The communicator gathers flat chunks in rank order, which is concatenation along dim 0: dim
// is swapped to the front, gathered and swapped back.
Tensor gather_along(const Tensor& x, int64_t dim, Communicator& group) {
  dim = normalized_dim("gather_along", x, dim);
  Tensor front = x.transpose(0, dim).contiguous();  // (m, ...)
  Shape shape = front.sizes();
  shape[0] *= group.size();
  Tensor gathered = empty(shape, options_of(x));  // (n m, ...)
  group.all_gather(front, gathered);
  return gathered.transpose(0, dim).contiguous();
}

Tensor reduce_scatter_along(const Tensor& x, int64_t dim, Communicator& group) {
  dim = normalized_dim("reduce_scatter_along", x, dim);
  check_divisible("reduce_scatter_along", x, dim, group);
  Tensor front = x.transpose(0, dim).contiguous();  // (n m, ...)
  Shape shape = front.sizes();
  shape[0] /= group.size();
  Tensor scattered = empty(shape, options_of(x));  // (m, ...)
  group.reduce_scatter(front, scattered, ReduceOp::sum);
  return scattered.transpose(0, dim).contiguous();
}

namespace {

// forward: identity; backward: all-reduce.
struct CopyToRegion : Function<CopyToRegion> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, const Group& group) {
    ctx.set("group", group);
    return {inputs[0]};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    return {all_reduced(grads[0], *ctx.get<Group>("group"))};
  }
};

// forward: all-reduce; backward: identity.
struct ReduceFromRegion : Function<ReduceFromRegion> {
  static std::vector<Tensor> forward(FunctionContext&, const std::vector<Tensor>& inputs, const Group& group) {
    return {all_reduced(inputs[0], *group)};
  }
  static std::vector<Tensor> backward(FunctionContext&, const std::vector<Tensor>& grads) { return {grads[0]}; }
};

// forward: keep own chunk along dim; backward: all-gather along dim.
struct ScatterToRegion : Function<ScatterToRegion> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, const Group& group,
                                     int64_t dim) {
    ctx.set("group", group);
    ctx.set("dim", dim);
    return {split_along(inputs[0], dim, *group)};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    return {gather_along(grads[0], ctx.get<int64_t>("dim"), *ctx.get<Group>("group"))};
  }
};

// forward: all-gather along dim; backward: keep own chunk along dim.
struct GatherFromRegion : Function<GatherFromRegion> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, const Group& group,
                                     int64_t dim) {
    ctx.set("group", group);
    ctx.set("dim", dim);
    return {gather_along(inputs[0], dim, *group)};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    return {split_along(grads[0], ctx.get<int64_t>("dim"), *ctx.get<Group>("group"))};
  }
};

// forward: all-gather along dim; backward: reduce-scatter along dim.
struct GatherWithReduceScatterBackward : Function<GatherWithReduceScatterBackward> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, const Group& group,
                                     int64_t dim) {
    ctx.set("group", group);
    ctx.set("dim", dim);
    return {gather_along(inputs[0], dim, *group)};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    return {reduce_scatter_along(grads[0], ctx.get<int64_t>("dim"), *ctx.get<Group>("group"))};
  }
};

// forward: reduce-scatter along dim; backward: all-gather along dim.
struct ReduceScatterToRegion : Function<ReduceScatterToRegion> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, const Group& group,
                                     int64_t dim) {
    ctx.set("group", group);
    ctx.set("dim", dim);
    return {reduce_scatter_along(inputs[0], dim, *group)};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    return {gather_along(grads[0], ctx.get<int64_t>("dim"), *ctx.get<Group>("group"))};
  }
};

// The contexts keep the group alive for as long as the graph can run backward.
template <typename Mapping>
Tensor apply_along(const char* name, const Tensor& x, const Group& group, int64_t dim) {
  check_group(group, name);
  dim = normalized_dim(name, x, dim);
  return Mapping::apply_with(name, {x}, group, dim)[0];
}

}  // namespace

Tensor copy_to_tensor_parallel_region(const Tensor& x, const Group& group) {
  const char* name = "copy_to_tensor_parallel_region";
  KILN_CHECK(x.defined(), name, ": the input is undefined");
  check_group(group, name);
  return CopyToRegion::apply_with(name, {x}, group)[0];
}

Tensor reduce_from_tensor_parallel_region(const Tensor& x, const Group& group) {
  const char* name = "reduce_from_tensor_parallel_region";
  KILN_CHECK(x.defined(), name, ": the input is undefined");
  check_group(group, name);
  return ReduceFromRegion::apply_with(name, {x}, group)[0];
}

Tensor scatter_to_tensor_parallel_region(const Tensor& x, const Group& group) {
  return apply_along<ScatterToRegion>("scatter_to_tensor_parallel_region", x, group, -1);
}

Tensor gather_from_tensor_parallel_region(const Tensor& x, const Group& group) {
  return apply_along<GatherFromRegion>("gather_from_tensor_parallel_region", x, group, -1);
}

Tensor scatter_to_sequence_parallel_region(const Tensor& x, const Group& group, int64_t sequence_dim) {
  return apply_along<ScatterToRegion>("scatter_to_sequence_parallel_region", x, group, sequence_dim);
}

Tensor gather_from_sequence_parallel_region(const Tensor& x, const Group& group, int64_t sequence_dim) {
  return apply_along<GatherWithReduceScatterBackward>("gather_from_sequence_parallel_region", x, group, sequence_dim);
}

Tensor reduce_scatter_to_sequence_parallel_region(const Tensor& x, const Group& group, int64_t sequence_dim) {
  return apply_along<ReduceScatterToRegion>("reduce_scatter_to_sequence_parallel_region", x, group, sequence_dim);
}

}  // namespace kiln::parallel

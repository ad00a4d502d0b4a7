// Expert-parallel mappings (see ep_mappings.h): one small autograd Function per mapping.
#include "parallel/ep_mappings.h"

#include <numeric>

#include "autograd/function.h"
#include "autograd/ops.h"

namespace kiln::parallel {
namespace {

using Group = std::shared_ptr<Communicator>;
using Rows = std::vector<int64_t>;

// x (sum(send), ...) -> (sum(recv), ...) through the communicator, outside autograd.
Tensor exchange_rows(const Tensor& x, const Rows& send, const Rows& recv, Communicator& group) {
  Shape shape = x.sizes();
  shape[0] = std::accumulate(recv.begin(), recv.end(), int64_t{0});
  Tensor out = empty(shape, TensorOptions(x.dtype()).device(x.device()));
  group.all_to_all_v(x.contiguous(), send, out, recv);
  return out;
}

// forward: all_to_all_v (send -> recv); backward: all_to_all_v (recv -> send).
struct AllToAllRows : Function<AllToAllRows> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, const Group& group,
                                     const Rows& send, const Rows& recv) {
    ctx.set("group", group);
    ctx.set("send", send);
    ctx.set("recv", recv);
    return {exchange_rows(inputs[0], send, recv, *group)};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    return {exchange_rows(grads[0], ctx.get<Rows>("recv"), ctx.get<Rows>("send"), *ctx.get<Group>("group"))};
  }
};

Tensor summed(const Tensor& x, Communicator& group) {
  Tensor out = x.contiguous().clone();  // fresh memory: x may be saved by the op that produced it
  group.all_reduce(out, ReduceOp::sum);
  return out;
}

// forward: all-reduce (sum); backward: all-reduce (sum).
struct SumOverGroup : Function<SumOverGroup> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, const Group& group) {
    ctx.set("group", group);
    return {summed(inputs[0], *group)};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    return {summed(grads[0], *ctx.get<Group>("group"))};
  }
};

// forward: identity; backward: times factor.
struct ScaleGradient : Function<ScaleGradient> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, double factor) {
    ctx.set("factor", factor);
    return {inputs[0]};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    return {grads[0] * ctx.get<double>("factor")};
  }
};

void check_rows(const char* op, const char* what, const Rows& rows, const Communicator& group) {
  KILN_CHECK(rows.size() == static_cast<size_t>(group.size()), op, ": ", what, " has ", rows.size(),
             " counts for the ", group.size(), " ranks of ", group.describe());
  for (size_t j = 0; j < rows.size(); ++j) {
    KILN_CHECK(rows[j] >= 0, op, ": ", what, "[", j, "] is ", rows[j], ", expected a non-negative row count");
  }
}

}  // namespace

Tensor all_to_all_rows(const Tensor& x, const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows,
                       const std::shared_ptr<Communicator>& group) {
  const char* op = "all_to_all_rows";
  KILN_CHECK(group != nullptr, op, ": the expert-parallel group is null");
  KILN_CHECK(x.defined() && x.ndim() >= 1, op, ": the input needs a row dim 0, got ",
             x.defined() ? shape_str(x.sizes()) : std::string("an undefined tensor"));
  check_rows(op, "send_rows", send_rows, *group);
  check_rows(op, "recv_rows", recv_rows, *group);
  const int64_t sent = std::accumulate(send_rows.begin(), send_rows.end(), int64_t{0});
  KILN_CHECK(sent == x.size(0), op, ": send_rows sum to ", sent, " rows but the input of shape ", shape_str(x.sizes()),
             " has ", x.size(0));
  return AllToAllRows::apply_with(op, {x}, group, send_rows, recv_rows)[0];
}

Tensor sum_over_group(const Tensor& x, const std::shared_ptr<Communicator>& group) {
  const char* op = "sum_over_group";
  KILN_CHECK(group != nullptr, op, ": the expert-parallel group is null");
  KILN_CHECK(x.defined(), op, ": the input is undefined");
  return SumOverGroup::apply_with(op, {x}, group)[0];
}

Tensor scale_gradient(const Tensor& x, double factor) {
  KILN_CHECK(x.defined(), "scale_gradient: the input is undefined");
  return ScaleGradient::apply_with("scale_gradient", {x}, factor)[0];
}

}  // namespace kiln::parallel

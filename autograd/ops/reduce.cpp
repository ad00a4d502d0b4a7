// Reductions and their gradients. Kernels always see the keepdim layout (size 1 on reduced
// dims); keepdim=false is a reshape of that result.
#include "autograd/ops/reduce.h"

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/elementwise.h"
#include "autograd/ops/op_helpers.h"

namespace kiln {

using kernels::ReduceOp;

namespace {

struct ReducePlan {
  Shape kept_shape;  // x's shape with 1 on reduced dims
  Shape out_shape;   // the result's shape
  int64_t count = 1;  // elements reduced into each output
};

ReducePlan plan_reduction(const char* op, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  detail::check_defined(op, x, "input");
  std::vector<int> reduced = normalize_dims(op, dims, x.ndim());
  ReducePlan plan;
  plan.kept_shape = x.sizes();
  for (int d : reduced) {
    if (x.ndim() == 0) break;
    plan.count *= x.sizes()[static_cast<size_t>(d)];
    plan.kept_shape[static_cast<size_t>(d)] = 1;
  }
  for (size_t d = 0; d < plan.kept_shape.size(); ++d) {
    bool is_reduced = std::find(reduced.begin(), reduced.end(), static_cast<int>(d)) != reduced.end();
    if (keepdim || !is_reduced) plan.out_shape.push_back(plan.kept_shape[d]);
  }
  return plan;
}

// Runs a value reduction; returns the result in the keepdim layout.
Tensor reduce_kept(ReduceOp op, const Tensor& x, const ReducePlan& plan, Tensor* indices = nullptr) {
  Tensor out = empty(plan.kept_shape, TensorOptions(x.dtype()).device(x.device()));
  kernels::View index_view;
  if (indices) {
    *indices = empty(plan.kept_shape, TensorOptions(DType::i64).device(x.device()));
    index_view = indices->view_for_kernels();
  }
  detail::backend_of(x).reduce(op, x.view_for_kernels(), out.view_for_kernels(), indices ? &index_view : nullptr);
  return out;
}

// The gradient of a reduced output broadcast back over x's shape (a stride-0 view, no copy).
Tensor expand_back(const Tensor& grad, const ReducePlan& plan, const Shape& shape) {
  return grad.reshape(plan.kept_shape).expand(shape);
}

}  // namespace

Tensor sum(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  detail::check_defined("sum", x, "input");
  // Integer and bool sums are taken in i64, as in PyTorch.
  Tensor input = (x.dtype() == DType::boolean || x.dtype() == DType::i32) ? x.to(DType::i64) : x;
  ReducePlan plan = plan_reduction("sum", input, dims, keepdim);
  Tensor out = reduce_kept(ReduceOp::sum, input, plan).reshape(plan.out_shape);
  record_op("sum", {x}, {out}, [plan, shape = x.sizes()](const auto& grads, const Node&) {
    return std::vector<Tensor>{expand_back(grads[0], plan, shape)};
  });
  return out;
}

Tensor mean(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  detail::check_defined("mean", x, "input");
  detail::check_floating("mean", x);
  ReducePlan plan = plan_reduction("mean", x, dims, keepdim);
  Tensor out = reduce_kept(ReduceOp::mean, x, plan).reshape(plan.out_shape);
  record_op("mean", {x}, {out}, [plan, shape = x.sizes()](const auto& grads, const Node&) {
    Tensor scaled = div(grads[0], detail::scalar_like(static_cast<double>(plan.count), grads[0]));
    return std::vector<Tensor>{expand_back(scaled, plan, shape)};
  });
  return out;
}

Tensor var(const Tensor& x, const std::vector<int64_t>& dims, double correction, bool keepdim) {
  detail::check_defined("var", x, "input");
  detail::check_floating("var", x);
  ReducePlan plan = plan_reduction("var", x, dims, keepdim);
  Tensor out = empty(plan.kept_shape, TensorOptions(x.dtype()).device(x.device()));
  detail::backend_of(x).variance(x.view_for_kernels(), out.view_for_kernels(), correction);
  out = out.reshape(plan.out_shape);
  SavedTensor saved = should_record({x}) ? save(x) : SavedTensor();
  record_op("var", {x}, {out}, [plan, saved, correction, dims](const auto& grads, const Node&) {
    Tensor input = saved.unpack("var");
    // d var / dx = 2 (x - mean) / (count - correction)
    Tensor centered = sub(input, mean(input, dims, true));
    double scale = 2.0 / (static_cast<double>(plan.count) - correction);
    Tensor grad = mul(expand_back(grads[0], plan, input.sizes()), centered);
    return std::vector<Tensor>{mul(grad, detail::scalar_like(scale, grad))};
  });
  return out;
}

Tensor logsumexp(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  detail::check_floating("logsumexp", x);
  ReducePlan plan = plan_reduction("logsumexp", x, dims, keepdim);
  Tensor kept = reduce_kept(ReduceOp::logsumexp, x, plan);
  Tensor out = kept.reshape(plan.out_shape);
  if (!should_record({x})) return out;
  SavedTensor saved_x = save(x), saved_kept = save(kept);
  record_op("logsumexp", {x}, {out}, [plan, saved_x, saved_kept](const auto& grads, const Node&) {
    Tensor input = saved_x.unpack("logsumexp");
    // d lse / dx = softmax(x) = exp(x - lse)
    Tensor weights = exp(sub(input, saved_kept.unpack("logsumexp")));
    return std::vector<Tensor>{mul(expand_back(grads[0], plan, input.sizes()), weights)};
  });
  return out;
}

namespace {
Tensor extreme_values(ReduceOp op, const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  const char* name = op == ReduceOp::max ? "amax" : "amin";
  ReducePlan plan = plan_reduction(name, x, dims, keepdim);
  KILN_CHECK(plan.count > 0, name, ": cannot reduce over an empty dim (input shape ", shape_str(x.sizes()), ")");
  Tensor kept = reduce_kept(op, x, plan);
  Tensor out = kept.reshape(plan.out_shape);
  if (!should_record({x})) return out;
  SavedTensor saved_x = save(x), saved_kept = save(kept);
  record_op(name, {x}, {out}, [plan, name, dims, saved_x, saved_kept](const auto& grads, const Node&) {
    Tensor input = saved_x.unpack(name);
    Tensor selected = eq(input, saved_kept.unpack(name)).to(input.dtype());
    Tensor share = div(selected, sum(selected, dims, true));
    return std::vector<Tensor>{mul(expand_back(grads[0], plan, input.sizes()), share)};
  });
  return out;
}

std::pair<Tensor, Tensor> extreme_with_index(ReduceOp op, const Tensor& x, int64_t dim, bool keepdim) {
  const char* name = op == ReduceOp::max ? "max" : "min";
  ReducePlan plan = plan_reduction(name, x, {dim}, keepdim);
  KILN_CHECK(plan.count > 0, name, ": cannot reduce over an empty dim (input shape ", shape_str(x.sizes()), ")");
  Tensor indices;
  Tensor values = reduce_kept(op, x, plan, &indices);
  Tensor kept_indices = indices;
  values = values.reshape(plan.out_shape);
  indices = indices.reshape(plan.out_shape);
  int reduced_dim = normalize_dim(name, dim, x.ndim());
  record_op(name, {x}, {values, indices},
            [plan, reduced_dim, kept_indices, shape = x.sizes()](const auto& grads, const Node&) {
              Tensor grad_in = zeros(shape, TensorOptions(grads[0].dtype()).device(grads[0].device()));
              if (grad_in.ndim() == 0) return std::vector<Tensor>{grads[0].reshape(shape)};
              Tensor grad_kept = grads[0].reshape(plan.kept_shape);
              detail::backend_of(grad_in).scatter_add(grad_in.view_for_kernels(), reduced_dim,
                                                      kept_indices.view_for_kernels(), grad_kept.view_for_kernels());
              return std::vector<Tensor>{grad_in};
            });
  return {values, indices};
}

Tensor arg_extreme(ReduceOp op, const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  const char* name = op == ReduceOp::argmax ? "argmax" : "argmin";
  detail::check_defined(name, x, "input");
  Tensor input = dim ? x : x.reshape({-1});
  ReducePlan plan = plan_reduction(name, input, {dim.value_or(0)}, dim ? keepdim : false);
  KILN_CHECK(plan.count > 0, name, ": cannot reduce over an empty dim (input shape ", shape_str(x.sizes()), ")");
  Tensor indices = empty(plan.kept_shape, TensorOptions(DType::i64).device(x.device()));
  kernels::View index_view = indices.view_for_kernels();
  detail::backend_of(x).reduce(op, input.view_for_kernels(), index_view, &index_view);
  return indices.reshape(plan.out_shape);
}
}  // namespace

Tensor amax(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extreme_values(ReduceOp::max, x, dims, keepdim);
}
Tensor amin(const Tensor& x, const std::vector<int64_t>& dims, bool keepdim) {
  return extreme_values(ReduceOp::min, x, dims, keepdim);
}
std::pair<Tensor, Tensor> max(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_with_index(ReduceOp::max, x, dim, keepdim);
}
std::pair<Tensor, Tensor> min(const Tensor& x, int64_t dim, bool keepdim) {
  return extreme_with_index(ReduceOp::min, x, dim, keepdim);
}
Tensor argmax(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  return arg_extreme(ReduceOp::argmax, x, dim, keepdim);
}
Tensor argmin(const Tensor& x, std::optional<int64_t> dim, bool keepdim) {
  return arg_extreme(ReduceOp::argmin, x, dim, keepdim);
}

}  // namespace kiln

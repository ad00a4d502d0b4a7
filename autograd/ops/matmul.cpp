// Matrix products and their gradients.
//   matmul: a (..., M, K) @ b (..., K, N) -> (..., M, N);  ga = g @ b^T,  gb = a^T @ g
//   linear: x (..., in), W (out, in), bias (out) -> (..., out);  gx = g W,  gW = g^T x,  gb = sum g
#include "autograd/ops/matmul.h"

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/elementwise.h"
#include "autograd/ops/op_helpers.h"
#include "autograd/ops/reduce.h"

namespace kiln {
namespace {

// Batched product of operands with at least 2 dims; batch dims broadcast.
Tensor batched_matmul(const Tensor& a, const Tensor& b, bool accumulate_into_bias = false,
                      const Tensor& initial = Tensor()) {
  int64_t m = a.size(-2), k = a.size(-1), k_b = b.size(-2), n = b.size(-1);
  KILN_CHECK(k == k_b, "matmul: shapes ", shape_str(a.sizes()), " and ", shape_str(b.sizes()),
             " do not match (inner dims ", k, " vs ", k_b, ")");
  Shape batch_a(a.sizes().begin(), a.sizes().end() - 2), batch_b(b.sizes().begin(), b.sizes().end() - 2);
  Shape shape = broadcast_shapes("matmul", batch_a, batch_b);
  shape.push_back(m);
  shape.push_back(n);
  Tensor out = accumulate_into_bias ? initial : empty(shape, TensorOptions(a.dtype()).device(a.device()));
  Shape shape_a = shape, shape_b = shape;
  shape_a[shape.size() - 1] = k;
  shape_b[shape.size() - 2] = k;
  detail::backend_of(a).matmul(detail::broadcast_view(a, shape_a), detail::broadcast_view(b, shape_b),
                               out.view_for_kernels(), accumulate_into_bias);
  return out;
}

// The gradient of a (..., R, C) operand from a batched product, summed over broadcast batch dims.
// When the operand is a plain matrix used by every batch element, the batch folds into one
// product so no per-batch partials are materialised.
Tensor weight_grad(const Tensor& left, const Tensor& right, const Shape& operand_shape) {
  if (operand_shape.size() == 2 && left.ndim() > 2) {
    Tensor left_2d = left.transpose(-2, -1).reshape({-1, left.size(-2)}).transpose(0, 1);
    Tensor right_2d = right.reshape({-1, right.size(-1)});
    return batched_matmul(left_2d, right_2d);
  }
  return sum_to_shape(batched_matmul(left, right), operand_shape);
}

}  // namespace

Tensor matmul(const Tensor& a, const Tensor& b) {
  detail::check_defined("matmul", a, "first operand");
  detail::check_defined("matmul", b, "second operand");
  detail::check_same_device("matmul", a, b);
  detail::check_same_dtype("matmul", a, b);
  detail::check_floating("matmul", a);
  KILN_CHECK(a.ndim() >= 1 && b.ndim() >= 1, "matmul: both operands need at least 1 dim, got shapes ",
             shape_str(a.sizes()), " and ", shape_str(b.sizes()));
  // 1-D operands become a row (left) or a column (right); the added dim is removed after.
  if (a.ndim() == 1 || b.ndim() == 1) {
    Tensor left = a.ndim() == 1 ? a.unsqueeze(0) : a;
    Tensor right = b.ndim() == 1 ? b.unsqueeze(1) : b;
    Tensor out = matmul(left, right);
    if (b.ndim() == 1) out = out.squeeze(-1);
    if (a.ndim() == 1) out = out.squeeze(a.ndim() == 1 && b.ndim() == 1 ? 0 : -2);
    return out;
  }
  Tensor out = batched_matmul(a, b);
  if (!should_record({a, b})) return out;
  SavedTensor saved_a = b.requires_grad() ? save(a) : SavedTensor();
  SavedTensor saved_b = a.requires_grad() ? save(b) : SavedTensor();
  record_op("matmul", {a, b}, {out}, [saved_a, saved_b, sa = a.sizes(), sb = b.sizes()](const auto& grads, const Node& node) {
    Tensor grad_a, grad_b;
    if (node.needs_input_grad(0)) {
      grad_a = sum_to_shape(batched_matmul(grads[0], saved_b.unpack("matmul").transpose(-2, -1)), sa);
    }
    if (node.needs_input_grad(1)) grad_b = weight_grad(saved_a.unpack("matmul").transpose(-2, -1), grads[0], sb);
    return std::vector<Tensor>{grad_a, grad_b};
  });
  return out;
}

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  detail::check_defined("linear", x, "input");
  detail::check_defined("linear", weight, "weight");
  detail::check_same_device("linear", x, weight);
  detail::check_same_dtype("linear", x, weight);
  detail::check_floating("linear", x);
  KILN_CHECK(weight.ndim() == 2, "linear: weight must be 2-D (out, in), got shape ", shape_str(weight.sizes()));
  KILN_CHECK(x.ndim() >= 1 && x.size(-1) == weight.size(1), "linear: input of shape ", shape_str(x.sizes()),
             " does not match weight of shape ", shape_str(weight.sizes()), " (in features ", weight.size(1), ")");
  int64_t out_features = weight.size(0);
  if (bias.defined()) {
    detail::check_same_dtype("linear", x, bias);
    detail::check_same_device("linear", x, bias);
    KILN_CHECK(bias.sizes() == Shape{out_features}, "linear: bias of shape ", shape_str(bias.sizes()),
               " does not match ", out_features, " output features");
  }
  Tensor x_2d = x.ndim() == 2 ? x : x.reshape({-1, x.size(-1)});
  Tensor out_2d;
  {
    NoGradGuard no_grad;  // the node below covers the whole op
    if (bias.defined()) {
      // Start from the bias in every row and let the GEMM add x W^T on top (beta = 1).
      out_2d = empty({x_2d.size(0), out_features}, TensorOptions(x.dtype()).device(x.device()));
      out_2d.copy_(bias);
      batched_matmul(x_2d, weight.t(), true, out_2d);
    } else {
      out_2d = batched_matmul(x_2d, weight.t());
    }
  }
  Shape out_shape = x.sizes();
  out_shape.back() = out_features;
  Tensor out = out_2d.view(out_shape);
  if (!should_record({x, weight, bias})) return out;
  SavedTensor saved_x = weight.requires_grad() ? save(x_2d) : SavedTensor();
  SavedTensor saved_weight = x.requires_grad() ? save(weight) : SavedTensor();
  record_op("linear", {x, weight, bias}, {out},
            [saved_x, saved_weight, x_shape = x.sizes()](const auto& grads, const Node& node) {
              Tensor grad_2d = grads[0].reshape({-1, grads[0].size(-1)});
              Tensor grad_x, grad_weight, grad_bias;
              if (node.needs_input_grad(0)) grad_x = batched_matmul(grad_2d, saved_weight.unpack("linear")).reshape(x_shape);
              if (node.needs_input_grad(1)) grad_weight = batched_matmul(grad_2d.t(), saved_x.unpack("linear"));
              if (node.needs_input_grad(2)) grad_bias = sum(grad_2d, {0});
              return std::vector<Tensor>{grad_x, grad_weight, grad_bias};
            });
  return out;
}

}  // namespace kiln

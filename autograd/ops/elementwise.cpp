// Elementwise ops and their gradients. Binary ops broadcast; the gradient of a broadcast
// operand is summed back to its shape (sum_to_shape).
#include "autograd/ops/elementwise.h"

#include <cmath>

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/op_helpers.h"
#include "autograd/ops/reduce.h"

namespace kiln {

using kernels::BinaryOp;
using kernels::UnaryOp;

Tensor sum_to_shape(const Tensor& grad, const Shape& shape) {
  if (grad.sizes() == shape) return grad;
  int64_t lead = grad.ndim() - static_cast<int64_t>(shape.size());
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < grad.ndim(); ++d) {
    if (d < lead || (shape[static_cast<size_t>(d - lead)] == 1 && grad.sizes()[static_cast<size_t>(d)] != 1)) {
      dims.push_back(d);
    }
  }
  Tensor reduced = dims.empty() ? grad : sum(grad, dims, true);
  return reduced.reshape(shape);
}

namespace {

// The forward output is enough for these derivatives; the others need the input.
bool derivative_uses_output(UnaryOp op) {
  return op == UnaryOp::exp || op == UnaryOp::sqrt || op == UnaryOp::rsqrt || op == UnaryOp::tanh ||
         op == UnaryOp::sigmoid || op == UnaryOp::reciprocal;
}

Tensor unary(UnaryOp op, const Tensor& x) {
  const char* name = kernels::unary_op_name(op);
  detail::check_defined(name, x, "input");
  DType out_dtype = op == UnaryOp::logical_not ? DType::boolean : x.dtype();
  Tensor out = empty(x.sizes(), TensorOptions(out_dtype).device(x.device()));
  detail::backend_of(x).unary(op, x.view_for_kernels(), out.view_for_kernels());
  // sign is recorded too: its gradient is zero, as in PyTorch.
  if (op == UnaryOp::logical_not || !is_floating(x.dtype())) return out;
  SavedTensor saved = derivative_uses_output(op) ? save(out) : save(x);
  record_op(name, {x}, {out}, [op, saved, name](const std::vector<Tensor>& grads, const Node&) {
    Tensor operand = saved.unpack(name);
    Tensor grad_in = empty_like(grads[0]);
    kernels::View operand_view = operand.view_for_kernels();
    detail::backend_of(grads[0]).unary_backward(op, grads[0].view_for_kernels(), operand_view, operand_view,
                                                grad_in.view_for_kernels());
    return std::vector<Tensor>{grad_in};
  });
  return out;
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  const char* name = kernels::binary_op_name(op);
  detail::check_defined(name, a, "first operand");
  detail::check_defined(name, b, "second operand");
  detail::check_same_device(name, a, b);
  detail::check_same_dtype(name, a, b);
  Shape shape = broadcast_shapes(name, a.sizes(), b.sizes());
  DType out_dtype = kernels::is_predicate(op) ? DType::boolean : a.dtype();
  Tensor out = empty(shape, TensorOptions(out_dtype).device(a.device()));
  detail::backend_of(a).binary(op, detail::broadcast_view(a, shape), detail::broadcast_view(b, shape),
                               out.view_for_kernels());
  return out;
}

}  // namespace

Tensor add(const Tensor& a, const Tensor& b, double alpha) {
  Tensor scaled_b = alpha == 1.0 ? b : mul(b, detail::scalar_like(alpha, b));
  Tensor out = binary(BinaryOp::add, a, scaled_b);
  record_op("add", {a, scaled_b}, {out}, [sa = a.sizes(), sb = scaled_b.sizes()](const auto& grads, const Node& node) {
    return std::vector<Tensor>{node.needs_input_grad(0) ? sum_to_shape(grads[0], sa) : Tensor(),
                               node.needs_input_grad(1) ? sum_to_shape(grads[0], sb) : Tensor()};
  });
  return out;
}

Tensor sub(const Tensor& a, const Tensor& b, double alpha) {
  Tensor scaled_b = alpha == 1.0 ? b : mul(b, detail::scalar_like(alpha, b));
  Tensor out = binary(BinaryOp::sub, a, scaled_b);
  record_op("sub", {a, scaled_b}, {out}, [sa = a.sizes(), sb = scaled_b.sizes()](const auto& grads, const Node& node) {
    return std::vector<Tensor>{node.needs_input_grad(0) ? sum_to_shape(grads[0], sa) : Tensor(),
                               node.needs_input_grad(1) ? sum_to_shape(neg(grads[0]), sb) : Tensor()};
  });
  return out;
}

Tensor mul(const Tensor& a, const Tensor& b) {
  Tensor out = binary(BinaryOp::mul, a, b);
  if (!should_record({a, b})) return out;
  SavedTensor saved_a = b.requires_grad() ? save(a) : SavedTensor();
  SavedTensor saved_b = a.requires_grad() ? save(b) : SavedTensor();
  record_op("mul", {a, b}, {out}, [saved_a, saved_b, sa = a.sizes(), sb = b.sizes()](const auto& grads, const Node& node) {
    Tensor grad_a, grad_b;
    if (node.needs_input_grad(0)) grad_a = sum_to_shape(mul(grads[0], saved_b.unpack("mul")), sa);
    if (node.needs_input_grad(1)) grad_b = sum_to_shape(mul(grads[0], saved_a.unpack("mul")), sb);
    return std::vector<Tensor>{grad_a, grad_b};
  });
  return out;
}

Tensor div(const Tensor& a, const Tensor& b) {
  Tensor out = binary(BinaryOp::div, a, b);
  if (!should_record({a, b})) return out;
  SavedTensor saved_b = save(b);
  SavedTensor saved_out = b.requires_grad() ? save(out) : SavedTensor();
  record_op("div", {a, b}, {out}, [saved_b, saved_out, sa = a.sizes(), sb = b.sizes()](const auto& grads, const Node& node) {
    Tensor denominator = saved_b.unpack("div");
    Tensor grad_a, grad_b;
    if (node.needs_input_grad(0)) grad_a = sum_to_shape(div(grads[0], denominator), sa);
    // d(a/b)/db = -a/b^2 = -out/b
    if (node.needs_input_grad(1)) grad_b = sum_to_shape(neg(div(mul(grads[0], saved_out.unpack("div")), denominator)), sb);
    return std::vector<Tensor>{grad_a, grad_b};
  });
  return out;
}

Tensor pow(const Tensor& base, const Tensor& exponent) {
  Tensor out = binary(BinaryOp::pow, base, exponent);
  if (!should_record({base, exponent})) return out;
  SavedTensor saved_base = save(base), saved_exponent = save(exponent);
  SavedTensor saved_out = exponent.requires_grad() ? save(out) : SavedTensor();
  record_op("pow", {base, exponent}, {out},
            [saved_base, saved_exponent, saved_out, sa = base.sizes(), sb = exponent.sizes()](const auto& grads,
                                                                                          const Node& node) {
              Tensor x = saved_base.unpack("pow"), e = saved_exponent.unpack("pow");
              Tensor grad_base, grad_exponent;
              if (node.needs_input_grad(0)) {
                Tensor derivative = mul(e, pow(x, sub(e, detail::scalar_like(1.0, e))));
                // 0^0 has derivative 0 in the base (PyTorch's convention).
                derivative = where(eq(e, 0.0), detail::scalar_like(0.0, derivative), derivative);
                grad_base = sum_to_shape(mul(grads[0], derivative), sa);
              }
              if (node.needs_input_grad(1)) {
                Tensor derivative = mul(saved_out.unpack("pow"), log(x));
                // Where the base is 0 and the exponent non-negative, x^e is flat in e.
                Tensor flat = logical_and(eq(x, 0.0), ge(e, 0.0));
                derivative = where(flat, detail::scalar_like(0.0, derivative), derivative);
                grad_exponent = sum_to_shape(mul(grads[0], derivative), sb);
              }
              return std::vector<Tensor>{grad_base, grad_exponent};
            });
  return out;
}

Tensor pow(const Tensor& base, double exponent) { return pow(base, detail::scalar_like(exponent, base)); }

namespace {
// maximum/minimum: the gradient goes to the selected operand, split evenly on ties.
Tensor extremum(BinaryOp op, const Tensor& a, const Tensor& b) {
  Tensor out = binary(op, a, b);
  if (!should_record({a, b})) return out;
  SavedTensor saved_a = save(a), saved_b = save(b);
  const char* name = kernels::binary_op_name(op);
  record_op(name, {a, b}, {out}, [op, name, saved_a, saved_b, sa = a.sizes(), sb = b.sizes()](const auto& grads,
                                                                                              const Node& node) {
    Tensor x = saved_a.unpack(name), y = saved_b.unpack(name);
    Tensor half = mul(grads[0], detail::scalar_like(0.5, grads[0]));
    Tensor zero = detail::scalar_like(0.0, grads[0]);
    Tensor a_wins = op == BinaryOp::maximum ? gt(x, y) : lt(x, y);
    Tensor b_wins = op == BinaryOp::maximum ? lt(x, y) : gt(x, y);
    Tensor tie = eq(x, y);
    Tensor grad_a, grad_b;
    if (node.needs_input_grad(0)) grad_a = sum_to_shape(where(a_wins, grads[0], where(tie, half, zero)), sa);
    if (node.needs_input_grad(1)) grad_b = sum_to_shape(where(b_wins, grads[0], where(tie, half, zero)), sb);
    return std::vector<Tensor>{grad_a, grad_b};
  });
  return out;
}
}  // namespace

Tensor maximum(const Tensor& a, const Tensor& b) { return extremum(BinaryOp::maximum, a, b); }
Tensor minimum(const Tensor& a, const Tensor& b) { return extremum(BinaryOp::minimum, a, b); }

Tensor neg(const Tensor& x) { return unary(UnaryOp::neg, x); }
Tensor exp(const Tensor& x) { return unary(UnaryOp::exp, x); }
Tensor log(const Tensor& x) { return unary(UnaryOp::log, x); }
Tensor sqrt(const Tensor& x) { return unary(UnaryOp::sqrt, x); }
Tensor rsqrt(const Tensor& x) { return unary(UnaryOp::rsqrt, x); }
Tensor abs(const Tensor& x) { return unary(UnaryOp::abs, x); }
Tensor tanh(const Tensor& x) { return unary(UnaryOp::tanh, x); }
Tensor sigmoid(const Tensor& x) { return unary(UnaryOp::sigmoid, x); }
Tensor relu(const Tensor& x) { return unary(UnaryOp::relu, x); }
Tensor gelu(const Tensor& x, GeluApproximation approximation) {
  return unary(approximation == GeluApproximation::tanh ? UnaryOp::gelu_tanh : UnaryOp::gelu_erf, x);
}
Tensor silu(const Tensor& x) { return unary(UnaryOp::silu, x); }
Tensor sin(const Tensor& x) { return unary(UnaryOp::sin, x); }
Tensor cos(const Tensor& x) { return unary(UnaryOp::cos, x); }
Tensor reciprocal(const Tensor& x) { return unary(UnaryOp::reciprocal, x); }
Tensor sign(const Tensor& x) { return unary(UnaryOp::sign, x); }
Tensor square(const Tensor& x) { return mul(x, x); }
Tensor logical_not(const Tensor& x) { return unary(UnaryOp::logical_not, x); }

Tensor clamp(const Tensor& x, std::optional<double> low, std::optional<double> high) {
  detail::check_defined("clamp", x, "input");
  KILN_CHECK(!low || !high || *low <= *high, "clamp: low ", *low, " is greater than high ", *high);
  Tensor out = empty_like(x);
  detail::backend_of(x).clamp(x.view_for_kernels(), out.view_for_kernels(), low, high);
  SavedTensor saved = should_record({x}) ? save(x) : SavedTensor();
  record_op("clamp", {x}, {out}, [saved, low, high](const auto& grads, const Node&) {
    Tensor input = saved.unpack("clamp");
    Tensor grad_in = empty_like(grads[0]);
    detail::backend_of(input).clamp_backward(grads[0].view_for_kernels(), input.view_for_kernels(),
                                             grad_in.view_for_kernels(), low, high);
    return std::vector<Tensor>{grad_in};
  });
  return out;
}

Tensor where(const Tensor& condition, const Tensor& a, const Tensor& b) {
  detail::check_defined("where", condition, "condition");
  detail::check_defined("where", a, "first value");
  detail::check_defined("where", b, "second value");
  KILN_CHECK(condition.dtype() == DType::boolean, "where: condition has dtype ", dtype_name(condition.dtype()),
             ", expected bool");
  detail::check_same_dtype("where", a, b);
  detail::check_same_device("where", a, b);
  detail::check_same_device("where", condition, a);
  Shape shape = broadcast_shapes("where", broadcast_shapes("where", condition.sizes(), a.sizes()), b.sizes());
  Tensor out = empty(shape, TensorOptions(a.dtype()).device(a.device()));
  detail::backend_of(a).where(detail::broadcast_view(condition, shape), detail::broadcast_view(a, shape),
                              detail::broadcast_view(b, shape), out.view_for_kernels());
  SavedTensor saved = should_record({a, b}) ? save(condition) : SavedTensor();
  record_op("where", {a, b}, {out}, [saved, sa = a.sizes(), sb = b.sizes()](const auto& grads, const Node& node) {
    Tensor mask = saved.unpack("where");
    Tensor zero = detail::scalar_like(0.0, grads[0]);
    Tensor grad_a, grad_b;
    if (node.needs_input_grad(0)) grad_a = sum_to_shape(where(mask, grads[0], zero), sa);
    if (node.needs_input_grad(1)) grad_b = sum_to_shape(where(mask, zero, grads[0]), sb);
    return std::vector<Tensor>{grad_a, grad_b};
  });
  return out;
}

Tensor where(const Tensor& condition, double a, const Tensor& b) {
  return where(condition, detail::scalar_like(a, b), b);
}
Tensor where(const Tensor& condition, const Tensor& a, double b) {
  return where(condition, a, detail::scalar_like(b, a));
}

Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  detail::check_defined("masked_fill", x, "input");
  detail::check_defined("masked_fill", mask, "mask");
  KILN_CHECK(mask.dtype() == DType::boolean, "masked_fill: mask has dtype ", dtype_name(mask.dtype()),
             ", expected bool");
  Shape shape = broadcast_shapes("masked_fill", x.sizes(), mask.sizes());
  KILN_CHECK(shape == x.sizes(), "masked_fill: mask of shape ", shape_str(mask.sizes()),
             " does not broadcast to the input's shape ", shape_str(x.sizes()));
  return where(mask, detail::scalar_like(value, x), x);
}

Tensor eq(const Tensor& a, const Tensor& b) { return binary(BinaryOp::eq, a, b); }
Tensor ne(const Tensor& a, const Tensor& b) { return binary(BinaryOp::ne, a, b); }
Tensor lt(const Tensor& a, const Tensor& b) { return binary(BinaryOp::lt, a, b); }
Tensor le(const Tensor& a, const Tensor& b) { return binary(BinaryOp::le, a, b); }
Tensor gt(const Tensor& a, const Tensor& b) { return binary(BinaryOp::gt, a, b); }
Tensor ge(const Tensor& a, const Tensor& b) { return binary(BinaryOp::ge, a, b); }
Tensor eq(const Tensor& a, double b) { return eq(a, detail::scalar_like(b, a)); }
Tensor ne(const Tensor& a, double b) { return ne(a, detail::scalar_like(b, a)); }
Tensor lt(const Tensor& a, double b) { return lt(a, detail::scalar_like(b, a)); }
Tensor le(const Tensor& a, double b) { return le(a, detail::scalar_like(b, a)); }
Tensor gt(const Tensor& a, double b) { return gt(a, detail::scalar_like(b, a)); }
Tensor ge(const Tensor& a, double b) { return ge(a, detail::scalar_like(b, a)); }
Tensor logical_and(const Tensor& a, const Tensor& b) { return binary(BinaryOp::logical_and, a, b); }
Tensor logical_or(const Tensor& a, const Tensor& b) { return binary(BinaryOp::logical_or, a, b); }

bool allclose(const Tensor& a, const Tensor& b, double rtol, double atol) {
  KILN_CHECK(a.sizes() == b.sizes(), "allclose: shapes ", shape_str(a.sizes()), " and ", shape_str(b.sizes()),
             " differ");
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || std::isnan(y[i])) return false;
    if (std::abs(x[i] - y[i]) > atol + rtol * std::abs(y[i])) return false;
  }
  return true;
}

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator+(const Tensor& a, double b) { return add(a, detail::scalar_like(b, a)); }
Tensor operator-(const Tensor& a, double b) { return sub(a, detail::scalar_like(b, a)); }
Tensor operator*(const Tensor& a, double b) { return mul(a, detail::scalar_like(b, a)); }
Tensor operator/(const Tensor& a, double b) { return div(a, detail::scalar_like(b, a)); }
Tensor operator+(double a, const Tensor& b) { return add(detail::scalar_like(a, b), b); }
Tensor operator-(double a, const Tensor& b) { return sub(detail::scalar_like(a, b), b); }
Tensor operator*(double a, const Tensor& b) { return mul(detail::scalar_like(a, b), b); }
Tensor operator/(double a, const Tensor& b) { return div(detail::scalar_like(a, b), b); }
Tensor operator-(const Tensor& x) { return neg(x); }

}  // namespace kiln

// The custom Function API: user forward/backward, saved tensors, needs_input_grad, state.
#include <catch2/catch.hpp>

#include "kiln.h"

using namespace kiln;

namespace {

// y = x * w (elementwise) with a hand-written backward that counts its calls.
int backward_calls = 0;
struct ScaledProduct : Function<ScaledProduct> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs) {
    ctx.save_for_backward({inputs[0], inputs[1]});
    ctx.set("scale", 2.0);
    return {mul(mul(inputs[0], inputs[1]), 2.0 * ones_like(inputs[0]))};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    ++backward_calls;
    std::vector<Tensor> saved = ctx.saved_tensors();
    double scale = ctx.get<double>("scale");
    Tensor gx = ctx.needs_input_grad(0) ? mul(grads[0], saved[1]) * scale : Tensor();
    Tensor gw = ctx.needs_input_grad(1) ? mul(grads[0], saved[0]) * scale : Tensor();
    return {gx, gw};
  }
};

// Forward identity, backward doubling: the shape of a tensor-parallel mapping.
struct IdentityDoubleBackward : Function<IdentityDoubleBackward> {
  static std::vector<Tensor> forward(FunctionContext&, const std::vector<Tensor>& inputs) { return {inputs[0]}; }
  static std::vector<Tensor> backward(FunctionContext&, const std::vector<Tensor>& grads) { return {grads[0] * 2.0}; }
};

}  // namespace

TEST_CASE("a custom function's backward computes the gradients", "[autograd][function]") {
  Tensor x = from_vector<double>({1.0, 2.0}, {}, TensorOptions(DType::f64).requires_grad(true));
  Tensor w = from_vector<double>({3.0, 5.0}, {}, TensorOptions(DType::f64).requires_grad(true));
  backward_calls = 0;
  Tensor y = ScaledProduct::apply({x, w}, "scaled_product")[0];
  CHECK(y.to_vector<double>() == std::vector<double>{6.0, 20.0});
  CHECK(y.grad_fn()->name() == "scaled_product");
  sum(y).backward();
  CHECK(backward_calls == 1);
  CHECK(x.grad().to_vector<double>() == std::vector<double>{6.0, 10.0});
  CHECK(w.grad().to_vector<double>() == std::vector<double>{2.0, 4.0});
}

TEST_CASE("needs_input_grad reflects which inputs require grad", "[autograd][function]") {
  Tensor x = from_vector<double>({1.0}, {}, TensorOptions(DType::f64).requires_grad(true));
  Tensor w = from_vector<double>({3.0});
  sum(ScaledProduct::apply({x, w})[0]).backward();
  CHECK(x.grad().item() == 6.0);
  CHECK_FALSE(w.grad().defined());
}

TEST_CASE("an input returned unchanged keeps its own history", "[autograd][function]") {
  Tensor x = from_vector<double>({1.0, 2.0}, {}, TensorOptions(DType::f64).requires_grad(true));
  Tensor y = IdentityDoubleBackward::apply({x})[0];
  CHECK(x.is_leaf());
  CHECK_FALSE(y.is_leaf());
  CHECK(y.storage() == x.storage());
  sum(y).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2.0, 2.0});
}

TEST_CASE("a custom function's saved tensors are version checked", "[autograd][function]") {
  Tensor x = from_vector<double>({1.0}, {}, TensorOptions(DType::f64).requires_grad(true));
  Tensor w = from_vector<double>({3.0});
  Tensor y = ScaledProduct::apply({x, w}, "scaled_product")[0];
  w.mul_(2.0);
  CHECK_THROWS_WITH(sum(y).backward(), Catch::Contains("scaled_product") && Catch::Contains("in-place"));
}

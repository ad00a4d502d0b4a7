// The fused residual norms (add_layer_norm, add_rms_norm, the modules' forward_residual) against
// the unfused add followed by the norm: the same bits forward and backward in every floating
// dtype, since the fused kernels round the sum and the gradient where add and autograd do.
// (Finite differences are in test_gradcheck_ops.cpp, PyTorch parity in test_parity.cpp.)
#include <catch2/catch.hpp>

#include <cstring>

#include "kiln.h"

using namespace kiln;
using Catch::Matchers::Contains;

namespace {

Tensor random_input(const Shape& shape, DType dtype, uint64_t seed, double low = -2.0, double high = 2.0) {
  Generator generator(seed);
  Tensor values = empty(shape, DType::f64);
  uniform_(values, low, high, &generator);
  Tensor leaf = values.to(dtype);
  leaf.set_requires_grad(true);
  return leaf;
}

// The same leaf, again (the fused and the unfused graph each need their own gradients).
Tensor twin(const Tensor& leaf) {
  if (!leaf.defined()) return Tensor();
  Tensor copy = leaf.detach().clone();
  copy.set_requires_grad(true);
  return copy;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  if (a.sizes() != b.sizes() || a.dtype() != b.dtype()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), static_cast<size_t>(ca.numel()) * dtype_size(ca.dtype())) == 0;
}

struct Operands {
  Tensor x, update, weight, bias;
};

// Runs the fused op and the unfused ops on twin operands, backpropagates a loss that uses both
// the sum and the normed output (through fixed weights), and requires equal bits everywhere.
void check_matches_unfused(bool rms, const Operands& in, DType dtype) {
  Operands fused{twin(in.x), twin(in.update), twin(in.weight), twin(in.bias)};
  Operands plain{twin(in.x), twin(in.update), twin(in.weight), twin(in.bias)};
  ResidualNorm result = rms ? add_rms_norm(fused.x, fused.update, fused.weight, 1e-5)
                            : add_layer_norm(fused.x, fused.update, fused.weight, fused.bias, 1e-5);
  Tensor sum = add(plain.x, plain.update);
  Tensor normed = rms ? rms_norm(sum, plain.weight, 1e-5) : layer_norm(sum, plain.weight, plain.bias, 1e-5);
  CHECK(same_bits(result.sum, sum));
  CHECK(same_bits(result.normed, normed));

  Tensor w_normed = random_input(in.x.sizes(), dtype, 90, 0.5, 1.5).detach();
  Tensor w_sum = random_input(in.x.sizes(), dtype, 91, 0.5, 1.5).detach();
  add(mul(result.normed, w_normed).sum(), mul(result.sum, w_sum).sum()).backward();
  add(mul(normed, w_normed).sum(), mul(sum, w_sum).sum()).backward();
  CHECK(same_bits(fused.x.grad(), plain.x.grad()));
  CHECK(same_bits(fused.update.grad(), plain.update.grad()));
  if (in.weight.defined()) CHECK(same_bits(fused.weight.grad(), plain.weight.grad()));
  if (in.bias.defined()) CHECK(same_bits(fused.bias.grad(), plain.bias.grad()));
}

}  // namespace

TEST_CASE("add_layer_norm and add_rms_norm give add and the norm bit for bit, forward and backward", "[norm]") {
  for (DType dtype : {DType::f32, DType::bf16, DType::f16, DType::f64}) {
    for (bool affine : {true, false}) {
      INFO(dtype_name(dtype) << (affine ? " affine" : " plain"));
      // 67 rows of 96: rows are split across threads and the parameter gradients across blocks.
      Operands in{random_input({67, 96}, dtype, 1), random_input({67, 96}, dtype, 2),
                  affine ? random_input({96}, dtype, 3, 0.5, 1.5) : Tensor(), affine ? random_input({96}, dtype, 4) : Tensor()};
      check_matches_unfused(false, in, dtype);
      check_matches_unfused(true, in, dtype);
    }
  }
}

TEST_CASE("a residual norm whose sum or norm is unused gets the gradient of the other alone", "[norm]") {
  Tensor x = random_input({5, 16}, DType::f64, 5), update = random_input({5, 16}, DType::f64, 6);
  Tensor weight = random_input({16}, DType::f64, 7, 0.5, 1.5);
  add_layer_norm(x, update, weight).sum.sum().backward();
  CHECK(same_bits(x.grad(), ones({5, 16}, DType::f64)));
  CHECK(same_bits(update.grad(), ones({5, 16}, DType::f64)));
  CHECK(same_bits(weight.grad(), zeros({16}, DType::f64)));

  Tensor x2 = twin(x), update2 = twin(update), weight2 = twin(weight);
  Tensor x3 = twin(x), update3 = twin(update), weight3 = twin(weight);
  square(add_rms_norm(x2, update2, weight2).normed).sum().backward();
  square(rms_norm(add(x3, update3), weight3)).sum().backward();
  CHECK(same_bits(x2.grad(), x3.grad()));
  CHECK(same_bits(update2.grad(), update3.grad()));
  CHECK(same_bits(weight2.grad(), weight3.grad()));
}

TEST_CASE("residual norms explain a bad update", "[norm][errors]") {
  Tensor x = zeros({2, 4});
  CHECK_THROWS_WITH(add_layer_norm(x, zeros({4})), Contains("add_layer_norm") && Contains("(4)") && Contains("(2, 4)"));
  CHECK_THROWS_WITH(add_rms_norm(x, zeros({2, 4}, DType::f64)), Contains("add_rms_norm") && Contains("f64"));
  CHECK_THROWS_WITH(add_layer_norm(x, Tensor()), Contains("add_layer_norm") && Contains("update"));
}

TEST_CASE("the norm modules' forward_residual runs their hooks and matches forward after add", "[norm][nn]") {
  nn::LayerNorm layer(8);
  nn::RMSNorm rms(8);
  Tensor x = random_input({3, 8}, DType::f32, 8).detach(), update = random_input({3, 8}, DType::f32, 9).detach();
  std::vector<Tensor> hook_inputs;
  layer.register_forward_pre_hook([&](nn::Module&, const Tensor& input) { hook_inputs.push_back(input); });
  ResidualNorm fused = layer.forward_residual(x, update);
  REQUIRE(hook_inputs.size() == 1);
  CHECK(same_bits(hook_inputs[0], x));
  CHECK(same_bits(fused.sum, add(x, update)));
  CHECK(same_bits(fused.normed, layer.forward(add(x, update))));
  CHECK(same_bits(rms.forward_residual(x, update).normed, rms.forward(add(x, update))));
}

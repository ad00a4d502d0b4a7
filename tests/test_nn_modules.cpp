// The module system: registration by name, state dicts and their errors, modes, conversion,
// hooks and initialisers.
#include <catch2/catch.hpp>
#include <cmath>

#include "kiln.h"

using namespace kiln;
using Catch::Contains;

namespace {

class TwoLayer : public nn::Module {
 public:
  TwoLayer() : nn::Module("TwoLayer") {
    first = register_module("first", std::make_shared<nn::Linear>(3, 4));
    second = register_module("second", std::make_shared<nn::Linear>(4, 2, false));
    scale = register_buffer("scale", full({1}, 2.0));
    scratch = register_buffer("scratch", zeros({5}), false);
  }
  Tensor forward(const Tensor& x) {
    return with_hooks(x, [&] { return mul(second->forward(relu(first->forward(x))), scale); });
  }
  std::shared_ptr<nn::Linear> first, second;
  Tensor scale, scratch;
};

}  // namespace

TEST_CASE("parameters and buffers are named by their dotted path", "[nn][module]") {
  TwoLayer model;
  std::vector<std::string> names;
  for (const NamedParameter& p : model.named_parameters()) names.push_back(p.name);
  CHECK(names == std::vector<std::string>{"first.weight", "first.bias", "second.weight"});
  CHECK(model.count_parameters() == 3 * 4 + 4 + 4 * 2);
  CHECK(model.named_parameters(false).empty());
  nn::StateDict state = model.state_dict();
  CHECK(state.count("scale") == 1);
  CHECK(state.count("scratch") == 0);  // not persistent
  CHECK(state.size() == 4);
  for (const NamedParameter& p : model.named_parameters()) {
    CHECK(p.tensor.requires_grad());
    CHECK(p.info.weight_decay == (p.name != "first.bias"));
  }
}

TEST_CASE("a state dict round-trips into a fresh module", "[nn][module]") {
  TwoLayer source, target;
  Tensor x = randn({5, 3});
  CHECK_FALSE(allclose(source.forward(x), target.forward(x)));
  target.load_state_dict(source.state_dict());
  CHECK(allclose(source.forward(x), target.forward(x), 0.0, 0.0));
}

TEST_CASE("load_state_dict names missing, unexpected and mismatched keys", "[nn][module][errors]") {
  TwoLayer model;
  nn::StateDict state = model.state_dict();
  state.erase("first.bias");
  state["extra.weight"] = zeros({1});
  state["second.weight"] = zeros({3, 3});
  try {
    model.load_state_dict(state);
    FAIL("load_state_dict accepted a bad state dict");
  } catch (const Error& error) {
    std::string message = error.what();
    CHECK_THAT(message, Contains("missing keys: first.bias"));
    CHECK_THAT(message, Contains("unexpected keys: extra.weight"));
    CHECK_THAT(message, Contains("second.weight (checkpoint (3, 3), model (2, 4))"));
  }
  state.erase("extra.weight");
  state["second.weight"] = zeros({2, 4});
  state["first.bias"] = zeros({4});
  model.load_state_dict(state);
  CHECK(sum(abs(model.second->weight)).item() == 0.0);
}

TEST_CASE("train/eval, apply and zero_grad reach every submodule", "[nn][module]") {
  TwoLayer model;
  model.eval();
  CHECK_FALSE(model.first->is_training());
  model.train();
  CHECK(model.second->is_training());
  int visited = 0;
  model.apply([&](nn::Module&) { ++visited; });
  CHECK(visited == 3);
  sum(model.forward(randn({2, 3}))).backward();
  CHECK(model.first->weight.grad().defined());
  model.zero_grad();
  CHECK_FALSE(model.first->weight.grad().defined());
}

TEST_CASE("to(dtype) converts in place and keeps every handle valid", "[nn][module]") {
  TwoLayer model;
  Tensor handle = model.first->weight;
  std::vector<double> before = handle.to_vector<double>();
  model.to(DType::f64);
  CHECK(handle.dtype() == DType::f64);
  CHECK(model.scale.dtype() == DType::f64);
  CHECK(handle.requires_grad());
  CHECK(handle.to_vector<double>() == before);
  Tensor y = model.forward(randn({2, 3}, DType::f64));
  CHECK(y.dtype() == DType::f64);
}

TEST_CASE("forward hooks run around forward, in order, and may replace the output", "[nn][module]") {
  TwoLayer model;
  std::vector<std::string> order;
  model.first->register_forward_pre_hook([&](nn::Module& m, const Tensor&) { order.push_back("pre " + m.type_name()); });
  model.register_forward_pre_hook([&](nn::Module&, const Tensor&) { order.push_back("pre model"); });
  model.register_forward_post_hook([&](nn::Module&, const Tensor&, const Tensor& out) {
    order.push_back("post model");
    return mul(out, zeros_like(out));
  });
  Tensor y = model.forward(randn({2, 3}));
  CHECK(order == std::vector<std::string>{"pre model", "pre Linear", "post model"});
  CHECK(sum(abs(y)).item() == 0.0);
}

TEST_CASE("registration rejects duplicate and dotted names", "[nn][module][errors]") {
  nn::Module module("Custom");
  module.register_parameter("w", zeros({2}));
  CHECK_THROWS_WITH(module.register_parameter("w", zeros({2})), Contains("Custom") && Contains("already registered"));
  CHECK_THROWS_WITH(module.register_buffer("a.b", zeros({2})), Contains("invalid name 'a.b'"));
}

TEST_CASE("containers index and chain their modules", "[nn][containers]") {
  nn::Sequential sequential;
  sequential.add(std::make_shared<nn::Linear>(4, 8)).add(std::make_shared<nn::GELU>()).add(std::make_shared<nn::Linear>(8, 2));
  CHECK(sequential.forward(randn({3, 4})).sizes() == Shape{3, 2});
  CHECK(sequential.named_parameters()[2].name == "2.weight");
  nn::ModuleList list;
  list.push_back(std::make_shared<nn::Linear>(2, 2));
  CHECK(list.at<nn::Linear>(0)->out_features == 2);
  CHECK_THROWS_WITH(list.at<nn::Linear>(1), Contains("index 1"));
  CHECK_THROWS_WITH(list.at<nn::Embedding>(0), Contains("Linear"));
}

TEST_CASE("initialisers follow their definitions", "[nn][init]") {
  Generator generator(21);
  Tensor w = empty({400, 300});
  nn::init::xavier_uniform_(w, 1.0, &generator);
  double bound = std::sqrt(6.0 / 700.0);
  CHECK(amax(abs(w)).item() <= bound);
  CHECK(amax(abs(w)).item() > 0.99 * bound);
  nn::init::kaiming_normal_(w, 0.0, nn::init::FanMode::fan_in, &generator);
  CHECK(std::sqrt(var(w).item()) == Approx(std::sqrt(2.0 / 300.0)).epsilon(0.02));
  nn::init::kaiming_uniform_(w, std::sqrt(5.0), nn::init::FanMode::fan_in, &generator);
  CHECK(amax(abs(w)).item() <= 1.0 / std::sqrt(300.0));  // torch.nn.Linear's default bound
  nn::init::xavier_normal_(w, 2.0, &generator);
  CHECK(std::sqrt(var(w).item()) == Approx(2.0 * std::sqrt(2.0 / 700.0)).epsilon(0.02));
  nn::init::gpt2_residual_normal_(w, 12, 0.02, &generator);
  CHECK(std::sqrt(var(w).item()) == Approx(0.02 / std::sqrt(24.0)).epsilon(0.02));
  nn::init::normal_(w, 1.0, 0.5, &generator);
  CHECK(mean(w).item() == Approx(1.0).margin(0.01));
}

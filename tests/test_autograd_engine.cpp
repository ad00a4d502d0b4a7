// Engine behaviour: accumulation, retain_graph, hooks and their order, no_grad, detach, and
// the in-place-on-saved-tensor error.
#include <catch2/catch.hpp>

#include "kiln.h"

using namespace kiln;

namespace {
Tensor leaf(std::vector<double> values, Shape shape = {}) {
  return from_vector<double>(values, shape, TensorOptions(DType::f64).requires_grad(true));
}
}  // namespace

TEST_CASE("gradients accumulate over two backward calls", "[autograd]") {
  Tensor x = leaf({1.0, 2.0, 3.0});
  sum(mul(x, x)).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2.0, 4.0, 6.0});
  sum(mul(x, x)).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{4.0, 8.0, 12.0});
  x.set_grad(Tensor());
  sum(x).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{1.0, 1.0, 1.0});
}

TEST_CASE("a graph can be walked twice only with retain_graph", "[autograd]") {
  Tensor x = leaf({0.5, -1.0});
  Tensor loss = sum(exp(x));
  loss.backward(Tensor(), true);
  loss.backward();
  std::vector<double> grad = x.grad().to_vector<double>();
  CHECK(grad[0] == Approx(2 * std::exp(0.5)));
  CHECK_THROWS_WITH(loss.backward(), Catch::Contains("backward through the graph a second time") &&
                                         Catch::Contains("retain_graph"));
}

TEST_CASE("gradients meeting at a node are summed (diamond graph)", "[autograd]") {
  Tensor x = leaf({2.0});
  Tensor a = mul(x, x);       // x^2
  Tensor b = mul(x, 3.0 * ones_like(x));  // 3x
  Tensor c = mul(a, b);       // 3x^3 -> d/dx = 9x^2
  c.backward();
  CHECK(x.grad().item() == Approx(36.0));
}

TEST_CASE("non-scalar backward needs an explicit gradient", "[autograd]") {
  Tensor x = leaf({1.0, 2.0});
  Tensor y = mul(x, x);
  CHECK_THROWS_WITH(y.backward(), Catch::Contains("only for one-element tensors") && Catch::Contains("(2)"));
  y.backward(from_vector<double>({1.0, 0.5}));
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2.0, 2.0});
}

TEST_CASE("tensor hooks see and may replace the gradient, in registration order", "[autograd][hooks]") {
  Tensor x = leaf({1.0, 2.0});
  Tensor y = mul(x, 2.0 * ones_like(x));
  std::vector<std::string> order;
  y.register_hook([&](const Tensor& g) {
    order.push_back("y1");
    CHECK(g.to_vector<double>() == std::vector<double>{1.0, 1.0});
    return mul(g, 10.0 * ones_like(g));
  });
  y.register_hook([&](const Tensor& g) {
    order.push_back("y2");
    CHECK(g.to_vector<double>() == std::vector<double>{10.0, 10.0});
    return Tensor();
  });
  x.register_hook([&](const Tensor& g) {
    order.push_back("x");
    CHECK(g.to_vector<double>() == std::vector<double>{20.0, 20.0});
    return Tensor();
  });
  x.register_post_accumulate_grad_hook([&](Tensor& param) {
    order.push_back("x accumulated");
    CHECK(param.grad().to_vector<double>() == std::vector<double>{20.0, 20.0});
  });
  sum(y).backward();
  CHECK(order == std::vector<std::string>{"y1", "y2", "x", "x accumulated"});
}

TEST_CASE("post-accumulate hooks fire in reverse order of use", "[autograd][hooks]") {
  // DDP relies on this: parameters used last in the forward get their gradients first.
  std::vector<Tensor> weights = {leaf({0.5}), leaf({1.5}), leaf({-0.5})};
  std::vector<int> order;
  for (int i = 0; i < 3; ++i) weights[i].register_post_accumulate_grad_hook([&order, i](Tensor&) { order.push_back(i); });
  Tensor h = leaf({1.0});
  for (const Tensor& w : weights) h = tanh(mul(h, w));
  sum(h).backward();
  CHECK(order == std::vector<int>{2, 1, 0});
}

TEST_CASE("retain_grad keeps a non-leaf gradient", "[autograd]") {
  Tensor x = leaf({1.0, 2.0});
  Tensor y = mul(x, x);
  y.retain_grad();
  sum(mul(y, 3.0 * ones_like(y))).backward();
  CHECK(y.grad().to_vector<double>() == std::vector<double>{3.0, 3.0});
  CHECK(x.grad().to_vector<double>() == std::vector<double>{6.0, 12.0});
}

TEST_CASE("requires_grad propagates through ops and stops at no_grad and detach", "[autograd]") {
  Tensor x = leaf({1.0, 2.0});
  Tensor constant = from_vector<double>({3.0, 4.0});
  CHECK(add(x, constant).requires_grad());
  CHECK_FALSE(add(constant, constant).requires_grad());
  CHECK_FALSE(gt(x, constant).requires_grad());  // bool results never require grad
  CHECK_FALSE(x.detach().requires_grad());
  {
    NoGradGuard no_grad;
    Tensor y = mul(x, x);
    CHECK_FALSE(y.requires_grad());
    CHECK(y.grad_fn() == nullptr);
  }
  CHECK(mul(x, x).requires_grad());
  Tensor y = add(mul(x, x), mul(x.detach(), x.detach()));
  sum(y).backward();
  CHECK(x.grad().to_vector<double>() == std::vector<double>{2.0, 4.0});  // the detached path adds nothing
}

TEST_CASE("modifying a saved tensor in place is a clear error", "[autograd][version]") {
  Tensor w = leaf({1.0, 2.0});
  Tensor x = from_vector<double>({3.0, 4.0});
  Tensor y = mul(w, x);  // saves x for w's gradient
  x.add_(1.0);
  CHECK_THROWS_WITH(sum(y).backward(),
                    Catch::Contains("mul") && Catch::Contains("modified by an in-place operation") &&
                        Catch::Contains("version 0") && Catch::Contains("version 1"));
  // A write through a view of the saved tensor is caught too.
  Tensor z = from_vector<double>({1.0, 1.0});
  Tensor out = exp(mul(w, z));
  Tensor saved_output_view = out.detach().narrow(0, 0, 1);
  saved_output_view.fill_(0.0);
  CHECK_THROWS_WITH(sum(out).backward(), Catch::Contains("exp") && Catch::Contains("in-place"));
}

TEST_CASE("in-place ops refuse what autograd cannot track", "[autograd][version]") {
  Tensor w = leaf({1.0});
  CHECK_THROWS_WITH(w.add_(1.0), Catch::Contains("add_") && Catch::Contains("leaf tensor that requires grad"));
  Tensor y = mul(w, w);
  CHECK_THROWS_WITH(y.mul_(2.0), Catch::Contains("mul_") && Catch::Contains("part of the autograd graph"));
  {
    NoGradGuard no_grad;
    w.add_(1.0);
  }
  CHECK(w.item() == 2.0);
  CHECK(w.version() == 1);
}

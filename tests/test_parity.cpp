// Parity with PyTorch for every op: the same random f32 inputs through kiln and through torch
// (tests/reference/torch_reference.py) give the same outputs and input gradients.
//
// Tolerances: elementwise ops |kiln - torch| <= 1e-6 + 1e-5 |torch| (a few f32 ulps). Ops that
// sum many terms (reductions, matmul, norms, softmax/CE) may round in a different order; they
// use an absolute floor of 1e-5 (inputs are O(1) and the sums have at most 64 terms).
#include <catch2/catch.hpp>

#include "kiln.h"
#include "support/torch_reference.h"

using namespace kiln;
using kiln::testing::ParitySuite;
using kiln::testing::Tolerance;
using json = nlohmann::json;

namespace {

uint64_t next_seed = 1;

Tensor input(const Shape& shape, double low = -1.0, double high = 1.0, bool requires_grad = true) {
  Generator generator(next_seed++);
  Tensor tensor = empty(shape, DType::f32);
  uniform_(tensor, low, high, &generator);
  if (requires_grad) tensor.set_requires_grad(true);
  return tensor;
}

Tensor index_tensor(std::vector<int64_t> values, Shape shape = {}) { return from_vector<int64_t>(values, shape); }

const Tolerance kSummed{1e-5, 1e-5};
const json kTranspose = {{"transpose", {0, 1}}};
const json kNone = nullptr;

std::vector<Tensor> one(const Tensor& t) { return {t}; }

void add_elementwise(ParitySuite& suite) {
  using Unary = Tensor (*)(const Tensor&);
  std::vector<std::tuple<std::string, Unary, double, double>> unary = {
      {"neg", neg, -2, 2},   {"exp", exp, -3, 3},         {"log", log, 0.1, 3},     {"sqrt", sqrt, 0.1, 3},
      {"rsqrt", rsqrt, 0.2, 3}, {"abs", abs, -2, 2},      {"tanh", tanh, -3, 3},    {"sigmoid", sigmoid, -6, 6},
      {"relu", relu, -2, 2}, {"silu", silu, -5, 5},        {"sin", sin, -4, 4},      {"cos", cos, -4, 4},
      {"reciprocal", reciprocal, 0.3, 3}, {"sign", sign, -2, 2}, {"square", square, -2, 2}};
  for (auto& [name, op, low, high] : unary) {
    suite.add(name, name, {input({7, 9}, low, high)}, json::object(), [op](auto& in) { return one(op(in[0])); });
    suite.add(name + "/transposed", name, {input({9, 7}, low, high)}, json::object(),
              [op](auto& in) { return one(op(in[0])); }, {}, {kTranspose});
  }
  suite.add("gelu", "gelu", {input({6, 11}, -4, 4)}, json::object(), [](auto& in) { return one(gelu(in[0])); });
  suite.add("gelu/tanh", "gelu", {input({6, 11}, -4, 4)}, {{"approximate", "tanh"}},
            [](auto& in) { return one(gelu(in[0], GeluApproximation::tanh)); });
  suite.add("clamp", "clamp", {input({50}, -2, 2)}, {{"low", -0.5}, {"high", 0.75}},
            [](auto& in) { return one(clamp(in[0], -0.5, 0.75)); });
  suite.add("clamp/low", "clamp", {input({50}, -2, 2)}, {{"low", 0.1}},
            [](auto& in) { return one(clamp(in[0], 0.1, std::nullopt)); });

  using Binary = Tensor (*)(const Tensor&, const Tensor&);
  std::vector<std::pair<std::string, Binary>> binary = {
      {"mul", mul}, {"div", div}, {"maximum", maximum}, {"minimum", minimum}};
  for (auto& [name, op] : binary) {
    suite.add(name, name, {input({4, 1, 6}, -2, 2), input({5, 6}, 0.5, 2)}, json::object(),
              [op](auto& in) { return one(op(in[0], in[1])); });
    suite.add(name + "/transposed", name, {input({6, 5}, -2, 2), input({5, 6}, 0.5, 2)}, json::object(),
              [op](auto& in) { return one(op(in[0], in[1])); }, {}, {kTranspose, kNone});
  }
  suite.add("add/alpha", "add", {input({3, 4}), input({4})}, {{"alpha", 0.5}},
            [](auto& in) { return one(add(in[0], in[1], 0.5)); });
  suite.add("sub/alpha", "sub", {input({3, 1}), input({3, 4})}, {{"alpha", 2.0}},
            [](auto& in) { return one(sub(in[0], in[1], 2.0)); });
  suite.add("pow", "pow", {input({3, 4}, 0.2, 2), input({4}, -2, 2)}, json::object(),
            [](auto& in) { return one(pow(in[0], in[1])); });
  suite.add("pow/scalar", "pow_scalar", {input({3, 4}, 0.2, 2)}, {{"exponent", 2.5}},
            [](auto& in) { return one(pow(in[0], 2.5)); });

  Tensor condition = gt(input({4, 5}, -1, 1, false), 0.0);
  suite.add("where", "where", {condition, input({4, 5}), input({5})}, json::object(),
            [](auto& in) { return one(where(in[0], in[1], in[2])); });
  Tensor mask = lt(input({1, 5}, -1, 1, false), 0.0);
  suite.add("masked_fill", "masked_fill", {input({4, 5}), mask}, {{"value", -3.5}},
            [](auto& in) { return one(masked_fill(in[0], in[1], -3.5)); });

  Tensor a = input({4, 6}, -2, 2, false), b = input({6}, -2, 2, false);
  // Ties on purpose so that equality is exercised.
  Tensor b_with_ties = where(gt(b, 0.5), a.select(0, 0), b);
  std::vector<std::pair<std::string, Binary>> comparisons = {
      {"eq", eq}, {"ne", ne}, {"lt", lt}, {"le", le}, {"gt", gt}, {"ge", ge}};
  for (auto& [name, op] : comparisons) {
    suite.add(name, name, {a, b_with_ties}, json::object(), [op](auto& in) { return one(op(in[0], in[1])); });
  }
  Tensor p = gt(input({3, 4}, -1, 1, false), 0.0), q = gt(input({4}, -1, 1, false), 0.0);
  suite.add("logical_and", "logical_and", {p, q}, json::object(), [](auto& in) { return one(logical_and(in[0], in[1])); });
  suite.add("logical_or", "logical_or", {p, q}, json::object(), [](auto& in) { return one(logical_or(in[0], in[1])); });
  suite.add("logical_not", "logical_not", {p}, json::object(), [](auto& in) { return one(logical_not(in[0])); });
}

void add_reductions(ParitySuite& suite) {
  suite.add("sum/all", "sum", {input({5, 7, 3})}, json::object(), [](auto& in) { return one(sum(in[0])); }, kSummed);
  suite.add("sum/dims", "sum", {input({5, 7, 3})}, {{"dims", {0, 2}}, {"keepdim", true}},
            [](auto& in) { return one(sum(in[0], {0, 2}, true)); }, kSummed);
  suite.add("sum/transposed", "sum", {input({7, 5})}, {{"dims", {1}}},
            [](auto& in) { return one(sum(in[0], {1})); }, kSummed, {kTranspose});
  suite.add("sum/bias_layout", "sum", {input({64, 33})}, {{"dims", {0}}},
            [](auto& in) { return one(sum(in[0], {0})); }, kSummed);
  suite.add("mean/dims", "mean", {input({5, 7, 3})}, {{"dims", {1}}},
            [](auto& in) { return one(mean(in[0], {1})); }, kSummed);
  suite.add("mean/all", "mean", {input({5, 7, 3})}, json::object(), [](auto& in) { return one(mean(in[0])); }, kSummed);
  suite.add("var/dims", "var", {input({6, 8})}, {{"dims", {1}}}, [](auto& in) { return one(var(in[0], {1})); }, kSummed);
  suite.add("var/population", "var", {input({6, 8})}, {{"dims", {0}}, {"correction", 0}, {"keepdim", true}},
            [](auto& in) { return one(var(in[0], {0}, 0.0, true)); }, kSummed);
  suite.add("logsumexp", "logsumexp", {input({4, 9}, -5, 5)}, {{"dims", {1}}},
            [](auto& in) { return one(logsumexp(in[0], {1})); }, kSummed);
  suite.add("logsumexp/keepdim", "logsumexp", {input({4, 9}, -5, 5)}, {{"dims", {0}}, {"keepdim", true}},
            [](auto& in) { return one(logsumexp(in[0], {0}, true)); }, kSummed, {kTranspose});
  suite.add("amax", "amax", {input({5, 6})}, {{"dims", {1}}}, [](auto& in) { return one(amax(in[0], {1})); });
  suite.add("amin/all", "amin", {input({5, 6})}, json::object(), [](auto& in) { return one(amin(in[0])); });
  // Ties: the gradient of amax is shared evenly among the maxima.
  Tensor tied = from_vector<float>({1, 3, 3, 2, 0, 0}, {2, 3}, TensorOptions(DType::f32).requires_grad(true));
  suite.add("amax/ties", "amax", {tied}, {{"dims", {1}}}, [](auto& in) { return one(amax(in[0], {1})); });
  suite.add("max/dim", "max_dim", {input({5, 6})}, {{"dim", 1}}, [](auto& in) {
    auto [values, indices] = max(in[0], 1);
    return std::vector<Tensor>{values, indices};
  });
  suite.add("min/dim", "min_dim", {input({5, 6})}, {{"dim", 0}, {"keepdim", true}}, [](auto& in) {
    auto [values, indices] = min(in[0], 0, true);
    return std::vector<Tensor>{values, indices};
  }, {}, {kTranspose});
  suite.add("argmax", "argmax", {input({5, 6}, -1, 1, false)}, {{"dim", 1}},
            [](auto& in) { return one(argmax(in[0], 1)); });
  suite.add("argmin/flat", "argmin", {input({5, 6}, -1, 1, false)}, json::object(),
            [](auto& in) { return one(argmin(in[0])); });
}

void add_matmul(ParitySuite& suite) {
  suite.add("matmul/2d", "matmul", {input({16, 32}), input({32, 24})}, json::object(),
            [](auto& in) { return one(matmul(in[0], in[1])); }, kSummed);
  suite.add("matmul/transposed", "matmul", {input({32, 16}), input({24, 32})}, json::object(),
            [](auto& in) { return one(matmul(in[0], in[1])); }, kSummed, {kTranspose, kTranspose});
  suite.add("matmul/batched_broadcast", "matmul", {input({3, 1, 5, 8}), input({4, 8, 6})}, json::object(),
            [](auto& in) { return one(matmul(in[0], in[1])); }, kSummed);
  suite.add("matmul/shared_weight", "matmul", {input({4, 5, 8}), input({8, 6})}, json::object(),
            [](auto& in) { return one(matmul(in[0], in[1])); }, kSummed);
  suite.add("matmul/vector", "matmul", {input({8}), input({3, 8, 5})}, json::object(),
            [](auto& in) { return one(matmul(in[0], in[1])); }, kSummed);
  suite.add("matmul/dot", "matmul", {input({8}), input({8})}, json::object(),
            [](auto& in) { return one(matmul(in[0], in[1])); }, kSummed);
  suite.add("linear", "linear", {input({2, 5, 16}), input({12, 16}), input({12})}, json::object(),
            [](auto& in) { return one(linear(in[0], in[1], in[2])); }, kSummed);
  suite.add("linear/no_bias", "linear", {input({7, 16}), input({12, 16})}, json::object(),
            [](auto& in) { return one(linear(in[0], in[1])); }, kSummed);
}

void add_shape_and_views(ParitySuite& suite) {
  suite.add("cat", "cat", {input({2, 3}), input({2, 4}), input({2, 1})}, {{"dim", 1}},
            [](auto& in) { return one(cat({in[0], in[1], in[2]}, 1)); });
  suite.add("stack", "stack", {input({2, 3}), input({2, 3})}, {{"dim", 2}},
            [](auto& in) { return one(stack({in[0], in[1]}, 2)); });
  suite.add("split", "split", {input({7, 3})}, {{"split_size", 3}}, [](auto& in) { return split(in[0], 3); });
  suite.add("chunk", "chunk", {input({3, 7})}, {{"chunks", 3}, {"dim", 1}}, [](auto& in) { return chunk(in[0], 3, 1); });
  suite.add("reshape", "reshape", {input({4, 6})}, {{"shape", {3, 8}}},
            [](auto& in) { return one(in[0].reshape({3, 8})); }, {}, {kTranspose});
  suite.add("permute", "permute", {input({2, 3, 4})}, {{"dims", {2, 0, 1}}},
            [](auto& in) { return one(in[0].permute({2, 0, 1})); });
  suite.add("expand", "expand", {input({3, 1})}, {{"shape", {2, 3, 4}}},
            [](auto& in) { return one(in[0].expand({2, 3, 4})); });
  suite.add("select", "select", {input({3, 4})}, {{"dim", 1}, {"index", -2}},
            [](auto& in) { return one(in[0].select(1, -2)); });
  suite.add("narrow", "narrow", {input({5, 4})}, {{"dim", 0}, {"start", 1}, {"length", 3}},
            [](auto& in) { return one(in[0].narrow(0, 1, 3)); });
  suite.add("unsqueeze", "unsqueeze", {input({3, 4})}, {{"dim", -1}}, [](auto& in) { return one(in[0].unsqueeze(-1)); });
  suite.add("squeeze", "squeeze", {input({1, 3, 1, 4})}, json::object(), [](auto& in) { return one(in[0].squeeze()); });
}

void add_indexing(ParitySuite& suite) {
  suite.add("index_select", "index_select", {input({6, 4}), index_tensor({5, 0, 5, 2})}, {{"dim", 0}},
            [](auto& in) { return one(index_select(in[0], 0, in[1])); });
  suite.add("index_select/dim1", "index_select", {input({4, 6}), index_tensor({1, 1, 3})}, {{"dim", 1}},
            [](auto& in) { return one(index_select(in[0], 1, in[1])); }, {}, {kTranspose, kNone});
  suite.add("index_add", "index_add", {input({5, 3}), index_tensor({4, 0, 4, 1}), input({4, 3})},
            {{"dim", 0}, {"alpha", 0.5}}, [](auto& in) { return one(index_add(in[0], 0, in[1], in[2], 0.5)); });
  Tensor gather_index = index_tensor({0, 3, 3, 1, 2, 2, 0, 0}, {4, 2});
  suite.add("gather", "gather", {input({4, 5}), gather_index}, {{"dim", 1}},
            [](auto& in) { return one(gather(in[0], 1, in[1])); });
  suite.add("scatter_add", "scatter_add", {input({4, 5}), gather_index, input({4, 2})}, {{"dim", 1}},
            [](auto& in) { return one(scatter_add(in[0], 1, in[1], in[2])); });
  Tensor tokens = index_tensor({1, 6, 6, 0, 3, 2}, {2, 3});
  suite.add("embedding", "embedding", {tokens, input({7, 5})}, json::object(),
            [](auto& in) { return one(embedding(in[0], in[1])); });
  suite.add("embedding/padding", "embedding", {tokens, input({7, 5})}, {{"padding_idx", 6}},
            [](auto& in) { return one(embedding(in[0], in[1], 6)); });
  suite.add("one_hot", "one_hot", {index_tensor({2, 0, 4})}, {{"num_classes", 6}},
            [](auto& in) { return one(one_hot(in[0], 6)); });
  suite.add("topk", "topk", {input({4, 9})}, {{"k", 3}}, [](auto& in) {
    auto [values, indices] = topk(in[0], 3);
    return std::vector<Tensor>{values, indices};
  });
  suite.add("topk/smallest_dim0", "topk", {input({9, 4})}, {{"k", 2}, {"dim", 0}, {"largest", false}}, [](auto& in) {
    auto [values, indices] = topk(in[0], 2, 0, false);
    return std::vector<Tensor>{values, indices};
  }, {}, {kTranspose});
  Tensor with_ties = from_vector<float>({3, 1, 2, 1, 3, 0, 2, 2}, {2, 4}, TensorOptions(DType::f32).requires_grad(true));
  suite.add("sort", "sort", {with_ties}, {{"descending", true}}, [](auto& in) {
    auto [values, indices] = sort(in[0], -1, true);
    return std::vector<Tensor>{values, indices};
  });
  suite.add("sort/ascending", "sort", {input({6, 5})}, {{"dim", 0}}, [](auto& in) {
    auto [values, indices] = sort(in[0], 0);
    return std::vector<Tensor>{values, indices};
  });
  suite.add("argsort", "argsort", {with_ties}, json::object(), [](auto& in) { return one(argsort(in[0])); });
}

void add_softmax_and_losses(ParitySuite& suite) {
  suite.add("softmax", "softmax", {input({5, 33}, -4, 4)}, {{"dim", 1}},
            [](auto& in) { return one(softmax(in[0], 1)); }, kSummed);
  suite.add("softmax/dim0", "softmax", {input({5, 33}, -4, 4)}, {{"dim", 0}},
            [](auto& in) { return one(softmax(in[0], 0)); }, kSummed);
  suite.add("log_softmax/transposed", "log_softmax", {input({33, 5}, -4, 4)}, {{"dim", 1}},
            [](auto& in) { return one(log_softmax(in[0], 1)); }, kSummed, {kTranspose});
  Tensor targets = index_tensor({3, 0, 64, 7, -100, 12});
  suite.add("cross_entropy", "cross_entropy", {input({6, 65}, -3, 3), targets}, json::object(),
            [](auto& in) { return one(cross_entropy(in[0], in[1])); }, kSummed);
  suite.add("cross_entropy/smoothing_sum", "cross_entropy", {input({6, 65}, -3, 3), targets},
            {{"label_smoothing", 0.1}, {"reduction", "sum"}}, [](auto& in) {
              return one(cross_entropy(in[0], in[1], CrossEntropyOptions().smoothing(0.1).reduce(Reduction::sum)));
            }, kSummed);
  Tensor targets_2d = index_tensor({1, 4, 4, 0, 2, 3}, {2, 3});
  suite.add("cross_entropy/none_ignore", "cross_entropy", {input({2, 3, 5}, -3, 3), targets_2d},
            {{"ignore_index", 4}, {"reduction", "none"}}, [](auto& in) {
              return one(cross_entropy(in[0], in[1], CrossEntropyOptions().ignore(4).reduce(Reduction::none)));
            }, kSummed);
  suite.add("layer_norm", "layer_norm", {input({3, 4, 48}, -2, 2), input({48}, 0.5, 1.5), input({48})}, json::object(),
            [](auto& in) { return one(layer_norm(in[0], in[1], in[2])); }, kSummed);
  suite.add("layer_norm/plain", "layer_norm", {input({8, 6}, -2, 2)}, {{"eps", 1e-3}},
            [](auto& in) { return one(layer_norm(in[0], Tensor(), Tensor(), 1e-3)); }, kSummed, {kTranspose});
  suite.add("rms_norm", "rms_norm", {input({3, 4, 48}, -2, 2), input({48}, 0.5, 1.5)}, json::object(),
            [](auto& in) { return one(rms_norm(in[0], in[1])); }, kSummed);
  suite.add("add_layer_norm", "add_layer_norm", {input({3, 4, 48}, -2, 2), input({3, 4, 48}), input({48}, 0.5, 1.5),
                                                 input({48})},
            json::object(), [](auto& in) {
              ResidualNorm r = add_layer_norm(in[0], in[1], in[2], in[3]);
              return std::vector<Tensor>{r.sum, r.normed};
            }, kSummed);
  suite.add("add_rms_norm", "add_rms_norm", {input({8, 6}, -2, 2), input({6, 8})}, {{"eps", 1e-3}},
            [](auto& in) {
              ResidualNorm r = add_rms_norm(in[0], in[1], Tensor(), 1e-3);
              return std::vector<Tensor>{r.sum, r.normed};
            }, kSummed, {kNone, kTranspose});
}

}  // namespace

TEST_CASE("every op agrees with PyTorch on outputs and gradients", "[parity]") {
  ParitySuite suite;
  add_elementwise(suite);
  add_reductions(suite);
  add_matmul(suite);
  add_shape_and_views(suite);
  add_indexing(suite);
  add_softmax_and_losses(suite);
  std::vector<std::string> problems = suite.compare();
  INFO(suite.size() << " cases compared");
  for (const std::string& problem : problems) UNSCOPED_INFO(problem);
  CHECK(problems.empty());
}

TEST_CASE("16-bit conversions round as PyTorch's do", "[parity][dtype]") {
  ParitySuite suite;
  // Values spread over many binades, including f16 subnormals and overflow.
  Tensor wide = mul(input({4000}, -1, 1, false), exp(input({4000}, -20, 12, false)));
  suite.add("to_bf16", "to_bf16", {wide}, json::object(), [](auto& in) { return one(in[0].to(DType::bf16).to(DType::f32)); }, Tolerance{0.0, 0.0});
  suite.add("to_f16", "to_f16", {wide}, json::object(), [](auto& in) { return one(in[0].to(DType::f16).to(DType::f32)); }, Tolerance{0.0, 0.0});
  std::vector<std::string> problems = suite.compare();
  for (const std::string& problem : problems) UNSCOPED_INFO(problem);
  CHECK(problems.empty());
}

// Finite-difference gradient checks (f64) for joining/cutting, indexing, softmax and
// cross-entropy, normalisation and dropout.
#include <catch2/catch.hpp>

#include "kiln.h"
#include "support/gradcheck.h"

using namespace kiln;
using kiln::testing::random_leaf;

namespace {
Tensor indices(std::vector<int64_t> values, Shape shape = {}) { return from_vector<int64_t>(values, shape); }
}  // namespace

TEST_CASE("gradcheck: cat, stack, split, chunk", "[gradcheck][shape]") {
  Tensor a = random_leaf({2, 3}, 1), b = random_leaf({2, 2}, 2), c = random_leaf({3, 2}, 3);
  REQUIRE_GRADCHECK([](const auto& in) { return cat({in[0], in[1].t(), in[2].t()}, 1); }, {a, b, c});
  REQUIRE_GRADCHECK([](const auto& in) { return stack({in[0], in[1].t()}, 1); }, {a, c});
  REQUIRE_GRADCHECK([](const auto& in) { return split(in[0], 2, 1)[1] * 2.0; }, {a});
  REQUIRE_GRADCHECK([](const auto& in) {
    std::vector<Tensor> parts = chunk(in[0], 2, 0);
    return mul(parts[0], parts[1]);
  }, {a});
}

TEST_CASE("gradcheck: indexing ops", "[gradcheck][index]") {
  Tensor x = random_leaf({4, 3}, 10);
  Tensor index = indices({3, 0, 3});
  REQUIRE_GRADCHECK([index](const auto& in) { return index_select(in[0], 0, index); }, {x});
  REQUIRE_GRADCHECK([index](const auto& in) { return index_select(in[0].t(), 1, index); }, {x});
  Tensor source = random_leaf({3, 3}, 11);
  REQUIRE_GRADCHECK([index](const auto& in) { return index_add(in[0], 0, index, in[1], 0.5); }, {x, source});
  Tensor gather_index = indices({0, 2, 1, 1, 0, 0, 2, 2}, {4, 2});
  REQUIRE_GRADCHECK([gather_index](const auto& in) { return gather(in[0], 1, gather_index); }, {x});
  Tensor small_source = random_leaf({4, 2}, 12);
  REQUIRE_GRADCHECK([gather_index](const auto& in) { return scatter_add(in[0], 1, gather_index, in[1]); },
                    {x, small_source});
  Tensor table = random_leaf({5, 3}, 13);
  Tensor tokens = indices({1, 4, 4, 0, 2, 1}, {2, 3});
  REQUIRE_GRADCHECK([tokens](const auto& in) { return embedding(tokens, in[0]); }, {table});
  // (padding_idx zeroes a gradient by definition, not by calculus: torch parity covers it.)
  Tensor values = random_leaf({3, 6}, 14);
  REQUIRE_GRADCHECK([](const auto& in) { return topk(in[0], 2, 1).first; }, {values});
  REQUIRE_GRADCHECK([](const auto& in) { return topk(in[0].t(), 2, 0, false).first; }, {values});
  REQUIRE_GRADCHECK([](const auto& in) { return sort(in[0], 1, true).first; }, {values});
}

TEST_CASE("gradcheck: softmax and cross-entropy", "[gradcheck][softmax]") {
  Tensor x = random_leaf({3, 5}, 20, -2.0, 2.0);
  REQUIRE_GRADCHECK([](const auto& in) { return softmax(in[0], 1); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return softmax(in[0], 0); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return log_softmax(in[0].t(), 1); }, {x});
  Tensor logits = random_leaf({4, 5}, 21, -2.0, 2.0);
  Tensor targets = indices({0, 4, 2, -100});
  REQUIRE_GRADCHECK([targets](const auto& in) { return cross_entropy(in[0], targets); }, {logits});
  REQUIRE_GRADCHECK([targets](const auto& in) {
    return cross_entropy(in[0], targets, CrossEntropyOptions().smoothing(0.1).reduce(Reduction::sum));
  }, {logits});
  Tensor targets_2d = indices({1, 3, 3, 0}, {2, 2});
  REQUIRE_GRADCHECK([targets_2d](const auto& in) {
    return cross_entropy(in[0].reshape({2, 2, 5}), targets_2d, CrossEntropyOptions().reduce(Reduction::none).ignore(3));
  }, {logits});
}

TEST_CASE("gradcheck: layer_norm and rms_norm", "[gradcheck][norm]") {
  Tensor x = random_leaf({2, 3, 6}, 30, -2.0, 2.0);
  Tensor w = random_leaf({6}, 31, 0.5, 1.5), b = random_leaf({6}, 32);
  REQUIRE_GRADCHECK([](const auto& in) { return layer_norm(in[0], in[1], in[2]); }, {x, w, b});
  REQUIRE_GRADCHECK([](const auto& in) { return layer_norm(in[0].transpose(0, 1)); }, {x});
  REQUIRE_GRADCHECK([](const auto& in) { return rms_norm(in[0], in[1]); }, {x, w});
  REQUIRE_GRADCHECK([](const auto& in) { return rms_norm(in[0].transpose(0, 1), Tensor(), 1e-3); }, {x});
}

TEST_CASE("gradcheck: add_layer_norm and add_rms_norm through the sum, the norm or both", "[gradcheck][norm]") {
  Tensor x = random_leaf({2, 3, 6}, 33, -2.0, 2.0), update = random_leaf({2, 3, 6}, 34);
  Tensor w = random_leaf({6}, 35, 0.5, 1.5), b = random_leaf({6}, 36);
  REQUIRE_GRADCHECK([](const auto& in) {
    ResidualNorm r = add_layer_norm(in[0], in[1], in[2], in[3]);
    return stack({r.sum, r.normed});
  }, {x, update, w, b});
  REQUIRE_GRADCHECK([](const auto& in) { return add_layer_norm(in[0].transpose(0, 1), in[1].transpose(0, 1)).normed; },
                    {x, update});
  REQUIRE_GRADCHECK([](const auto& in) { return add_layer_norm(in[0], in[1], in[2], in[3]).sum; }, {x, update, w, b});
  REQUIRE_GRADCHECK([](const auto& in) {
    ResidualNorm r = add_rms_norm(in[0], in[1], in[2]);
    return stack({r.sum, r.normed});
  }, {x, update, w});
  REQUIRE_GRADCHECK([](const auto& in) { return add_rms_norm(in[0], in[1], Tensor(), 1e-3).normed; }, {x, update});
}

TEST_CASE("gradcheck: dropout with a fixed stream", "[gradcheck][dropout]") {
  Tensor x = random_leaf({4, 5}, 40);
  REQUIRE_GRADCHECK([](const auto& in) {
    Generator generator(99);
    return dropout(in[0].t(), 0.3, true, &generator);
  }, {x});
}

// Bad input raises kiln::Error with a message naming the op and the offending values.
#include <catch2/catch.hpp>

#include "kiln.h"

using namespace kiln;
using Catch::Contains;

TEST_CASE("mismatched shapes name the op and both shapes", "[errors]") {
  CHECK_THROWS_AS(add(zeros({2, 3}), zeros({4, 3})), Error);
  CHECK_THROWS_WITH(add(zeros({2, 3}), zeros({4, 3})), Contains("add") && Contains("(2, 3)") && Contains("(4, 3)"));
  CHECK_THROWS_WITH(matmul(zeros({4, 8}), zeros({7, 3})),
                    Contains("matmul") && Contains("(4, 8)") && Contains("(7, 3)") && Contains("8 vs 7"));
  CHECK_THROWS_WITH(cat({zeros({2, 3}), zeros({3, 3})}, 1), Contains("cat") && Contains("(3, 3)"));
  CHECK_THROWS_WITH(linear(zeros({2, 5}), zeros({3, 4})), Contains("linear") && Contains("(2, 5)") && Contains("(3, 4)"));
  CHECK_THROWS_WITH(layer_norm(zeros({2, 5}), ones({4})), Contains("layer_norm") && Contains("(4)"));
  CHECK_THROWS_WITH(cross_entropy(zeros({3, 5}), zeros({4}, DType::i64)), Contains("cross_entropy") && Contains("(4)"));
  CHECK_THROWS_WITH(zeros({2, 3}).reshape({4, 2}), Contains("reshape") && Contains("(4, 2)") && Contains("6 elements"));
  CHECK_THROWS_WITH(zeros({2, 3}).t().view({6}), Contains("view") && Contains("reshape"));
  CHECK_THROWS_WITH(zeros({2, 3}).expand({4, 3}), Contains("expand") && Contains("(2, 3)") && Contains("(4, 3)"));
}

TEST_CASE("mismatched dtypes name both dtypes", "[errors]") {
  CHECK_THROWS_WITH(add(zeros({2}, DType::f32), zeros({2}, DType::f64)),
                    Contains("add") && Contains("f32") && Contains("f64"));
  CHECK_THROWS_WITH(matmul(zeros({2, 2}, DType::i64), zeros({2, 2}, DType::i64)), Contains("matmul") && Contains("i64"));
  CHECK_THROWS_WITH(index_select(zeros({3}), 0, zeros({2}, DType::f32)), Contains("index_select") && Contains("f32"));
  CHECK_THROWS_WITH(zeros({2}, DType::i32).set_requires_grad(true), Contains("floating") && Contains("i32"));
}

TEST_CASE("an unavailable device is named", "[errors]") {
  bool cuda_usable = true;
  try {
    zeros({2}, Device::cuda());
  } catch (const Error& error) {
    cuda_usable = false;
    CHECK_THAT(error.what(), Contains("cuda:0") && Contains("not available"));
  }
  if (cuda_usable) {
    CHECK_THROWS_WITH(add(zeros({2}), zeros({2}, Device::cuda())), Contains("add") && Contains("different devices"));
  }
}

TEST_CASE("bad dims name the dim and the rank", "[errors]") {
  CHECK_THROWS_WITH(sum(zeros({2, 3}), {5}), Contains("sum") && Contains("dim 5") && Contains("2 dims"));
  CHECK_THROWS_WITH(softmax(zeros({2, 3}), -3), Contains("softmax") && Contains("dim -3"));
  CHECK_THROWS_WITH(zeros({2, 3}).transpose(0, 2), Contains("transpose") && Contains("dim 2"));
  CHECK_THROWS_WITH(sum(zeros({2, 3}), {1, -1}), Contains("sum") && Contains("more than once"));
  CHECK_THROWS_WITH(zeros({2, 3}).select(1, 3), Contains("select") && Contains("index 3") && Contains("size 3"));
  CHECK_THROWS_WITH(topk(zeros({2, 3}), 4), Contains("topk") && Contains("k = 4") && Contains("size 3"));
  CHECK_THROWS_WITH(amax(zeros({2, 0}), {1}), Contains("amax") && Contains("empty"));
}

TEST_CASE("out-of-range indices name the op, the index and the size", "[errors]") {
  CHECK_THROWS_WITH(index_select(zeros({5, 2}), 0, from_vector<int64_t>({1, 7})),
                    Contains("index_select") && Contains("7") && Contains("5"));
  CHECK_THROWS_WITH(embedding(from_vector<int64_t>({0, 9}), zeros({4, 3})), Contains("9") && Contains("4"));
  CHECK_THROWS_WITH(gather(zeros({2, 3}), 1, from_vector<int64_t>({0, 3}, {2, 1})),
                    Contains("gather") && Contains("3"));
  CHECK_THROWS_WITH(scatter_add(zeros({2, 3}), 1, from_vector<int64_t>({-1, 0}, {2, 1}), ones({2, 1})),
                    Contains("scatter_add") && Contains("-1"));
  CHECK_THROWS_WITH(index_add(zeros({3, 2}), 0, from_vector<int64_t>({3}), ones({1, 2})),
                    Contains("index_add") && Contains("3"));
  CHECK_THROWS_WITH(cross_entropy(zeros({2, 4}), from_vector<int64_t>({1, 4})),
                    Contains("cross_entropy") && Contains("4"));
  CHECK_THROWS_WITH(one_hot(from_vector<int64_t>({0, 5}), 3), Contains("one_hot") && Contains("5"));
}

TEST_CASE("misuse of autograd and values is explained", "[errors]") {
  CHECK_THROWS_WITH(zeros({3}).item(), Contains("item") && Contains("3 elements"));
  CHECK_THROWS_WITH(zeros({3}).backward(), Contains("does not require grad"));
  Tensor x = ones({2}, TensorOptions().requires_grad(true));
  Tensor y = mul(x, x);
  CHECK_THROWS_WITH(y.set_requires_grad(false), Contains("only leaf tensors"));
  CHECK_THROWS_WITH(dropout(x, 1.5), Contains("dropout") && Contains("1.5"));
  CHECK_THROWS_WITH(arange(0.0, 1.0, 0.0), Contains("arange") && Contains("step"));
  CHECK_THROWS_WITH(from_vector<float>({1, 2, 3}, {2, 2}), Contains("from_vector") && Contains("(2, 2)"));
  Tensor expanded = zeros({3}).expand({2, 3});
  CHECK_THROWS_WITH(expanded.fill_(1.0), Contains("fill_") && Contains("expanded"));
}

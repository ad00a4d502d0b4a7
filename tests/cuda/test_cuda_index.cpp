// Device parity for indexing: index_select, index_add, gather, scatter_add, embedding, one_hot,
// topk, sort and argsort, forward and backward; and out-of-range indices and targets, which
// must raise the CPU backend's messages word for word.
//
// index_add and scatter_add accumulate colliding indices with atomics in an unspecified order;
// in the f32 cases at most four O(1) terms meet in one element, so the sums differ by a few
// 1e-7 at most, within kF32. The other dtypes add small integers, exact in any order.
#include <catch2/catch.hpp>

#include <limits>

#include "kernels/backend.h"
#include "test_cuda_parity.h"

using namespace kiln;
using namespace kiln::cuda_test;

TEST_CASE("cuda: index_select, index_add, gather and scatter_add match the CPU", "[cuda][index]") {
  Tensor x = random({5, 4});
  Tensor index = indices({3, 0, 3, 4, 3});
  check_parity({x, index}, [](auto& in) {
    return std::vector{index_select(in[0], 0, in[1]), index_select(in[0].t(), 1, in[1]),
                       index_select(in[0], 1, in[1].slice(0, 1, 4))};
  });
  check_parity({x, index.to(DType::i32), random({5, 4})}, [](auto& in) {
    return std::vector{index_add(in[0], 0, in[1], in[2], 0.5), index_add(in[0].t(), 1, in[1], in[2].t())};
  });
  Tensor gather_index = indices({0, 2, 1, 1, 0, 0, 2, 2, 3, 3}, {5, 2});
  check_parity({x, gather_index, random({5, 3})}, [](auto& in) {
    return std::vector{gather(in[0], 1, in[1]), gather(in[0].t(), 0, in[1].t()), scatter_add(in[0], 1, in[1], in[2]),
                       scatter_add(in[0].t(), 0, in[1].t(), in[2].t())};
  });
  // Every dtype moves through the reading ops unchanged, and every numeric dtype adds.
  for (DType dtype : {DType::bf16, DType::f16, DType::f64, DType::i32, DType::i64, DType::boolean}) {
    INFO(dtype_name(dtype));
    Tensor values = random({5, 4}, DType::f32, -5, 5, false).to(DType::i32).to(dtype);
    check_parity({values, index, gather_index}, [](auto& in) {
      return std::vector{index_select(in[0], 1, in[1].slice(0, 0, 3)), gather(in[0], 1, in[2])};
    }, kExact);
    if (dtype == DType::boolean) continue;
    Tensor source = random({5, 4}, DType::f32, -5, 5, false).to(DType::i32).to(dtype);
    check_parity({values, index, source, gather_index}, [](auto& in) {
      return std::vector{index_add(in[0], 0, in[1], in[2], 2.0), scatter_add(in[0], 1, in[3], in[2])};
    }, kExact);
  }
  // Many collisions on one element: 200 ones sum to 200 exactly in bf16 and f16, so a lost
  // update in the compare-and-swap loop would show.
  for (DType dtype : {DType::bf16, DType::f16}) {
    Tensor many = indices(std::vector<int64_t>(200, 2));
    check_parity({zeros({4, 8}, dtype), many, ones({200, 8}, dtype)},
                 [](auto& in) { return std::vector{index_add(in[0], 0, in[1], in[2])}; }, kExact);
  }
}

TEST_CASE("cuda: embedding and one_hot match the CPU", "[cuda][index]") {
  Tensor table = random({10, 6});
  Tensor tokens = indices({1, 4, 4, 0, 9, 1, 7, 7}, {2, 4});
  check_parity({table, tokens}, [](auto& in) {
    return std::vector{embedding(in[1], in[0]), embedding(in[1], in[0], 4), embedding(in[1].to(DType::i32), in[0], -1)};
  });
  check_parity({tokens}, [](auto& in) { return std::vector{one_hot(in[0]), one_hot(in[0], 12)}; }, kExact);
  // A realistic lookup: a 1000 x 64 table and 4096 tokens with repeats.
  Tensor many = random({4096}, DType::f32, 0, 1000, false).to(DType::i64);
  check_parity({random({1000, 64}), many}, [](auto& in) { return std::vector{embedding(in[1], in[0])}; });
}

TEST_CASE("cuda: topk, sort and argsort match the CPU", "[cuda][index]") {
  check_parity({random({3, 40})}, [](auto& in) {
    auto [values, positions] = topk(in[0], 5, 1);
    auto [low, low_positions] = topk(in[0].t(), 3, 0, false);
    auto [sorted, order] = sort(in[0], 1);
    auto [down, down_order] = sort(in[0].t(), 0, true);
    return std::vector{values, positions, low, low_positions, sorted, order, down, down_order, argsort(in[0], 0)};
  });
  // Ties keep input order in both directions; NaN sorts as the largest value; -0 equals +0.
  float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor tricky = from_vector<float>({2, nan, -1, 2, 0, -0.0f, nan, -1, 5, 2, 0, -3}, {2, 6});
  check_parity({tricky}, [](auto& in) {
    return std::vector{sort(in[0], 1).first,          sort(in[0], 1).second,   sort(in[0], 1, true).second,
                       sort(in[0], 0, true).second,   topk(in[0], 4, 1).second, topk(in[0], 4, 1, false).second,
                       topk(in[0].reshape({-1}), 12).second};
  }, kExact);
  for (DType dtype : {DType::bf16, DType::f16, DType::f64, DType::i32, DType::i64}) {
    INFO(dtype_name(dtype));
    // Few distinct values: many ties.
    Tensor values = random({4, 300}, DType::f32, -20, 20, false).to(dtype);
    check_parity({values}, [](auto& in) {
      return std::vector{sort(in[0], 1).first, sort(in[0], 1).second, sort(in[0], 0, true).second,
                         topk(in[0], 7, 1).first, topk(in[0], 7, 1).second, topk(in[0].t(), 2, 1, false).second};
    }, kExact);
  }
  // An unsorted topk may come back in any order: compare the sets.
  Tensor distinct = random({2, 50}, DType::f32, -1, 1, false);
  Tensor expected = sort(topk(distinct, 6, 1, true, false).second, 1).first;
  Tensor actual = sort(topk(distinct.to(kCuda), 6, 1, true, false).second, 1).first;
  CHECK_MATCH(expected, actual, kExact);
  // A long line (a vocabulary) and many short lines (MoE routing).
  check_parity({random({2, 50000})}, [](auto& in) { return std::vector{topk(in[0], 10, 1).first, topk(in[0], 10, 1).second}; });
  check_parity({random({5000, 8})}, [](auto& in) { return std::vector{topk(in[0], 2, 1).first, topk(in[0], 2, 1).second}; });
}

TEST_CASE("cuda: out-of-range indices raise the CPU's messages", "[cuda][index][errors]") {
  Tensor x = random({5, 4}, DType::f32, -1, 1, false);
  Tensor x_gpu = x.to(kCuda);
  // Several bad indices: the first in row-major order is the one named.
  for (const std::vector<int64_t>& values : {std::vector<int64_t>{1, 7, -1, 2}, std::vector<int64_t>{-2, 0, 9}}) {
    Tensor bad = indices(values), bad_gpu = bad.to(kCuda);
    std::string expected = error_of([&] { index_select(x, 0, bad); });
    CHECK(expected != "(no error)");
    CHECK(error_of([&] { index_select(x_gpu, 0, bad_gpu); }) == expected);
    CHECK(error_of([&] { index_select(x_gpu, 0, bad_gpu.to(DType::i32)); }) ==
          error_of([&] { index_select(x, 0, bad.to(DType::i32)); }));
    Tensor source = zeros({static_cast<int64_t>(values.size()), 4}), source_gpu = source.to(kCuda);
    CHECK(error_of([&] { index_add(x_gpu, 0, bad_gpu, source_gpu); }) == error_of([&] { index_add(x, 0, bad, source); }));
    CHECK(error_of([&] { embedding(bad_gpu, x_gpu); }) == error_of([&] { embedding(bad, x); }));
  }
  Tensor bad_2d = indices({0, 1, 4, 2, 3, 0, 1, 1}, {4, 2}), bad_2d_gpu = bad_2d.to(kCuda);
  std::string expected = error_of([&] { gather(x, 1, bad_2d); });
  CHECK(expected != "(no error)");
  CHECK(error_of([&] { gather(x_gpu, 1, bad_2d_gpu); }) == expected);
  Tensor source = zeros({4, 2}), source_gpu = source.to(kCuda);
  CHECK(error_of([&] { scatter_add(x_gpu, 1, bad_2d_gpu, source_gpu); }) ==
        error_of([&] { scatter_add(x, 1, bad_2d, source); }));
  CHECK(error_of([&] { one_hot(indices({1, -1}).to(kCuda)); }) == error_of([&] { one_hot(indices({1, -1})); }));

  Tensor logits = random({4, 5}, DType::f32, -1, 1, false);
  for (const std::vector<int64_t>& values : {std::vector<int64_t>{0, 5, 1, -7}, std::vector<int64_t>{-1, 2, 3, 4}}) {
    Tensor targets = indices(values);
    std::string message = error_of([&] { cross_entropy(logits, targets); });
    CHECK(message != "(no error)");
    CHECK(error_of([&] { cross_entropy(logits.to(kCuda), targets.to(kCuda)); }) == message);
  }
  // The backward kernel checks its targets too.
  auto backward_error = [&](Device device) {
    Tensor x = logits.to(device), targets = indices({0, 9, 2, 3}).to(device);
    Tensor lse = zeros({4}, device), grad_loss = ones({4}, device), grad = zeros({4, 5}, device);
    return error_of([&] {
      kernels::backend_for(device).cross_entropy_backward(x.view_for_kernels(), targets.view_for_kernels(),
                                                          lse.view_for_kernels(), grad_loss.view_for_kernels(),
                                                          grad.view_for_kernels(), -100, 0.0);
    });
  };
  CHECK(backward_error(Device::cpu()).find("cross_entropy_backward: target 9 of row 1") != std::string::npos);
  CHECK(backward_error(kCuda) == backward_error(Device::cpu()));
}

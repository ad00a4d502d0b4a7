// Context parallelism, run alone and under mpirun at 2 and 4 ranks; the world is the cp group.
// Every rank builds the same full q, k, v from one seed and checks its shard of what ring
// attention gives against causal scaled_dot_product_attention over the whole sequence, computed
// locally:
// - the layout: positions, shard/unshard round trips (f32 and i64 tokens), and the block each ring
//   step computes, checked exhaustively against the rule on global positions;
// - forward and backward against the reference: f32 within 1e-5 and f64 within 1e-12 (relative to
//   the largest value), GQA and multi-head, two lengths, strided inputs; bit-equal at cp = 1;
//   bf16 inputs (accumulated in f32) within 2e-2 of the f32 computation;
// - what the ring sends: K and V forward; K, V and dK dV backward (counted by the group);
// - a finite-difference gradient check in f64 of the loss summed over the whole group;
// - errors: lengths not divisible by 2 cp, mismatched shapes, a null group.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "autograd/generator.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "parallel/context_parallel.h"
#include "parallel/ring_attention.h"
#include "parallel_test.h"

namespace kiln::parallel::testing {
namespace {

using Catch::Contains;

std::shared_ptr<Communicator> cp_group() { return world().communicator; }

Tensor random(const Shape& shape, uint64_t seed, DType dtype) {
  Generator generator(seed);
  return randn(shape, TensorOptions(dtype), &generator);
}

Tensor leaf(const Tensor& values) { return values.detach().clone().set_requires_grad(true); }

// max |a - b| / max |b|: the error relative to the reference's scale.
double relative_error(const Tensor& actual, const Tensor& expected) {
  std::vector<double> a = actual.to_vector<double>(), b = expected.to_vector<double>();
  double scale = 0, difference = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, std::abs(b[i]));
    difference = std::max(difference, std::abs(a[i] - b[i]));
  }
  return difference / std::max(scale, 1e-30);
}

void check_close(const Tensor& actual, const Tensor& expected, double tolerance, const std::string& what) {
  INFO(what << " on rank " << world_group().rank() << " of " << world_group().size());
  CHECK(actual.sizes() == expected.sizes());
  if (actual.sizes() == expected.sizes()) CHECK(relative_error(actual, expected) <= tolerance);
}

std::vector<int64_t> values_of(const Tensor& tensor) { return tensor.to_vector<int64_t>(); }

// ---- layout ----------------------------------------------------------------------------------

TEST_CASE("context parallel: each rank holds chunks r and 2 cp - 1 - r") {
  CHECK(values_of(context_parallel_positions(8, 0, 2)) == std::vector<int64_t>{0, 1, 6, 7});
  CHECK(values_of(context_parallel_positions(8, 1, 2)) == std::vector<int64_t>{2, 3, 4, 5});
  CHECK(values_of(context_parallel_positions(8, 0, 4)) == std::vector<int64_t>{0, 7});
  CHECK(values_of(context_parallel_positions(8, 2, 4)) == std::vector<int64_t>{2, 5});
  CHECK(values_of(context_parallel_positions(12, 0, 1)) == values_of(arange(12, TensorOptions(DType::i64))));
  CHECK(values_of(context_parallel_positions(24, 3, 4)) == std::vector<int64_t>{9, 10, 11, 12, 13, 14});
  CHECK(context_parallel_positions(24, 3, 4).dtype() == DType::i64);

  // On the world: this rank's positions are the shard of arange, and together they cover 0..T-1.
  Communicator& cp = world_group();
  const int64_t length = 16;
  Tensor positions = context_parallel_positions(length, cp);
  CHECK(positions.sizes() == Shape{length / cp.size()});
  CHECK(values_of(positions) == values_of(context_parallel_shard(arange(length, TensorOptions(DType::i64)), 0, cp)));
  CHECK(values_of(context_parallel_unshard(positions, 0, cp)) == values_of(arange(length, TensorOptions(DType::i64))));
}

TEST_CASE("context parallel: unshard undoes shard along any dim and dtype") {
  Communicator& cp = world_group();
  const Tensor x = random({2, 16, 3}, 5, DType::f32);
  Tensor local = context_parallel_shard(x, 1, cp);
  CHECK(local.sizes() == Shape{2, 16 / cp.size(), 3});
  CHECK(context_parallel_unshard(local, 1, cp).to_vector<float>() == x.to_vector<float>());
  CHECK(context_parallel_unshard(context_parallel_shard(x, -2, cp), -2, cp).to_vector<float>() == x.to_vector<float>());

  // Tokens (B, T) i64, as a data loader shards them.
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < 2 * 24; ++i) ids.push_back((i * 7) % 50);
  Tensor tokens = from_vector(ids, {2, 24}, TensorOptions(DType::i64));
  Tensor local_tokens = context_parallel_shard(tokens, 1, cp);
  CHECK(local_tokens.dtype() == DType::i64);
  CHECK(values_of(context_parallel_unshard(local_tokens, 1, cp)) == ids);
  // Row 1 of this rank's tokens is tokens[1, positions].
  std::vector<int64_t> positions = values_of(context_parallel_positions(24, cp));
  std::vector<int64_t> local_ids = values_of(local_tokens);
  for (size_t t = 0; t < positions.size(); ++t) {
    CHECK(local_ids[positions.size() + t] == ids[static_cast<size_t>(24 + positions[t])]);
  }
}

TEST_CASE("ring attention: each step computes exactly the causal pairs of its chunks") {
  const int64_t chunk = 3;
  for (int size = 1; size <= 5; ++size) {
    const int64_t length = 2 * chunk * size, local = 2 * chunk;
    for (int rank = 0; rank < size; ++rank) {
      std::vector<int64_t> query_positions = values_of(context_parallel_positions(length, rank, size));
      for (int owner = 0; owner < size; ++owner) {
        INFO("cp " << size << ", rank " << rank << ", keys of rank " << owner);
        std::vector<int64_t> key_positions = values_of(context_parallel_positions(length, owner, size));
        std::set<std::pair<int64_t, int64_t>> expected, computed;
        for (int64_t i = 0; i < local; ++i) {
          for (int64_t j = 0; j < local; ++j) {
            if (key_positions[j] <= query_positions[i]) expected.insert({query_positions[i], key_positions[j]});
          }
        }
        RingAttentionBlock block = ring_attention_block(rank, owner, size, local);
        for (int64_t i = block.query_start; i < block.query_start + block.query_length; ++i) {
          for (int64_t j = block.key_start; j < block.key_start + block.key_length; ++j) {
            if (!block.causal || j - block.key_start <= i - block.query_start) {
              computed.insert({query_positions[i], key_positions[j]});
            }
          }
        }
        CHECK(computed == expected);
        // Balanced: every step but the diagonal one scores T/cp x T/(2 cp) pairs.
        if (owner != rank) CHECK(block.query_length * block.key_length == local * chunk);
      }
    }
  }
}

// ---- forward and backward against the whole sequence -----------------------------------------

struct Case {
  DType dtype;
  int64_t kv_heads;
  int64_t length;
  bool strided;  // q, k, v passed as (B, T, H, D) tensors transposed to (B, H, T, D)
};

TEST_CASE("ring attention: output and gradients equal causal attention over the whole sequence") {
  std::shared_ptr<Communicator> cp = cp_group();
  const int64_t batch = 2, heads = 4, dim = 8;
  std::vector<Case> cases;
  for (DType dtype : {DType::f32, DType::f64}) {
    for (int64_t kv_heads : {2, 4}) {
      for (int64_t length : {16, 24}) cases.push_back({dtype, kv_heads, length, false});
    }
  }
  cases.push_back({DType::f32, 2, 16, true});
  cases.push_back({DType::f64, 4, 24, true});

  for (const Case& c : cases) {
    INFO(dtype_name(c.dtype) << ", Hkv " << c.kv_heads << ", T " << c.length << (c.strided ? ", strided" : ""));
    const double tolerance = c.dtype == DType::f64 ? 1e-12 : 1e-5;
    const Tensor q = random({batch, heads, c.length, dim}, 11, c.dtype);
    const Tensor k = random({batch, c.kv_heads, c.length, dim}, 12, c.dtype);
    const Tensor v = random({batch, c.kv_heads, c.length, dim}, 13, c.dtype);
    const Tensor grad_out = random({batch, heads, c.length, dim}, 14, c.dtype);

    std::vector<Tensor> full = {leaf(q), leaf(k), leaf(v)};
    Tensor expected = scaled_dot_product_attention(full[0], full[1], full[2], true);
    expected.backward(grad_out);

    // Leaves of this rank's tokens; strided ones are (B, T / cp, H, D), viewed as (B, H, T / cp, D).
    std::vector<Tensor> local, operands;
    for (const Tensor& x : {q, k, v}) {
      Tensor shard = context_parallel_shard(x, 2, *cp);
      local.push_back(leaf(c.strided ? shard.transpose(1, 2).contiguous() : shard));
      operands.push_back(c.strided ? local.back().transpose(1, 2) : local.back());
    }
    Tensor out = ring_attention(operands[0], operands[1], operands[2], cp);
    out.backward(context_parallel_shard(grad_out, 2, *cp));

    check_close(out, context_parallel_shard(expected.detach(), 2, *cp), tolerance, "output");
    const char* names[3] = {"dq", "dk", "dv"};
    for (int i = 0; i < 3; ++i) {
      Tensor grad = c.strided ? local[i].grad().transpose(1, 2) : local[i].grad();
      check_close(grad, context_parallel_shard(full[i].grad(), 2, *cp), tolerance, names[i]);
      // At cp = 1 the ring is one call of the same kernel: bit for bit.
      if (cp->size() == 1) CHECK(relative_error(grad, full[i].grad()) == 0.0);
    }
    if (cp->size() == 1) CHECK(relative_error(out, expected) == 0.0);
  }
}

// bf16 inputs: blocks are merged and gradients summed in f32, then rounded once; compared with
// the f32 computation on the same (bf16-rounded) values, within bf16's precision.
TEST_CASE("ring attention: bf16 inputs accumulate in f32") {
  std::shared_ptr<Communicator> cp = cp_group();
  const std::vector<Tensor> full = {random({1, 4, 16, 8}, 51, DType::f32).to(DType::bf16),
                                    random({1, 2, 16, 8}, 52, DType::f32).to(DType::bf16),
                                    random({1, 2, 16, 8}, 53, DType::f32).to(DType::bf16)};
  const Tensor grad_out = random({1, 4, 16, 8}, 54, DType::f32).to(DType::bf16);
  std::vector<Tensor> reference;
  for (const Tensor& x : full) reference.push_back(leaf(x.to(DType::f32)));
  Tensor expected = scaled_dot_product_attention(reference[0], reference[1], reference[2], true);
  expected.backward(grad_out.to(DType::f32));

  std::vector<Tensor> local;
  for (const Tensor& x : full) local.push_back(leaf(context_parallel_shard(x, 2, *cp)));
  Tensor out = ring_attention(local[0], local[1], local[2], cp);
  out.backward(context_parallel_shard(grad_out, 2, *cp));
  CHECK(out.dtype() == DType::bf16);
  check_close(out, context_parallel_shard(expected.detach(), 2, *cp), 2e-2, "bf16 output");
  const char* names[3] = {"bf16 dq", "bf16 dk", "bf16 dv"};
  for (int i = 0; i < 3; ++i) {
    CHECK(local[i].grad().dtype() == DType::bf16);
    check_close(local[i].grad(), context_parallel_shard(reference[i].grad(), 2, *cp), 2e-2, names[i]);
  }
}

TEST_CASE("ring attention: explicit scale, and no graph when nothing needs a gradient") {
  std::shared_ptr<Communicator> cp = cp_group();
  const Tensor q = random({1, 2, 16, 4}, 21, DType::f64);
  const Tensor k = random({1, 1, 16, 4}, 22, DType::f64);
  const Tensor v = random({1, 1, 16, 4}, 23, DType::f64);
  Tensor expected = scaled_dot_product_attention(q, k, v, true, 0.3);
  Tensor out = ring_attention(context_parallel_shard(q, 2, *cp), context_parallel_shard(k, 2, *cp),
                              context_parallel_shard(v, 2, *cp), cp, 0.3);
  CHECK(!out.requires_grad());
  check_close(out, context_parallel_shard(expected, 2, *cp), 1e-12, "output with scale 0.3");
}

TEST_CASE("ring attention: sends only keys and values forward, and their gradients back") {
  std::shared_ptr<Communicator> cp = cp_group();
  const int64_t n = cp->size(), local = 16 / n;
  const int64_t block_bytes = 1 * 1 * local * 4 * static_cast<int64_t>(sizeof(float));  // one of K, V, dK, dV
  Tensor q = leaf(random({1, 2, local, 4}, 41, DType::f32));
  Tensor k = leaf(random({1, 1, local, 4}, 42, DType::f32)), v = leaf(random({1, 1, local, 4}, 43, DType::f32));
  cp->reset_stats();
  Tensor out = ring_attention(q, k, v, cp);
  // Forward: K and V to the next rank at every step but the last.
  CHECK(cp->stats().count(Collective::send) == 2 * (n - 1));
  CHECK(cp->stats().bytes(Collective::send) == 2 * (n - 1) * block_bytes);
  CHECK(cp->stats().total_bytes() == cp->stats().bytes(Collective::send));
  cp->reset_stats();
  sum(out).backward();
  // Backward: K and V again, and dK, dV at every step, the last step's going home.
  const int64_t messages = n > 1 ? 2 * (n - 1) + 2 * n : 0;
  CHECK(cp->stats().count(Collective::send) == messages);
  CHECK(cp->stats().bytes(Collective::send) == (n > 1 ? (2 * (n - 1) + 2 * n) * block_bytes : 0));
  CHECK(cp->stats().total_bytes() == cp->stats().bytes(Collective::send));
}

// Central differences of L = sum over the group of sum(ring_attention(shards) * w): each element
// of the FULL q, k, v is perturbed on every rank (so the ranks stay in step), and the analytic
// gradient, gathered from the shards, must match. This checks the gradients that travel the ring.
TEST_CASE("ring attention: f64 finite differences of the group's loss") {
  std::shared_ptr<Communicator> cp = cp_group();
  const Shape query_shape{1, 2, 8, 4}, key_shape{1, 1, 8, 4};
  std::vector<Tensor> full = {random(query_shape, 31, DType::f64), random(key_shape, 32, DType::f64),
                              random(key_shape, 33, DType::f64)};
  const Tensor weights = context_parallel_shard(random(query_shape, 34, DType::f64), 2, *cp);
  auto group_loss = [&](const std::vector<Tensor>& local) {
    Tensor loss = sum(mul(ring_attention(local[0], local[1], local[2], cp), weights)).reshape({1});
    cp->all_reduce(loss);
    return loss;
  };
  auto shards = [&](const std::vector<Tensor>& tensors) {
    std::vector<Tensor> local;
    for (const Tensor& x : tensors) local.push_back(leaf(context_parallel_shard(x, 2, *cp)));
    return local;
  };

  std::vector<Tensor> local = shards(full);
  Tensor loss = sum(mul(ring_attention(local[0], local[1], local[2], cp), weights));
  loss.backward();

  const double eps = 1e-6, atol = 1e-8, rtol = 1e-6;
  NoGradGuard no_grad;
  for (size_t input = 0; input < full.size(); ++input) {
    std::vector<double> analytic = context_parallel_unshard(local[input].grad(), 2, *cp).to_vector<double>();
    double worst = 0.0;
    int64_t worst_element = -1;
    for (int64_t i = 0; i < full[input].numel(); ++i) {
      double* element = full[input].data<double>() + i;
      const double original = *element;
      *element = original + eps;
      const double plus = group_loss(shards(full)).item();
      *element = original - eps;
      const double minus = group_loss(shards(full)).item();
      *element = original;
      const double numeric = (plus - minus) / (2 * eps);
      const double excess = std::abs(analytic[static_cast<size_t>(i)] - numeric) - (atol + rtol * std::abs(numeric));
      if (worst_element < 0 || excess > worst) {
        worst = excess;
        worst_element = i;
      }
    }
    INFO("input " << input << " (q, k, v), element " << worst_element << " on rank " << cp->rank());
    CHECK(worst <= 0.0);
  }
}

// ---- errors ----------------------------------------------------------------------------------

TEST_CASE("context parallel: lengths that do not divide by 2 cp and bad arguments are errors") {
  Communicator& cp = world_group();
  const int n = cp.size();
  const std::string doubled = std::to_string(2 * n);
  CHECK_THROWS_WITH(context_parallel_shard(zeros({2, 6, 3}), 1, 0, 2),
                    Contains("context_parallel_shard: sequence length 6 is not divisible by 2 x cp = 4"));
  CHECK_THROWS_WITH(context_parallel_shard(zeros({2, 2 * n + 1}), 1, cp),
                    Contains("sequence length " + std::to_string(2 * n + 1) + " is not divisible by 2 x cp = " + doubled));
  CHECK_THROWS_WITH(context_parallel_positions(10, 1, 4),
                    Contains("context_parallel_positions: sequence length 10 is not divisible by 2 x cp = 8"));
  CHECK_THROWS_WITH(context_parallel_shard(zeros({2, 8}), 2, cp),
                    Contains("context_parallel_shard: dim 2 is out of range for a tensor of shape (2, 8)"));
  CHECK_THROWS_WITH(context_parallel_positions(8, 2, 2), Contains("cp rank 2 is out of range for a group of 2"));
  CHECK_THROWS_WITH(context_parallel_unshard(zeros({2, 3}), 1, cp),
                    Contains("context_parallel_unshard: dim 1 of shape (2, 3) must hold two equal chunks"));
}

TEST_CASE("ring attention: mismatched shapes, odd local lengths and a null group are errors") {
  std::shared_ptr<Communicator> cp = cp_group();
  const Tensor q = zeros({1, 4, 4, 8}), k = zeros({1, 2, 4, 8});
  CHECK_THROWS_WITH(ring_attention(zeros({1, 4, 3, 8}), zeros({1, 2, 3, 8}), zeros({1, 2, 3, 8}), cp),
                    Contains("ring_attention: local sequence length 3 (query shape (1, 4, 3, 8)) must be even: the "
                             "sequence length " + std::to_string(3 * cp->size()) + " is not divisible by 2 x cp = " +
                             std::to_string(2 * cp->size())));
  CHECK_THROWS_WITH(ring_attention(q, zeros({1, 2, 6, 8}), zeros({1, 2, 6, 8}), cp),
                    Contains("ring_attention: query shape (1, 4, 4, 8) and key shape (1, 2, 6, 8) must agree in batch, "
                             "local sequence length and head dim"));
  CHECK_THROWS_WITH(ring_attention(q, k, zeros({1, 2, 4, 4}), cp),
                    Contains("ring_attention: key shape (1, 2, 4, 8) and value shape (1, 2, 4, 4) differ"));
  CHECK_THROWS_WITH(ring_attention(zeros({1, 3, 4, 8}), k, k, cp),
                    Contains("ring_attention: 3 query heads (shape (1, 3, 4, 8)) are not a multiple of 2 kv heads"));
  CHECK_THROWS_WITH(ring_attention(zeros({4, 4, 8}), k, k, cp),
                    Contains("ring_attention: q, k and v must be (B, H, T / cp, D), got shapes (4, 4, 8)"));
  CHECK_THROWS_WITH(ring_attention(q, k.to(DType::f64), k, cp),
                    Contains("ring_attention: dtypes f32 and f64 do not match"));
  CHECK_THROWS_WITH(ring_attention(q, k, k, nullptr), Contains("ring_attention: the context-parallel group is null"));
  CHECK_THROWS_WITH(ring_attention(q, k, k, cp, std::nan("")), Contains("ring_attention: scale must be finite"));
}

}  // namespace
}  // namespace kiln::parallel::testing

// Fused scaled-dot-product attention and RoPE: f64 gradient checks, fused against the plain
// reference (f32, bf16, f16), PyTorch parity, determinism, the memory the fused kernel saves, and
// argument errors.
//
// Tolerances (|a - b| <= atol + rtol |b| per element, values and gradients O(1)):
//   fused vs reference, f32: rtol 2e-5, atol 5e-6 (the same sums in different orders; seen: 1.2e-6);
//   fused bf16 / f16 vs the f32 reference on the same rounded inputs: atol 1e-2 / 2e-3, rtol the
//   same (one rounding of every stored block, a 2^-8 / 2^-11 relative step);
//   PyTorch parity, f32: attention rtol 5e-5 atol 5e-6; rope rtol 1e-5 atol 1e-6 (elementwise).
// The fused kernel works in 64 x 64 blocks, so the cases use T around 70-300 to cross block edges
// with partial blocks.
#include <omp.h>

#include <catch2/catch.hpp>

#include "kiln.h"
#include "support/gradcheck.h"
#include "support/torch_reference.h"

using namespace kiln;
using Catch::Contains;
using kiln::testing::random_leaf;
using json = nlohmann::json;

namespace {

Tensor positions_of(std::vector<int64_t> values) { return from_vector<int64_t>(values); }

// f64 leaves q of shape `query` and k, v of shape `key_value`, seeded from `seed` on.
std::vector<Tensor> leaves(const Shape& query, const Shape& key_value, uint64_t seed) {
  return {random_leaf(query, seed), random_leaf(key_value, seed + 1), random_leaf(key_value, seed + 2)};
}

Tensor random_f32(const Shape& shape, uint64_t seed, bool requires_grad = true) {
  Generator generator(seed);
  Tensor tensor = empty(shape, DType::f32);
  uniform_(tensor, -1.0, 1.0, &generator);
  if (requires_grad) tensor.set_requires_grad(true);
  return tensor;
}

using Attention = Tensor (*)(const Tensor&, const Tensor&, const Tensor&, bool, std::optional<double>);

// The output and the gradients of q, k, v under the upstream gradient `weight`, from fresh leaves
// holding `dtype` copies of the inputs ((B, T, H, D) leaves seen as (B, H, T, D) when `transposed`).
std::vector<Tensor> output_and_gradients(Attention attention, const std::vector<Tensor>& inputs, const Tensor& weight,
                                         DType dtype, bool causal, bool transposed = false) {
  std::vector<Tensor> leaves;
  for (const Tensor& input : inputs) leaves.push_back(input.detach().to(dtype).set_requires_grad(true));
  auto heads = [&](const Tensor& t) { return transposed ? t.transpose(1, 2) : t; };
  Tensor out = attention(heads(leaves[0]), heads(leaves[1]), heads(leaves[2]), causal, std::nullopt);
  out.backward(weight.to(dtype));
  return {out.to(DType::f32), leaves[0].grad().to(DType::f32), leaves[1].grad().to(DType::f32),
          leaves[2].grad().to(DType::f32)};
}

double max_abs_difference(const Tensor& a, const Tensor& b) { return amax(abs(sub(a, b))).item(); }

}  // namespace

TEST_CASE("gradcheck: fused attention", "[attention][gradcheck]") {
  auto fused = [](bool causal, std::optional<double> scale = std::nullopt) {
    return [causal, scale](const auto& in) { return scaled_dot_product_attention(in[0], in[1], in[2], causal, scale); };
  };
  SECTION("multi-head, causal and not, T = 70 (a full and a partial block)") {
    std::vector<Tensor> qkv = leaves({1, 2, 70, 4}, {1, 2, 70, 4}, 1);
    REQUIRE_GRADCHECK(fused(true), qkv);
    REQUIRE_GRADCHECK(fused(false, 0.7), qkv);
  }
  SECTION("grouped-query: 4 query heads on 2 kv heads, T = 67") {
    REQUIRE_GRADCHECK(fused(true), leaves({1, 4, 67, 4}, {1, 2, 67, 4}, 4));
  }
  SECTION("multi-query: 3 query heads on 1 kv head, batch 2") {
    REQUIRE_GRADCHECK(fused(false), leaves({2, 3, 9, 6}, {2, 1, 11, 6}, 7));
  }
  SECTION("KV cache: Tq < Tk with a bottom-right causal mask, and one decode step") {
    REQUIRE_GRADCHECK(fused(true), leaves({1, 2, 37, 4}, {1, 1, 101, 4}, 10));
    REQUIRE_GRADCHECK(fused(true), leaves({1, 2, 1, 4}, {1, 2, 70, 4}, 13));
  }
  SECTION("transposed views of (B, T, H, D) leaves") {
    REQUIRE_GRADCHECK([](const auto& in) {
      return scaled_dot_product_attention(in[0].transpose(1, 2), in[1].transpose(1, 2), in[2].transpose(1, 2), true);
    }, leaves({2, 66, 2, 4}, {2, 66, 1, 4}, 16));
  }
}

TEST_CASE("gradcheck: rope", "[attention][rope][gradcheck]") {
  Tensor positions = positions_of({0, 3, 7, 100, 2});
  REQUIRE_GRADCHECK([positions](const auto& in) { return rope(in[0], positions); }, {random_leaf({2, 5, 3, 8}, 20)});
  REQUIRE_GRADCHECK([positions](const auto& in) { return rope(in[0].transpose(1, 2), positions, 500000.0); },
                    {random_leaf({2, 3, 5, 6}, 21)});
}

TEST_CASE("rope scores depend only on relative position", "[attention][rope]") {
  // <rope(q, m), rope(k, n)> = <q, R(n - m) k>: shifting every position leaves q . k unchanged.
  Tensor q = random_leaf({1, 6, 2, 16}, 30), k = random_leaf({1, 6, 2, 16}, 31);
  auto scores = [&](std::vector<int64_t> where) {
    Tensor p = positions_of(where);
    return matmul(rope(q, p).transpose(1, 2), rope(k, p).transpose(1, 2).transpose(2, 3));
  };
  Tensor near = scores({0, 1, 2, 3, 4, 5}), far = scores({1000, 1001, 1002, 1003, 1004, 1005});
  CHECK(max_abs_difference(near, far) < 1e-10);
  CHECK(max_abs_difference(rope(q, positions_of({0, 0, 0, 0, 0, 0})), q) == 0.0);
}

TEST_CASE("fused attention matches the reference in f32", "[attention]") {
  struct Case {
    const char* name;
    Shape q, kv;
    bool causal, transposed;
  };
  std::vector<Case> cases = {
      {"causal, grouped-query, T = 200", {2, 4, 200, 32}, {2, 2, 200, 32}, true, false},
      {"non-causal, T = 130", {1, 3, 130, 16}, {1, 3, 130, 16}, false, false},
      {"KV cache, Tq = 50, Tk = 300", {1, 2, 50, 24}, {1, 1, 300, 24}, true, false},
      {"transposed (B, T, H, D) views", {2, 150, 4, 32}, {2, 150, 1, 32}, true, true},
  };
  uint64_t seed = 40;
  for (const Case& c : cases) {
    INFO(c.name);
    std::vector<Tensor> inputs = {random_f32(c.q, seed, false), random_f32(c.kv, seed + 1, false),
                                  random_f32(c.kv, seed + 2, false)};
    // Transposed cases also send a non-contiguous upstream gradient.
    Tensor weight = random_f32(c.q, seed + 3, false);
    if (c.transposed) weight = weight.transpose(1, 2);
    seed += 4;
    std::vector<Tensor> fused =
        output_and_gradients(scaled_dot_product_attention, inputs, weight, DType::f32, c.causal, c.transposed);
    std::vector<Tensor> reference =
        output_and_gradients(attention_reference, inputs, weight, DType::f32, c.causal, c.transposed);
    const char* names[] = {"out", "grad q", "grad k", "grad v"};
    for (size_t i = 0; i < fused.size(); ++i) {
      INFO(names[i] << ": max |fused - reference| = " << max_abs_difference(fused[i], reference[i]));
      CHECK(allclose(fused[i], reference[i], 2e-5, 5e-6));
    }
  }
}

TEST_CASE("attention and rope in bf16 and f16 track f32", "[attention][dtype]") {
  for (auto [dtype, tolerance] : {std::pair{DType::bf16, 1e-2}, std::pair{DType::f16, 2e-3}}) {
    INFO(dtype_name(dtype));
    // Inputs rounded to the 16-bit type first, so only the kernel's own rounding is measured.
    std::vector<Tensor> inputs;
    for (uint64_t seed : {50, 51, 52}) {
      inputs.push_back(random_f32({1, 4, 90, 32}, seed, false).to(dtype).to(DType::f32));
    }
    Tensor weight = random_f32({1, 4, 90, 32}, 53, false).to(dtype).to(DType::f32);
    std::vector<Tensor> low = output_and_gradients(scaled_dot_product_attention, inputs, weight, dtype, true);
    std::vector<Tensor> reference = output_and_gradients(attention_reference, inputs, weight, DType::f32, true);
    for (size_t i = 0; i < low.size(); ++i) {
      INFO("output " << i << ": max |" << dtype_name(dtype) << " - f32| = "
                      << max_abs_difference(low[i], reference[i]));
      CHECK(allclose(low[i], reference[i], tolerance, tolerance));
    }
    Tensor x = random_f32({2, 9, 3, 16}, 54, false).to(dtype).to(DType::f32);
    Tensor where = positions_of({0, 1, 2, 3, 50, 60, 70, 800, 9000});
    CHECK(allclose(rope(x.to(dtype), where).to(DType::f32), rope(x, where), tolerance, tolerance));
  }
}

TEST_CASE("fused attention is deterministic across thread counts", "[attention]") {
  std::vector<Tensor> inputs = {random_f32({1, 4, 300, 32}, 60, false), random_f32({1, 2, 300, 32}, 61, false),
                                random_f32({1, 2, 300, 32}, 62, false)};
  Tensor weight = random_f32({1, 4, 300, 32}, 63, false);
  // Three threads even on a smaller machine, so that the tasks really are split differently.
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  std::vector<Tensor> serial = output_and_gradients(scaled_dot_product_attention, inputs, weight, DType::f32, true);
  omp_set_num_threads(3);
  std::vector<Tensor> parallel = output_and_gradients(scaled_dot_product_attention, inputs, weight, DType::f32, true);
  omp_set_num_threads(threads);
  for (size_t i = 0; i < serial.size(); ++i) CHECK(serial[i].to_vector<float>() == parallel[i].to_vector<float>());
}

TEST_CASE("PyTorch parity: attention and rope", "[attention][parity]") {
  kiln::testing::ParitySuite suite;
  const kiln::testing::Tolerance attention_tolerance{5e-5, 5e-6}, rope_tolerance{1e-5, 1e-6};
  auto attention_case = [&](const std::string& name, const Shape& q, const Shape& kv, bool causal,
                            std::optional<double> scale, std::vector<json> transforms, uint64_t seed) {
    json params = {{"causal", causal}};
    if (scale) params["scale"] = *scale;
    suite.add(name, "attention", {random_f32(q, seed), random_f32(kv, seed + 1), random_f32(kv, seed + 2)}, params,
              [causal, scale](const auto& in) {
                return std::vector<Tensor>{scaled_dot_product_attention(in[0], in[1], in[2], causal, scale)};
              },
              attention_tolerance, transforms);
  };
  json none = nullptr, to_heads = {{"transpose", {1, 2}}};
  attention_case("attention/causal", {2, 2, 70, 16}, {2, 2, 70, 16}, true, std::nullopt, {none, none, none}, 70);
  attention_case("attention/scaled", {1, 2, 65, 8}, {1, 2, 65, 8}, false, 0.3, {none, none, none}, 73);
  attention_case("attention/gqa", {1, 4, 90, 16}, {1, 2, 90, 16}, true, std::nullopt, {none, none, none}, 76);
  attention_case("attention/mqa_kv_cache", {1, 3, 20, 16}, {1, 1, 140, 16}, true, std::nullopt, {none, none, none}, 79);
  attention_case("attention/transposed", {2, 80, 4, 16}, {2, 80, 2, 16}, true, std::nullopt,
                 {to_heads, to_heads, to_heads}, 82);

  auto rope_case = [&](const std::string& name, const Shape& x, std::vector<int64_t> where, double theta,
                       json transform, uint64_t seed) {
    suite.add(name, "rope", {random_f32(x, seed), positions_of(where)}, {{"theta", theta}},
              [theta](const auto& in) { return std::vector<Tensor>{rope(in[0], in[1], theta)}; },
              rope_tolerance, {transform, none});
  };
  rope_case("rope", {2, 7, 3, 8}, {0, 1, 2, 3, 4, 5, 6}, 10000.0, none, 90);
  rope_case("rope/large_positions", {1, 5, 2, 64}, {0, 17, 1000, 50000, 123456}, 500000.0, none, 91);
  rope_case("rope/transposed", {2, 3, 4, 16}, {9, 2, 4, 0}, 10000.0, to_heads, 92);

  std::vector<std::string> problems = suite.compare();
  INFO(suite.size() << " cases compared");
  for (const std::string& problem : problems) UNSCOPED_INFO(problem);
  CHECK(problems.empty());
}

TEST_CASE("fused attention never holds a T x T matrix", "[attention][memory]") {
  // B = 1, H = 2, T = 2048, D = 64 in f32: the reference's scores alone are H T^2 floats (32 MiB),
  // while the fused forward + backward needs O(T) per head beyond its outputs and gradients.
  const int64_t heads = 2, length = 2048, dim = 64;
  const int64_t square_bytes = length * length * 4;
  std::vector<Tensor> inputs;
  for (uint64_t seed : {100, 101, 102}) inputs.push_back(random_f32({1, heads, length, dim}, seed, false));
  Tensor weight = random_f32({1, heads, length, dim}, 103, false);
  auto extra_peak = [&](Attention attention) {
    std::vector<Tensor> leaves;
    for (const Tensor& input : inputs) leaves.push_back(input.detach().clone().set_requires_grad(true));
    reset_peak_memory();
    int64_t before = memory_stats().current_bytes;
    attention(leaves[0], leaves[1], leaves[2], true, std::nullopt).backward(weight);
    return memory_stats().peak_bytes - before;
  };
  int64_t fused = extra_peak(scaled_dot_product_attention), reference = extra_peak(attention_reference);
  INFO("extra peak bytes: fused " << fused << ", reference " << reference << ", one T x T f32 matrix " << square_bytes);
  CHECK(fused < square_bytes);
  CHECK(reference > heads * square_bytes);

  // The kernel's per-thread scratch is allocated through the counted allocator.
  NoGradGuard no_grad;
  reset_peak_memory();
  int64_t before = memory_stats().current_bytes;
  scaled_dot_product_attention(inputs[0], inputs[1], inputs[2]);
  int64_t out_and_lse = heads * length * (dim + 1) * 4;
  CHECK(memory_stats().peak_bytes - before > out_and_lse);
}

TEST_CASE("attention and rope reject bad arguments with the op and shapes named", "[attention][errors]") {
  auto sdpa = [](const Shape& q, const Shape& k, const Shape& v, bool causal = true, DType v_dtype = DType::f32) {
    return scaled_dot_product_attention(zeros(q), zeros(k), zeros(v, v_dtype), causal);
  };
  CHECK_THROWS_WITH(sdpa({2, 4, 8, 16}, {3, 4, 8, 16}, {3, 4, 8, 16}),
                    Contains("scaled_dot_product_attention") && Contains("(2, 4, 8, 16)") &&
                        Contains("(3, 4, 8, 16)") && Contains("batch"));
  CHECK_THROWS_WITH(sdpa({1, 2, 8, 16}, {1, 2, 8, 8}, {1, 2, 8, 8}), Contains("head dims") && Contains("16 vs 8"));
  CHECK_THROWS_WITH(sdpa({1, 3, 8, 16}, {1, 2, 8, 16}, {1, 2, 8, 16}),
                    Contains("3 query heads") && Contains("not a multiple of 2 kv heads"));
  CHECK_THROWS_WITH(sdpa({1, 2, 8, 16}, {1, 2, 8, 16}, {1, 2, 9, 16}), Contains("value shape (1, 2, 9, 16)"));
  CHECK_THROWS_WITH(sdpa({1, 2, 8, 16}, {1, 2, 8, 16}, {1, 2, 8, 16}, true, DType::f64),
                    Contains("scaled_dot_product_attention") && Contains("f32") && Contains("f64"));
  CHECK_THROWS_WITH(sdpa({1, 2, 9, 16}, {1, 2, 8, 16}, {1, 2, 8, 16}), Contains("Tq <= Tk") && Contains("9 > 8"));
  CHECK_NOTHROW(sdpa({1, 2, 9, 16}, {1, 2, 8, 16}, {1, 2, 8, 16}, false));
  CHECK_THROWS_WITH(sdpa({1, 2, 8, 0}, {1, 2, 8, 0}, {1, 2, 8, 0}), Contains("empty head dim"));
  CHECK_THROWS_WITH(sdpa({1, 2, 8, 4}, {1, 2, 0, 4}, {1, 2, 0, 4}, false), Contains("no keys"));
  CHECK_THROWS_WITH(sdpa({2, 8, 16}, {2, 8, 16}, {2, 8, 16}), Contains("(B, H, T, D)") && Contains("(2, 8, 16)"));
  CHECK_THROWS_WITH(attention_reference(zeros({1, 2, 4, 8}), zeros({1, 2, 4, 6}), zeros({1, 2, 4, 6})),
                    Contains("attention_reference") && Contains("head dims"));

  CHECK_THROWS_WITH(rope(zeros({1, 4, 2, 7}), positions_of({0, 1, 2, 3})), Contains("rope") && Contains("even"));
  CHECK_THROWS_WITH(rope(zeros({1, 4, 2, 8}), positions_of({0, 1, 2})),
                    Contains("rope") && Contains("(3)") && Contains("(1, 4, 2, 8)"));
  CHECK_THROWS_WITH(rope(zeros({1, 4, 2, 8}), zeros({4}, DType::i32)), Contains("rope") && Contains("i64"));
  CHECK_THROWS_WITH(rope(zeros({4, 2, 8}), positions_of({0, 1, 2, 3})), Contains("(B, T, H, D)"));
}

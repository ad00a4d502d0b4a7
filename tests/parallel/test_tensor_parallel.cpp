// Mesh and tensor parallelism, run alone and under mpirun at 2 and 4 ranks. The world is the
// tensor-parallel group (or a mesh's tp group), and every check compares against what the
// whole computation gives on one rank, computed locally on every rank:
// - the mesh's rank order, groups and layout errors;
// - each mapping's forward and backward (f64, exact);
// - each layer and block against its nn:: counterpart built from the same seed (outputs, input
//   gradients and gathered weight gradients, f32 within kTolerance);
// - the collectives a column/row pair issues (one all-reduce each way, or an all-gather and a
//   reduce-scatter each way under sequence parallelism).
// Training equivalence is in test_tp_training.cpp.
#include <array>
#include <functional>
#include <string>

#include "nn/transformer_config.h"
#include "parallel/mesh.h"
#include "parallel/tp_blocks.h"
#include "parallel/tp_layers.h"
#include "tensor_parallel_test.h"

namespace kiln::parallel::testing {
namespace {

using Catch::Contains;

// ---- mesh ------------------------------------------------------------------------------------

std::vector<MeshShape> layouts_for(int world_size) {
  std::vector<MeshShape> layouts{MeshShape().tp(world_size), MeshShape().dp(world_size), MeshShape().pp(world_size)};
  if (world_size == 4) {
    layouts.push_back(MeshShape().tp(2).dp(2));
    layouts.push_back(MeshShape().tp(2).pp(2));
    layouts.push_back(MeshShape().cp(2).ep(2));
  }
  return layouts;
}

TEST_CASE("mesh: coordinates follow the documented rank order and each group varies one coordinate") {
  for (const MeshShape& shape : layouts_for(world_group().size())) {
    Mesh mesh(world_ptr(), shape);
    INFO(shape.describe() << " on world rank " << world_group().rank());
    std::array<int, kMeshDims> coordinates{};
    for (int d = 0; d < kMeshDims; ++d) coordinates[d] = mesh.coordinate(static_cast<MeshDim>(d));
    const int expected_rank = coordinates[0] + shape.size(MeshDim::tp) *
        (coordinates[1] + shape.size(MeshDim::cp) *
        (coordinates[2] + shape.size(MeshDim::ep) * (coordinates[3] + shape.size(MeshDim::dp) * coordinates[4])));
    CHECK(expected_rank == world_group().rank());
    CHECK(mesh.world_rank_at(coordinates) == world_group().rank());
    for (int d = 0; d < kMeshDims; ++d) {
      Communicator& group = *mesh.group(static_cast<MeshDim>(d));
      CHECK(group.size() == shape.size(static_cast<MeshDim>(d)));
      CHECK(group.rank() == coordinates[d]);
      // Member j of the group is the rank at these coordinates with coordinate d set to j.
      Tensor members = empty({group.size()}, TensorOptions(DType::i64));
      group.all_gather(full({1}, world_group().rank(), TensorOptions(DType::i64)), members);
      for (int j = 0; j < group.size(); ++j) {
        std::array<int, kMeshDims> other = coordinates;
        other[d] = j;
        CHECK(members.to_vector<int64_t>()[j] == mesh.world_rank_at(other));
      }
    }
  }
}

TEST_CASE("mesh: layouts that do not fit are rejected with the numbers") {
  const int n = world_group().size();
  CHECK_THROWS_WITH(Mesh(world_ptr(), MeshShape().tp(n).dp(3)),
                    Contains("Mesh: tp " + std::to_string(n) + " x cp 1 x ep 1 x dp 3 x pp 1 = " + std::to_string(3 * n) +
                             " ranks, but the world has " + std::to_string(n)));
  CHECK_THROWS_WITH(MeshShape().tp(0).check_world(1), Contains("Mesh: tp must be at least 1, got 0"));

  nn::TransformerConfig config = nn::TransformerConfig::llama(16, 8, 2, 6, 2, 12);
  CHECK_NOTHROW(MeshShape().tp(2).cp(2).pp(2).check_model(config, 8));
  CHECK_THROWS_WITH(MeshShape().tp(4).check_model(config, 8), Contains("Mesh: n_heads 6 is not divisible by tp 4"));
  CHECK_THROWS_WITH(MeshShape().tp(3).check_model(config, 8), Contains("Mesh: n_kv_heads 2 is not divisible by tp 3"));
  CHECK_THROWS_WITH(MeshShape().cp(2).check_model(config, 6),
                    Contains("Mesh: sequence length 6 is not divisible by 2 x cp = 4"));
  CHECK_THROWS_WITH(MeshShape().pp(3).check_model(config, 8), Contains("Mesh: 2 layers are fewer than pp 3 pipeline stages"));
}

// ---- mappings --------------------------------------------------------------------------------

// (B, T, C) with T and C divisible by 1, 2 and 4 ranks; f64 so sums are exact enough for 1e-12.
const Shape kMappingShape{2, 4, 8};
constexpr double kExact = 1e-12;

TEST_CASE("tp mappings: forward and backward match the single-process computation") {
  Group group = world_ptr();
  const int n = group->size(), r = group->rank();
  const Tensor x = random(kMappingShape, 1, DType::f64);
  const Tensor weights = random(kMappingShape, 2, DType::f64);  // the upstream gradient d loss / d y

  auto backward_of = [](const Tensor& input, const std::function<Tensor(const Tensor&)>& mapping, const Tensor& upstream) {
    Tensor leaf_input = leaf(input);
    Tensor y = mapping(leaf_input);
    sum(mul(y, upstream)).backward();
    return std::pair<Tensor, Tensor>{y.detach(), leaf_input.grad()};
  };
  // Rank-dependent values: rank q contributes x + q; their sum over ranks is n x + n(n-1)/2.
  const Tensor rank_sum = x * static_cast<double>(n) + static_cast<double>(n * (n - 1) / 2);
  const Tensor weight_sum = weights * static_cast<double>(n) + static_cast<double>(n * (n - 1) / 2);
  const int64_t c = kMappingShape[2] / n, t = kMappingShape[1] / n;

  SECTION("copy_to: identity forward, all-reduce backward") {
    auto [y, grad] = backward_of(x, [&](const Tensor& in) { return copy_to_tensor_parallel_region(in, group); },
                                 weights + static_cast<double>(r));
    check_close(y, x, 0, "output");
    check_close(grad, weight_sum, kExact, "input gradient");
  }
  SECTION("reduce_from: all-reduce forward, identity backward") {
    auto [y, grad] = backward_of(x + static_cast<double>(r),
                                 [&](const Tensor& in) { return reduce_from_tensor_parallel_region(in, group); }, weights);
    check_close(y, rank_sum, kExact, "output");
    check_close(grad, weights, 0, "input gradient");
  }
  SECTION("scatter_to: own chunk of the last dim forward, all-gather backward") {
    auto [y, grad] = backward_of(x, [&](const Tensor& in) { return scatter_to_tensor_parallel_region(in, group); },
                                 weights.narrow(2, r * c, c));
    check_close(y, x.narrow(2, r * c, c).contiguous(), 0, "output");
    check_close(grad, weights, 0, "input gradient");
  }
  SECTION("gather_from: all-gather of the last dim forward, own chunk backward") {
    auto [y, grad] = backward_of(x.narrow(2, r * c, c).contiguous(),
                                 [&](const Tensor& in) { return gather_from_tensor_parallel_region(in, group); }, weights);
    check_close(y, x, 0, "output");
    check_close(grad, weights.narrow(2, r * c, c).contiguous(), 0, "input gradient");
  }
  SECTION("scatter_to_sequence: own chunk of the sequence forward, all-gather backward") {
    auto [y, grad] = backward_of(x, [&](const Tensor& in) { return scatter_to_sequence_parallel_region(in, group); },
                                 weights.narrow(1, r * t, t));
    check_close(y, x.narrow(1, r * t, t).contiguous(), 0, "output");
    check_close(grad, weights, 0, "input gradient");
  }
  SECTION("gather_from_sequence: all-gather of the sequence forward, reduce-scatter backward") {
    auto [y, grad] = backward_of(x.narrow(1, r * t, t).contiguous(),
                                 [&](const Tensor& in) { return gather_from_sequence_parallel_region(in, group); },
                                 weights + static_cast<double>(r));
    check_close(y, x, 0, "output");
    check_close(grad, weight_sum.narrow(1, r * t, t).contiguous(), kExact, "input gradient");
  }
  SECTION("reduce_scatter_to_sequence: reduce-scatter forward, all-gather backward") {
    auto [y, grad] = backward_of(x + static_cast<double>(r),
                                 [&](const Tensor& in) { return reduce_scatter_to_sequence_parallel_region(in, group); },
                                 weights.narrow(1, r * t, t));
    check_close(y, rank_sum.narrow(1, r * t, t).contiguous(), kExact, "output");
    check_close(grad, weights, 0, "input gradient");
  }
}

TEST_CASE("tp mappings: a dim that does not divide by the group is an error naming it") {
  if (world_group().size() == 1) return;
  const Tensor x = random({2, 3, 5}, 3);
  CHECK_THROWS_WITH(scatter_to_tensor_parallel_region(x, world_ptr()), Contains("dim 2 of shape (2, 3, 5) is not divisible"));
  CHECK_THROWS_WITH(reduce_scatter_to_sequence_parallel_region(x, world_ptr()), Contains("dim 1 of shape (2, 3, 5)"));
}

// ---- layers ----------------------------------------------------------------------------------

// Runs `run` on a fresh leaf of `input` with upstream gradient `upstream`; returns the output
// and the input's gradient.
std::pair<Tensor, Tensor> run_with_backward(const Tensor& input, const std::function<Tensor(const Tensor&)>& run,
                                            const Tensor& upstream) {
  Tensor x = leaf(input);
  Tensor y = run(x);
  sum(mul(y, upstream)).backward();
  return {y.detach(), x.grad()};
}

TEST_CASE("ColumnParallelLinear with gather_output equals nn::Linear from the same seed") {
  Group group = world_ptr();
  Generator reference_generator(kSeed), parallel_generator(kSeed);
  nn::Linear reference(6, 8, true, &reference_generator);
  ColumnParallelLinear parallel(6, 8, group, ColumnParallelOptions().gather_output(true), &parallel_generator);
  const Tensor x = random({3, 5, 6}, 7), upstream = random({3, 5, 8}, 8);
  auto [y_ref, dx_ref] = run_with_backward(x, [&](const Tensor& in) { return reference.forward(in); }, upstream);
  auto [y, dx] = run_with_backward(x, [&](const Tensor& in) { return parallel.forward(in); }, upstream);
  check_close(y, y_ref, kTolerance, "output");
  check_close(dx, dx_ref, kTolerance, "input gradient");
  check_close(gathered(parallel.weight.grad(), 0, *group), reference.weight.grad(), kTolerance, "weight gradient");
  check_close(gathered(parallel.bias.grad(), 0, *group), reference.bias.grad(), kTolerance, "bias gradient");
  CHECK(parallel.named_parameters()[0].info.partition_dim == 0);
}

TEST_CASE("RowParallelLinear on a full input equals nn::Linear from the same seed") {
  Group group = world_ptr();
  Generator reference_generator(kSeed), parallel_generator(kSeed);
  nn::Linear reference(8, 6, true, &reference_generator);
  RowParallelLinear parallel(8, 6, group, RowParallelOptions().input_is_parallel(false), &parallel_generator);
  const Tensor x = random({3, 5, 8}, 7), upstream = random({3, 5, 6}, 8);
  auto [y_ref, dx_ref] = run_with_backward(x, [&](const Tensor& in) { return reference.forward(in); }, upstream);
  auto [y, dx] = run_with_backward(x, [&](const Tensor& in) { return parallel.forward(in); }, upstream);
  check_close(y, y_ref, kTolerance, "output");
  check_close(dx, dx_ref, kTolerance, "input gradient");
  check_close(gathered(parallel.weight.grad(), 1, *group), reference.weight.grad(), kTolerance, "weight gradient");
  check_close(parallel.bias.grad(), reference.bias.grad(), kTolerance, "bias gradient");
  CHECK(parallel.named_parameters()[0].info.partition_dim == 1);
}

TEST_CASE("VocabParallelEmbedding equals nn::Embedding from the same seed") {
  Group group = world_ptr();
  Generator reference_generator(kSeed), parallel_generator(kSeed);
  nn::Embedding reference(12, 5, std::nullopt, &reference_generator);
  VocabParallelEmbedding parallel(12, 5, group, &parallel_generator);
  std::vector<int64_t> tokens{0, 11, 3, 3, 7, 5, 9, 1, 11, 6, 2, 8};
  const Tensor indices = from_vector(tokens, {3, 4}, TensorOptions(DType::i64));
  const Tensor upstream = random({3, 4, 5}, 9);
  Tensor y_ref = reference.forward(indices), y = parallel.forward(indices);
  sum(mul(y_ref, upstream)).backward();
  sum(mul(y, upstream)).backward();
  check_close(y.detach(), y_ref.detach(), kTolerance, "output");
  check_close(gathered(parallel.weight.grad(), 0, *group), reference.weight.grad(), kTolerance, "weight gradient");
  CHECK_THROWS_WITH(parallel.forward(from_vector(std::vector<int64_t>{12}, {1}, TensorOptions(DType::i64))),
                    Contains("index 12 is out of range for 12 embeddings"));
}

TEST_CASE("vocab_parallel_cross_entropy equals cross_entropy on the full logits") {
  Group group = world_ptr();
  const int n = group->size(), r = group->rank();
  const int64_t vocab = 12, columns = vocab / n;
  // Shifted rows so the max sits on different ranks; one ignored target.
  const Tensor logits = random({2, 3, vocab}, 11) * 3.0;
  const Tensor targets = from_vector(std::vector<int64_t>{0, 11, -100, 5, 6, 2}, {2, 3}, TensorOptions(DType::i64));
  for (Reduction reduction : {Reduction::mean, Reduction::sum, Reduction::none}) {
    INFO("reduction " << static_cast<int>(reduction));
    const CrossEntropyOptions options = CrossEntropyOptions().reduce(reduction);
    Tensor full_logits = leaf(logits);
    Tensor local_logits = leaf(logits.narrow(2, r * columns, columns).contiguous());
    Tensor expected = cross_entropy(full_logits, targets, options);
    Tensor actual = vocab_parallel_cross_entropy(local_logits, targets, group, options);
    check_close(actual.detach(), expected.detach(), kTolerance, "loss");
    const Tensor upstream = reduction == Reduction::none ? random({2, 3}, 12) : ones({});
    sum(mul(expected, upstream)).backward();
    sum(mul(actual, upstream)).backward();
    check_close(local_logits.grad(), full_logits.grad().narrow(2, r * columns, columns).contiguous(), kTolerance,
                "logit gradient");
  }
  CHECK_THROWS_WITH(vocab_parallel_cross_entropy(logits.narrow(2, 0, columns).contiguous(), targets, group,
                                                 CrossEntropyOptions().smoothing(0.1)),
                    Contains("label smoothing is not supported"));
}

// The gradient of every parameter of a TP module, gathered, against the nn:: module's.
void check_parameter_gradients(const nn::Module& parallel, const nn::Module& reference, Communicator& group,
                               const std::vector<int64_t>& qkv_blocks = {}) {
  NamedParameters ours = parallel.named_parameters(), theirs = reference.named_parameters();
  REQUIRE(ours.size() == theirs.size());
  for (size_t i = 0; i < ours.size(); ++i) {
    REQUIRE(ours[i].name == theirs[i].name);
    const int64_t dim = ours[i].info.partition_dim;
    const bool packed = ours[i].name.find("qkv") != std::string::npos;
    Tensor grad = dim < 0 ? ours[i].tensor.grad() : gathered(ours[i].tensor.grad(), dim, group, packed ? qkv_blocks : std::vector<int64_t>{});
    check_close(grad, theirs[i].tensor.grad(), kTolerance, "gradient of " + ours[i].name);
  }
}

TEST_CASE("ParallelMLP and ParallelSwiGLU equal nn::MLP and nn::SwiGLU, with and without sequence parallelism") {
  Group group = world_ptr();
  const int n = group->size(), r = group->rank();
  const Tensor x = random({2, 4, 8}, 21), upstream = random({2, 4, 8}, 22);
  for (bool sequence_parallel : {false, true}) {
    INFO("sequence_parallel " << sequence_parallel);
    // Under sequence parallelism the block reads and writes this rank's chunk of the sequence.
    const int64_t t = sequence_parallel ? 4 / n : 4;
    auto local = [&](const Tensor& full) { return sequence_parallel ? full.narrow(1, r * t, t).contiguous() : full; };
    {
      Generator reference_generator(kSeed), parallel_generator(kSeed);
      nn::MLP reference(8, 16, true, GeluApproximation::tanh, &reference_generator);
      ParallelMLP parallel(8, 16, group, true, GeluApproximation::tanh, &parallel_generator, sequence_parallel);
      auto [y_ref, dx_ref] = run_with_backward(x, [&](const Tensor& in) { return reference.forward(in); }, upstream);
      auto [y, dx] = run_with_backward(local(x), [&](const Tensor& in) { return parallel.forward(in); }, local(upstream));
      check_close(y, local(y_ref), kTolerance, "MLP output");
      check_close(dx, local(dx_ref), kTolerance, "MLP input gradient");
      check_parameter_gradients(parallel, reference, *group);
    }
    {
      Generator reference_generator(kSeed), parallel_generator(kSeed);
      nn::SwiGLU reference(8, 16, true, &reference_generator);
      ParallelSwiGLU parallel(8, 16, group, true, &parallel_generator, sequence_parallel);
      auto [y_ref, dx_ref] = run_with_backward(x, [&](const Tensor& in) { return reference.forward(in); }, upstream);
      auto [y, dx] = run_with_backward(local(x), [&](const Tensor& in) { return parallel.forward(in); }, local(upstream));
      check_close(y, local(y_ref), kTolerance, "SwiGLU output");
      check_close(dx, local(dx_ref), kTolerance, "SwiGLU input gradient");
      check_parameter_gradients(parallel, reference, *group);
    }
  }
}

TEST_CASE("ParallelSelfAttention splits query and key/value heads and equals nn::CausalSelfAttention") {
  Group group = world_ptr();
  // 8 query heads in 4 GQA groups (kv heads split by 4 ranks too), RoPE; and plain MHA with biases.
  for (nn::AttentionOptions options : {nn::AttentionOptions{.d_model = 16, .n_heads = 8, .n_kv_heads = 4, .bias = false, .rope = true},
                                       nn::AttentionOptions{.d_model = 16, .n_heads = 4, .n_kv_heads = 0, .bias = true}}) {
    INFO("n_heads " << options.n_heads << ", n_kv_heads " << options.n_kv_heads);
    Generator reference_generator(kSeed), parallel_generator(kSeed);
    nn::CausalSelfAttention reference(options, &reference_generator);
    ParallelSelfAttention parallel(options, group, &parallel_generator);
    CHECK(parallel.local_heads == options.n_heads / group->size());
    const Tensor x = random({2, 5, 16}, 31), upstream = random({2, 5, 16}, 32);
    auto [y_ref, dx_ref] = run_with_backward(x, [&](const Tensor& in) { return reference.forward(in); }, upstream);
    auto [y, dx] = run_with_backward(x, [&](const Tensor& in) { return parallel.forward(in); }, upstream);
    check_close(y, y_ref, kTolerance, "output");
    check_close(dx, dx_ref, kTolerance, "input gradient");
    const int64_t head_dim = 16 / options.n_heads, kv = (options.n_kv_heads ? options.n_kv_heads : options.n_heads) * head_dim;
    check_parameter_gradients(parallel, reference, *group, {16, kv, kv});
  }
  if (group->size() == 4) {
    CHECK_THROWS_WITH(ParallelSelfAttention(nn::AttentionOptions{.d_model = 16, .n_heads = 8, .n_kv_heads = 2}, group),
                      Contains("n_kv_heads 2 is not divisible by tp 4"));
  }
}

TEST_CASE("a column/row pair issues one collective of each kind per direction (Megatron's MLP)") {
  Group group = world_ptr();
  const int n = group->size();
  if (n == 1) return;  // nothing is sent in a group of one
  const Tensor x = random({2, 4, 8}, 41);
  const int64_t activation_bytes = x.numel() * 4;  // (B, T, d) f32
  for (bool sequence_parallel : {false, true}) {
    INFO("sequence_parallel " << sequence_parallel);
    Generator generator(kSeed);
    ParallelMLP mlp(8, 16, group, true, GeluApproximation::tanh, &generator, sequence_parallel);
    Tensor input = leaf(sequence_parallel ? x.narrow(1, group->rank() * (4 / n), 4 / n).contiguous() : x);
    group->reset_stats();
    Tensor y = mlp.forward(input);
    CommunicationStats forward = group->stats();
    sum(y).backward();
    CommunicationStats both = group->stats();
    if (sequence_parallel) {
      // forward: all-gather the input's sequence, reduce-scatter the output's;
      // backward: reduce-scatter the input's gradient, all-gather the output's.
      CHECK(forward.count(Collective::all_gather) == 1);
      CHECK(forward.count(Collective::reduce_scatter) == 1);
      CHECK(forward.count(Collective::all_reduce) == 0);
      CHECK(both.count(Collective::all_gather) == 2);
      CHECK(both.count(Collective::reduce_scatter) == 2);
      // The output bias reads through copy_to (its gradient is summed over the ranks).
      CHECK(both.count(Collective::all_reduce) == 1);
      CHECK(both.bytes(Collective::all_gather) == 2 * (n - 1) * activation_bytes / n);
    } else {
      CHECK(forward.count(Collective::all_reduce) == 1);
      CHECK(forward.bytes(Collective::all_reduce) == 2 * (n - 1) * activation_bytes / n);
      CHECK(both.count(Collective::all_reduce) == 2);
      CHECK(both.count(Collective::all_gather) == 0);
      CHECK(both.count(Collective::reduce_scatter) == 0);
    }
  }
}

}  // namespace
}  // namespace kiln::parallel::testing

// Expert parallelism, run alone and under mpirun at 2 and 4 ranks, with the world as the ep
// group. Rank r holds rows [r N, (r+1) N) of a global batch that every rank builds from the same
// seed, and checks against nn::MoE (built from the same seed) run alone on the whole batch:
// - the mappings: all_to_all_rows, sum_over_group and scale_gradient, forward and backward;
// - ExpertParallelMoE: outputs, aux_loss (balance loss and z-loss), statistics, and gradients of
//   the mean over ranks of each rank's objective (router and shared gradients averaged over the
//   group, expert gradients as they are, input gradients ep times the reference's), for softmax
//   top-2, a capacity that drops assignments, grouped sigmoid routing, a shared expert and
//   uneven token counts;
// - parameter names and the errors for experts that do not divide by ep.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "parallel/expert_parallel.h"
#include "parallel_test.h"

namespace kiln::parallel::testing {
namespace {

using Catch::Contains;

constexpr int64_t kDModel = 8;
constexpr uint64_t kSeed = 2024;
// Float32 sums in another order (the router on fewer rows, per-rank partial means).
constexpr double kTolerance = 1e-5;

std::shared_ptr<Communicator> group_ptr() { return world().communicator; }

Tensor random_rows(int64_t rows, int64_t columns, uint64_t seed, DType dtype = DType::f32) {
  Generator generator(seed);
  return randn({rows, columns}, TensorOptions(dtype), &generator);
}

Tensor leaf(const Tensor& values) { return values.detach().clone().set_requires_grad(true); }

// max |a - b| / max |b| (0 when both are zero); an undefined gradient reads as zeros.
double relative_difference(Tensor a, Tensor b) {
  if (!a.defined() && !b.defined()) return 0.0;
  if (!a.defined()) a = zeros_like(b);
  if (!b.defined()) b = zeros_like(a);
  REQUIRE(a.sizes() == b.sizes());
  std::vector<double> actual = a.to(DType::f64).contiguous().to_vector<double>();
  std::vector<double> expected = b.to(DType::f64).contiguous().to_vector<double>();
  double difference = 0.0, scale = 0.0;
  for (size_t i = 0; i < actual.size(); ++i) {
    difference = std::max(difference, std::abs(actual[i] - expected[i]));
    scale = std::max(scale, std::abs(expected[i]));
  }
  return difference == 0.0 ? 0.0 : difference / std::max(scale, 1e-30);
}

void check_close(const Tensor& actual, const Tensor& expected, double tolerance, const std::string& what) {
  INFO(what << " on world rank " << world_group().rank());
  CHECK(relative_difference(actual, expected) <= tolerance);
}

// Group average of a replicated parameter's gradient, as DDP leaves it.
Tensor group_average(const Tensor& grad) {
  Tensor averaged = grad.contiguous().clone();
  world_group().all_reduce(averaged, ReduceOp::avg);
  return averaged;
}

// ---- mappings --------------------------------------------------------------------------------

// Row i that rank `from` sends to rank `to`: every element says where it came from.
Tensor message(int from, int to, int64_t rows) {
  std::vector<double> values;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t c = 0; c < 3; ++c) values.push_back(100.0 * from + 10.0 * to + i + 0.125 * static_cast<double>(c));
  }
  return from_vector(values, {rows, 3}, TensorOptions(DType::f64));
}

// Rows rank `from` sends to rank `to` (0 for some pairs, so empty blocks are covered).
int64_t rows_between(int from, int to) { return (from + 2 * to) % 3; }

TEST_CASE("ep mappings: all_to_all_rows forward and backward follow the row counts") {
  const int n = world_group().size(), r = world_group().rank();
  std::vector<int64_t> send_rows, recv_rows;
  std::vector<Tensor> sent, expected;
  for (int j = 0; j < n; ++j) {
    send_rows.push_back(rows_between(r, j));
    recv_rows.push_back(rows_between(j, r));
    sent.push_back(message(r, j, rows_between(r, j)));
    expected.push_back(message(j, r, rows_between(j, r)));
  }
  Tensor x = leaf(cat(sent));
  Tensor y = all_to_all_rows(x, send_rows, recv_rows, group_ptr());
  check_close(y, cat(expected), 0.0, "received rows");
  // Upstream gradient: the received rows times 2, so each sender gets back twice what it sent.
  sum(mul(y, cat(expected) * 2.0)).backward();
  check_close(x.grad(), cat(sent) * 2.0, 0.0, "gradient rows sent back");
}

TEST_CASE("ep mappings: sum_over_group sums both ways and scale_gradient scales backward only") {
  const int n = world_group().size(), r = world_group().rank();
  Tensor x = leaf(full({3}, r + 1.0, TensorOptions(DType::f64)));
  Tensor y = sum_over_group(x, group_ptr());
  check_close(y, full({3}, n * (n + 1) / 2.0, TensorOptions(DType::f64)), 0.0, "sum forward");
  sum(y * static_cast<double>(r + 1)).backward();
  check_close(x.grad(), full({3}, n * (n + 1) / 2.0, TensorOptions(DType::f64)), 0.0, "sum backward");

  Tensor z = leaf(full({2}, 3.0, TensorOptions(DType::f64)));
  Tensor scaled = scale_gradient(z, 0.25);
  check_close(scaled, z.detach(), 0.0, "scale forward");
  sum(scaled * 2.0).backward();
  check_close(z.grad(), full({2}, 0.5, TensorOptions(DType::f64)), 0.0, "scale backward");
}

TEST_CASE("ep mappings: wrong row counts are errors naming them") {
  const int n = world_group().size();
  Tensor x = zeros({4, kDModel});
  std::vector<int64_t> rows(static_cast<size_t>(n), 0);
  rows[0] = 5;
  CHECK_THROWS_WITH(all_to_all_rows(x, rows, rows, group_ptr()),
                    Contains("all_to_all_rows: send_rows sum to 5 rows but the input of shape (4, 8) has 4"));
  CHECK_THROWS_WITH(all_to_all_rows(x, {4, 0, 0, 0, 0}, rows, group_ptr()),
                    Contains("all_to_all_rows: send_rows has 5 counts for the " + std::to_string(n) + " ranks"));
}

// ---- the layer -------------------------------------------------------------------------------

nn::MoEConfig moe_config(int64_t experts) {
  nn::MoEConfig config;
  config.n_experts = experts;
  config.top_k = 2;
  config.expert_hidden = 16;
  // Large enough that a wrong scaling of the auxiliary gradients shows far above the tolerance.
  config.aux_loss_weight = 0.1;
  config.z_loss_weight = 0.05;
  return config;
}

// Rank r's tokens are rows [first(r), first(r) + count(r)) of the global batch.
using TokensOfRank = std::function<int64_t(int rank)>;
int64_t six_each(int) { return 6; }

// Forward and backward of the parallel layer on this rank's tokens and of nn::MoE on the whole
// batch, then every check of the file header. Returns the reference's statistics.
nn::MoEStatistics check_against_reference(const nn::MoEConfig& config, const TokensOfRank& tokens_of = six_each) {
  const int n = world_group().size(), r = world_group().rank();
  int64_t first = 0, total = 0;
  for (int q = 0; q < n; ++q) {
    if (q < r) first += tokens_of(q);
    total += tokens_of(q);
  }
  const int64_t local = tokens_of(r);
  const Tensor batch = random_rows(total, kDModel, kSeed + 1);
  const Tensor upstream = random_rows(total, kDModel, kSeed + 2);
  constexpr double kScale = 4.0;  // objective_r = sum(out_r * upstream_r) / kScale + aux

  Generator generator(kSeed);
  nn::MoE reference(kDModel, config, &generator);
  ExpertParallelMoE parallel(reference, group_ptr());

  // Reference: the mean over ranks of their objectives, as one function of the whole batch.
  Tensor x_reference = leaf(batch);
  Tensor out_reference = reference.forward(x_reference);
  (sum(mul(out_reference, upstream)) / (kScale * n) + reference.aux_loss).backward();

  Tensor x = leaf(batch.narrow(0, first, local).contiguous());
  Tensor out = parallel.forward(x);
  (sum(mul(out, upstream.narrow(0, first, local))) / kScale + parallel.aux_loss).backward();

  check_close(out, out_reference.detach().narrow(0, first, local), kTolerance, "output rows");
  check_close(parallel.aux_loss, reference.aux_loss, kTolerance, "aux_loss");
  CHECK(parallel.statistics.tokens_per_expert == reference.statistics.tokens_per_expert);
  CHECK(parallel.statistics.dropped == reference.statistics.dropped);
  CHECK(parallel.statistics.dropped_fraction == Approx(reference.statistics.dropped_fraction));

  // Each rank's backward gives n x the mean objective's gradient of its own tensors (the DDP
  // convention); replicated parameters become the objective's gradient when averaged.
  check_close(x.grad(), x_reference.grad().narrow(0, first, local) * static_cast<double>(n), kTolerance,
              "input gradient");
  // Expert parameters are not averaged: each rank's own experts hold the objective's gradient.
  std::map<std::string, Tensor> reference_grads;
  for (const NamedParameter& parameter : reference.named_parameters()) reference_grads[parameter.name] = parameter.tensor.grad();
  std::set<std::string> expert_names;
  for (const NamedParameter& parameter : parallel.expert_parameters()) expert_names.insert(parameter.name);
  for (const NamedParameter& parameter : parallel.named_parameters()) {
    CHECK(reference_grads.count(parameter.name) == 1);
    const bool expert = expert_names.count(parameter.name) > 0;
    check_close(expert ? parameter.tensor.grad() : group_average(parameter.tensor.grad()),
                reference_grads[parameter.name], kTolerance, parameter.name + " gradient");
  }
  {
    NoGradGuard no_grad;  // inference runs the same collectives, without recording them
    check_close(parallel.forward(x), out.detach(), 0.0, "output under no_grad");
  }
  return reference.statistics;
}

TEST_CASE("ExpertParallelMoE: softmax top-2 without capacity equals nn::MoE on the whole batch") {
  check_against_reference(moe_config(4));
  check_against_reference(moe_config(8));
}

TEST_CASE("ExpertParallelMoE: a capacity factor drops the same assignments in global token order") {
  nn::MoEConfig config = moe_config(4);
  config.capacity_factor = 1.0;
  nn::MoEStatistics statistics = check_against_reference(config);
  CHECK(statistics.dropped > 0);
  config = moe_config(8);
  config.capacity_factor = 0.5;
  statistics = check_against_reference(config);
  CHECK(statistics.dropped > 0);
}

TEST_CASE("ExpertParallelMoE: grouped sigmoid routing with scaling equals nn::MoE") {
  nn::MoEConfig config = moe_config(8);
  config.scoring = nn::RouterScoring::sigmoid;
  config.n_groups = 2;
  config.topk_groups = 1;
  config.routed_scaling = 2.5;
  check_against_reference(config);
}

TEST_CASE("ExpertParallelMoE: a shared expert sees every local token") {
  nn::MoEConfig config = moe_config(4);
  config.n_shared_experts = 1;
  check_against_reference(config);
}

TEST_CASE("ExpertParallelMoE: uneven token counts per rank, with capacity") {
  nn::MoEConfig config = moe_config(4);
  config.capacity_factor = 0.75;
  // 5 + 2 r tokens: more assignments than the experts' total capacity at every group size.
  nn::MoEStatistics statistics = check_against_reference(config, [](int rank) -> int64_t { return 5 + 2 * rank; });
  CHECK(statistics.dropped > 0);
  // A rank without tokens still takes part in every collective.
  check_against_reference(moe_config(4), [](int rank) -> int64_t { return rank == 1 ? 0 : 6; });
}

TEST_CASE("ExpertParallelMoE: parameters keep the master's names, experts by global index") {
  const int n = world_group().size(), r = world_group().rank();
  nn::MoEConfig config = moe_config(8);
  config.n_shared_experts = 1;
  Generator generator(kSeed);
  nn::MoE master(kDModel, config, &generator);
  ExpertParallelMoE parallel(master, group_ptr());
  const int64_t per_rank = 8 / n;
  CHECK(parallel.first_expert() == r * per_rank);
  CHECK(static_cast<int64_t>(parallel.local_experts.size()) == per_rank);

  std::set<std::string> expected, names, expert_names;
  for (const NamedParameter& parameter : master.named_parameters()) {
    const std::string& name = parameter.name;
    if (name.rfind("experts.", 0) != 0) {
      expected.insert(name);
      continue;
    }
    const int64_t expert = std::stoll(name.substr(8, name.find('.', 8) - 8));
    if (expert / per_rank == r) expected.insert(name);
  }
  for (const NamedParameter& parameter : parallel.named_parameters()) names.insert(parameter.name);
  for (const NamedParameter& parameter : parallel.expert_parameters()) expert_names.insert(parameter.name);
  CHECK(names == expected);
  CHECK(expert_names.size() == static_cast<size_t>(per_rank * 3));
  for (const std::string& name : expert_names) CHECK(name.rfind("experts.", 0) == 0);
  // Replicas hold the master's values in their own memory.
  CHECK(relative_difference(parallel.router->weight, master.router->weight) == 0.0);
  CHECK_FALSE(parallel.router->weight.is_same(master.router->weight));
}

TEST_CASE("ExpertParallelMoE: experts that do not divide by ep are an error naming both") {
  const int n = world_group().size();
  if (n == 1) return;  // every count divides one rank
  const int64_t experts = n + 1;
  Generator generator(kSeed);
  nn::MoE master(kDModel, moe_config(experts), &generator);
  CHECK_THROWS_WITH(ExpertParallelMoE(master, group_ptr()),
                    Contains("ExpertParallelMoE: " + std::to_string(experts) + " experts are not divisible by ep " +
                             std::to_string(n)));
}

}  // namespace
}  // namespace kiln::parallel::testing

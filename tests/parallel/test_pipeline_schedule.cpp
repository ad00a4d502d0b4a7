// Pipeline schedules (parallel/pipeline_schedule.h) at world size 1, 2 and 4, the world being
// the pipeline group.
//
// Equivalence: a stack of 8 Linear(8, 8) + tanh layers cut into p v virtual stages, 4
// micro-batches of a batch of 8 rows, MSE loss on the last stage. Every rank also runs the whole
// stack on the whole batch alone: the per-micro-batch losses and the gradients of the layers it
// owns agree within 1e-5 (relative), for each schedule, and a second step accumulates into the
// same gradients. Each schedule's in-flight count is checked against its formula.
// Schedules: every rank's action list is simulated against the others' (sends never block, a
// receive waits for its message) for many (p, m, v): no deadlock, and every message arrives
// where it is expected. Plus errors for bad options and bad forward_step outputs.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "kernels/allocator.h"
#include "nn/linear.h"
#include "parallel/pipeline_p2p.h"
#include "parallel/pipeline_schedule.h"
#include "parallel_test.h"

namespace kiln::parallel::testing {
namespace {

using Catch::Contains;

constexpr int64_t kLayers = 8;       // divisible by p v for p in {1, 2, 4}, v = 2
constexpr int64_t kWidth = 8;
constexpr int64_t kBatch = 8;
constexpr int64_t kMicrobatches = 4;
constexpr int64_t kRows = kBatch / kMicrobatches;
constexpr double kTolerance = 1e-5;  // f32, sums over micro-batches in another order than one matmul
constexpr uint64_t kSeed = 2024;

// Most forwards in flight on `rank` under Megatron's orders. 1F1B: the warm-up forwards
// (p - r - 1, at most m) and then the first steady-state forward. Interleaved: the warm-up is
// W = 2 (p - r - 1) + (v - 1) p forwards (at most m v); the steady state adds one before the
// first backward, unless the warm-up already took all m v.
int64_t expected_max_in_flight(const PipelineOptions& options, int p, int rank) {
  const int64_t m = options.microbatches, v = options.virtual_stages;
  switch (options.schedule) {
    case PipelineSchedule::gpipe: return m;
    case PipelineSchedule::one_forward_one_backward: return std::min<int64_t>(p - rank, m);
    case PipelineSchedule::interleaved: return std::min<int64_t>(2 * (p - rank - 1) + (v - 1) * p + 1, m * v);
  }
  return -1;
}

// ---- schedules as action lists (no communication) ----------------------------------------------

struct Message {
  int stage;  // the virtual stage that consumes it
  int64_t microbatch;
  bool operator==(const Message&) const = default;
};

using Orders = std::vector<std::vector<PipelineAction>>;  // per rank

Orders orders_of(const PipelineOptions& options, int p) {
  Orders orders;
  for (int r = 0; r < p; ++r) orders.push_back(pipeline_actions(options, p, r));
  return orders;
}

// Runs every rank's actions against the others (p = actions.size() ranks of v chunks, m
// micro-batches) until all finish or none can move, and returns each rank's most forwards in
// flight; `problem` describes the first thing wrong.
std::vector<int64_t> simulate(const Orders& actions, int v, int64_t m, std::string& problem) {
  const int p = static_cast<int>(actions.size()), last = p * v - 1;
  std::map<std::pair<int, int>, std::deque<Message>> activations, gradients;  // (from, to) -> in flight
  std::map<std::pair<int, int64_t>, int> passes;                              // (stage, microbatch) -> passes run
  std::vector<size_t> next(p, 0);
  std::vector<int64_t> in_flight(p, 0), most(p, 0);
  auto take = [&](std::deque<Message>& queue, Message expected) {
    if (queue.empty()) return false;
    if (!(queue.front() == expected) && problem.empty()) {
      problem = "stage " + std::to_string(expected.stage) + " expected micro-batch " +
                std::to_string(expected.microbatch) + " but got stage " + std::to_string(queue.front().stage) +
                " micro-batch " + std::to_string(queue.front().microbatch);
    }
    queue.pop_front();
    return true;
  };
  for (bool moved = true; moved;) {
    moved = false;
    for (int r = 0; r < p; ++r) {
      const int previous = (r + p - 1) % p, following = (r + 1) % p;
      for (; next[r] < actions[r].size(); ++next[r], moved = true) {
        const PipelineAction& a = actions[r][next[r]];
        const int stage = a.chunk * p + r;
        int& done = passes[{stage, a.microbatch}];
        if (a.pass == PipelinePass::forward) {
          if (stage != 0 && !take(activations[{previous, r}], {stage, a.microbatch})) break;
          if (done != 0 && problem.empty()) problem = "a second forward on stage " + std::to_string(stage);
          if (stage != last) activations[{r, following}].push_back({stage + 1, a.microbatch});
          most[r] = std::max(most[r], ++in_flight[r]);
        } else {
          if (stage != last && !take(gradients[{following, r}], {stage, a.microbatch})) break;
          if (done != 1 && problem.empty()) {
            problem = "a backward without its forward on stage " + std::to_string(stage);
          }
          if (stage != 0) gradients[{r, previous}].push_back({stage - 1, a.microbatch});
          --in_flight[r];
        }
        ++done;
      }
    }
  }
  for (int r = 0; r < p; ++r) {
    if (next[r] != actions[r].size() && problem.empty()) {
      problem = "deadlock: rank " + std::to_string(r) + " stuck at action " + std::to_string(next[r]);
    }
  }
  const int64_t stages_times_microbatches = (last + 1) * m;
  if (problem.empty() && static_cast<int64_t>(passes.size()) != stages_times_microbatches) {
    problem = "not every (stage, micro-batch) ran";
  }
  for (const auto& [key, count] : passes) {
    if (count != 2 && problem.empty()) {
      problem = "stage " + std::to_string(key.first) + " ran " + std::to_string(count) + " passes";
    }
  }
  return most;
}

TEST_CASE("pipeline schedules: every rank's order runs against the others without deadlock") {
  int cases = 0;
  for (int p = 1; p <= 6; ++p) {
    for (PipelineSchedule schedule : {PipelineSchedule::gpipe, PipelineSchedule::one_forward_one_backward,
                                      PipelineSchedule::interleaved}) {
      const bool interleaved = schedule == PipelineSchedule::interleaved;
      for (int v = 1; v <= (interleaved ? 3 : 1); ++v) {
        for (int64_t m = 1; m <= 12; ++m) {
          if (interleaved && m % p != 0) continue;
          const PipelineOptions options = PipelineOptions()
                                              .with_schedule(schedule)
                                              .with_microbatches(m)
                                              .with_virtual_stages(v)
                                              .with_activation_shape({1});
          std::string problem;
          std::vector<int64_t> most = simulate(orders_of(options, p), v, m, problem);
          INFO(pipeline_schedule_name(schedule) << ", p " << p << ", m " << m << ", v " << v);
          CHECK(problem == "");
          for (int r = 0; r < p; ++r) {
            INFO("rank " << r);
            CHECK(most[r] == expected_max_in_flight(options, p, r));
          }
          ++cases;
        }
      }
    }
  }
  CHECK(cases > 200);
}

// The simulation above can fail: orders that disagree between ranks are caught.
TEST_CASE("pipeline schedules: the simulation catches mismatched and deadlocking orders") {
  using P = PipelinePass;
  PipelineOptions options = PipelineOptions().with_microbatches(2).with_activation_shape({1});
  // Rank 1 (last) runs its backwards in the opposite micro-batch order to rank 0's.
  Orders mismatched = orders_of(options.with_schedule(PipelineSchedule::gpipe), 2);
  mismatched[1] = {{P::forward, 0, 0}, {P::forward, 0, 1}, {P::backward, 0, 1}, {P::backward, 0, 0}};
  std::string problem;
  simulate(mismatched, 1, 2, problem);
  CHECK_THAT(problem, Contains("expected micro-batch 0 but got stage 0 micro-batch 1"));
  // p = 3: rank 1 waits for the gradient of micro-batch 0 before it forwards micro-batch 1, which
  // the last rank needs before it runs that backward.
  Orders deadlocked = {{{P::forward, 0, 0}, {P::forward, 0, 1}, {P::backward, 0, 0}, {P::backward, 0, 1}},
                       {{P::forward, 0, 0}, {P::backward, 0, 0}, {P::forward, 0, 1}, {P::backward, 0, 1}},
                       {{P::forward, 0, 0}, {P::forward, 0, 1}, {P::backward, 0, 0}, {P::backward, 0, 1}}};
  problem.clear();
  simulate(deadlocked, 1, 2, problem);
  CHECK_THAT(problem, Contains("deadlock: rank 0 stuck at action 2"));
  // The last rank runs a backward before its forward.
  Orders stuck = orders_of(options.with_schedule(PipelineSchedule::one_forward_one_backward), 2);
  stuck[1] = {{P::forward, 0, 0}, {P::backward, 0, 1}, {P::forward, 0, 1}, {P::backward, 0, 0}};
  problem.clear();
  simulate(stuck, 1, 2, problem);
  CHECK_THAT(problem, Contains("backward without its forward"));
}

TEST_CASE("pipeline schedules: the orders of Megatron-LM") {
  using P = PipelinePass;
  auto f = [](int chunk, int64_t mb) { return PipelineAction{P::forward, chunk, mb}; };
  auto b = [](int chunk, int64_t mb) { return PipelineAction{P::backward, chunk, mb}; };
  PipelineOptions options = PipelineOptions().with_microbatches(4).with_activation_shape({1});
  // GPipe, any rank: all forwards, then all backwards.
  CHECK(pipeline_actions(options.with_schedule(PipelineSchedule::gpipe), 4, 2) ==
        std::vector<PipelineAction>{f(0, 0), f(0, 1), f(0, 2), f(0, 3), b(0, 0), b(0, 1), b(0, 2), b(0, 3)});
  // 1F1B, p = 4: rank 1 warms up with 2 forwards; the last rank alternates from the start.
  options.with_schedule(PipelineSchedule::one_forward_one_backward);
  CHECK(pipeline_actions(options, 4, 1) ==
        std::vector<PipelineAction>{f(0, 0), f(0, 1), f(0, 2), b(0, 0), f(0, 3), b(0, 1), b(0, 2), b(0, 3)});
  CHECK(pipeline_actions(options, 4, 3) ==
        std::vector<PipelineAction>{f(0, 0), b(0, 0), f(0, 1), b(0, 1), f(0, 2), b(0, 2), f(0, 3), b(0, 3)});
  // Interleaved, p = 2, v = 2, rank 0: warm-up 2 (2 - 0 - 1) + (2 - 1) 2 = 4; micro-batches in
  // groups of 2 through chunk 0 then chunk 1; backwards through chunk 1 then chunk 0.
  options.with_schedule(PipelineSchedule::interleaved).with_virtual_stages(2);
  CHECK(pipeline_actions(options, 2, 0) ==
        std::vector<PipelineAction>{f(0, 0), f(0, 1), f(1, 0), f(1, 1), f(0, 2), b(1, 0), f(0, 3), b(1, 1),
                                    f(1, 2), b(0, 0), f(1, 3), b(0, 1), b(1, 2), b(1, 3), b(0, 2), b(0, 3)});
}

TEST_CASE("pipeline options: names, predicted bubble and errors") {
  for (const char* name : {"gpipe", "1f1b", "interleaved"}) {
    CHECK(std::string(pipeline_schedule_name(parse_pipeline_schedule(name))) == name);
  }
  CHECK_THROWS_WITH(parse_pipeline_schedule("zigzag"), Contains("'zigzag'") && Contains("gpipe, 1f1b or interleaved"));

  PipelineOptions options = PipelineOptions().with_microbatches(8).with_activation_shape({2, 8});
  CHECK(predicted_bubble_fraction(options, 4) == Approx(3.0 / 8));
  CHECK(predicted_bubble_fraction(options.with_schedule(PipelineSchedule::interleaved).with_virtual_stages(2), 4) ==
        Approx(3.0 / 16));

  const auto valid = PipelineOptions().with_microbatches(4).with_activation_shape({2, 8});
  CHECK_THROWS_WITH(validate_pipeline_options(PipelineOptions(valid).with_microbatches(0), 2),
                    Contains("microbatches must be >= 1, got 0"));
  CHECK_THROWS_WITH(validate_pipeline_options(PipelineOptions(valid).with_virtual_stages(2), 2),
                    Contains("virtual_stages 2 needs the interleaved schedule (schedule is 1f1b)"));
  CHECK_THROWS_WITH(validate_pipeline_options(PipelineOptions(valid).with_activation_shape({}), 2),
                    Contains("activation_shape is empty"));
  CHECK_THROWS_WITH(
      pipeline_actions(PipelineOptions(valid).with_schedule(PipelineSchedule::interleaved).with_microbatches(6), 4, 0),
      Contains("microbatches (6) divisible by the pipeline size (4)"));
  CHECK_THROWS_WITH(pipeline_actions(valid, 2, 2), Contains("rank 2 is not in a pipeline of 2 ranks"));
  // Rejected before any communication, so every rank throws alike.
  CHECK_THROWS_WITH(run_pipeline_step(PipelineOptions(valid).with_microbatches(-1), world().communicator,
                                      [](int, int64_t, const Tensor& x) { return x; }),
                    Contains("microbatches must be >= 1, got -1"));
}

// ---- the layer stack, pipelined and alone -------------------------------------------------------

using Layers = std::vector<std::shared_ptr<nn::Linear>>;

Layers make_layers() {
  Generator generator(kSeed);
  Layers layers;
  for (int64_t i = 0; i < kLayers; ++i) {
    layers.push_back(std::make_shared<nn::Linear>(kWidth, kWidth, true, &generator));
  }
  return layers;
}

// x (rows, d) -> (rows, d) through layers [first, last).
Tensor run_layers(const Layers& layers, int64_t first, int64_t last, Tensor x) {
  for (int64_t i = first; i < last; ++i) x = tanh(layers[i]->forward(x));
  return x;
}

Tensor mse(const Tensor& output, const Tensor& target) {
  Tensor difference = output - target;
  return (difference * difference).mean();
}

double relative_difference(const Tensor& actual, const Tensor& expected) {
  std::vector<float> a = actual.to_vector<float>(), b = expected.to_vector<float>();
  double worst = 0, scale = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    worst = std::max(worst, static_cast<double>(std::abs(a[i] - b[i])));
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
  }
  return scale > 0 ? worst / scale : worst;
}

void check_schedule(PipelineSchedule schedule) {
  const std::shared_ptr<Communicator>& group = world().communicator;
  const int p = group->size(), rank = group->rank();
  const int v = schedule == PipelineSchedule::interleaved ? 2 : 1;
  const int64_t per_stage = kLayers / (p * v), last_stage = p * v - 1;
  INFO(pipeline_schedule_name(schedule) << ", p " << p << ", v " << v << ", rank " << rank);
  Generator data(kSeed + 1);
  const Tensor inputs = randn({kBatch, kWidth}, {}, &data), targets = randn({kBatch, kWidth}, {}, &data);

  // Alone: the whole stack on the whole batch; the loss is the mean of the micro-batch MSEs.
  Layers reference = make_layers();
  Tensor outputs = run_layers(reference, 0, kLayers, inputs);
  std::vector<Tensor> expected_losses;
  Tensor total;
  for (int64_t mb = 0; mb < kMicrobatches; ++mb) {
    Tensor loss = mse(outputs.narrow(0, mb * kRows, kRows), targets.narrow(0, mb * kRows, kRows)) / kMicrobatches;
    expected_losses.push_back(loss.detach());
    total = total.defined() ? total + loss : loss;
  }
  total.backward();

  Layers layers = make_layers();
  auto forward_step = [&](int chunk, int64_t mb, const Tensor& input) {
    const int64_t stage = chunk * p + rank;
    Tensor x = stage == 0 ? inputs.narrow(0, mb * kRows, kRows) : input;
    x = run_layers(layers, stage * per_stage, (stage + 1) * per_stage, x);
    if (stage == last_stage) return mse(x, targets.narrow(0, mb * kRows, kRows)) / kMicrobatches;
    return x;
  };
  const PipelineOptions options = PipelineOptions()
                                      .with_schedule(schedule)
                                      .with_microbatches(kMicrobatches)
                                      .with_virtual_stages(v)
                                      .with_activation_shape({kRows, kWidth});
  PipelineStepResult result = run_pipeline_step(options, group, forward_step);

  // CHECK, not REQUIRE, up to the second step: every rank must reach it.
  CHECK(result.losses.size() == static_cast<size_t>(kMicrobatches));
  for (int64_t mb = 0; mb < kMicrobatches && mb < static_cast<int64_t>(result.losses.size()); ++mb) {
    INFO("micro-batch " << mb);
    CHECK(result.losses[mb] == Approx(expected_losses[mb].item()).epsilon(kTolerance));
  }
  // Owned layers (those of this rank's chunks) match `times` the single-process gradient; the
  // others were never run here.
  auto check_gradients = [&](double times) {
    for (int64_t i = 0; i < kLayers; ++i) {
      const bool owned = (i / per_stage) % p == rank;
      for (const auto& [ours, theirs] : {std::make_pair(layers[i]->weight, reference[i]->weight),
                                         std::make_pair(layers[i]->bias, reference[i]->bias)}) {
        INFO("layer " << i << (owned ? " (owned)" : " (not owned)") << ", step " << times);
        CHECK(ours.grad().defined() == owned);
        if (owned && ours.grad().defined()) {
          CHECK(relative_difference(ours.grad(), theirs.grad() * times) <= kTolerance);
        }
      }
    }
  };
  check_gradients(1);
  CHECK(result.max_in_flight == expected_max_in_flight(options, p, rank));
  CHECK(result.compute_seconds > 0);
  CHECK(result.seconds >= result.compute_seconds);
  CHECK(result.peak_bytes > 0);

  // A second step reuses the cached channels, accumulates into .grad and leaves no activation
  // behind: the bytes held afterwards are those held after the first step.
  const int64_t bytes_after_first = memory_stats().current_bytes;
  PipelineStepResult again = run_pipeline_step(options, group, forward_step);
  CHECK(memory_stats().current_bytes == bytes_after_first);
  CHECK(again.losses == result.losses);
  check_gradients(2);
}

TEST_CASE("run_pipeline_step: gpipe matches the whole stack run alone") { check_schedule(PipelineSchedule::gpipe); }

TEST_CASE("run_pipeline_step: 1f1b matches the whole stack run alone") {
  check_schedule(PipelineSchedule::one_forward_one_backward);
}

TEST_CASE("run_pipeline_step: interleaved matches the whole stack run alone") {
  check_schedule(PipelineSchedule::interleaved);
}

TEST_CASE("run_pipeline_step: channels are made once per group") {
  const std::shared_ptr<Communicator>& group = world().communicator;
  const PipelineChannels channels = PipelineChannels::for_group(group), again = PipelineChannels::for_group(group);
  CHECK(channels.pipeline == group);
  CHECK(again.activations == channels.activations);
  CHECK(again.gradients == channels.gradients);
  if (group->size() > 1) {
    CHECK(channels.activations->size() == group->size());
    CHECK(channels.gradients->rank() == group->rank());
    CHECK(channels.activations != channels.gradients);
  }
}

// On a group of one rank (every rank alone, so no message timing): GPipe holds all m micro-batches'
// activations at once, 1F1B one at a time, because each backward frees its micro-batch's.
TEST_CASE("run_pipeline_step: a micro-batch's activations are freed by its backward") {
  const std::shared_ptr<Communicator> alone = world_group().split(world_group().rank(), 0, "pipeline_alone");
  Layers layers = make_layers();
  Generator data(kSeed + 1);
  const Tensor inputs = randn({kRows, kWidth}, {}, &data);
  auto forward_step = [&](int, int64_t, const Tensor&) { return run_layers(layers, 0, kLayers, inputs).mean(); };
  auto peak = [&](PipelineSchedule schedule) {
    const PipelineOptions options =
        PipelineOptions().with_schedule(schedule).with_microbatches(kMicrobatches).with_activation_shape({1});
    run_pipeline_step(options, alone, forward_step);  // the first step also allocates .grad
    return run_pipeline_step(options, alone, forward_step).peak_bytes;
  };
  const int64_t gpipe = peak(PipelineSchedule::gpipe);
  const int64_t alternating = peak(PipelineSchedule::one_forward_one_backward);
  INFO("peak bytes: gpipe " << gpipe << ", 1f1b " << alternating);
  CHECK(alternating > 0);
  CHECK(alternating < gpipe);
}

// On a group of one rank (every rank alone), so that a rank's error leaves no peer waiting.
TEST_CASE("run_pipeline_step: wrong forward_step outputs name the stage") {
  const std::shared_ptr<Communicator> alone = world_group().split(world_group().rank(), 0, "pipeline_alone");
  const PipelineOptions options = PipelineOptions().with_microbatches(2).with_activation_shape({kRows, kWidth});
  const PipelineOptions two_chunks =
      PipelineOptions(options).with_schedule(PipelineSchedule::interleaved).with_virtual_stages(2);
  auto wrong_shape = [](int chunk, int64_t, const Tensor&) { return chunk == 0 ? zeros({3}) : zeros({1}); };
  CHECK_THROWS_WITH(run_pipeline_step(two_chunks, alone, wrong_shape),
                    Contains("forward_step(chunk 0, microbatch 0) on virtual stage 0 of 2 returned (3) f32") &&
                        Contains("activation_shape is (2, 8)"));
  auto not_a_loss = [](int, int64_t, const Tensor&) { return zeros({kRows, kWidth}); };
  CHECK_THROWS_WITH(run_pipeline_step(options, alone, not_a_loss),
                    Contains("must return the micro-batch's scalar loss, got shape (2, 8)"));
}

}  // namespace
}  // namespace kiln::parallel::testing

// Pipeline schedules measured against their predicted bubble. Run under mpirun:
//
//   mpirun -np 2 ./build/benchmarks/bench_pipeline
//
// A stack of 16 Linear(512, 512) + tanh layers on micro-batches of 64 rows, cut into p stages
// (v = 1) or p v = 2 p virtual stages (interleaved, v = 2); the world is the pipeline. For each
// schedule and m in {2, 4, 8}: the median over timed steps (after warm-up) of the measured bubble,
// (step time - compute time) / compute time, as the worst rank sees it, against the prediction
// (p - 1) / m or (p - 1) / (m v); rows per second; forwards in flight and the allocator's peak
// bytes during the step, per rank. Baseline, in the same run: every rank alone (a pipeline group
// of one rank) running its own stage on the same micro-batches with no communication, against
// which the compute time per micro-batch inside the pipeline is read.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "autograd/generator.h"
#include "autograd/ops.h"
#include "bench_util.h"
#include "nn/linear.h"
#include "parallel/init.h"
#include "parallel/pipeline_schedule.h"

using namespace kiln;

namespace {

constexpr int64_t kLayers = 16, kWidth = 512, kRows = 64;
constexpr int kWarmup = 2, kTimed = 11;

using Layers = std::vector<std::shared_ptr<nn::Linear>>;

struct Measured {
  double bubble = 0, seconds = 0, compute_seconds = 0;  // medians over the timed steps
  int64_t max_in_flight = 0, peak_bytes = 0;
};

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

Measured measure(const parallel::PipelineOptions& options, const std::shared_ptr<parallel::Communicator>& group,
                 const Layers& layers, const Tensor& input) {
  const int p = group->size(), rank = group->rank();
  const int64_t per_stage = static_cast<int64_t>(layers.size()) / (p * options.virtual_stages);
  const int64_t last = p * options.virtual_stages - 1;
  const double microbatches = static_cast<double>(options.microbatches);
  auto forward_step = [&](int chunk, int64_t, const Tensor& received) {
    const int64_t stage = chunk * p + rank;
    Tensor x = stage == 0 ? input : received;  // (rows, d)
    for (int64_t i = stage * per_stage; i < (stage + 1) * per_stage; ++i) x = tanh(layers[i]->forward(x));
    return stage == last ? (x * x).mean() / microbatches : x;
  };
  std::vector<double> bubbles, seconds, compute;
  Measured measured;
  for (int step = 0; step < kWarmup + kTimed; ++step) {
    for (const auto& layer : layers) layer->zero_grad();
    parallel::PipelineStepResult result = parallel::run_pipeline_step(options, group, forward_step);
    if (step < kWarmup) continue;
    bubbles.push_back(result.bubble_fraction());
    seconds.push_back(result.seconds);
    compute.push_back(result.compute_seconds);
    measured.max_in_flight = result.max_in_flight;
    measured.peak_bytes = std::max(measured.peak_bytes, result.peak_bytes);
  }
  measured.bubble = median(bubbles);
  measured.seconds = median(seconds);
  measured.compute_seconds = median(compute);
  return measured;
}

// Every rank's value, "a / b / ..." in rank order.
std::string per_rank(parallel::Communicator& group, double value, const char* pattern) {
  Tensor mine = from_vector(std::vector<double>{value}, {1}, TensorOptions(DType::f64));
  Tensor all = empty({group.size()}, TensorOptions(DType::f64));
  group.all_gather(mine, all);
  std::string text;
  for (double each : all.to_vector<double>()) text += (text.empty() ? "" : " / ") + bench::format(pattern, each);
  return text;
}

double max_over_ranks(parallel::Communicator& group, double value) {
  Tensor tensor = from_vector(std::vector<double>{value}, {1}, TensorOptions(DType::f64));
  group.all_reduce(tensor, parallel::ReduceOp::max);
  return tensor.item();
}

}  // namespace

int main() {
  parallel::World world = parallel::init();
  const std::shared_ptr<parallel::Communicator>& group = world.communicator;
  const int p = group->size();
  Generator generator(7);
  Layers layers;
  for (int64_t i = 0; i < kLayers; ++i) {
    layers.push_back(std::make_shared<nn::Linear>(kWidth, kWidth, true, &generator));
  }
  const Tensor input = randn({kRows, kWidth}, {}, &generator);

  // Untimed: the first steps of a process run slower (fresh pages, the allocator's cache filling).
  measure(parallel::PipelineOptions().with_microbatches(8).with_activation_shape({kRows, kWidth}), group, layers,
          input);

  // Baseline: each rank alone runs its own stage (its L / p layers, as under gpipe and 1f1b) on 8
  // micro-batches with no communication, all ranks at once: the time per micro-batch a stage
  // takes with no pipeline around it (with every rank computing at once, so the most contention
  // for cores and memory).
  const std::shared_ptr<parallel::Communicator> alone = group->split(group->rank(), 0, "alone");
  const int64_t per_rank_layers = kLayers / p;
  const Layers own(layers.begin() + group->rank() * per_rank_layers,
                   layers.begin() + (group->rank() + 1) * per_rank_layers);
  const parallel::PipelineOptions alone_options =
      parallel::PipelineOptions().with_microbatches(8).with_activation_shape({kRows, kWidth});
  const double stage_seconds = max_over_ranks(*group, measure(alone_options, alone, own, input).seconds) / 8;

  if (world.rank == 0) {
    std::printf("Pipeline schedules, %d ranks x %d threads, %lld x Linear(%lld, %lld) + tanh, %lld rows per"
                " micro-batch\n",
                p, world.threads, static_cast<long long>(kLayers), static_cast<long long>(kWidth),
                static_cast<long long>(kWidth), static_cast<long long>(kRows));
    std::printf("baseline: each rank alone on its own %lld layers, no communication: %.1f ms per micro-batch"
                " (max rank)\n\n",
                static_cast<long long>(per_rank_layers), stage_seconds * 1e3);
    bench::row({"schedule", "m", "v", "bubble predicted", "bubble measured (max rank)", "step (ms)",
                "compute per micro-batch (ms, max rank)", "rows/s", "max in flight (per rank)", "peak MiB (per rank)"});
    bench::row({"---", "---", "---", "---", "---", "---", "---", "---", "---", "---"});
  }
  for (parallel::PipelineSchedule schedule : {parallel::PipelineSchedule::gpipe,
                                              parallel::PipelineSchedule::one_forward_one_backward,
                                              parallel::PipelineSchedule::interleaved}) {
    const bool interleaved = schedule == parallel::PipelineSchedule::interleaved;
    for (int64_t m : {2, 4, 8}) {
      if (interleaved && m % p != 0) continue;
      const parallel::PipelineOptions options = parallel::PipelineOptions()
                                                    .with_schedule(schedule)
                                                    .with_microbatches(m)
                                                    .with_virtual_stages(interleaved ? 2 : 1)
                                                    .with_activation_shape({kRows, kWidth});
      const Measured measured = measure(options, group, layers, input);
      const double bubble = max_over_ranks(*group, measured.bubble);
      const double seconds = max_over_ranks(*group, measured.seconds);
      const double compute = max_over_ranks(*group, measured.compute_seconds) / static_cast<double>(m);
      const std::string in_flight = per_rank(*group, static_cast<double>(measured.max_in_flight), "%.0f");
      const std::string peak = per_rank(*group, static_cast<double>(measured.peak_bytes) / (1 << 20), "%.1f");
      const double predicted = parallel::predicted_bubble_fraction(options, p);
      if (world.rank == 0) {
        bench::row({parallel::pipeline_schedule_name(schedule), std::to_string(m),
                    std::to_string(options.virtual_stages), bench::format("%.3f", predicted),
                    bench::format("%.3f", bubble), bench::format("%.1f", seconds * 1e3),
                    bench::format("%.1f", compute * 1e3),
                    bench::format("%.0f", static_cast<double>(m * kRows) / seconds), in_flight, peak});
      }
    }
  }
  world = parallel::World();
  parallel::finalize();
  return 0;
}

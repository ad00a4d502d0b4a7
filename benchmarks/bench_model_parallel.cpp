// Per-layout training throughput, memory and communication of ModelParallelRunner. Run alone
// (the single-process baseline) and under mpirun, where every layout whose size is the world's
// is measured:
//
//   ./build/benchmarks/bench_model_parallel
//   mpirun -np 2 ./build/benchmarks/bench_model_parallel
//   mpirun -np 4 --oversubscribe ./build/benchmarks/bench_model_parallel
//
// The model is a GPT-2-style d 256, 4 layers, 8 heads, T 256, vocabulary 512 (an MoE variant with
// 4 experts for expert parallelism), global batch 8 in 4 micro-batches, AdamW. Per layout:
// tokens/s (global tokens over the median step time), peak allocator bytes per rank during a
// step (largest rank), bytes sent per step by collective type (summed over ranks), and for
// pipelines the measured bubble ((step - compute) / compute, largest rank) against (p - 1) / m
// or (p - 1) / (m v).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "autograd/generator.h"
#include "autograd/ops.h"
#include "kernels/allocator.h"
#include "nn/transformer.h"
#include "optim/optim.h"
#include "parallel/init.h"
#include "parallel/model_parallel.h"

using namespace kiln;
using parallel::MeshShape;
using parallel::PipelineSchedule;

namespace {

constexpr int64_t kBatch = 8, kMicroBatches = 4, kSteps = 5, kWarmup = 2;

struct Layout {
  std::string name;
  MeshShape shape;
  PipelineSchedule schedule = PipelineSchedule::one_forward_one_backward;
  int virtual_stages = 1;
  bool sequence_parallel = false;
  bool moe = false;
};

nn::TransformerConfig model_config(bool moe) {
  nn::TransformerConfig config = nn::TransformerConfig::gpt2(512, 256, 4, 8, 256);
  if (moe) {
    config.moe.n_experts = 4;
    config.moe.top_k = 2;
    config.resolve();
  }
  return config;
}

Tensor rows(int64_t first, int64_t count, int64_t length, int64_t vocab, int64_t shift) {
  std::vector<int64_t> ids;
  for (int64_t b = first; b < first + count; ++b) {
    for (int64_t t = 0; t < length; ++t) ids.push_back((b * 131 + (t + shift) * 31 + b * t) % vocab);
  }
  return from_vector(ids, {count, length}, TensorOptions(DType::i64));
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

double max_over(parallel::Communicator& world, double value) {
  Tensor t = from_vector(std::vector<double>{value});
  world.all_reduce(t, parallel::ReduceOp::max);
  return t.item();
}

void measure(const Layout& layout, const std::shared_ptr<parallel::Communicator>& world) {
  const nn::TransformerConfig config = model_config(layout.moe);
  Generator generator(7);
  nn::Transformer master(config, &generator);
  auto mesh = std::make_shared<const parallel::Mesh>(world, layout.shape);
  parallel::ModelParallelRunner runner(master, mesh,
                                       parallel::ModelParallelOptions()
                                           .schedule(layout.schedule)
                                           .microbatches(kMicroBatches)
                                           .virtual_stages(layout.virtual_stages)
                                           .sequence_parallel(layout.sequence_parallel));
  optim::AdamW optimizer(optim::weight_decay_groups(runner.model().named_parameters()), optim::AdamWOptions(3e-4));
  const int64_t per_rank = kBatch / runner.data_ranks(), first = runner.data_rank() * per_rank;
  Tensor tokens = rows(first, per_rank, config.block_size, config.vocab_size, 0);
  Tensor targets = rows(first, per_rank, config.block_size, config.vocab_size, 1);
  std::vector<double> seconds, bubbles;
  int64_t peak = 0;
  parallel::CommunicationStats sent;
  for (int64_t step = 0; step < kWarmup + kSteps; ++step) {
    runner.reset_communication_stats();
    const int64_t before = memory_stats().current_bytes;
    reset_peak_memory();
    world->barrier();
    auto start = std::chrono::steady_clock::now();
    runner.forward_backward(tokens, targets);
    runner.reduce_gradients();
    runner.clip_grad_norm(1.0);
    optimizer.step();
    optimizer.zero_grad();
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (step < kWarmup) continue;
    seconds.push_back(max_over(*world, elapsed));
    bubbles.push_back(max_over(*world, runner.last_step().bubble_fraction()));
    peak = std::max<int64_t>(peak, memory_stats().peak_bytes - before);
    sent = runner.communication_stats();
  }
  const double step = median(seconds);
  const double peak_mib = max_over(*world, static_cast<double>(peak)) / (1 << 20);
  std::map<std::string, double> by_type;
  for (int c = 0; c < parallel::kCollectiveCount; ++c) {
    Tensor bytes = from_vector(std::vector<double>{static_cast<double>(sent.bytes_sent[static_cast<size_t>(c)])});
    world->all_reduce(bytes, parallel::ReduceOp::sum);
    if (bytes.item() > 0) by_type[parallel::collective_name(static_cast<parallel::Collective>(c))] = bytes.item();
  }
  if (world->rank() != 0) return;
  std::string traffic;
  for (const auto& [name, bytes] : by_type) {
    char part[64];
    std::snprintf(part, sizeof(part), "%s%s %.1f", traffic.empty() ? "" : ", ", name.c_str(), bytes / (1 << 20));
    traffic += part;
  }
  const int pp = layout.shape.size(parallel::MeshDim::pp);
  char bubble[48] = "-";
  if (pp > 1) {
    parallel::PipelineOptions options;
    options.with_schedule(layout.schedule).with_microbatches(kMicroBatches).with_virtual_stages(layout.virtual_stages)
        .with_activation_shape({1});
    std::snprintf(bubble, sizeof(bubble), "%.2f vs %.2f", median(bubbles),
                  parallel::predicted_bubble_fraction(options, pp));
  }
  std::printf("| %-28s | %8.0f | %7.1f | %-44s | %-12s |\n", layout.name.c_str(),
              static_cast<double>(kBatch * config.block_size) / step, peak_mib,
              traffic.empty() ? "-" : traffic.c_str(), bubble);
}

}  // namespace

int main() {
  parallel::World world = parallel::init();
  const int n = world.size;
  std::vector<Layout> layouts = {
      {"single process", MeshShape()},
      {"single process, MoE", MeshShape(), PipelineSchedule::one_forward_one_backward, 1, false, true},
      {"DP 2", MeshShape().dp(2)},
      {"TP 2", MeshShape().tp(2)},
      {"TP 2, sequence parallel", MeshShape().tp(2), PipelineSchedule::one_forward_one_backward, 1, true},
      {"PP 2, GPipe", MeshShape().pp(2), PipelineSchedule::gpipe},
      {"PP 2, 1F1B", MeshShape().pp(2)},
      {"PP 2, interleaved v 2", MeshShape().pp(2), PipelineSchedule::interleaved, 2},
      {"CP 2", MeshShape().cp(2)},
      {"EP 2, MoE", MeshShape().ep(2), PipelineSchedule::one_forward_one_backward, 1, false, true},
      {"DP 2, MoE", MeshShape().dp(2), PipelineSchedule::one_forward_one_backward, 1, false, true},
      {"TP 2 x DP 2", MeshShape().tp(2).dp(2)},
      {"PP 2 x DP 2", MeshShape().pp(2).dp(2)},
      {"TP 2 x PP 2", MeshShape().tp(2).pp(2)},
      {"CP 2 x TP 2", MeshShape().cp(2).tp(2)},
  };
  if (world.rank == 0) {
    std::printf("%d rank(s); GPT d 256, 4 layers, T 256, global batch %lld in %lld micro-batches\n", n,
                static_cast<long long>(kBatch), static_cast<long long>(kMicroBatches));
    std::printf("| %-28s | %8s | %7s | %-44s | %-12s |\n", "layout", "tok/s", "MiB/rk", "MiB sent per step, by collective",
                "bubble");
  }
  for (const Layout& layout : layouts) {
    if (layout.shape.product() == n) measure(layout, world.communicator);
  }
  parallel::finalize();
  return 0;
}

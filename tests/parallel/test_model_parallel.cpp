// Every layout of the mesh trained with ModelParallelRunner for 10 steps against nn::Transformer
// trained alone on the whole batch from the same seed: TP, PP with each schedule (m = 4
// micro-batches), CP, EP, DP and their combinations (TP2 x DP2, PP2 x DP2 with ZeRO-1, TP2 x PP2,
// CP2 x TP2, EP2 x TP2, and TP2 x PP2 x DP2 at 8 ranks). Each step's loss and gradient norm
// (clipped at 0.5, so that the norm counts every parameter once across the ranks that hold it)
// and the final parameters, gathered into the master layout, agree within kTolerance (1e-5
// relative: float32 sums in another order). Also a PP checkpoint continued by a single process.
#include <string>
#include <vector>

#include "nn/transformer.h"
#include "optim/optim.h"
#include "parallel/model_parallel.h"
#include "parallel/zero.h"
#include "tensor_parallel_test.h"

namespace kiln::parallel::testing {
namespace {

constexpr int64_t kMpVocab = 16, kMpSeq = 8, kMpBatch = 16, kMicroBatches = 4, kSteps = 10;
constexpr double kClip = 0.5;

struct Layout {
  std::string name;
  MeshShape shape;
  // llama, gpt2 (tied embeddings, learned positions), moe (llama with MoE layers), all trained
  // with SGD and momentum; llama_adamw is llama with AdamW, used where the runs share their
  // arithmetic exactly (checkpoints). Adam divides each gradient element by its running RMS,
  // so a last-bit difference on an element whose gradient is nearly zero becomes a full-size
  // step of either sign: compared with a single process that sums in another order, AdamW
  // runs drift apart by ~1e-4 in 10 steps at this batch size while SGD stays within 1e-5.
  std::string family = "llama";
  PipelineSchedule schedule = PipelineSchedule::one_forward_one_backward;
  int virtual_stages = 1;
  bool sequence_parallel = false;
  int zero_stage = 0;
  double dropout = 0.0;
};

// 4 layers, so 2 stages of 2 virtual stages each have one; heads (and llama's 4 kv heads) split
// by tp up to 4.
nn::TransformerConfig mp_config(const std::string& family, double dropout = 0.0) {
  nn::TransformerConfig config = family == "gpt2" ? nn::TransformerConfig::gpt2(kMpVocab, kMpSeq, 4, 4, 8)
                                                  : nn::TransformerConfig::llama(kMpVocab, kMpSeq, 4, 8, 4, 16);
  config.ffn_hidden = 24;
  config.dropout = dropout;
  if (family == "moe") {
    config.moe.n_experts = 4;
    config.moe.top_k = 2;
    config.moe.every = 2;
    config.moe.expert_hidden = 12;
    config.moe.aux_loss_weight = 0.01;
    config.resolve();
  }
  return config;
}

OptimizerFactory optimizer_factory(const std::string& family) {
  return [family](std::vector<optim::ParamGroup> groups) -> std::unique_ptr<optim::Optimizer> {
    if (family != "llama_adamw") return std::make_unique<optim::SGD>(std::move(groups), optim::SGDOptions(0.1).momentum(0.9));
    return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions(1e-2).weight_decay(0.1));
  };
}

// SGD over one group; AdamW with decay and no-decay groups.
std::vector<optim::ParamGroup> parameter_groups(const std::string& family, const nn::Module& model) {
  if (family != "llama_adamw") return {optim::ParamGroup(model.named_parameters())};
  return optim::weight_decay_groups(model.named_parameters());
}

std::unique_ptr<optim::Optimizer> make_optimizer(const std::string& family, const nn::Module& model) {
  return optimizer_factory(family)(parameter_groups(family, model));
}

// Step `step`'s global rows [first, first + rows) of tokens (or of targets, the next tokens).
Tensor mp_rows(int64_t step, int64_t first, int64_t rows, bool targets) {
  return token_rows(step, first, rows, kMpSeq, kMpVocab, targets);
}

// Data rank d reads global rows [d B / D, (d + 1) B / D); its micro-batch j is the j-th quarter
// of those. The reference's micro-batch j is every data rank's micro-batch j, in data-rank order,
// which is what an MoE layer sees across its expert-parallel group.
Tensor reference_micro_batch(int64_t step, int64_t micro, int data_ranks, bool targets) {
  const int64_t per_rank = kMpBatch / data_ranks, rows = per_rank / kMicroBatches;
  std::vector<Tensor> parts;
  for (int d = 0; d < data_ranks; ++d) parts.push_back(mp_rows(step, d * per_rank + micro * rows, rows, targets));
  return cat(parts, 0);
}

// After the models are built, dropout draws from a generator seeded with this.
constexpr uint64_t kDropoutSeed = 99;

struct Reference {
  Generator generator{kSeed};
  std::unique_ptr<nn::Transformer> model;
  std::unique_ptr<optim::Optimizer> optimizer;
  Reference(const nn::TransformerConfig& config, const std::string& family) {
    model = std::make_unique<nn::Transformer>(config, &generator);
    generator.manual_seed(kDropoutSeed);
    optimizer = make_optimizer(family, *model);
  }
  // One step with m micro-batches; returns {mean loss, gradient norm before clipping}.
  std::pair<double, double> step(int64_t step, int data_ranks) {
    double loss = 0.0;
    for (int64_t j = 0; j < kMicroBatches; ++j) {
      Tensor micro = model->loss(reference_micro_batch(step, j, data_ranks, false),
                                 reference_micro_batch(step, j, data_ranks, true));
      loss += micro.item() / kMicroBatches;
      (micro * (1.0 / kMicroBatches)).backward();
    }
    double norm = optim::clip_grad_norm(model->named_parameters(), kClip);
    optimizer->step();
    optimizer->zero_grad();
    return {loss, norm};
  }
};

// The parallel side: the runner, its optimizer (plain or ZeRO-1 over the replica group).
struct Parallel {
  Generator dropout{kDropoutSeed};  // the same stream on every rank: tensor parallelism without SP
  std::unique_ptr<ModelParallelRunner> runner;
  std::unique_ptr<optim::Optimizer> optimizer;
  std::unique_ptr<ZeroOptimizer> zero;
  Parallel(const nn::Transformer& master, std::shared_ptr<const Mesh> mesh, const Layout& layout) {
    runner = std::make_unique<ModelParallelRunner>(master, std::move(mesh),
                                                   ModelParallelOptions()
                                                       .schedule(layout.schedule)
                                                       .microbatches(kMicroBatches)
                                                       .virtual_stages(layout.virtual_stages)
                                                       .sequence_parallel(layout.sequence_parallel)
                                                       .dropout_generator(&dropout));
    nn::Module& model = runner->model();
    if (layout.zero_stage > 0) {
      zero = std::make_unique<ZeroOptimizer>(model, runner->replica_group(), parameter_groups(layout.family, model),
                                             optimizer_factory(layout.family), ZeroOptions().stage(layout.zero_stage));
    } else {
      optimizer = make_optimizer(layout.family, model);
    }
  }
  std::pair<double, double> step(int64_t step) {
    const int data_ranks = runner->data_ranks(), per_rank = static_cast<int>(kMpBatch / data_ranks);
    const int64_t first = runner->data_rank() * per_rank;
    double loss = runner->forward_backward(mp_rows(step, first, per_rank, false), mp_rows(step, first, per_rank, true));
    runner->reduce_gradients(zero == nullptr);
    double norm = runner->clip_grad_norm(kClip, zero.get());
    if (zero) {
      zero->step();
      zero->zero_grad();
    } else {
      optimizer->step();
      optimizer->zero_grad();
    }
    return {loss, norm};
  }
};

void check_layout(const Layout& layout) {
  const int world_size = world_group().size();
  if (layout.shape.product() != world_size) return;
  INFO(layout.name << " (" << layout.family << ", " << pipeline_schedule_name(layout.schedule) << ", "
                   << layout.shape.describe() << "), world rank " << world_group().rank());
  const nn::TransformerConfig config = mp_config(layout.family, layout.dropout);
  auto mesh = std::make_shared<const Mesh>(world_ptr(), layout.shape);
  Reference reference(config, layout.family);
  Generator generator(kSeed);
  nn::Transformer master(config, &generator);
  Parallel parallel(master, mesh, layout);
  for (int64_t step = 0; step < kSteps; ++step) {
    INFO("step " << step);
    auto [expected_loss, expected_norm] = reference.step(step, parallel.runner->data_ranks());
    auto [loss, norm] = parallel.step(step);
    CHECK(std::abs(loss - expected_loss) <= kTolerance * std::abs(expected_loss));
    CHECK(std::abs(norm - expected_norm) <= kTolerance * std::abs(expected_norm));
  }
  nn::StateDict gathered = parallel.runner->master_state_dict();
  nn::StateDict expected = reference.model->state_dict();
  CHECK(gathered.size() == expected.size());
  for (const auto& [name, tensor] : expected) {
    REQUIRE(gathered.count(name));
    check_close(gathered.at(name), tensor.detach(), kTolerance, "final " + name);
  }
}

TEST_CASE("model parallel: one dimension at a time") {
  const int n = world_group().size();
  if (n > 4) return;  // 4 layers; the 8-rank run is the combined layout
  for (PipelineSchedule schedule : {PipelineSchedule::gpipe, PipelineSchedule::one_forward_one_backward}) {
    Layout pipeline{"PP", MeshShape().pp(n)};
    pipeline.schedule = schedule;
    check_layout(pipeline);
    pipeline.family = "gpt2";  // tied embeddings on the first and last stage
    check_layout(pipeline);
  }
  Layout interleaved{"PP interleaved", MeshShape().pp(n)};
  interleaved.schedule = PipelineSchedule::interleaved;
  interleaved.virtual_stages = n <= 2 ? 2 : 1;
  if (interleaved.virtual_stages > 1) check_layout(interleaved);
  check_layout({"TP", MeshShape().tp(n)});
  check_layout({"TP sequence parallel", MeshShape().tp(n), "gpt2", PipelineSchedule::one_forward_one_backward, 1, true});
  check_layout({"CP", MeshShape().cp(n)});
  check_layout({"CP", MeshShape().cp(n), "gpt2"});
  check_layout({"EP", MeshShape().ep(n), "moe"});
  check_layout({"DP", MeshShape().dp(n)});
  // Dropout on the replicated residual stream: every tensor-parallel rank draws the masks the
  // single process draws, from the same stream.
  Layout dropout{"TP with dropout", MeshShape().tp(n), "gpt2"};
  dropout.dropout = 0.2;
  check_layout(dropout);
}

TEST_CASE("model parallel: combined layouts") {
  check_layout({"TP2 x DP2", MeshShape().tp(2).dp(2)});
  check_layout({"PP2 x DP2, ZeRO-1", MeshShape().pp(2).dp(2), "llama", PipelineSchedule::one_forward_one_backward, 1,
                false, 1});
  check_layout({"TP2 x PP2", MeshShape().tp(2).pp(2), "gpt2"});
  check_layout({"TP2 x PP2 interleaved", MeshShape().tp(2).pp(2), "llama", PipelineSchedule::interleaved, 2});
  check_layout({"CP2 x TP2", MeshShape().cp(2).tp(2)});
  check_layout({"CP2 x TP2 sequence parallel", MeshShape().cp(2).tp(2), "gpt2", PipelineSchedule::one_forward_one_backward,
                1, true});
  check_layout({"EP2 x TP2", MeshShape().ep(2).tp(2), "moe"});
  check_layout({"TP2 x PP2 x DP2", MeshShape().tp(2).pp(2).dp(2)});
}

// Five steps at PP = 2 (times DP), saved in master layout; nn::Transformer alone loads the
// weights and optimizer state and continues for five steps as the parallel run does, and so does
// a fresh PP = 2 run loaded from the single process's state.
TEST_CASE("model parallel: a pipeline checkpoint continues in a single process") {
  const int n = world_group().size();
  const int pp = n == 1 ? 1 : 2, data_ranks = n / pp;
  for (const std::string family : {"llama_adamw", "gpt2"}) {
    Layout layout{"PP checkpoint", MeshShape().pp(pp).dp(data_ranks), family};
    INFO(family << ", " << layout.shape.describe());
    const nn::TransformerConfig config = mp_config(family);
    Generator generator(kSeed);
    nn::Transformer master(config, &generator);
    Parallel parallel(master, std::make_shared<const Mesh>(world_ptr(), layout.shape), layout);
    for (int64_t step = 0; step < 5; ++step) parallel.step(step);
    nn::StateDict weights = parallel.runner->master_state_dict();
    optim::OptimizerStateDict state = parallel.runner->master_optimizer_state(parallel.optimizer->state_dict());

    Reference alone(config, family);
    alone.model->load_state_dict(weights);
    alone.optimizer->load_state_dict(state);
    // And a fresh PP = n run resumes from the single process's own state.
    Generator other(kSeed + 1);
    nn::Transformer other_master(config, &other);
    Parallel resumed(other_master, std::make_shared<const Mesh>(world_ptr(), layout.shape), layout);
    resumed.runner->load_master_state_dict(alone.model->state_dict());
    resumed.optimizer->load_state_dict(resumed.runner->local_optimizer_state(alone.optimizer->state_dict()));
    for (int64_t step = 5; step < 10; ++step) {
      auto [loss, norm] = parallel.step(step);
      auto [expected_loss, expected_norm] = alone.step(step, data_ranks);
      auto [resumed_loss, resumed_norm] = resumed.step(step);
      CHECK(std::abs(loss - expected_loss) <= kTolerance * std::abs(expected_loss));
      CHECK(resumed_loss == loss);
      CHECK(resumed_norm == norm);
    }
    nn::StateDict final_weights = parallel.runner->master_state_dict();
    for (const auto& [name, tensor] : alone.model->state_dict()) {
      check_close(final_weights.at(name), tensor.detach(), kTolerance, "continued " + name);
    }
  }
}

TEST_CASE("model parallel: layouts the model cannot take are rejected") {
  Generator generator(kSeed);
  nn::TransformerConfig config = mp_config("llama");
  config.n_layers = 1;
  nn::Transformer master(config, &generator);
  auto mesh = std::make_shared<const Mesh>(world_ptr(), MeshShape().dp(world_group().size()));
  CHECK_THROWS_WITH(ModelParallelRunner(master, mesh, ModelParallelOptions().virtual_stages(2)),
                    Catch::Contains("1 layers are fewer than the 2 pipeline stages"));
}

}  // namespace
}  // namespace kiln::parallel::testing

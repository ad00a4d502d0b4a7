// ZeRO stages 1-3 against the single-process run (equivalence.h), their memory per rank
// against the ZeRO paper's accounting, their communication volume, and gradient clipping
// across shards. Run alone (world 1) and under mpirun at 2 and 4 ranks.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <functional>
#include <memory>

#include "equivalence.h"
#include "autograd/safetensors.h"
#include "kernels/allocator.h"
#include "parallel/checkpoint.h"
#include "parallel/zero.h"
#include "parallel_test.h"

using namespace kiln;
using namespace kiln::parallel;
using namespace kiln::parallel::testing;

namespace {

std::vector<optim::ParamGroup> groups_of(const OptimizerKind& kind, const nn::Module& model) {
  if (kind.family == "llama") return optim::weight_decay_groups(model.named_parameters());
  return {optim::ParamGroup(model.named_parameters())};
}

class ZeroTraining : public ParallelTraining {
 public:
  ZeroTraining(nn::Transformer& model, const OptimizerKind& kind, int stage, int64_t bucket_bytes)
      : zero_(model, world().communicator, groups_of(kind, model), kind.make,
              ZeroOptions().stage(stage).bucket_bytes(bucket_bytes)) {}
  void backward(const std::function<void()>& run_backward, bool last) override { run_backward(); }
  void step() override {
    zero_.step();
    zero_.zero_grad();
  }
  void gather_parameters() override { zero_.gather_full_parameters(); }

 private:
  ZeroOptimizer zero_;
};

MakeParallel zero_stage(int stage, int64_t bucket_bytes) {
  return [stage, bucket_bytes](nn::Transformer& model, const OptimizerKind& kind) {
    return std::make_unique<ZeroTraining>(model, kind, stage, bucket_bytes);
  };
}

}  // namespace

TEST_CASE("ZeRO stages 1-3 match the single-process run", "[zero]") {
  const int micro_batches = kGlobalBatch / world_group().size() >= 2 ? 2 : 1;
  for (int stage : {1, 2, 3}) {
    INFO("stage " << stage);
    // 400-byte units: several units, each padded to a multiple of the group size.
    for (const OptimizerKind& kind : {sgd_momentum(), adamw()}) {
      check_equivalence(kind, 1, zero_stage(stage, 400));
      check_equivalence(kind, micro_batches, zero_stage(stage, 400));
    }
  }
}

TEST_CASE("ZeRO clips by the global gradient norm computed from the shards", "[zero]") {
  Communicator& group = world_group();
  const int64_t rows = kGlobalBatch / group.size();
  for (int stage : {1, 2, 3}) {
    INFO("stage " << stage);
    auto reference = make_model("llama");
    auto model = make_model("llama");
    ZeroOptimizer zero(*model, world().communicator, optim::weight_decay_groups(model->named_parameters()), adamw().make,
                       ZeroOptions().stage(stage).bucket_bytes(300));
    auto reference_optimizer = adamw().make(optim::weight_decay_groups(reference->named_parameters()));
    for (int64_t step = 0; step < 3; ++step) {
      reference->loss(batch_rows(step, 0, kGlobalBatch, false), batch_rows(step, 0, kGlobalBatch, true)).backward();
      double reference_norm = optim::clip_grad_norm(reference->named_parameters(), 0.05);
      reference_optimizer->step();
      reference_optimizer->zero_grad();

      model->loss(batch_rows(step, group.rank() * rows, rows, false), batch_rows(step, group.rank() * rows, rows, true))
          .backward();
      double norm = zero.clip_grad_norm(0.05);
      CHECK(norm == Approx(reference_norm).epsilon(kTolerance));
      zero.step();
      zero.zero_grad();
    }
    zero.gather_full_parameters();
    NamedParameters expected = reference->named_parameters(), actual = model->named_parameters();
    for (size_t i = 0; i < actual.size(); ++i) {
      INFO(actual[i].name);
      CHECK(relative_difference(actual[i].tensor, expected[i].tensor) <= kTolerance);
    }
  }
}

TEST_CASE("ZeRO memory per rank follows the paper's accounting", "[zero]") {
  // Parameters, gradients and AdamW's two state buffers (K = 8 bytes per f32 parameter), read
  // from the allocator's counters once backward has finished and its activations are freed:
  // the point where a step holds the most persistent state.
  Communicator& group = world_group();
  const double n = group.size();
  const int64_t rows = kGlobalBatch / group.size();
  auto measure = [&](int stage) {
    int64_t before = memory_stats().current_bytes;
    auto model = std::make_unique<nn::Transformer>(
        [] {
          nn::TransformerConfig config = nn::TransformerConfig::llama(64, kSeq, 2, 4, 2, 64);
          return config;
        }(),
        nullptr);
    int64_t buffers = 0;
    for (const auto& [name, buffer] : model->named_buffers()) buffers += buffer.numel() * 4;
    int64_t parameters = 0;
    for (const NamedParameter& p : model->named_parameters()) parameters += p.tensor.numel();
    ZeroOptimizer zero(*model, world().communicator, optim::weight_decay_groups(model->named_parameters()), adamw().make,
                       ZeroOptions().stage(stage).bucket_bytes(64 * 1024));
    int64_t padded = zero.shard_numel() * group.size();
    for (int step = 0; step < 2; ++step) {
      model->loss(batch_rows(step, group.rank() * rows, rows, false), batch_rows(step, group.rank() * rows, rows, true))
          .backward();
      zero.reduce_gradients();
      if (step == 0) {
        zero.step();
        zero.zero_grad();
      }
    }
    double measured = static_cast<double>(memory_stats().current_bytes - before - buffers);
    // The paper's accounting in f32 with padding (Ψ = padded parameters):
    //   stage 1: 4Ψ parameters + 4Ψ gradients + (4 + 8)Ψ/n shard gradients and state
    //   stage 2: 4Ψ parameters + (4 + 8)Ψ/n
    //   stage 3: (4 + 4 + 8)Ψ/n
    const double psi = static_cast<double>(padded);
    double expected = stage == 1 ? 8 * psi + 12 * psi / n : stage == 2 ? 4 * psi + 12 * psi / n : 16 * psi / n;
    WARN("ZeRO-" << stage << " on " << n << " rank(s): " << parameters << " parameters, measured " << static_cast<int64_t>(measured)
                  << " bytes of parameters + gradients + optimizer state per rank, expected " << static_cast<int64_t>(expected)
                  << " (unsharded: " << 16 * parameters << ")");
    CHECK(measured == Approx(expected).epsilon(0.01));
    return measured;
  };
  double stage1 = measure(1), stage2 = measure(2), stage3 = measure(3);
  if (n > 1) {
    CHECK(stage2 < stage1);
    CHECK(stage3 < stage2);
  }
}

TEST_CASE("ZeRO sends the expected volume: about 2x parameters (stages 1, 2) and 3x (stage 3)", "[zero]") {
  Communicator& group = world_group();
  const int n = group.size();
  const int64_t rows = kGlobalBatch / n;
  for (int stage : {1, 2, 3}) {
    INFO("stage " << stage);
    auto model = make_model("llama");
    int64_t parameters = 0;
    for (const NamedParameter& p : model->named_parameters()) parameters += p.tensor.numel();
    ZeroOptimizer zero(*model, world().communicator, optim::weight_decay_groups(model->named_parameters()), adamw().make,
                       ZeroOptions().stage(stage).bucket_bytes(256));
    group.reset_stats();
    model->loss(batch_rows(0, group.rank() * rows, rows, false), batch_rows(0, group.rank() * rows, rows, true))
        .backward();
    zero.step();
    zero.zero_grad();
    CommunicationStats stats = group.stats();
    int64_t sent = stats.bytes(Collective::reduce_scatter) + stats.bytes(Collective::all_gather);
    // What DDP would send: the ring all-reduce of every gradient, 2 (n-1)/n of the parameter bytes.
    double all_reduce_volume = 2.0 * (n - 1) / n * 4.0 * static_cast<double>(parameters);
    double factor = stage == 3 ? 1.5 : 1.0;  // stage 3 adds one more all-gather: 3x instead of 2x
    WARN("ZeRO-" << stage << " on " << n << " rank(s): " << sent << " bytes sent per step, DDP would send "
                  << all_reduce_volume);
    if (n == 1) {
      CHECK(sent == 0);
    } else {
      CHECK(static_cast<double>(sent) == Approx(factor * all_reduce_volume).epsilon(0.10));
    }
  }
}

TEST_CASE("A sharded ZeRO checkpoint saved on N ranks resumes on 1 rank, unsharded, and on N ranks at another stage", "[zero]") {
  namespace fs = std::filesystem;
  Communicator& group = world_group();
  const int64_t rows = kGlobalBatch / group.size();
  // One directory for the job: rank 0's pid, shared by broadcast.
  Tensor pid = from_vector(std::vector<int64_t>{static_cast<int64_t>(::getpid())}, {1}, TensorOptions(DType::i64));
  group.broadcast(pid, 0);
  fs::path directory = fs::temp_directory_path() / ("kiln_test_zero_" + std::to_string(pid.item<int64_t>()));
  auto train = [&](nn::Transformer& model, const std::function<void()>& step, int64_t first_step, int64_t count,
                   bool whole_batch) {
    for (int64_t s = first_step; s < first_step + count; ++s) {
      int64_t first = whole_batch ? 0 : group.rank() * rows, batch = whole_batch ? kGlobalBatch : rows;
      model.loss(batch_rows(s, first, batch, false), batch_rows(s, first, batch, true)).backward();
      step();
    }
  };
  for (int stage : {1, 2, 3}) {
    INFO("saved at stage " << stage);
    auto model = make_model("llama");
    ZeroOptimizer zero(*model, world().communicator, optim::weight_decay_groups(model->named_parameters()), adamw().make,
                       ZeroOptions().stage(stage).bucket_bytes(300));
    auto zero_step = [&] {
      zero.step();
      zero.zero_grad();
    };
    train(*model, zero_step, 0, 3, false);

    // Save: every rank its optimizer shard, rank 0 the (gathered) weights.
    Checkpoint checkpoint;
    checkpoint.step = 3;
    checkpoint.model = zero.module_state_dict();
    optim::OptimizerStateDict shard = zero.state_shard();
    checkpoint.optimizer.scalars = shard.scalars;
    checkpoint.shards = {shard.tensors};
    save_checkpoint(directory, checkpoint, 1, group);

    Checkpoint loaded = load_checkpoint(directory);
    REQUIRE(loaded.shards.size() == static_cast<size_t>(group.size()));
    std::vector<optim::OptimizerStateDict> shards;
    for (const auto& tensors : loaded.shards) shards.push_back({tensors, loaded.optimizer.scalars});
    optim::OptimizerStateDict full = consolidate_optimizer_shards(shards);
    nn::StateDict weights = loaded.model;
    // What kiln-consolidate writes: the same tensors in one file.
    SafetensorsFile single = consolidate_checkpoint(loaded);
    CHECK(single.tensors.size() == weights.size() + full.tensors.size());
    for (const auto& [name, tensor] : full.tensors) {
      INFO(name);
      REQUIRE(single.tensors.count("optimizer." + name));
      CHECK(single.tensors.at("optimizer." + name).to_vector<float>() == tensor.to_vector<float>());
    }
    group.barrier();
    if (group.rank() == 0) fs::remove_all(directory);

    // The run continues on its N ranks ...
    train(*model, zero_step, 3, 3, false);
    zero.gather_full_parameters();

    // ... alone, with an unsharded AdamW ...
    auto alone = make_model("llama");
    alone->load_state_dict(weights);
    auto plain = adamw().make(optim::weight_decay_groups(alone->named_parameters()));
    plain->load_state_dict(full);
    train(*alone, [&] { plain->step(); plain->zero_grad(); }, 3, 3, true);

    // ... and on the N ranks again at the next stage.
    auto resumed = make_model("llama");
    int other_stage = stage % 3 + 1;
    ZeroOptimizer other(*resumed, world().communicator, optim::weight_decay_groups(resumed->named_parameters()),
                        adamw().make, ZeroOptions().stage(other_stage).bucket_bytes(500));
    other.gather_full_parameters();
    resumed->load_state_dict(weights);
    other.reshard();
    other.load_state_dict(full);
    train(*resumed, [&] { other.step(); other.zero_grad(); }, 3, 3, false);
    other.gather_full_parameters();

    NamedParameters expected = model->named_parameters();
    NamedParameters from_alone = alone->named_parameters(), from_other = resumed->named_parameters();
    for (size_t i = 0; i < expected.size(); ++i) {
      INFO(expected[i].name);
      CHECK(relative_difference(from_alone[i].tensor, expected[i].tensor) <= kTolerance);
      CHECK(relative_difference(from_other[i].tensor, expected[i].tensor) <= kTolerance);
    }
  }
}

TEST_CASE("Consolidating ZeRO shards names a missing shard", "[zero]") {
  // A (2, 3) buffer of which the only shard holds the first 3 elements.
  optim::OptimizerStateDict part;
  part.tensors["w/exp_avg"] = zeros({3});
  part.tensors["w/exp_avg#layout"] = from_vector(std::vector<int64_t>{0, 2, 3}, {3}, TensorOptions(DType::i64));
  CHECK_THROWS_WITH(consolidate_optimizer_shards({part}),
                    Catch::Contains("cover 3 of the 6 elements of 'w/exp_avg'") && Catch::Contains("missing"));
}

TEST_CASE("Reading a ZeRO-3 parameter while it is sharded is an error, not a crash", "[zero]") {
  auto model = make_model("llama");
  ZeroOptimizer zero(*model, world().communicator, optim::weight_decay_groups(model->named_parameters()), adamw().make,
                     ZeroOptions().stage(3));
  Tensor weight = model->named_parameters().front().tensor;
  CHECK_THROWS_WITH(weight.to_vector<float>(), Catch::Contains("memory has been released") &&
                                                   Catch::Contains("gather_full_parameters"));
  zero.gather_full_parameters();
  CHECK(weight.to_vector<float>().size() == static_cast<size_t>(weight.numel()));
  zero.reshard();
}

TEST_CASE("A NaN gradient on one rank makes ZeRO's global norm NaN on every rank", "[zero]") {
  Communicator& group = world_group();
  const int64_t rows = kGlobalBatch / group.size();
  for (int stage : {1, 2, 3}) {
    INFO("stage " << stage);
    auto model = make_model("llama");
    ZeroOptimizer zero(*model, world().communicator, optim::weight_decay_groups(model->named_parameters()), adamw().make,
                       ZeroOptions().stage(stage).bucket_bytes(300));
    Tensor loss = model->loss(batch_rows(0, group.rank() * rows, rows, false), batch_rows(0, group.rank() * rows, rows, true));
    // Only the last rank's gradients are NaN; after the reduce-scatter every shard holds some.
    (loss * (group.rank() == group.size() - 1 ? std::nan("") : 1.0)).backward();
    double norm = zero.clip_grad_norm(1.0);
    CHECK(std::isnan(norm));
    zero.zero_grad();
  }
}

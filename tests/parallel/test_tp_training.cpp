// ParallelTransformer trained for 10 steps against nn::Transformer trained alone on the whole
// batch, from the same seed: GPT-2 layout (LayerNorm, learned positions, tied embeddings, MHA)
// with SGD and momentum, Llama layout (RMSNorm, RoPE, SwiGLU, GQA, untied head) with AdamW;
// TP = world size, and TP 2 x DP 2 at 4 ranks (DDP over the mesh's dp group); with and without
// sequence parallelism. Losses each step and final parameters (gathered) within kTolerance.
// Also checkpoints moved between TP = n and TP = 1 (tp_checkpoint.h).
#include <string>
#include <vector>

#include "nn/transformer.h"
#include "optim/optim.h"
#include "parallel/ddp.h"
#include "parallel/mesh.h"
#include "parallel/tp_checkpoint.h"
#include "parallel/tp_transformer.h"
#include "tensor_parallel_test.h"

namespace kiln::parallel::testing {
namespace {

using Catch::Contains;

constexpr int64_t kLmVocab = 16, kLmSeq = 8, kLmBatch = 4;  // all divisible by 1, 2 and 4 ranks

// gpt2: LayerNorm with biases, learned positions, tied embeddings, MHA (4 heads of 2).
// llama: RMSNorm, RoPE, SwiGLU, untied head, GQA (8 query heads in 4 groups, so kv heads split by 4).
nn::TransformerConfig lm_config(const std::string& family) {
  nn::TransformerConfig config = family == "gpt2" ? nn::TransformerConfig::gpt2(kLmVocab, kLmSeq, 2, 4, 8)
                                                  : nn::TransformerConfig::llama(kLmVocab, kLmSeq, 2, 8, 4, 16);
  config.ffn_hidden = 32;
  return config;
}

Tensor lm_rows(int64_t step, int64_t first, int64_t rows, bool targets) {
  return token_rows(step, first, rows, kLmSeq, kLmVocab, targets);
}

std::vector<optim::ParamGroup> groups_of(const OptimizerKind& kind, const nn::Module& model) {
  if (kind.family == "llama") return optim::weight_decay_groups(model.named_parameters());
  return {optim::ParamGroup(model.named_parameters())};
}

// Trains nn::Transformer alone on the whole batch and ParallelTransformer on the mesh (each DP
// replica on its rows, DDP over the dp group) for 10 steps from the same seed.
void check_training(const OptimizerKind& kind, const MeshShape& shape, bool sequence_parallel) {
  Mesh mesh(world_ptr(), shape);
  const nn::TransformerConfig config = lm_config(kind.family);
  shape.check_model(config, kLmSeq);
  INFO(kind.name << " (" << kind.family << "), " << shape.describe() << (sequence_parallel ? ", sequence parallel" : "")
                 << ", world rank " << world_group().rank());
  Generator reference_generator(kSeed), parallel_generator(kSeed);
  nn::Transformer reference(config, &reference_generator);
  ParallelTransformer parallel(config, mesh.tp_group(), &parallel_generator, sequence_parallel);
  auto reference_optimizer = kind.make(groups_of(kind, reference));
  auto parallel_optimizer = kind.make(groups_of(kind, parallel));
  DistributedDataParallel ddp(parallel, mesh.dp_group());
  const int64_t rows = kLmBatch / mesh.size(MeshDim::dp), first = mesh.dp_rank() * rows;
  for (int64_t step = 0; step < 10; ++step) {
    Tensor expected = reference.loss(lm_rows(step, 0, kLmBatch, false), lm_rows(step, 0, kLmBatch, true));
    expected.backward();
    reference_optimizer->step();
    reference_optimizer->zero_grad();

    Tensor loss = parallel.loss(lm_rows(step, first, rows, false), lm_rows(step, first, rows, true));
    loss.backward();
    ddp.synchronize();
    parallel_optimizer->step();
    parallel_optimizer->zero_grad();
    Tensor averaged = loss.detach().clone();
    mesh.dp_group()->all_reduce(averaged, ReduceOp::avg);
    INFO("step " << step);
    check_close(averaged, expected.detach(), kTolerance, "loss");
  }
  NamedParameters ours = parallel.named_parameters(), theirs = reference.named_parameters();
  REQUIRE(ours.size() == theirs.size());
  const int64_t head_dim = config.d_model / config.n_heads, kv = config.n_kv_heads * head_dim;
  for (size_t i = 0; i < ours.size(); ++i) {
    REQUIRE(ours[i].name == theirs[i].name);
    const int64_t dim = ours[i].info.partition_dim;
    const bool packed = ours[i].name.find("qkv") != std::string::npos;
    Tensor full_parameter = dim < 0 ? ours[i].tensor.detach()
                                    : gathered(ours[i].tensor, dim, *mesh.tp_group(),
                                               packed ? std::vector<int64_t>{config.d_model, kv, kv} : std::vector<int64_t>{});
    check_close(full_parameter, theirs[i].tensor.detach(), kTolerance, "final " + ours[i].name);
  }
}

TEST_CASE("training: ParallelTransformer follows nn::Transformer for 10 steps") {
  const int n = world_group().size();
  for (const OptimizerKind& kind : {sgd_momentum(), adamw()}) {
    for (bool sequence_parallel : {false, true}) {
      check_training(kind, MeshShape().tp(n), sequence_parallel);
      if (n == 4) check_training(kind, MeshShape().tp(2).dp(2), sequence_parallel);
    }
  }
}

// A checkpoint written by the TP = n run in master layout resumes alone (TP = 1), and the
// single-process model's state loads back into TP = n: both continue as the unbroken run does.
TEST_CASE("checkpoints: TP = n -> TP = 1 and TP = 1 -> TP = n continue identically") {
  const Group group = world_ptr();
  for (const OptimizerKind& kind : {sgd_momentum(), adamw()}) {
    INFO(kind.name);
    const nn::TransformerConfig config = lm_config(kind.family);
    Generator generator(kSeed);
    ParallelTransformer parallel(config, group, &generator);
    auto parallel_optimizer = kind.make(groups_of(kind, parallel));
    auto train = [&](nn::Module& model, optim::Optimizer& optimizer, int64_t from, int64_t to, auto loss_of) {
      for (int64_t step = from; step < to; ++step) {
        loss_of(lm_rows(step, 0, kLmBatch, false), lm_rows(step, 0, kLmBatch, true)).backward();
        optimizer.step();
        optimizer.zero_grad();
      }
    };
    auto parallel_loss = [&](const Tensor& x, const Tensor& y) { return parallel.loss(x, y); };
    train(parallel, *parallel_optimizer, 0, 4, parallel_loss);

    // Save in master layout; TP = 1 resumes from it.
    nn::StateDict weights = master_state_dict(parallel);
    optim::OptimizerStateDict state = master_optimizer_state(parallel, parallel_optimizer->state_dict());
    Generator other(kSeed + 1);
    nn::Transformer alone(config, &other);
    alone.load_state_dict(weights);
    auto alone_optimizer = kind.make(groups_of(kind, alone));
    alone_optimizer->load_state_dict(state);

    // And TP = n resumes from the single-process model's own state_dicts.
    Generator third(kSeed + 2);
    ParallelTransformer resumed(config, group, &third);
    load_master_state_dict(resumed, alone.state_dict());
    auto resumed_optimizer = kind.make(groups_of(kind, resumed));
    resumed_optimizer->load_state_dict(local_optimizer_state(resumed, alone_optimizer->state_dict()));

    train(parallel, *parallel_optimizer, 4, 8, parallel_loss);
    train(alone, *alone_optimizer, 4, 8, [&](const Tensor& x, const Tensor& y) { return alone.loss(x, y); });
    train(resumed, *resumed_optimizer, 4, 8, [&](const Tensor& x, const Tensor& y) { return resumed.loss(x, y); });

    nn::StateDict expected = master_state_dict(parallel), from_resumed = master_state_dict(resumed);
    for (const auto& [name, tensor] : alone.state_dict()) {
      REQUIRE(expected.count(name));
      check_close(tensor.detach(), expected.at(name), kTolerance, "TP 1 resumed: " + name);
      check_close(from_resumed.at(name), expected.at(name), kTolerance, "TP n resumed: " + name);
    }
  }
}

TEST_CASE("ParallelTransformer: dropout needs a generator") {
  nn::TransformerConfig config = lm_config("gpt2");
  config.dropout = 0.1;
  CHECK_THROWS_WITH(ParallelTransformer(config, world_ptr()), Contains("has dropout 0.1 but no dropout generator"));
}

}  // namespace
}  // namespace kiln::parallel::testing

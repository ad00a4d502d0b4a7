// ZeroOptimizer: ZeRO stages 1-3 around any kiln optimizer (Rajbhandari et al., 2020).
//
// Parameters are packed into flat units (reverse registration order, one dtype, device and
// optimizer group each, at most bucket_bytes, padded to a multiple of the group size); every
// unit is split evenly and rank r owns chunk r of each. The wrapped optimizer is built over
// the owned chunks only, so its state is 1/N of the model's on every rank.
//
//   stage 1: backward fills full gradients as usual; step() reduce-scatters them (average) to
//            their owners, updates the owned chunks and all-gathers the parameters.
//   stage 2: as stage 1, but each unit's gradient is reduce-scattered during backward as soon
//            as it is complete, and the full gradient is freed at once: a rank keeps only the
//            gradient chunks it owns.
//   stage 3: as stage 2, and parameters are sharded too: a module's parameters are gathered
//            just before its forward and again before its backward, and freed after each use
//            (module hooks plus an autograd function at the module's output), while the next
//            module's units are prefetched so communication overlaps compute.
//
//   parallel::ZeroOptimizer zero(model, world.communicator, optim::weight_decay_groups(model.named_parameters()),
//       [](std::vector<optim::ParamGroup> groups) { return std::make_unique<optim::AdamW>(std::move(groups), options); },
//       parallel::ZeroOptions().stage(2));
//   model.loss(x, y).backward();
//   zero.clip_grad_norm(1.0);   // the global norm, across shards
//   zero.step();
//   zero.zero_grad();
//
// The wrapped optimizer's groups keep the caller's group order, so schedules set lrs on it as
// on an unwrapped optimizer (optimizer().set_lr(g, lr)).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/module.h"
#include "optim/optimizer.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

// A parameter's weight in a gradient norm, by name.
using GradientWeight = std::function<double(const std::string& name)>;

using OptimizerFactory = std::function<std::unique_ptr<optim::Optimizer>(std::vector<optim::ParamGroup> groups)>;

class ZeroOptions {
 public:
  ZeroOptions& stage(int value) { stage_ = value; return *this; }
  // Upper bound on a unit (bytes of parameters); a parameter larger than it is a unit of its own.
  ZeroOptions& bucket_bytes(int64_t value) { bucket_bytes_ = value; return *this; }
  int stage() const { return stage_; }
  int64_t bucket_bytes() const { return bucket_bytes_; }

 private:
  int stage_ = 1;
  int64_t bucket_bytes_ = 25 * 1024 * 1024;
};

class ZeroState;

// The unsharded optimizer state_dict from the state_shard() of every rank of a ZeRO run (in
// any order): the parts of each tensor are placed by their layouts, and an element that no part
// covers is an error naming the tensor.
optim::OptimizerStateDict consolidate_optimizer_shards(const std::vector<optim::OptimizerStateDict>& shards);

class ZeroOptimizer {
 public:
  // Collective over `group`. Broadcasts rank 0's parameters, then shards them. `groups` must
  // hold every parameter of `module` that requires grad, each once.
  ZeroOptimizer(nn::Module& module, std::shared_ptr<Communicator> group, std::vector<optim::ParamGroup> groups,
                const OptimizerFactory& make_optimizer, ZeroOptions options = {});
  ~ZeroOptimizer();
  ZeroOptimizer(const ZeroOptimizer&) = delete;
  ZeroOptimizer& operator=(const ZeroOptimizer&) = delete;

  // Brings every rank's gradient chunks up to date (averaged over the group): reduce-scatters
  // (stage 1) or waits for the reduce-scatters started in backward (stages 2, 3). step() calls
  // it when needed; call it yourself to read gradients first.
  void reduce_gradients();
  // The norm of the whole (averaged) gradient, computed from the shards; scales the shards by
  // max_norm / norm when the norm exceeds max_norm (as optim::clip_grad_norm). Returns the norm
  // before clipping, the same on every rank (NaN or Inf if any gradient is).
  double clip_grad_norm(double max_norm);
  // The global gradient norm without clipping.
  double grad_norm();
  // Sum over parameters of weight(name) times the squared norm of its averaged gradient, over
  // the whole group (the same on every rank): model-parallel layouts count a parameter that
  // several of their ranks replicate once (weight 0 on the copies).
  double grad_square_sum(const GradientWeight& weight);
  // Multiplies every gradient shard by `factor` (clipping by a norm computed elsewhere).
  void scale_gradients(double factor);
  // Updates the owned chunks with the wrapped optimizer and all-gathers the parameters (stages
  // 1, 2; stage 3 keeps them sharded).
  void step();
  // Drops every gradient (full and sharded).
  void zero_grad();

  // The wrapped optimizer over this rank's chunks (group order as given).
  optim::Optimizer& optimizer();
  int stage() const;
  // Elements of the wrapped optimizer's parameters on this rank (its share, with padding).
  int64_t shard_numel() const;

  // Stage 3: gathers every parameter into the module (to save or load a full state_dict),
  // until reshard(), which takes this rank's chunks back from the module's (possibly loaded)
  // parameters and frees the rest. Collective. No-ops at stages 1 and 2.
  void gather_full_parameters();
  void reshard();

  // ---- checkpoints: any number of ranks saves, any number loads -------------------------------
  // The module's full state_dict, as copies (stage 3 gathers; collective there). Load one with
  // gather_full_parameters(), module.load_state_dict(...), reshard().
  nn::StateDict module_state_dict();
  // This rank's part of the optimizer state, keyed by the module's parameters: scalars in the
  // format of an unsharded optimizer's state_dict (groups, base lrs, steps per parameter), and
  // tensors "<parameter>/<buffer>" holding the elements of the flattened buffer this rank owns,
  // placed by "<parameter>/<buffer>#layout" (see consolidate_optimizer_shards).
  optim::OptimizerStateDict state_shard() const;
  // Restores from an unsharded optimizer state_dict over the module's parameters: one saved
  // without ZeRO, or consolidate_optimizer_shards() of the shards of any number of ranks.
  void load_state_dict(const optim::OptimizerStateDict& state);

 private:
  // Shared with the hooks the module and its parameters hold (weakly).
  std::shared_ptr<ZeroState> state_;
};

}  // namespace kiln::parallel

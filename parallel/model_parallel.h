// ModelParallelRunner: training a ParallelTransformer on a mesh of tp x cp x ep x dp x pp ranks.
//
// It owns this rank's part of the model and does what surrounds the optimizer for any layout:
//
//   runner.forward_backward(tokens, targets);   // this data rank's rows, all micro-batches
//   runner.reduce_gradients();                  // (not with a ZeroOptimizer, which reduces itself)
//   double norm = runner.clip_grad_norm(1.0);   // the norm of the whole model's gradient
//   optimizer.step();
//
// forward_backward cuts the rows into micro-batches, gives each context-parallel rank its two
// chunks of every sequence, and runs the pipeline schedule (pipeline_schedule.h; at pp = 1 the
// micro-batches run one after the other, as gradient accumulation). Each micro-batch's loss is
// divided by the number of micro-batches, so the gradients are those of the step's mean loss.
//
// Who holds what (data rank = ep_rank + ep * dp_rank: ranks with different data):
//   tokens       the same rows on every tp, cp and pp rank of a data rank; cp ranks take chunks
//   dense params replicated over dp x cp x ep: gradients averaged there
//   experts      one ep rank each, replicated over dp x cp: averaged there (the expert layer
//                already scales their gradient by 1 / ep, see expert_parallel.h)
//   tied embedding  on the first and the last pipeline stage: gradients summed across the two
// Averaging over cp is right because each cp rank's loss is the mean over its tokens and ring
// attention sends every rank's gradient for other ranks' keys and values back to their owners.
//
// Checkpoints use the layout of nn::Transformer (master_state_dict and friends, collective over
// the world), so any layout, or a single process, loads what any other saved.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "nn/transformer.h"
#include "optim/optimizer.h"
#include "parallel/mesh.h"
#include "parallel/pipeline_schedule.h"
#include "parallel/tp_transformer.h"
#include "parallel/zero.h"

namespace kiln::parallel {

class ModelParallelOptions {
 public:
  ModelParallelOptions& schedule(PipelineSchedule value) { schedule_ = value; return *this; }
  ModelParallelOptions& microbatches(int64_t value) { microbatches_ = value; return *this; }
  ModelParallelOptions& virtual_stages(int value) { virtual_stages_ = value; return *this; }
  ModelParallelOptions& sequence_parallel(bool value) { sequence_parallel_ = value; return *this; }
  // Dropout's random stream (see tp_transformer.h: the same state on a tensor-parallel group's
  // ranks without sequence parallelism, distinct with it).
  ModelParallelOptions& dropout_generator(Generator* value) { dropout_generator_ = value; return *this; }
  Generator* dropout_generator() const { return dropout_generator_; }
  PipelineSchedule schedule() const { return schedule_; }
  int64_t microbatches() const { return microbatches_; }
  int virtual_stages() const { return virtual_stages_; }
  bool sequence_parallel() const { return sequence_parallel_; }

 private:
  PipelineSchedule schedule_ = PipelineSchedule::one_forward_one_backward;
  int64_t microbatches_ = 1;
  int virtual_stages_ = 1;
  bool sequence_parallel_ = false;
  Generator* dropout_generator_ = nullptr;
};

class ModelParallelRunner {
 public:
  // Collective over the mesh's world. Every rank passes the same master model (built from the
  // same seed); this rank keeps its part.
  ModelParallelRunner(const nn::Transformer& master, std::shared_ptr<const Mesh> mesh, ModelParallelOptions options);

  ParallelTransformer& model() { return *model_; }
  const Mesh& mesh() const { return *mesh_; }
  const ModelParallelOptions& options() const { return options_; }
  // The data rank (ep_rank + ep * dp_rank) and the number of them: which rows this rank reads.
  int data_rank() const;
  int data_ranks() const;

  // Forward and backward of one optimizer step: tokens and targets (B, T) are this data rank's
  // rows for every micro-batch (B divisible by the micro-batches). Gradients accumulate into
  // .grad. Returns the step's mean loss over the whole global batch (the same on every rank).
  double forward_backward(const Tensor& tokens, const Tensor& targets);
  // The mean cross-entropy of the rows without gradients (evaluation; the same on every rank).
  double evaluate(const Tensor& tokens, const Tensor& targets);
  // The last step's pipeline measurements (bubble, in-flight micro-batches, peak bytes).
  const PipelineStepResult& last_step() const { return last_step_; }

  // Averages gradients over the ranks that replicate each parameter and sums the tied
  // embedding's across the first and last stage. With `data_parallel` false only the latter (a
  // ZeroOptimizer over replica_group() averages the rest).
  void reduce_gradients(bool data_parallel = true);
  // The norm of the whole model's gradient (each parameter counted once, however many ranks
  // hold it), scaling every gradient by max_norm / norm when it is larger (max_norm > 0). With a
  // ZeroOptimizer, pass it: the averaged gradients are its shards.
  double clip_grad_norm(double max_norm, ZeroOptimizer* zero = nullptr);
  double grad_norm(ZeroOptimizer* zero = nullptr) { return clip_grad_norm(0.0, zero); }

  // Bytes and calls of every group this rank communicates on (mesh groups, replica groups, the
  // pipeline's channels), summed; and their reset.
  CommunicationStats communication_stats() const;
  void reset_communication_stats();

  // The ranks over which dense parameters are replicated (dp x cp x ep) and experts (dp x cp).
  const std::shared_ptr<Communicator>& replica_group() const { return replica_group_; }
  const std::shared_ptr<Communicator>& expert_replica_group() const { return expert_replica_group_; }

  // ---- checkpoints in the layout of nn::Transformer (collective over the world) ---------------
  nn::StateDict master_state_dict();
  void load_master_state_dict(const nn::StateDict& master);
  // An optimizer state_dict over this rank's parameters (unsharded: consolidate ZeRO shards
  // first) -> the same over the whole master model, and back.
  optim::OptimizerStateDict master_optimizer_state(const optim::OptimizerStateDict& local);
  optim::OptimizerStateDict local_optimizer_state(const optim::OptimizerStateDict& master);

 private:
  bool is_expert(const std::string& name) const;
  std::vector<std::shared_ptr<Communicator>> groups() const;
  double norm_weight(const NamedParameter& parameter) const;
  // Micro-batch j of rows (B, T) -> this cp rank's (B / m, T / cp).
  Tensor micro_batch(const Tensor& rows, int64_t index) const;

  std::shared_ptr<const Mesh> mesh_;
  ModelParallelOptions options_;
  std::shared_ptr<ParallelTransformer> model_;
  std::shared_ptr<Communicator> replica_group_, expert_replica_group_;
  std::shared_ptr<Communicator> embedding_group_;  // the first and last pipeline stage, when tied
  std::shared_ptr<Communicator> activation_channel_, gradient_channel_;  // the pipeline's (pipeline_p2p.h)
  PipelineStepResult last_step_;
};

}  // namespace kiln::parallel

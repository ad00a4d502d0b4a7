// Trainer: the pretraining loop behind kiln-train, usable from any program.
//
//   parallel::World world = parallel::init();
//   train::Trainer trainer(train::TrainConfig::from_file("configs/shakespeare_char.json"),
//                          world.communicator);
//   train::TrainResult result = trainer.run();
//
// One optimizer step: for each of grad_accumulation micro-steps, a (micro_batch, T) batch from
// this rank's slice of the data, forward, backward of loss / grad_accumulation; the gradients
// are averaged over the data-parallel ranks, by DDP (parallel.zero_stage 0: buckets all-reduced
// during the last micro-step's backward) or ZeRO (stages 1-3: reduce-scattered to the ranks
// that own them, which alone update their shard of the optimizer state); then clipped by the
// global norm, checked for NaN/Inf, and applied with the schedule's lr. N ranks with
// micro-batch B compute what one rank computes with micro-batch N B.
//
// With tensor, pipeline, context or expert parallelism (parallel.tensor_parallel, ... > 1) the
// world is a mesh (parallel/mesh.h) and parallel::ModelParallelRunner trains this rank's part of
// the model: the grad_accumulation micro-steps are the pipeline's micro-batches, data-parallel
// averaging is a flat all-reduce after the step (or ZeRO-1), and checkpoints are written in the
// layout of the whole model, so that any layout (or one process) resumes them. World rank 0 also
// keeps the whole model, filled from the ranks' parts when it writes samples.
//
// Around the steps: validation every eval.interval steps, sampled text every
// eval.sample_interval (rank 0 prints), checkpoints every checkpoint.interval (rank 0 writes
// the model; with ZeRO every rank writes its optimizer shard), progress lines, metrics.jsonl and TensorBoard scalars (rank 0).
// A stop request (request_stop(), or SIGINT/SIGTERM once install_stop_handlers() was called)
// finishes the current step, saves a final checkpoint and returns with interrupted = true.
//
// Resuming (TrainerOptions::resume_from) restores parameters, optimizer state, the step, the
// loader position and every rank's RNG state, so a run stopped at step k and resumed gives
// bit-identical losses and parameters to one that never stopped.
#pragma once

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "autograd/generator.h"
#include "data/loader.h"
#include "data/tokenizer.h"
#include "nn/transformer.h"
#include "optim/mixed_precision.h"
#include "optim/optimizer.h"
#include "optim/schedule.h"
#include "parallel/communicator.h"
#include "parallel/ddp.h"
#include "parallel/model_parallel.h"
#include "parallel/zero.h"
#include "train/config.h"
#include "train/progress.h"

namespace kiln::train {

class MetricsLog;
class TensorBoardWriter;

struct TrainerOptions {
  // A checkpoint directory or a run directory (its latest checkpoint) to continue from.
  std::optional<std::filesystem::path> resume_from;
  std::FILE* out = stdout;  // progress, evaluations and samples (rank 0 only)
  bool quiet = false;       // no console output at all (tests)
  int gpu = 0;              // this rank's CUDA device with training.device "cuda" (kiln-train: World::gpu())
};

struct TrainResult {
  int64_t steps = 0;                  // completed optimizer steps (of the whole run)
  double last_loss = 0.0;
  std::optional<double> last_val_loss;
  int64_t skipped_steps = 0;          // non-finite steps skipped (training.on_nonfinite = "skip")
  bool interrupted = false;           // stopped by request or signal before max_steps
  int stop_signal = 0;                // the signal that stopped it, or 0
  std::optional<std::filesystem::path> last_checkpoint;
  double seconds = 0.0;
};

class Trainer {
 public:
  // Loads the tokenizer, builds the model (or restores it), the optimizer and the loaders.
  // The world communicator's ranks all construct a Trainer with the same config.
  Trainer(TrainConfig config, std::shared_ptr<parallel::Communicator> world, TrainerOptions options = {});
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  // Trains up to training.max_steps (from wherever the trainer is). Throws kiln::Error on a
  // non-finite step when training.on_nonfinite is "stop", naming the step.
  TrainResult run();
  // One optimizer step; returns its statistics (rank-independent except timings).
  StepStats step();
  // Mean validation loss over eval.batches global batches (every rank gets the same value).
  double evaluate();
  // Saves a checkpoint of the current state (collective: every rank must call it).
  std::filesystem::path save();
  // Asks run() to stop (thread- and callback-safe). Ranks agree on it through the next gradient
  // all-reduce: called during a step, that step is the last; called from on_step, the next one.
  void request_stop() { stop_requested_ = true; }

  // Called on every rank after each step, with the step's statistics.
  std::function<void(const StepStats&)> on_step;

  const TrainConfig& config() const { return config_; }
  // The model (with model parallelism: world rank 0's whole model, refreshed for samples).
  nn::Transformer& model();
  // This rank's part of the model under model parallelism, else null.
  parallel::ModelParallelRunner* model_parallel() { return runner_.get(); }
  // The fp32 masters and loss scaler with training.precision bf16 / f16, else null.
  const optim::MixedPrecisionOptimizer* mixed_precision() const { return mixed_.get(); }
  // The optimizer the schedule drives (with ZeRO, the one over this rank's shards).
  optim::Optimizer& optimizer() { return zero_ ? zero_->optimizer() : mixed_ ? mixed_->optimizer() : *optimizer_; }
  const data::Tokenizer& tokenizer() const { return *tokenizer_; }
  int64_t steps_done() const { return step_; }
  const std::filesystem::path& run_dir() const { return run_dir_; }

 private:
  void build_model_and_optimizer();
  void build_model_parallel();
  // The parameters this rank trains.
  NamedParameters trained_parameters() const;
  // The optimizer state of this rank's parameters, unsharded (ZeRO shards gathered; collective).
  optim::OptimizerStateDict local_optimizer_state();
  void zero_grad();
  void restore(const std::filesystem::path& path);
  // Every rank's RNG state, gathered (collective).
  nlohmann::json rng_states();
  // The run's header: model size, layout, batch, tokens per step, resume point.
  std::string describe() const;
  double tokens_per_step() const {
    return static_cast<double>(config_.training.batch_size * config_.model.block_size);
  }
  // Rank 0, unless quiet.
  void print(const std::string& line);
  void log_step(const StepStats& stats, std::optional<double> val_loss);
  void print_samples();
  // The communicator that averages gradients (DDP, ZeRO): NCCL's when the model is on a GPU and
  // kiln has NCCL, else the world's (MPI stages device tensors through the host).
  std::shared_ptr<parallel::Communicator> gradient_communicator() const;
  // A batch from a loader (host memory) on the training device.
  data::Batch on_device(data::Batch batch) const;

  TrainConfig config_;
  std::shared_ptr<parallel::Communicator> world_;
  TrainerOptions options_;
  int rank_ = 0, world_size_ = 1;
  int data_rank_ = 0, data_ranks_ = 1;  // which slice of the data this rank reads, of how many
  int64_t micro_batch_ = 0;
  std::filesystem::path run_dir_;
  Device device_ = Device::cpu();  // training.device

  std::unique_ptr<data::Tokenizer> tokenizer_;
  Generator generator_;  // parameter init, then this rank's dropout stream
  std::shared_ptr<nn::Transformer> model_;
  std::unique_ptr<optim::Optimizer> optimizer_;       // parallel.zero_stage 0
  std::unique_ptr<optim::MixedPrecisionOptimizer> mixed_;  // instead, with training.precision bf16 / f16
  std::unique_ptr<parallel::ZeroOptimizer> zero_;      // stages 1-3
  std::unique_ptr<parallel::DistributedDataParallel> ddp_;  // stage 0 with more than one rank
  std::shared_ptr<const parallel::Mesh> mesh_;               // model parallelism only
  std::unique_ptr<parallel::ModelParallelRunner> runner_;
  std::optional<optim::LrSchedule> schedule_;
  std::unique_ptr<data::DataLoader> train_loader_, val_loader_;
  std::unique_ptr<MetricsLog> metrics_;           // rank 0
  std::unique_ptr<TensorBoardWriter> tensorboard_;  // rank 0
  ProgressPrinter progress_;

  int64_t step_ = 0;  // optimizer steps completed
  double flops_per_token_ = 0.0;
  int64_t parameter_count_ = 0;  // of the whole model
  std::atomic<bool> stop_requested_{false};
  bool stop_agreed_ = false;  // the last step's all-reduced stop flag
  double seconds_in_steps_ = 0.0;
  int64_t steps_this_session_ = 0;
};

}  // namespace kiln::train

// Trainer: construction, the optimizer step and the run loop. Checkpointing, evaluation and
// logging live in trainer_io.cpp.
#include "train/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "autograd/ops.h"
#include "kernels/backend.h"
#include "optim/optim.h"
#include "parallel/nccl_backend.h"
#include "train/metrics_log.h"
#include "train/signals.h"
#include "train/tensorboard_writer.h"

namespace kiln::train {

namespace {

std::unique_ptr<optim::Optimizer> make_optimizer(const std::string& type, std::vector<optim::ParamGroup> groups,
                                                 const optim::OptimizerOptions& options) {
  if (type == "adamw") return std::make_unique<optim::AdamW>(groups, dynamic_cast<const optim::AdamWOptions&>(options));
  if (type == "adam") return std::make_unique<optim::Adam>(groups, dynamic_cast<const optim::AdamOptions&>(options));
  if (type == "sgd") return std::make_unique<optim::SGD>(groups, dynamic_cast<const optim::SGDOptions&>(options));
  if (type == "rmsprop") {
    return std::make_unique<optim::RMSprop>(groups, dynamic_cast<const optim::RMSpropOptions&>(options));
  }
  if (type == "adagrad") {
    return std::make_unique<optim::Adagrad>(groups, dynamic_cast<const optim::AdagradOptions&>(options));
  }
  KILN_FAIL("optimizer.type: unknown optimizer '", type, "'");
}

std::vector<std::string> shard_paths(const std::string& dir, const std::vector<std::string>& names) {
  std::vector<std::string> paths;
  for (const std::string& name : names) paths.push_back((std::filesystem::path(dir) / name).string());
  return paths;
}

// Each rank's dropout stream: distinct per rank, fixed by the seed.
uint64_t dropout_seed(uint64_t seed, int rank) { return seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(rank + 1); }

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

Trainer::Trainer(TrainConfig config, std::shared_ptr<parallel::Communicator> world, TrainerOptions options)
    : config_(std::move(config)),
      world_(std::move(world)),
      options_(options),
      progress_(options.out, options.quiet ? "off" : config_.logging.progress_bar) {
  KILN_CHECK(world_ != nullptr, "Trainer: no communicator");
  rank_ = world_->rank();
  world_size_ = world_->size();
  if (config_.training.device == "cuda") {
    device_ = Device::cuda(options_.gpu);
    KILN_CHECK(!config_.parallel.model_parallel(), "training.device \"cuda\" is not supported with tensor, pipeline, "
               "context or expert parallelism yet (data parallelism and ZeRO are)");
    // Here, naming the setting, rather than at the first kernel.
    try {
      kernels::backend_for(device_);
    } catch (const Error& error) {
      KILN_FAIL("training.device is \"cuda\" but rank ", rank_, " cannot use GPU ", options_.gpu, ": ", error.what());
    }
  }
  if (config_.training.precision != "fp32") {
    KILN_CHECK(config_.parallel.zero_stage == 0 && !config_.parallel.model_parallel(), "training.precision \"",
               config_.training.precision, "\" is supported with parallel.zero_stage 0 and without tensor, pipeline, "
               "context or expert parallelism (got zero_stage ", config_.parallel.zero_stage, ")");
  }
  micro_batch_ = config_.micro_batch_size(world_size_);
  data_rank_ = rank_;
  data_ranks_ = world_size_;
  run_dir_ = config_.out_dir;

  tokenizer_ = data::load_tokenizer((std::filesystem::path(config_.data.dir) / config_.data.tokenizer).string());
  if (config_.vocab_from_tokenizer) {
    config_.model.vocab_size = tokenizer_->vocab_size();
    config_.model.resolve();
  }
  KILN_CHECK(tokenizer_->vocab_size() <= config_.model.vocab_size, "model.vocab_size ", config_.model.vocab_size,
             " is smaller than the tokenizer's ", tokenizer_->vocab_size(), " tokens");
  build_model_and_optimizer();

  const int64_t seq_len = config_.model.block_size;
  train_loader_ = std::make_unique<data::DataLoader>(
      shard_paths(config_.data.dir, config_.data.train),
      data::DataLoaderOptions(micro_batch_, seq_len)
          .shuffle(config_.data.shuffle)
          .seed(config_.seed)
          .rank(data_rank_, data_ranks_)
          .prefetch(config_.data.prefetch)
          .vocab_size(config_.model.vocab_size));
  KILN_CHECK(train_loader_->batches_per_epoch() > 0, "data.train: the shards hold ", train_loader_->windows(),
             " windows of ", seq_len + 1, " tokens, fewer than one global micro-batch of ", micro_batch_ * data_ranks_);
  if (!config_.data.val.empty()) {
    val_loader_ = std::make_unique<data::DataLoader>(shard_paths(config_.data.dir, config_.data.val),
                                                     data::DataLoaderOptions(micro_batch_, seq_len)
                                                         .rank(data_rank_, data_ranks_)
                                                         .prefetch(0)
                                                         .vocab_size(config_.model.vocab_size));
  }

  if (options_.resume_from) restore(*options_.resume_from);

  if (rank_ == 0) {
    std::filesystem::create_directories(run_dir_);
    data::write_file_atomically((run_dir_ / "config.json").string(), config_.to_json().dump(2) + "\n", "kiln-train");
    tokenizer_->save((run_dir_ / "tokenizer.json").string());
    bool resumed = options_.resume_from.has_value();
    if (config_.logging.jsonl) metrics_ = std::make_unique<MetricsLog>(run_dir_ / "metrics.jsonl", resumed);
    if (config_.logging.tensorboard) tensorboard_ = std::make_unique<TensorBoardWriter>(run_dir_ / "tensorboard");
  }
  // No rank reads the run directory before rank 0 has made it.
  world_->barrier();
}

Trainer::~Trainer() = default;

void Trainer::build_model_and_optimizer() {
  // Every rank draws the same initial parameters from the seed; then each continues with its own
  // dropout stream.
  generator_.manual_seed(config_.seed);
  model_ = std::make_shared<nn::Transformer>(config_.model, &generator_);
  model_->train();
  if (!device_.is_cpu()) model_->to(device_);  // drawn on the host, so every device starts alike
  generator_.manual_seed(dropout_seed(config_.seed, rank_));
  schedule_ = optim::schedule_from_json(config_.schedule, "schedule");
  parameter_count_ = model_->count_parameters();
  int64_t counted = parameter_count_;
  if (model_->position_embedding) counted -= model_->position_embedding->weight.numel();
  flops_per_token_ = flops_per_token(config_.model, counted, config_.model.block_size);
  if (config_.parallel.model_parallel()) {
    build_model_parallel();
    return;
  }

  NamedParameters parameters = model_->named_parameters();
  auto bucket_bytes = static_cast<int64_t>(config_.parallel.bucket_mb * 1024 * 1024);
  if (config_.parallel.zero_stage > 0) {
    const std::string type = config_.optimizer_type;
    std::shared_ptr<const optim::OptimizerOptions> options = config_.optimizer;
    zero_ = std::make_unique<parallel::ZeroOptimizer>(
        *model_, gradient_communicator(), optim::weight_decay_groups(parameters),
        [type, options](std::vector<optim::ParamGroup> groups) { return make_optimizer(type, std::move(groups), *options); },
        parallel::ZeroOptions().stage(static_cast<int>(config_.parallel.zero_stage)).bucket_bytes(bucket_bytes));
  } else if (config_.training.precision != "fp32") {
    // The parameters turn 16-bit here (in place), before DDP buckets them by dtype; their
    // gradients are averaged in fp32, one rounding back to 16 bits.
    const std::string type = config_.optimizer_type;
    std::shared_ptr<const optim::OptimizerOptions> options = config_.optimizer;
    mixed_ = std::make_unique<optim::MixedPrecisionOptimizer>(
        parameters, config_.training.precision == "bf16" ? DType::bf16 : DType::f16,
        [type, options](std::vector<optim::ParamGroup> groups) { return make_optimizer(type, std::move(groups), *options); });
    if (world_size_ > 1) {
      ddp_ = std::make_unique<parallel::DistributedDataParallel>(
          *model_, gradient_communicator(), parallel::DDPOptions().bucket_bytes(bucket_bytes).reduce_dtype(DType::f32));
    }
  } else {
    optimizer_ = make_optimizer(config_.optimizer_type, optim::weight_decay_groups(parameters), *config_.optimizer);
    // Alone, gradients need no averaging (and DDP's bucket copies would be pure overhead).
    if (world_size_ > 1) {
      ddp_ = std::make_unique<parallel::DistributedDataParallel>(*model_, gradient_communicator(),
                                                                 parallel::DDPOptions().bucket_bytes(bucket_bytes));
    }
  }
}

void Trainer::build_model_parallel() {
  const ParallelConfig& layout = config_.parallel;
  KILN_CHECK(layout.zero_stage <= 1, "parallel.zero_stage ", layout.zero_stage,
             " is not supported with tensor, pipeline, context or expert parallelism (use 0 or 1)");
  KILN_CHECK(layout.zero_stage == 0 || layout.expert_parallel == 1,
             "parallel.zero_stage 1 is not supported with expert_parallel > 1 (expert and dense parameters are "
             "replicated over different ranks)");
  auto shape = parallel::MeshShape()
                   .tp(static_cast<int>(layout.tensor_parallel))
                   .cp(static_cast<int>(layout.context_parallel))
                   .ep(static_cast<int>(layout.expert_parallel))
                   .dp(static_cast<int>(layout.data_parallel_size(world_size_)))
                   .pp(static_cast<int>(layout.pipeline_parallel));
  shape.check_model(config_.model, config_.model.block_size);
  mesh_ = std::make_shared<const parallel::Mesh>(world_, shape);
  // Dropout masks the replicated residual stream: without sequence parallelism the ranks of a
  // tensor-parallel group draw one stream (that of its tp rank 0), with it each its own.
  int stream = rank_;
  if (!layout.sequence_parallel) {
    stream = mesh_->world_rank_at({0, mesh_->cp_rank(), mesh_->ep_rank(), mesh_->dp_rank(), mesh_->pp_rank()});
  }
  generator_.manual_seed(dropout_seed(config_.seed, stream));
  runner_ = std::make_unique<parallel::ModelParallelRunner>(
      *model_, mesh_,
      parallel::ModelParallelOptions()
          .schedule(parallel::parse_pipeline_schedule(layout.pipeline_schedule))
          .microbatches(config_.training.grad_accumulation)
          .virtual_stages(static_cast<int>(layout.virtual_stages))
          .sequence_parallel(layout.sequence_parallel)
          .dropout_generator(&generator_));
  runner_->model().train();
  data_rank_ = runner_->data_rank();
  data_ranks_ = runner_->data_ranks();
  // Rank 0 keeps the whole model for samples; on the others it would only take memory.
  if (rank_ != 0) model_.reset();

  NamedParameters parameters = runner_->model().named_parameters();
  if (layout.zero_stage == 1) {
    const std::string type = config_.optimizer_type;
    std::shared_ptr<const optim::OptimizerOptions> options = config_.optimizer;
    zero_ = std::make_unique<parallel::ZeroOptimizer>(
        runner_->model(), runner_->replica_group(), optim::weight_decay_groups(parameters),
        [type, options](std::vector<optim::ParamGroup> groups) { return make_optimizer(type, std::move(groups), *options); },
        parallel::ZeroOptions().stage(1).bucket_bytes(static_cast<int64_t>(layout.bucket_mb * 1024 * 1024)));
  } else {
    optimizer_ = make_optimizer(config_.optimizer_type, optim::weight_decay_groups(parameters), *config_.optimizer);
  }
}

std::shared_ptr<parallel::Communicator> Trainer::gradient_communicator() const {
  if (device_.is_cuda() && world_size_ > 1 && parallel::nccl_available()) {
    return parallel::make_nccl_communicator(world_, options_.gpu);
  }
  return world_;
}

data::Batch Trainer::on_device(data::Batch batch) const {
  if (!device_.is_cpu()) {
    batch.inputs = batch.inputs.to(device_);
    batch.targets = batch.targets.to(device_);
  }
  return batch;
}

nn::Transformer& Trainer::model() {
  KILN_CHECK(model_ != nullptr, "Trainer::model: with model parallelism only world rank 0 holds the whole model");
  return *model_;
}

NamedParameters Trainer::trained_parameters() const {
  return runner_ ? runner_->model().named_parameters() : model_->named_parameters();
}

void Trainer::zero_grad() {
  if (zero_) {
    zero_->zero_grad();
  } else if (mixed_) {
    mixed_->zero_grad();
  } else {
    optimizer_->zero_grad();
  }
}

StepStats Trainer::step() {
  auto start = std::chrono::steady_clock::now();
  schedule_->apply(optimizer(), step_);
  const int64_t micro_steps = config_.training.grad_accumulation;
  double loss_sum = 0.0;
  if (runner_) {
    // The step's micro-batches, stacked: the runner cuts them again for the pipeline.
    std::vector<Tensor> inputs, targets;
    for (int64_t micro = 0; micro < micro_steps; ++micro) {
      data::Batch batch = train_loader_->next();
      inputs.push_back(batch.inputs);
      targets.push_back(batch.targets);
    }
    loss_sum = runner_->forward_backward(cat(inputs), cat(targets)) * static_cast<double>(micro_steps);
    runner_->reduce_gradients(zero_ == nullptr);
  }
  for (int64_t micro = 0; !runner_ && micro < micro_steps; ++micro) {
    data::Batch batch = on_device(train_loader_->next());
    auto backward = [&] {
      Tensor loss = model_->loss(batch.inputs, batch.targets);  // (B, T) -> scalar
      loss_sum += loss.item();
      Tensor objective = mixed_ ? mixed_->scale_loss(loss) : loss;  // f16: times the loss scale
      (micro_steps > 1 ? objective * (1.0 / static_cast<double>(micro_steps)) : objective).backward();
    };
    // DDP communicates only in the last micro-step's backward, with the accumulated gradients.
    if (ddp_ && micro + 1 < micro_steps) {
      auto local_only = ddp_->no_sync();
      backward();
    } else {
      backward();
    }
  }
  if (ddp_) ddp_->synchronize();
  bool stop_here = stop_requested_ || stop_signal() != 0;
  // The step's loss, averaged over ranks, and whether any rank was asked to stop.
  Tensor shared = from_vector(std::vector<double>{loss_sum / static_cast<double>(micro_steps), stop_here ? 1.0 : 0.0},
                              {2}, TensorOptions(DType::f64));
  world_->all_reduce(shared, parallel::ReduceOp::avg);
  std::vector<double> agreed = shared.to_vector<double>();
  stop_agreed_ = agreed[1] > 0.0;

  StepStats stats;
  stats.step = step_ + 1;
  stats.max_steps = config_.training.max_steps;
  stats.loss = agreed[0];
  stats.lr = optimizer().lr(0);
  NamedParameters parameters = trained_parameters();
  if (runner_) {
    // Every parameter counted once across the ranks that hold it (ZeRO-1: from its shards).
    stats.grad_norm = runner_->clip_grad_norm(std::max(config_.training.grad_clip, 0.0), zero_.get());
  } else if (mixed_) {
    // Of the fp32 master gradients, unscaled (NaN or Inf when a 16-bit gradient overflowed).
    stats.grad_norm = config_.training.grad_clip > 0 ? mixed_->clip_grad_norm(config_.training.grad_clip)
                                                      : mixed_->grad_norm();
  } else if (zero_) {
    // The global norm from the shards (the full gradients no longer exist at stages 2 and 3).
    stats.grad_norm = config_.training.grad_clip > 0 ? zero_->clip_grad_norm(config_.training.grad_clip) : zero_->grad_norm();
  } else if (config_.training.grad_clip > 0) {
    optim::ClipGradNormOptions clip;
    clip.error_if_nonfinite = false;
    stats.grad_norm = optim::clip_grad_norm(parameters, config_.training.grad_clip, clip);
  } else {
    stats.grad_norm = optim::grad_norm(parameters);
  }
  // f16's loss scale overflowing the gradients is routine: the step is skipped and the scale
  // backed off (as torch's GradScaler does), whatever training.on_nonfinite says.
  const bool scale_overflow = mixed_ && mixed_->scaler().enabled() && std::isfinite(stats.loss);
  if (std::isfinite(stats.loss) && std::isfinite(stats.grad_norm)) {
    if (zero_) {
      zero_->step();
    } else if (mixed_) {
      mixed_->step();
    } else {
      optimizer_->step();
    }
  } else if (scale_overflow) {
    mixed_->step();  // skips, and backs the scale off
    stats.skipped = true;
  } else if (config_.training.on_nonfinite == "skip") {
    stats.skipped = true;
  } else {
    std::vector<std::string> bad = zero_    ? std::vector<std::string>()
                                   : mixed_ ? optim::nonfinite_gradients(mixed_->master_parameters())
                                            : optim::nonfinite_gradients(parameters);
    std::string names;
    for (size_t i = 0; i < bad.size() && i < 5; ++i) names += (i ? ", " : "") + bad[i];
    if (bad.size() > 5) names += ", ...";
    zero_grad();
    // printf's "-nan" for a NaN with its sign bit set is noise in a message.
    auto show = [](double value) { return std::isnan(value) ? std::string("nan") : optim::format_value(value); };
    KILN_FAIL("step ", stats.step, ": non-finite loss ", show(stats.loss), " or grad norm ", show(stats.grad_norm),
              bad.empty() ? std::string() : " (non-finite gradients in " + names + ")",
              "; stopping the run (set training.on_nonfinite to \"skip\" to skip such steps instead)");
  }
  zero_grad();
  ++step_;

  stats.step_seconds = seconds_since(start);
  seconds_in_steps_ += stats.step_seconds;
  ++steps_this_session_;
  double mean_step = seconds_in_steps_ / static_cast<double>(steps_this_session_);
  stats.tokens_per_second = tokens_per_step() / std::max(stats.step_seconds, 1e-9);
  stats.mfu = flops_per_token_ * stats.tokens_per_second / (config_.logging.peak_flops * world_size_);
  stats.eta_seconds = mean_step * static_cast<double>(config_.training.max_steps - step_);
  return stats;
}

TrainResult Trainer::run() {
  auto start = std::chrono::steady_clock::now();
  TrainResult result;
  print(describe());
  double interval_seconds = 0.0;  // step time since the last progress line (for its tokens/s)
  int64_t interval_steps = 0;
  while (step_ < config_.training.max_steps) {
    StepStats stats = step();
    stats.elapsed_seconds = seconds_since(start);
    interval_seconds += stats.step_seconds;
    ++interval_steps;
    result.last_loss = stats.loss;
    if (stats.skipped) ++result.skipped_steps;
    const bool last = step_ == config_.training.max_steps;
    const bool stopping = stop_agreed_ && !last;

    std::optional<double> val_loss;
    bool eval_due = config_.eval.interval > 0 && step_ % config_.eval.interval == 0;
    if (val_loader_ && (eval_due || last || stopping)) {
      val_loss = evaluate();
      result.last_val_loss = val_loss;
    }
    log_step(stats, val_loss);
    if (step_ % config_.logging.interval == 0 || step_ == 1 || last || stopping) {
      // The line shows the tokens/s of the whole interval, not just its last step.
      StepStats line = stats;
      line.tokens_per_second = tokens_per_step() * static_cast<double>(interval_steps) / std::max(interval_seconds, 1e-9);
      line.mfu = flops_per_token_ * line.tokens_per_second / (config_.logging.peak_flops * world_size_);
      print(format_progress_line(line));
      if (val_loss) print(format_eval_line(step_, *val_loss));
      interval_seconds = 0.0;
      interval_steps = 0;
    } else if (val_loss) {
      print(format_eval_line(step_, *val_loss));
    }
    if (rank_ == 0 && !options_.quiet) progress_.update_bar(stats);
    if (on_step) on_step(stats);

    bool sample_due = config_.eval.sample_interval > 0 && step_ % config_.eval.sample_interval == 0;
    if (config_.eval.samples > 0 && (sample_due || last)) print_samples();
    bool checkpoint_due = config_.checkpoint.interval > 0 && step_ % config_.checkpoint.interval == 0;
    if (checkpoint_due || ((last || stopping) && config_.checkpoint.final)) result.last_checkpoint = save();
    if (stopping) {
      result.interrupted = true;
      result.stop_signal = stop_signal();
      print("stopped after step " + std::to_string(step_) + (result.stop_signal ? " (signal)" : " (request)") +
            (result.last_checkpoint ? "; checkpoint " + result.last_checkpoint->string() : ""));
      break;
    }
  }
  if (rank_ == 0 && !options_.quiet) progress_.finish();
  if (tensorboard_) tensorboard_->flush();
  result.steps = step_;
  result.seconds = seconds_since(start);
  return result;
}

}  // namespace kiln::train

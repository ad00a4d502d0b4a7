// Trainer: what goes in and out around the steps: checkpoints (save, restore, RNG states),
// validation, samples, the console and the metric logs.
#include <cmath>
#include <cstdio>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "parallel/checkpoint.h"
#include "parallel/state_exchange.h"
#include "parallel/zero.h"
#include "train/metrics_log.h"
#include "train/tensorboard_writer.h"
#include "train/text_generation.h"
#include "train/trainer.h"

namespace kiln::train {

namespace {

const nlohmann::json& state_field(const nlohmann::json& state, const char* key, const std::filesystem::path& path) {
  KILN_CHECK(state.is_object() && state.contains(key), "resume from ", path.string(), ": state.json has no '", key,
             "'");
  return state.at(key);
}

}  // namespace

nlohmann::json Trainer::rng_states() {
  GeneratorState mine = generator_.state();
  Tensor local = from_vector(std::vector<int64_t>{static_cast<int64_t>(mine.seed), static_cast<int64_t>(mine.offset)});
  Tensor all = zeros({2 * static_cast<int64_t>(world_size_)}, TensorOptions(DType::i64));
  world_->all_gather(local, all);
  std::vector<int64_t> values = all.to_vector<int64_t>();
  nlohmann::json states = nlohmann::json::array();
  for (int r = 0; r < world_size_; ++r) {
    states.push_back({{"seed", static_cast<uint64_t>(values[2 * r])}, {"offset", static_cast<uint64_t>(values[2 * r + 1])}});
  }
  return states;
}

std::filesystem::path Trainer::save() {
  nlohmann::json rng = rng_states();  // collective: before rank 0 goes off to write
  parallel::Checkpoint checkpoint;
  checkpoint.step = step_;
  checkpoint.state = {{"step", step_},
                      {"config", config_.to_json()},
                      {"model", config_.model.to_json()},
                      {"loader", train_loader_->position().to_json()},
                      {"rng", rng},
                      {"world_size", world_size_}};
  if (runner_) {
    // The whole model and optimizer in the layout of nn::Transformer, gathered from every rank's
    // part (collective); rank 0 writes them as an unsharded checkpoint.
    checkpoint.model = runner_->master_state_dict();
    checkpoint.optimizer = runner_->master_optimizer_state(local_optimizer_state());
    if (rank_ == 0) parallel::save_checkpoint(run_dir_, checkpoint, config_.checkpoint.keep_last);
    world_->barrier();
  } else if (zero_) {
    // Every rank writes its optimizer shard; rank 0 the whole model (gathered at stage 3).
    checkpoint.model = zero_->module_state_dict();
    optim::OptimizerStateDict shard = zero_->state_shard();
    checkpoint.optimizer.scalars = shard.scalars;
    checkpoint.shards = {shard.tensors};
    parallel::save_checkpoint(run_dir_, checkpoint, config_.checkpoint.keep_last, *world_);
  } else {
    if (rank_ == 0) {
      checkpoint.model = model_->state_dict();
      if (mixed_) {
        // The fp32 masters, not their 16-bit copies: a checkpoint is the same at any precision.
        for (const NamedParameter& master : mixed_->master_parameters()) checkpoint.model[master.name] = master.tensor.detach();
        if (mixed_->scaler().enabled()) {
          optim::LossScaler::State scaler = mixed_->scaler().state();
          checkpoint.state["loss_scaler"] = {
              {"scale", scaler.scale}, {"good_steps", scaler.good_steps}, {"skipped", scaler.skipped}};
        }
      }
      checkpoint.optimizer = optimizer().state_dict();
      parallel::save_checkpoint(run_dir_, checkpoint, config_.checkpoint.keep_last);
    }
    world_->barrier();
  }
  std::optional<std::filesystem::path> saved = parallel::latest_checkpoint(run_dir_);
  KILN_CHECK(saved.has_value(), "checkpoint: nothing found under ", run_dir_.string(), " after saving step ", step_);
  return *saved;
}

optim::OptimizerStateDict Trainer::local_optimizer_state() {
  if (!zero_) return optimizer_->state_dict();
  return parallel::consolidate_optimizer_shards(
      parallel::all_gather_optimizer_states(zero_->state_shard(), *runner_->replica_group()));
}

void Trainer::restore(const std::filesystem::path& path) {
  parallel::Checkpoint checkpoint = parallel::load_checkpoint(path);
  if (runner_) {
    runner_->load_master_state_dict(checkpoint.model);
    if (model_) model_->load_state_dict(checkpoint.model);
  } else {
    if (zero_) zero_->gather_full_parameters();
    model_->load_state_dict(checkpoint.model);
    if (zero_) zero_->reshard();
  }
  if (mixed_) {
    // The masters take the checkpoint's values exactly; the model has their 16-bit rounding.
    NoGradGuard no_grad;
    for (const NamedParameter& master : mixed_->master_parameters()) {
      Tensor(master.tensor).copy_(checkpoint.model.at(master.name));
    }
    if (checkpoint.state.contains("loss_scaler")) {
      const nlohmann::json& scaler = checkpoint.state["loss_scaler"];
      mixed_->load_scaler_state({scaler.at("scale").get<double>(), scaler.at("good_steps").get<int64_t>(),
                                 scaler.at("skipped").get<int64_t>()});
    }
  }
  // A sharded (ZeRO) checkpoint from any number of ranks, or an unsharded one, loads into either
  // kind of optimizer.
  optim::OptimizerStateDict saved = checkpoint.optimizer;
  if (!checkpoint.shards.empty()) {
    std::vector<optim::OptimizerStateDict> parts;
    for (const auto& shard : checkpoint.shards) parts.push_back({shard, checkpoint.optimizer.scalars});
    saved = parallel::consolidate_optimizer_shards(parts);
  }
  // Under model parallelism this rank takes its parameters' part of the whole state.
  if (runner_) saved = runner_->local_optimizer_state(saved);
  // Moments and step counts come from the checkpoint; hyperparameters from the config, so that a
  // resumed run can change them (--set optimizer.lr=...). Unchanged, they are the same values.
  nlohmann::json configured = optimizer().state_dict().scalars.at("groups");
  if (saved.scalars.contains("groups") && saved.scalars["groups"].size() == configured.size()) {
    for (size_t g = 0; g < configured.size(); ++g) {
      saved.scalars["groups"][g]["options"] = configured[g]["options"];
      saved.scalars["groups"][g]["base_lr"] = configured[g]["base_lr"];
    }
  }
  if (zero_) {
    zero_->load_state_dict(saved);
  } else {
    optimizer().load_state_dict(saved);
  }
  step_ = checkpoint.step;
  train_loader_->restore(data::LoaderPosition::from_json(state_field(checkpoint.state, "loader", path), "state.loader"));
  const nlohmann::json& rng = state_field(checkpoint.state, "rng", path);
  KILN_CHECK(rng.is_array(), "resume from ", path.string(), ": state.rng must be an array");
  // A different world size cannot continue the per-rank dropout streams; they restart from
  // the seed (the data order and parameters still continue exactly).
  if (rng.size() == static_cast<size_t>(world_size_)) {
    const nlohmann::json& mine = rng.at(static_cast<size_t>(rank_));
    generator_.set_state({mine.at("seed").get<uint64_t>(), mine.at("offset").get<uint64_t>()});
  } else {
    print("resume: the checkpoint was written by " + std::to_string(rng.size()) + " ranks, this job has " +
          std::to_string(world_size_) + "; dropout streams restart from the seed");
  }
  print("resumed from " + path.string() + " at step " + std::to_string(step_));
}

double Trainer::evaluate() {
  KILN_CHECK(val_loader_ != nullptr, "evaluate: no validation shards (data.val is empty)");
  int64_t batches = std::min(config_.eval.batches, val_loader_->batches_per_epoch());
  KILN_CHECK(batches > 0, "evaluate: the validation shards hold ", val_loader_->windows(),
             " windows, fewer than one global batch of ", micro_batch_ * data_ranks_);
  if (runner_) {
    runner_->model().eval();
    double sum = 0.0;
    val_loader_->restore(data::LoaderPosition{});
    for (int64_t i = 0; i < batches; ++i) {
      data::Batch batch = val_loader_->next();
      sum += runner_->evaluate(batch.inputs, batch.targets);  // already the mean over data ranks
    }
    runner_->model().train();
    return sum / static_cast<double>(batches);
  }
  model_->eval();
  double sum = 0.0;
  {
    NoGradGuard no_grad;
    val_loader_->restore(data::LoaderPosition{});  // the same batches every time
    for (int64_t i = 0; i < batches; ++i) {
      data::Batch batch = on_device(val_loader_->next());
      model_->loss(batch.inputs, batch.targets);
      sum += model_->last_cross_entropy.item();  // cross-entropy only: MoE's auxiliary losses are not a metric
    }
  }
  model_->train();
  Tensor mean = from_vector(std::vector<double>{sum / static_cast<double>(batches)});
  world_->all_reduce(mean, parallel::ReduceOp::avg);
  return mean.item();
}

std::string Trainer::describe() const {
  char text[640];
  const std::string layout = mesh_ ? mesh_->shape().describe() + ", " + config_.parallel.pipeline_schedule +
                                         (config_.parallel.sequence_parallel ? ", sequence parallel" : "")
                                   : std::string("data parallel");
  std::string where = device_.is_cuda() ? layout + ", one GPU per rank" : layout;
  if (mixed_) where += ", " + config_.training.precision + " with fp32 masters";
  std::snprintf(text, sizeof(text),
                "kiln-train: %s model, %.2fM parameters (%lld layers, %lld heads, d_model %lld, vocab %lld, block "
                "%lld)\n  %d rank(s) (%s), global batch %lld = %d x micro-batch %lld x %lld accumulation, %s tokens/step, "
                "%s, steps %lld -> %lld\n  run directory %s",
                config_.model.family.c_str(), static_cast<double>(parameter_count_) / 1e6,
                static_cast<long long>(config_.model.n_layers), static_cast<long long>(config_.model.n_heads),
                static_cast<long long>(config_.model.d_model), static_cast<long long>(config_.model.vocab_size),
                static_cast<long long>(config_.model.block_size), world_size_, where.c_str(),
                static_cast<long long>(config_.training.batch_size), data_ranks_, static_cast<long long>(micro_batch_),
                static_cast<long long>(config_.training.grad_accumulation), format_count(tokens_per_step()).c_str(),
                schedule_->description().c_str(), static_cast<long long>(step_),
                static_cast<long long>(config_.training.max_steps), run_dir_.string().c_str());
  return text;
}

void Trainer::print(const std::string& line) {
  if (rank_ != 0 || options_.quiet) return;
  progress_.print_line(line);
}

void Trainer::log_step(const StepStats& stats, std::optional<double> val_loss) {
  if (rank_ != 0) return;
  // JSON has no NaN: a non-finite value is written as null.
  auto number = [](double value) { return std::isfinite(value) ? nlohmann::json(value) : nlohmann::json(); };
  if (metrics_) {
    nlohmann::json record = {{"step", stats.step},
                             {"loss", number(stats.loss)},
                             {"lr", stats.lr},
                             {"grad_norm", number(stats.grad_norm)},
                             {"tokens_per_second", stats.tokens_per_second},
                             {"mfu", stats.mfu},
                             {"elapsed_seconds", stats.elapsed_seconds},
                             {"skipped", stats.skipped}};
    if (val_loss) record["val_loss"] = *val_loss;
    metrics_->write(record);
  }
  if (tensorboard_) {
    if (std::isfinite(stats.loss)) tensorboard_->add_scalar("train/loss", stats.loss, stats.step);
    if (std::isfinite(stats.grad_norm)) tensorboard_->add_scalar("train/grad_norm", stats.grad_norm, stats.step);
    tensorboard_->add_scalar("train/lr", stats.lr, stats.step);
    tensorboard_->add_scalar("perf/tokens_per_second", stats.tokens_per_second, stats.step);
    tensorboard_->add_scalar("perf/mfu", stats.mfu, stats.step);
    if (val_loss) tensorboard_->add_scalar("val/loss", *val_loss, stats.step);
  }
}

void Trainer::print_samples() {
  if (options_.quiet) return;
  // ZeRO-3 gathers the parameters on every rank first: rank 0 then generates without collectives.
  // Under model parallelism rank 0's whole model takes the parts of every rank.
  if (runner_) {
    nn::StateDict whole = runner_->master_state_dict();
    if (model_) model_->load_state_dict(whole);
  }
  if (zero_ && !runner_) zero_->gather_full_parameters();
  for (int64_t i = 0; rank_ == 0 && i < config_.eval.samples; ++i) {
    nn::GenerationOptions generation;
    generation.max_new_tokens = config_.eval.sample_tokens;
    generation.do_sample = true;
    generation.temperature = config_.eval.temperature;
    generation.top_k = config_.eval.top_k;
    generation.seed = config_.seed + static_cast<uint64_t>(step_) * 1000 + static_cast<uint64_t>(i);
    TextGeneration text = generate_text(*model_, *tokenizer_, config_.eval.prompt, generation);
    print("---- sample " + std::to_string(i + 1) + " at step " + std::to_string(step_) + " ----\n" + text.prompt +
          text.completion);
    if (tensorboard_) tensorboard_->add_text("samples", text.prompt + text.completion, step_);
  }
  if (zero_ && !runner_) zero_->reshard();
}

}  // namespace kiln::train

// TrainConfig: everything a pretraining run needs, read strictly from one JSON file.
//
//   {"seed": 1337, "out_dir": "runs/shakespeare_char",
//    "model": {...nn::TransformerConfig...},          vocab_size may be left to the tokenizer
//    "data": {"dir": "data/shakespeare_char"},        tokenizer.json, train.bin, val.bin inside
//    "optimizer": {"type": "adamw", "lr": 1e-3, "betas": [0.9, 0.99], "weight_decay": 0.1},
//    "schedule": {"type": "cosine", "warmup_steps": 100, "min_factor": 0.1},
//    "training": {"max_steps": 2000, "batch_size": 12, "grad_accumulation": 1, "grad_clip": 1.0,
//                 "device": "cpu"},
//    "eval": {...}, "checkpoint": {...}, "logging": {...}, "parallel": {...}}
//
// training.batch_size is the GLOBAL batch: sequences per optimizer step over all ranks and
// micro-steps, so a run means the same thing at any world size. Each rank's micro-batch is
// batch_size / (world_size * grad_accumulation), which must divide exactly.
//
// Unknown keys and wrong types are kiln::Errors naming the JSON path and, for unknown keys,
// the closest valid key ("training.max_step: unknown key (did you mean max_steps?)").
// `--set a.b=value` overrides edit the JSON before it is read (see apply_override).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "nn/transformer_config.h"
#include "optim/optimizer.h"

namespace kiln::train {

struct DataConfig {
  std::string dir;                            // holds the tokenizer and the shards
  std::vector<std::string> train{"train.bin"};  // shard files, relative to dir
  std::vector<std::string> val{"val.bin"};      // empty: no evaluation
  std::string tokenizer = "tokenizer.json";
  bool shuffle = true;
  int64_t prefetch = 2;  // batches prepared ahead by the loader's thread
};

struct TrainingConfig {
  int64_t max_steps = 0;          // optimizer steps of the whole run
  int64_t batch_size = 0;         // global sequences per optimizer step (all ranks, all micro-steps)
  int64_t grad_accumulation = 1;  // micro-steps per optimizer step
  double grad_clip = 1.0;         // global L2 norm; 0: no clipping
  std::string on_nonfinite = "stop";  // NaN/Inf loss or grad norm: "stop" the run or "skip" the step
  // "cpu", or "cuda": each rank trains on one GPU (TrainerOptions::gpu; kiln-train gives rank r of
  // a node the node's GPU r), with gradients averaged through NCCL where kiln has it.
  std::string device = "cpu";
  // "fp32", or "bf16" / "f16": the model computes in 16 bits over fp32 master weights that the
  // optimizer updates (optim::MixedPrecisionOptimizer; f16 with dynamic loss scaling), gradients
  // averaged in fp32. Checkpoints hold the fp32 masters. Data parallelism (zero_stage 0) only.
  std::string precision = "fp32";
};

struct EvalConfig {
  int64_t interval = 0;        // steps between validation evaluations (0: never, except at the end)
  int64_t batches = 20;        // global batches per evaluation
  int64_t sample_interval = 0; // steps between printed samples (0: only at the end)
  int64_t samples = 1;         // lines printed each time
  int64_t sample_tokens = 200;
  std::string prompt = "\n";
  double temperature = 0.8;
  int64_t top_k = 200;
};

struct CheckpointConfig {
  int64_t interval = 0;   // steps between checkpoints (0: only the final one)
  int64_t keep_last = 2;  // older checkpoints are deleted
  bool final = true;      // save when the run ends (or is interrupted)
};

struct LoggingConfig {
  int64_t interval = 10;       // steps between progress lines
  bool jsonl = true;           // <out_dir>/metrics.jsonl, one object per step
  bool tensorboard = true;     // <out_dir>/tensorboard/
  double peak_flops = 1e12;    // per rank, FLOP/s, the MFU denominator
  std::string progress_bar = "auto";  // "auto" (when stdout is a terminal), "on" or "off"
};

// The mesh (parallel/mesh.h): tensor x context x expert x data x pipeline = the world size.
struct ParallelConfig {
  int64_t data_parallel = 0;  // 0: whatever the other dimensions leave of the world
  int64_t tensor_parallel = 1;
  int64_t pipeline_parallel = 1;
  int64_t context_parallel = 1;
  int64_t expert_parallel = 1;
  bool sequence_parallel = false;            // with tensor_parallel > 1
  std::string pipeline_schedule = "1f1b";    // gpipe, 1f1b, interleaved (micro-batches = grad_accumulation)
  int64_t virtual_stages = 1;                // model chunks per pipeline rank (interleaved)
  double bucket_mb = 25.0;    // gradients are all-reduced (DDP) or sharded (ZeRO) in flat buckets of about this size
  int64_t zero_stage = 0;     // 0: DDP (replicated optimizer); 1-3: ZeRO stage (parallel/zero.h)

  // Whether any model-parallel dimension is above 1 (ModelParallelRunner trains the model).
  bool model_parallel() const {
    return tensor_parallel * pipeline_parallel * context_parallel * expert_parallel > 1;
  }
  // The data-parallel size for `world_size` ranks; throws naming the sizes unless they fit.
  int64_t data_parallel_size(int64_t world_size) const;
};

struct TrainConfig {
  uint64_t seed = 1337;
  std::string out_dir = "runs/default";
  nn::TransformerConfig model;
  bool vocab_from_tokenizer = false;  // model.vocab_size was absent: the tokenizer's is used
  DataConfig data;
  std::string optimizer_type = "adamw";  // sgd, adagrad, rmsprop, adam, adamw
  std::shared_ptr<const optim::OptimizerOptions> optimizer;
  nlohmann::json schedule = {{"type", "constant"}};  // optim::schedule_from_json's format
  TrainingConfig training;
  EvalConfig eval;
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  ParallelConfig parallel;

  // Strict reading; `overrides` ("a.b=value") are applied to `json` first. Errors name the JSON
  // path, and an error about an overridden key says which --set caused it.
  static TrainConfig from_json(nlohmann::json json, const std::vector<std::string>& overrides = {});
  static TrainConfig from_file(const std::string& path, const std::vector<std::string>& overrides = {});

  // Every field, defaults filled in: what the run directory's config.json holds. Reading it back
  // gives the same config.
  nlohmann::json to_json() const;

  // This rank's sequences per micro-step; throws naming training.batch_size unless it divides.
  // Ranks with different data: data parallel x expert parallel.
  int64_t micro_batch_size(int64_t world_size) const;
};

// Applies "a.b.c=value" to `json`: value is parsed as JSON (1, 1e-3, true, [0.9, 0.99],
// "text") or, when it is not valid JSON, taken as a string. Missing objects on the way are
// created. Throws kiln::Error for a malformed override or a path through a non-object.
void apply_override(nlohmann::json& json, const std::string& override_text);

// A fresh optimizer options object of `type` ("adamw", ...) with its defaults; throws naming
// `path` for an unknown type.
std::unique_ptr<optim::OptimizerOptions> default_optimizer_options(const std::string& type, const std::string& path);

}  // namespace kiln::train

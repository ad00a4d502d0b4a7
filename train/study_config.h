// StudyConfig: an optimizer comparison as kiln-compare reads it from one JSON file, and its
// expansion into runs (every optimizer x every point of its hyperparameter grid x every seed).
//
//   {"name": "fashion_mnist_mlp", "out_dir": "runs/optim/fashion_mnist_mlp",
//    "task": {"type": "fashion_mnist", "model": "mlp", "train_examples": 10000, ...},
//    "training": {"epochs": 2, "batch_size": 128, "grad_clip": 0, "schedule": {"type": "constant"}},
//    "eval": {"interval": 50}, "seeds": [0, 1],
//    "target": {"metric": "train_loss", "value": 0.5},
//    "optimizers": [
//      {"name": "sgd_nesterov", "type": "sgd", "options": {"momentum": 0.9, "nesterov": true},
//       "grid": {"lr": [0.01, 0.1]}},
//      {"name": "adam", "type": "adam", "grid": {"lr": [1e-3, 3e-4]}}],
//    "full": {...}}
//
// "full" is a JSON merge patch (RFC 7386) applied by --full before anything is read: the
// paper-sized setting lives in the same file as the quick default. A grid maps option names
// to lists of values; its points are the cartesian product, keys in sorted order, the last key
// varying fastest. Options and grid values are read by the optimizer's own update_from_json, so
// an unknown hyperparameter is an error naming its JSON path, like every other unknown key.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "optim/optimizer.h"

namespace kiln::train {

struct StudyOptimizer {
  std::string name;              // the label in reports ("sgd_nesterov")
  std::string type;              // sgd, adagrad, rmsprop, adam, adamw
  nlohmann::json options;        // fixed options, merged under every grid point
  nlohmann::json grid;           // {"lr": [..], "weight_decay": [..]}; values are JSON arrays
};

struct StudyTraining {
  int64_t steps = 0;         // optimizer steps; 0: use epochs
  int64_t epochs = 0;        // passes over the training set (tasks with a finite one)
  int64_t batch_size = 128;
  double grad_clip = 0.0;    // global L2 norm; 0: none
  nlohmann::json schedule = {{"type", "constant"}};  // optim::schedule_from_json's format
};

struct StudyTarget {
  std::string metric = "train_loss";  // train_loss or test_loss
  double value = 0.0;                 // 0: no target
};

struct StudyConfig {
  std::string name;
  std::string out_dir;
  nlohmann::json task;       // interpreted by make_study_task (study_tasks.h)
  StudyTraining training;
  int64_t eval_interval = 50;  // steps between evaluations (the last step is always evaluated)
  std::vector<uint64_t> seeds{0};
  StudyTarget target;
  std::vector<StudyOptimizer> optimizers;

  // Strict: unknown keys, wrong types and bad values are kiln::Errors naming the JSON path.
  // `full` applies the file's "full" merge patch first; `overrides` ("a.b=value", as
  // kiln-train's --set) are applied after it.
  static StudyConfig from_json(nlohmann::json json, bool full = false, const std::vector<std::string>& overrides = {});
  static StudyConfig load(const std::string& path, bool full = false, const std::vector<std::string>& overrides = {});
};

// One point of one optimizer's grid.
struct GridPoint {
  size_t optimizer = 0;            // index into StudyConfig::optimizers
  nlohmann::json hyperparameters;  // the grid values of this point, {"lr": 0.001}
  std::shared_ptr<const optim::OptimizerOptions> options;  // defaults + options + this point
  std::string label;               // "lr=0.001 weight_decay=0.0001"
};

// One training run: a grid point under one seed.
struct RunSpec {
  size_t index = 0;  // 0-based position in the study
  size_t point = 0;  // index into the grid points
  uint64_t seed = 0;
};

// Every grid point of every optimizer, in config order (throws naming the grid's path for an
// empty list or a hyperparameter the optimizer does not have).
std::vector<GridPoint> expand_grid(const StudyConfig& config);
// Every (point, seed) pair, points outer, seeds inner.
std::vector<RunSpec> expand_runs(const StudyConfig& config, const std::vector<GridPoint>& points);

// Builds the optimizer of `type` with `options` over the parameters, decaying weights but not
// biases (optim::weight_decay_groups).
std::unique_ptr<optim::Optimizer> make_optimizer(const std::string& type, const optim::OptimizerOptions& options,
                                                 const NamedParameters& parameters);

}  // namespace kiln::train

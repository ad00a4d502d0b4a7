// The tasks an optimizer study trains on. A StudyTask holds the data (loaded once per study);
// start(seed) makes one run's model, with its initial weights, data order and dropout masks all
// drawn from that seed, so a run is a pure function of (task config, optimizer, seed).
//
//   "task": {"type": "fashion_mnist", "model": "logistic" | "mlp", "hidden": 1000, "layers": 2,
//            "dropout": 0.5, "train_examples": 60000, "test_examples": 10000, "directory": ...}
//   "task": {"type": "gaussian_blobs", "model": ..., "classes": 4, "features": 16, ...}   (tests)
//   "task": {"type": "char_gpt", "text": "../shared/data/tinyshakespeare.txt", "seq_len": 64,
//            "val_fraction": 0.1, "eval_batches": 8, "model": {...nn::TransformerConfig...}}
//
// For classification "test" is the held-out test split; for char_gpt it is the validation split
// (the last val_fraction of the text), evaluated on eval_batches fixed batches.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "autograd/parameter.h"
#include "autograd/tensor.h"

namespace kiln::train {

// One training step's loss and how many of its predictions were right.
struct TrainStep {
  Tensor loss;          // scalar, mean over the batch, with its graph
  int64_t correct = 0;  // argmax predictions equal to the target
  int64_t count = 0;    // predictions made
};

struct Evaluation {
  double loss = 0.0;
  double accuracy = 0.0;  // in [0, 1]
};

// One model being trained by one run.
class TaskRun {
 public:
  virtual ~TaskRun() = default;
  virtual NamedParameters parameters() const = 0;
  // The loss of training step `step` (0-based) on its batch, in training mode.
  virtual TrainStep train_step(int64_t step) = 0;
  // Test (or validation) loss and accuracy, in evaluation mode without a graph.
  virtual Evaluation evaluate() = 0;
};

class StudyTask {
 public:
  virtual ~StudyTask() = default;
  // One line for the report: "Fashion-MNIST, MLP 784-1000-1000-10 (ReLU, dropout 0.5), 10000 train / 2000 test".
  virtual std::string description() const = 0;
  // Optimizer steps in one epoch at `batch_size` (a partial last batch is dropped).
  virtual int64_t steps_per_epoch(int64_t batch_size) const = 0;
  virtual std::unique_ptr<TaskRun> start(uint64_t seed, int64_t batch_size) const = 0;
};

// The task described by `json` (the config's "task" object); throws naming "task.<key>" for
// unknown types and keys or bad values, and naming the file when data cannot be read.
std::unique_ptr<StudyTask> make_study_task(const nlohmann::json& json);

}  // namespace kiln::train

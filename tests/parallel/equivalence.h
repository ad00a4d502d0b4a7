// Shared by the DDP and ZeRO tests: a small transformer trained two ways on every rank, by the
// parallel wrapper on this rank's slice of the global batch and, beside it, alone on the whole
// batch. Rank-averaged losses must match the single-process run each step, and parameters at
// the end, within kTolerance.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "nn/transformer.h"
#include "optim/optim.h"

namespace kiln::parallel::testing {

constexpr int64_t kVocab = 13;
constexpr int64_t kSeq = 6;
constexpr int64_t kGlobalBatch = 4;  // divides 1, 2 and 4 ranks
// Float32 sums in another order (per-rank partial means, then the average): a few ulps per step.
constexpr double kTolerance = 1e-5;

// "gpt2": d_model 6, so parameter counts are not multiples of 4 ranks, and tied embeddings.
// Its key bias gets a gradient that is zero up to rounding (softmax ignores a shift shared by
// all keys), which Adam's normalisation turns into full-size steps of random sign: AdamW runs
// use "llama" (no biases, untied, GQA) instead.
std::unique_ptr<nn::Transformer> make_model(const std::string& family);

// Rows [first, first+rows) of step `step`'s global batch of tokens (or targets).
Tensor batch_rows(int64_t step, int64_t first, int64_t rows, bool targets);

// max |a - b| / max |b|.
double relative_difference(const Tensor& a, const Tensor& b);

using OptimizerFactoryFn = std::function<std::unique_ptr<optim::Optimizer>(std::vector<optim::ParamGroup>)>;
struct OptimizerKind {
  std::string name;
  OptimizerFactoryFn make;
  std::string family;  // the model layout it trains
};
OptimizerKind sgd_momentum();  // gpt2, one group
OptimizerKind adamw();         // llama, decay and no-decay groups

// The parallel side of a step: runs one micro-batch's backward (`last` is the final micro-batch
// of the step), then the optimizer step.
class ParallelTraining {
 public:
  virtual ~ParallelTraining() = default;
  virtual void backward(const std::function<void()>& run_backward, bool last) = 0;
  virtual void step() = 0;
  // Makes the module's parameters readable (ZeRO-3 gathers them).
  virtual void gather_parameters() {}
};
using MakeParallel =
    std::function<std::unique_ptr<ParallelTraining>(nn::Transformer& model, const OptimizerKind& optimizer)>;

// Trains for 10 steps with `micro_batches` accumulation steps and checks losses every step,
// final parameters, and that every rank holds bit-identical parameters.
void check_equivalence(const OptimizerKind& optimizer, int micro_batches, const MakeParallel& make_parallel);

}  // namespace kiln::parallel::testing

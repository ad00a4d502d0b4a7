// Mixed-precision training: the model computes in bf16 (or f16) while an fp32 master copy of
// every parameter is what the optimizer updates, so its state and the small updates of a long
// run stay in fp32 (Micikevicius et al., 2018).
//
//   optim::MixedPrecisionOptimizer mixed(model.named_parameters(), DType::bf16,
//       [](std::vector<optim::ParamGroup> groups) { return std::make_unique<optim::AdamW>(std::move(groups), options); });
//   mixed.scale_loss(model.loss(x, y)).backward();   // the model's parameters are now bf16
//   mixed.clip_grad_norm(1.0);                       // optional, on the unscaled fp32 gradients
//   bool stepped = mixed.step();                     // false: an overflow, the step was skipped
//   mixed.zero_grad();
//
// f16's narrow range needs dynamic loss scaling (LossScaler): the loss is multiplied by a scale
// before backward so that small gradients do not flush to zero; the gradients are divided by it
// again in fp32. A step whose gradients hold an Inf or NaN is skipped and the scale backed off;
// after growth_interval good steps in a row it grows. bf16 has fp32's range and needs none (the
// scaler is off by default for it).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "autograd/parameter.h"
#include "optim/optimizer.h"

namespace kiln::optim {

class LossScalerOptions {
 public:
  LossScalerOptions& enabled(bool value) { enabled_ = value; return *this; }
  LossScalerOptions& init_scale(double value) { init_scale_ = value; return *this; }
  LossScalerOptions& growth_factor(double value) { growth_factor_ = value; return *this; }
  LossScalerOptions& backoff_factor(double value) { backoff_factor_ = value; return *this; }
  LossScalerOptions& growth_interval(int64_t value) { growth_interval_ = value; return *this; }
  bool enabled() const { return enabled_; }
  double init_scale() const { return init_scale_; }
  double growth_factor() const { return growth_factor_; }
  double backoff_factor() const { return backoff_factor_; }
  int64_t growth_interval() const { return growth_interval_; }

 private:
  // torch.cuda.amp.GradScaler's defaults.
  bool enabled_ = true;
  double init_scale_ = 65536.0;
  double growth_factor_ = 2.0;
  double backoff_factor_ = 0.5;
  int64_t growth_interval_ = 2000;
};

// Dynamic loss scaling: the scale, and its update after each step.
class LossScaler {
 public:
  explicit LossScaler(LossScalerOptions options = {});
  // 1 when disabled.
  double scale() const { return options_.enabled() ? scale_ : 1.0; }
  // After a step: an overflow backs the scale off and restarts the count; growth_interval
  // finite steps in a row grow it.
  void update(bool found_nonfinite);
  int64_t skipped_steps() const { return skipped_; }
  bool enabled() const { return options_.enabled(); }

  // What a checkpoint keeps of it, so that a resumed run scales as the uninterrupted one.
  struct State {
    double scale = 0;
    int64_t good_steps = 0;
    int64_t skipped = 0;
  };
  State state() const { return {scale_, good_steps_, skipped_}; }
  void load_state(const State& state);

 private:
  LossScalerOptions options_;
  double scale_;
  int64_t good_steps_ = 0;
  int64_t skipped_ = 0;
};

using OptimizerFactory = std::function<std::unique_ptr<Optimizer>(std::vector<ParamGroup> groups)>;

class MixedPrecisionOptimizer {
 public:
  // `parameters` (fp32) are converted in place to `compute_dtype` (bf16 or f16); fp32 masters
  // keep their values, names and metadata, and make_optimizer builds the optimizer over them in
  // the usual decay / no-decay groups. The scaler defaults to on for f16, off for bf16.
  MixedPrecisionOptimizer(const NamedParameters& parameters, DType compute_dtype, const OptimizerFactory& make_optimizer,
                          std::optional<LossScalerOptions> scaler = std::nullopt);

  // loss * the current scale (the loss itself when scaling is off).
  Tensor scale_loss(const Tensor& loss) const;
  // Unscales the 16-bit gradients into the masters' fp32 gradients (once per step; step() and
  // clip_grad_norm() call it). Returns whether they are all finite.
  bool unscale();
  // The global norm of the unscaled gradients, clipped to max_norm (optim::clip_grad_norm's
  // rule); NaN or Inf when a gradient is, which step() then skips.
  double clip_grad_norm(double max_norm);
  // The global norm of the unscaled gradients, unclipped.
  double grad_norm();
  // Steps the masters and copies them into the model's 16-bit parameters, or, when a gradient
  // is not finite, skips the step (and backs the scale off). Returns whether it stepped.
  bool step();
  // Drops the model's and the masters' gradients.
  void zero_grad();

  Optimizer& optimizer() { return *optimizer_; }
  const NamedParameters& master_parameters() const { return masters_; }
  const LossScaler& scaler() const { return scaler_; }
  void load_scaler_state(const LossScaler::State& state) { scaler_.load_state(state); }

 private:
  NamedParameters parameters_;  // the model's, in compute_dtype
  NamedParameters masters_;     // fp32, same order and names
  std::unique_ptr<Optimizer> optimizer_;
  LossScaler scaler_;
  bool unscaled_ = false;
  bool finite_ = true;
};

}  // namespace kiln::optim

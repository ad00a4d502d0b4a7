// Mixed-precision training: fp32 masters behind a bf16/f16 model, and dynamic loss scaling
// (see mixed_precision.h).
#include "optim/mixed_precision.h"

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "optim/clip_grad.h"

namespace kiln::optim {

LossScaler::LossScaler(LossScalerOptions options) : options_(options), scale_(options.init_scale()) {
  KILN_CHECK(options_.init_scale() > 0 && options_.growth_factor() > 1 && options_.backoff_factor() > 0 &&
                 options_.backoff_factor() < 1 && options_.growth_interval() > 0,
             "LossScaler: need init_scale > 0, growth_factor > 1, 0 < backoff_factor < 1 and growth_interval > 0; got ",
             options_.init_scale(), ", ", options_.growth_factor(), ", ", options_.backoff_factor(), ", ",
             options_.growth_interval());
}

void LossScaler::update(bool found_nonfinite) {
  if (!options_.enabled()) return;
  if (found_nonfinite) {
    scale_ *= options_.backoff_factor();
    good_steps_ = 0;
    ++skipped_;
  } else if (++good_steps_ == options_.growth_interval()) {
    scale_ *= options_.growth_factor();
    good_steps_ = 0;
  }
}

void LossScaler::load_state(const State& state) {
  KILN_CHECK(state.scale > 0 && state.good_steps >= 0 && state.skipped >= 0,
             "LossScaler: a saved state needs scale > 0 and non-negative counts; got scale ", state.scale,
             ", good steps ", state.good_steps, ", skipped ", state.skipped);
  scale_ = state.scale;
  good_steps_ = state.good_steps;
  skipped_ = state.skipped;
}

MixedPrecisionOptimizer::MixedPrecisionOptimizer(const NamedParameters& parameters, DType compute_dtype,
                                                 const OptimizerFactory& make_optimizer,
                                                 std::optional<LossScalerOptions> scaler)
    : parameters_(parameters),
      scaler_(scaler.value_or(LossScalerOptions().enabled(compute_dtype == DType::f16))) {
  KILN_CHECK(compute_dtype == DType::bf16 || compute_dtype == DType::f16,
             "MixedPrecisionOptimizer: the compute dtype must be bf16 or f16, got ", dtype_name(compute_dtype));
  NoGradGuard no_grad;
  for (const NamedParameter& p : parameters_) {
    KILN_CHECK(p.tensor.dtype() == DType::f32, "MixedPrecisionOptimizer: parameter '", p.name, "' is ",
               dtype_name(p.tensor.dtype()), "; give the model's fp32 parameters (they are converted here)");
    Tensor master = p.tensor.detach().clone();
    master.set_requires_grad(true);
    masters_.push_back(NamedParameter{p.name, master, p.info});
    p.tensor.set_data(p.tensor.to(compute_dtype));
  }
  optimizer_ = make_optimizer(weight_decay_groups(masters_));
  KILN_CHECK(optimizer_ != nullptr, "MixedPrecisionOptimizer: the optimizer factory returned null");
}

Tensor MixedPrecisionOptimizer::scale_loss(const Tensor& loss) const {
  return scaler_.scale() == 1.0 ? loss : loss * scaler_.scale();
}

bool MixedPrecisionOptimizer::unscale() {
  if (unscaled_) return finite_;
  NoGradGuard no_grad;
  const double inverse = 1.0 / scaler_.scale();
  for (size_t i = 0; i < parameters_.size(); ++i) {
    Tensor grad = parameters_[i].tensor.grad();
    // fp32 before dividing: a 16-bit gradient scaled down in 16 bits would underflow again.
    masters_[i].tensor.set_grad(grad.defined() ? grad.to(DType::f32) * inverse : Tensor());
  }
  finite_ = nonfinite_gradients(masters_).empty();
  unscaled_ = true;
  return finite_;
}

double MixedPrecisionOptimizer::clip_grad_norm(double max_norm) {
  unscale();
  ClipGradNormOptions options;
  options.error_if_nonfinite = false;
  return optim::clip_grad_norm(masters_, max_norm, options);
}

double MixedPrecisionOptimizer::grad_norm() {
  unscale();
  return optim::grad_norm(masters_);
}

bool MixedPrecisionOptimizer::step() {
  bool finite = unscale();
  if (finite) {
    optimizer_->step();
    NoGradGuard no_grad;
    for (size_t i = 0; i < parameters_.size(); ++i) parameters_[i].tensor.copy_(masters_[i].tensor);
  }
  scaler_.update(!finite);
  unscaled_ = false;
  return finite;
}

void MixedPrecisionOptimizer::zero_grad() {
  for (const NamedParameter& p : parameters_) p.tensor.set_grad(Tensor());
  optimizer_->zero_grad();
  unscaled_ = false;
}

}  // namespace kiln::optim

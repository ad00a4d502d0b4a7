// Optimizer: the base of kiln's optimizers (SGD, Adagrad, RMSprop, Adam, AdamW).
//
// Parameters arrive by name (NamedParameters) in groups; each group owns a full copy of the
// optimizer's options, so lr, weight decay and every other hyperparameter can differ per
// group, and schedules set each group's lr from its base_lr. Per-parameter state (step count,
// moment buffers) is keyed by parameter name, the same key checkpoints and ZeRO shard maps use.
//
//   auto groups = optim::weight_decay_groups(model.named_parameters());
//   optim::AdamW optimizer(groups, optim::AdamWOptions(3e-4).betas(0.9, 0.95).weight_decay(0.1));
//   loss.backward();
//   optimizer.step();
//   optimizer.zero_grad();
//
// step() follows torch.optim: a parameter whose .grad is undefined is skipped (its state and
// step count do not advance). Every update is one fused kernel pass of the parameter's device
// (kernels::Backend's *_update; kernels/cpu/optimizer_kernels.h states the arithmetic, and
// kernels/cuda/optimizer.cu mirrors it) run under NoGradGuard; the parameter's version is bumped
// afterwards.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "autograd/json_reader.h"
#include "autograd/parameter.h"
#include "autograd/tensor.h"

namespace kiln::optim {

// The hyperparameters every optimizer has. get_/set_ are the type-erased accessors the base
// class and schedules use; each optimizer's options add chained setters through
// OptimizerOptionsBase.
class OptimizerOptions {
 public:
  virtual ~OptimizerOptions() = default;
  double get_lr() const { return lr_; }
  void set_lr(double lr) { lr_ = lr; }
  double get_weight_decay() const { return weight_decay_; }
  void set_weight_decay(double weight_decay) { weight_decay_ = weight_decay; }

  virtual std::unique_ptr<OptimizerOptions> clone() const = 0;
  // Every hyperparameter by name: {"lr": 0.0003, "weight_decay": 0.1, "betas": [0.9, 0.95], ...}.
  virtual nlohmann::json to_json() const = 0;
  // Reads what to_json writes. Absent keys keep their value; unknown keys and wrong types are
  // errors naming `path` (e.g. "optimizer.options.beta").
  virtual void update_from_json(const nlohmann::json& json, const std::string& path) = 0;

 protected:
  OptimizerOptions(double lr, double weight_decay) : lr_(lr), weight_decay_(weight_decay) {}
  void read_common(JsonReader& reader);
  nlohmann::json common_json() const { return {{"lr", lr_}, {"weight_decay", weight_decay_}}; }

  double lr_;
  double weight_decay_;
};

// Chained setters for the common hyperparameters, returning the concrete options type.
template <typename Derived>
class OptimizerOptionsBase : public OptimizerOptions {
 public:
  Derived& lr(double value) {
    lr_ = value;
    return static_cast<Derived&>(*this);
  }
  double lr() const { return lr_; }
  Derived& weight_decay(double value) {
    weight_decay_ = value;
    return static_cast<Derived&>(*this);
  }
  double weight_decay() const { return weight_decay_; }
  std::unique_ptr<OptimizerOptions> clone() const override {
    return std::make_unique<Derived>(static_cast<const Derived&>(*this));
  }

 protected:
  using OptimizerOptions::OptimizerOptions;
};

// A group as the caller describes it: its parameters, and what differs from the optimizer's
// default options (nothing, the lr or weight decay, or a whole options object).
struct ParamGroup {
  NamedParameters parameters;
  std::optional<double> lr;
  std::optional<double> weight_decay;
  std::shared_ptr<const OptimizerOptions> options;  // must be the optimizer's own options type

  ParamGroup() = default;
  ParamGroup(NamedParameters group_parameters) : parameters(std::move(group_parameters)) {}  // NOLINT: implicit
};

// The usual split for AdamW-style training: group 0 holds the parameters whose
// ParameterInfo::weight_decay is true (they keep the optimizer's weight decay), group 1 the
// others (biases, norm gains, ...) with weight_decay 0. Both groups are always present, possibly
// empty, so group indices are stable.
std::vector<ParamGroup> weight_decay_groups(const NamedParameters& parameters);

// What an optimizer keeps per parameter.
struct ParameterState {
  int64_t step = 0;                        // updates applied to this parameter
  std::map<std::string, Tensor> buffers;   // "exp_avg", "momentum_buffer", ... (torch's names)
};

// An optimizer's state in two parts: tensors keyed "<parameter name>/<buffer>" (ready for
// save_safetensors) and a JSON-serialisable part (optimizer name, per-group hyperparameters,
// base lr and parameter names, per-parameter step counts).
struct OptimizerStateDict {
  std::map<std::string, Tensor> tensors;
  nlohmann::json scalars;
};

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // "SGD", "Adagrad", "RMSprop", "Adam" or "AdamW".
  const std::string& name() const { return name_; }

  // Applies one update to every parameter that has a gradient. Hyperparameters and parameters
  // (contiguous, f32 or f64, gradients and state on the parameter's device) are all checked
  // before anything is written.
  void step();
  // Drops every gradient (set_to_none) or fills the defined ones with zeros.
  void zero_grad(bool set_to_none = true);

  // ---- groups --------------------------------------------------------------------------------
  size_t group_count() const { return groups_.size(); }
  const NamedParameters& group_parameters(size_t group) const;
  // The group's options; changes are validated at the next step().
  OptimizerOptions& group_options(size_t group);
  const OptimizerOptions& group_options(size_t group) const;
  double lr(size_t group = 0) const { return group_options(group).get_lr(); }
  void set_lr(size_t group, double lr);
  // Sets every group's lr.
  void set_lr(double lr);
  // The lr a schedule scales: the group's lr when the optimizer was created.
  double base_lr(size_t group = 0) const;
  void set_base_lr(size_t group, double lr);
  // Every parameter of every group, in group order.
  NamedParameters parameters() const;

  // ---- state ---------------------------------------------------------------------------------
  // The state of one parameter, or null before its first update.
  const ParameterState* state(const std::string& parameter) const;
  // The tensors are the live state buffers: save them (or clone them) before the next step.
  OptimizerStateDict state_dict() const;
  // Restores hyperparameters, base lrs, step counts and buffers (copied) from state_dict() of an
  // optimizer of the same kind over parameters with the same names, shapes and dtypes.
  void load_state_dict(const OptimizerStateDict& state);

 protected:
  // `defaults` must be the concrete options type of the derived optimizer. Derived constructors
  // call validate_groups() once the object is complete.
  Optimizer(std::string name, const OptimizerOptions& defaults, std::vector<ParamGroup> groups);

  void validate_groups() const;
  // Throws kiln::Error naming the optimizer, the group, the hyperparameter and its value.
  virtual void validate(const OptimizerOptions& options, const std::string& where) const = 0;
  // The buffer names this optimizer may keep per parameter (load_state_dict rejects others).
  virtual std::vector<std::string> buffer_names() const = 0;
  // Updates one parameter (f32 or f64, contiguous, on any device) with its gradient (same dtype, shape,
  // contiguous). state.step already counts this update. Runs under NoGradGuard.
  virtual void update(const OptimizerOptions& options, const Tensor& parameter, const Tensor& grad,
                      ParameterState& state) = 0;

  // The buffer `buffer` of `state`, created filled with `fill` like `parameter` on first use.
  // (step() has checked that existing buffers still match their parameter.)
  static Tensor& state_buffer(ParameterState& state, const std::string& buffer, const Tensor& parameter,
                              double fill = 0.0);
  // "<name>: group <g>" for error messages.
  std::string where(size_t group) const;

 private:
  struct Group {
    NamedParameters parameters;
    std::unique_ptr<OptimizerOptions> options;
    double base_lr = 0.0;
  };

  std::string name_;
  std::vector<Group> groups_;
  std::map<std::string, ParameterState> state_;
};

// Calls body(float{}) or body(double{}) for an f32 or f64 parameter (the only dtypes step()
// lets through).
template <typename Body>
void with_value_type(DType dtype, Body&& body) {
  if (dtype == DType::f32) {
    body(float{});
  } else {
    body(double{});
  }
}

// The kernels' view of an optional state buffer: null data when it is undefined.
inline kernels::View optional_view(const Tensor& tensor) {
  return tensor.defined() ? tensor.view_for_kernels() : kernels::View{};
}

// `value` in its shortest round-trip form (0.1, not 0.10000000000000001), for messages.
std::string format_value(double value);

// Range checks shared by the optimizers' validate(): each throws "<where>: invalid <what>
// <value> (expected ...)". NaN fails every check.
void check_at_least(const std::string& where, const char* what, double value, double low);
void check_positive(const std::string& where, const char* what, double value);
void check_in_unit_interval(const std::string& where, const char* what, double value, bool include_one);

}  // namespace kiln::optim

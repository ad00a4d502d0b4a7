// ZeroOptimizer: sharded gradients, optimizer state and (stage 3) parameters (see zero.h).
#include "parallel/zero.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <set>

#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "parallel/zero_state.h"

namespace kiln::parallel {

namespace {

// Every module below (and including) `module` with its parameters of its own, depth first.
void collect_modules(nn::Module& module, std::vector<nn::Module*>& out) {
  out.push_back(&module);
  for (const auto& [name, child] : module.named_children()) collect_modules(*child, out);
}

// Stage 3's gather point before a module's backward: identity forward; backward gathers the
// module's parameters (which the forward released) before its gradients are computed.
struct GatherBeforeBackward : Function<GatherBeforeBackward> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs,
                                     std::weak_ptr<ZeroState> state, nn::Module* module) {
    ctx.set("state", std::move(state));
    ctx.set("module", module);
    return {inputs[0]};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    auto state = ctx.get<std::weak_ptr<ZeroState>>("state").lock();
    if (state) state->before_backward(ctx.get<nn::Module*>("module"));
    return {grads[0]};
  }
};

}  // namespace

void ZeroState::build(std::vector<optim::ParamGroup> groups, const OptimizerFactory& make_optimizer) {
  const int stage = options_.stage();
  KILN_CHECK(stage >= 1 && stage <= 3, "ZeroOptimizer: stage must be 1, 2 or 3, got ", stage);
  KILN_CHECK(options_.bucket_bytes() > 0, "ZeroOptimizer: bucket_bytes must be positive, got ", options_.bucket_bytes());
  NoGradGuard no_grad;
  NamedParameters order = module_.named_parameters();
  for (const NamedParameter& p : order) group_->broadcast(p.tensor, 0);
  for (const auto& [name, buffer] : module_.named_buffers()) group_->broadcast(buffer, 0);

  // Owner of each parameter: the first module (depth first) that registers it directly.
  std::vector<nn::Module*> modules;
  collect_modules(module_, modules);
  std::map<const TensorImpl*, int> owner_of;
  for (size_t m = 0; m < modules.size(); ++m) {
    for (const NamedParameter& p : modules[m]->named_parameters(false)) owner_of.emplace(p.tensor.impl_ptr().get(), static_cast<int>(m));
  }
  std::vector<int> owners;
  for (const NamedParameter& p : order) owners.push_back(owner_of.at(p.tensor.impl_ptr().get()));

  units_ = make_zero_units(order, owners, stage == 3, groups, group_->size(), options_.bucket_bytes(), members_);
  for (const optim::ParamGroup& group : groups) {
    group_names_.emplace_back();
    for (const NamedParameter& p : group.parameters) group_names_.back().push_back(p.name);
  }
  const int rank = group_->rank();
  std::map<const TensorImpl*, bool> tied;
  for (const NamedParameter& p : order) tied[p.tensor.impl_ptr().get()] = p.info.tied;

  std::vector<NamedParameters> shard_groups(groups.size());
  for (size_t u = 0; u < units_.size(); ++u) {
    ZeroUnit& unit = units_[u];
    const Tensor& first = members_[unit.members.front()].parameter;
    TensorOptions options = TensorOptions(first.dtype()).device(first.device());
    unit.flat = zeros({unit.padded}, options);
    for (size_t index : unit.members) {
      ZeroMember& member = members_[index];
      Tensor view = unit.flat.narrow(0, member.offset, member.parameter.numel()).view(member.parameter.shape());
      view.copy_(member.parameter);
      member.parameter.set_data(view);
      unit.tied = unit.tied || tied[member.parameter.impl_ptr().get()];
      module_units_[modules[owner_of.at(member.parameter.impl_ptr().get())]].push_back(u);
    }
    Tensor own = unit.flat.narrow(0, rank * unit.chunk, unit.chunk);
    // Stages 1-2: the shard is the owned part of the flat buffer, so the all-gather after the
    // step writes straight into the parameters. Stage 3: the shard is the only lasting copy.
    unit.shard = stage == 3 ? own.clone() : own;
    unit.shard.set_requires_grad(true);
    unit.pending = unit.members.size();
    shard_groups[unit.group].push_back(NamedParameter{zero_unit_name(u), unit.shard, {}});
    if (stage == 3) release(u);
  }
  for (auto& [module, list] : module_units_) {
    std::set<size_t> unique(list.begin(), list.end());
    list.assign(unique.begin(), unique.end());
  }

  std::vector<optim::ParamGroup> inner_groups;
  for (size_t g = 0; g < groups.size(); ++g) {
    optim::ParamGroup inner(shard_groups[g]);
    inner.lr = groups[g].lr;
    inner.weight_decay = groups[g].weight_decay;
    inner.options = groups[g].options;
    inner_groups.push_back(std::move(inner));
  }
  optimizer_ = make_optimizer(std::move(inner_groups));
  KILN_CHECK(optimizer_ != nullptr, "ZeroOptimizer: the optimizer factory returned null");
}

void ZeroState::install_hooks() {
  std::weak_ptr<ZeroState> weak = weak_from_this();
  if (options_.stage() >= 2) {
    for (size_t i = 0; i < members_.size(); ++i) {
      members_[i].parameter.register_post_accumulate_grad_hook([weak, i](Tensor&) {
        if (auto state = weak.lock()) state->on_gradient_ready(i);
      });
    }
  }
  if (options_.stage() == 3) {
    for (auto& [module, list] : module_units_) {
      module->register_forward_pre_hook([weak](nn::Module& m, const Tensor&) {
        if (auto state = weak.lock()) state->before_forward(&m);
      });
      module->register_forward_post_hook([weak](nn::Module& m, const Tensor&, const Tensor& output) -> Tensor {
        auto state = weak.lock();
        if (!state) return Tensor();
        state->after_forward(&m);
        if (!GradMode::is_enabled() || !output.requires_grad()) return Tensor();
        return GatherBeforeBackward::apply_with("zero3_gather_before_backward", {output}, weak, &m)[0];
      });
    }
    // Tied units are used by the root module itself (an output head reading the embedding).
    if (module_units_.find(&module_) == module_units_.end()) {
      module_.register_forward_pre_hook([weak](nn::Module& m, const Tensor&) {
        if (auto state = weak.lock()) state->before_forward(&m);
      });
      module_.register_forward_post_hook([weak](nn::Module& m, const Tensor&, const Tensor&) -> Tensor {
        if (auto state = weak.lock()) state->after_forward(&m);
        return Tensor();
      });
    }
  }
}

// ---- gradients ---------------------------------------------------------------------------------

void ZeroState::on_gradient_ready(size_t member_index) {
  ZeroMember& member = members_[member_index];
  // The first gradient of a new backward (gradient accumulation): the last round is complete.
  if (next_launch_ == units_.size() && round_active_) finish_round();
  ZeroUnit& unit = units_[member.unit];
  KILN_CHECK(!member.ready, "ZeroOptimizer: parameter '", member.name,
             "' received a second gradient while its unit still waits for parameters that got none; "
             "every backward must give every parameter a gradient");
  NoGradGuard no_grad;
  if (!unit.flat_grad.defined()) unit.flat_grad = zeros({unit.padded}, TensorOptions(unit.flat.dtype()).device(unit.flat.device()));
  unit.flat_grad.narrow(0, member.offset, member.parameter.numel()).copy_(member.parameter.grad().reshape({-1}));
  // The full gradient is not kept: this rank only needs its chunk, which the reduce-scatter brings.
  member.parameter.set_grad(Tensor());
  member.ready = true;
  round_active_ = true;
  gradients_reduced_ = false;
  // Stage 3: a complete gradient means backward is done with the unit's parameters.
  if (--unit.pending == 0) release(member.unit);
  launch_ready_units();
}

void ZeroState::launch_ready_units() {
  while (next_launch_ < units_.size() && units_[next_launch_].pending == 0) {
    ZeroUnit& unit = units_[next_launch_++];
    unit.incoming = empty({unit.chunk}, TensorOptions(unit.flat_grad.dtype()).device(unit.flat_grad.device()));
    unit.reduce_work = group_->reduce_scatter_async(unit.flat_grad, unit.incoming, ReduceOp::avg);
    unit.launched = true;
  }
}

void ZeroState::wait_launched() {
  for (ZeroUnit& unit : units_) {
    if (unit.launched) unit.reduce_work.wait();
  }
}

// Waits for every reduce-scatter and adds the averaged chunks into the shards' gradients.
void ZeroState::finish_round() {
  NoGradGuard no_grad;
  for (ZeroUnit& unit : units_) {
    if (unit.launched) {
      unit.reduce_work.wait();
      Tensor grad = unit.shard.grad();
      if (grad.defined()) {
        grad.add_(unit.incoming);
      } else {
        unit.shard.set_grad(unit.incoming);
      }
    }
    unit.flat_grad = Tensor();
    unit.incoming = Tensor();
    unit.reduce_work = WorkHandle();
    unit.launched = false;
    unit.pending = unit.members.size();
  }
  for (ZeroMember& member : members_) member.ready = false;
  next_launch_ = 0;
  round_active_ = false;
}

void ZeroState::reduce_gradients() {
  if (gradients_reduced_) return;
  NoGradGuard no_grad;
  if (options_.stage() == 1) {
    for (ZeroUnit& unit : units_) {
      unit.flat_grad = zeros({unit.padded}, TensorOptions(unit.flat.dtype()).device(unit.flat.device()));
      for (size_t index : unit.members) {
        const ZeroMember& member = members_[index];
        Tensor grad = member.parameter.grad();
        if (grad.defined()) unit.flat_grad.narrow(0, member.offset, member.parameter.numel()).copy_(grad.reshape({-1}));
      }
      unit.pending = 0;
    }
    round_active_ = true;
  } else if (round_active_) {
    // Parameters that got no gradient in this backward contribute zeros.
    for (size_t u = next_launch_; u < units_.size(); ++u) {
      ZeroUnit& unit = units_[u];
      if (!unit.flat_grad.defined()) unit.flat_grad = zeros({unit.padded}, TensorOptions(unit.flat.dtype()).device(unit.flat.device()));
      unit.pending = 0;
      release(u);
    }
  }
  if (round_active_) {
    launch_ready_units();
    finish_round();
  }
  gradients_reduced_ = true;
}

double ZeroState::grad_square_sum(const GradientWeight& weight) {
  reduce_gradients();
  double local = 0.0;
  auto square_sum = [](const Tensor& grad) {
    Tensor wide = grad.to(DType::f64);
    return sum(mul(wide, wide)).item<double>();
  };
  for (const ZeroUnit& unit : units_) {
    Tensor grad = unit.shard.grad();
    if (!grad.defined()) continue;
    if (!weight) {
      local += square_sum(grad);
      continue;
    }
    // This rank's chunk covers [begin, begin + chunk) of the unit; each member its own range.
    const int64_t begin = group_->rank() * unit.chunk;
    for (size_t index : unit.members) {
      const ZeroMember& member = members_[index];
      const int64_t from = std::max(begin, member.offset);
      const int64_t to = std::min(begin + unit.chunk, member.offset + member.parameter.numel());
      const double w = to > from ? weight(member.name) : 0.0;
      if (w != 0.0) local += w * square_sum(grad.narrow(0, from - begin, to - from));
    }
  }
  Tensor total = from_vector(std::vector<double>{local}, {1}, TensorOptions(DType::f64));
  group_->all_reduce(total, ReduceOp::sum);
  return total.item<double>();
}

void ZeroState::scale_gradients(double factor) {
  NoGradGuard no_grad;
  for (ZeroUnit& unit : units_) {
    Tensor grad = unit.shard.grad();
    if (grad.defined()) grad.mul_(factor);
  }
}

double ZeroState::clip_grad_norm(double max_norm) {
  KILN_CHECK(max_norm > 0.0, "ZeroOptimizer::clip_grad_norm: max_norm must be positive, got ", max_norm);
  double norm = grad_norm();
  // The rule of optim::clip_grad_norm (and torch): scale by max_norm / (norm + 1e-6) when below 1.
  double coefficient = max_norm / (norm + 1e-6);
  if (coefficient < 1.0) scale_gradients(coefficient);
  return norm;
}

void ZeroState::step() {
  reduce_gradients();
  optimizer_->step();
  NoGradGuard no_grad;
  if (options_.stage() < 3) {
    // The updated chunks, gathered in place into every rank's flat parameters.
    std::vector<WorkHandle> gathers;
    for (ZeroUnit& unit : units_) gathers.push_back(group_->all_gather_async(unit.shard, unit.flat));
    for (WorkHandle& work : gathers) work.wait();
  } else {
    // Units held gathered (gather_full_parameters) must show the new values.
    for (size_t u = 0; u < units_.size(); ++u) {
      if (!units_[u].gathered) continue;
      units_[u].gathered = false;
      gather(u);
      wait_gathered(u);
    }
  }
  gradients_reduced_ = false;
}

void ZeroState::zero_grad() {
  wait_launched();
  for (ZeroMember& member : members_) {
    member.parameter.set_grad(Tensor());
    member.ready = false;
  }
  for (ZeroUnit& unit : units_) {
    unit.shard.set_grad(Tensor());
    unit.flat_grad = Tensor();
    unit.incoming = Tensor();
    unit.reduce_work = WorkHandle();
    unit.launched = false;
    unit.pending = unit.members.size();
  }
  next_launch_ = 0;
  round_active_ = false;
  gradients_reduced_ = false;
}

// ---- stage 3: parameters gathered around each use ---------------------------------------------

void ZeroState::gather(size_t unit_index) {
  ZeroUnit& unit = units_[unit_index];
  if (unit.gathered || unit.gathering) return;
  unit.gather_buffer = empty({unit.padded}, TensorOptions(unit.shard.dtype()).device(unit.shard.device()));
  unit.gather_work = group_->all_gather_async(unit.shard, unit.gather_buffer);
  unit.gathering = true;
}

void ZeroState::wait_gathered(size_t unit_index) {
  ZeroUnit& unit = units_[unit_index];
  if (unit.gathered) return;
  gather(unit_index);
  unit.gather_work.wait();
  // The parameters (and tensors saved for backward) view the flat Storage: it adopts the
  // gathered memory rather than copying it.
  unit.flat.storage()->take_data(*unit.gather_buffer.storage());
  unit.gather_buffer = Tensor();
  unit.gather_work = WorkHandle();
  unit.gathering = false;
  unit.gathered = true;
}

void ZeroState::release(size_t unit_index) {
  ZeroUnit& unit = units_[unit_index];
  if (options_.stage() != 3 || pinned_) return;
  if (unit.gathering) wait_gathered(unit_index);
  if (!unit.gathered) return;
  unit.flat.storage()->release_data();
  unit.gathered = false;
}

const std::vector<size_t>& ZeroState::units_of(nn::Module* module) const {
  static const std::vector<size_t> none;
  auto found = module_units_.find(module);
  return found == module_units_.end() ? none : found->second;
}

void ZeroState::prefetch_after(nn::Module* module, int direction) {
  if (!order_recorded_) return;
  auto found = forward_position_.find(module);
  if (found == forward_position_.end()) return;
  int64_t next = static_cast<int64_t>(found->second) + direction;
  if (next < 0 || next >= static_cast<int64_t>(forward_order_.size())) return;
  for (size_t u : units_of(forward_order_[static_cast<size_t>(next)])) gather(u);
}

void ZeroState::before_forward(nn::Module* module) {
  if (!order_recorded_ && !units_of(module).empty() && forward_position_.emplace(module, forward_order_.size()).second) {
    forward_order_.push_back(module);
  }
  if (module == &module_) {
    for (size_t u = 0; u < units_.size(); ++u) {
      if (units_[u].tied) gather(u);
    }
  }
  for (size_t u : units_of(module)) wait_gathered(u);
  prefetch_after(module, +1);
}

void ZeroState::after_forward(nn::Module* module) {
  if (module == &module_) {
    order_recorded_ = true;
    // Without a backward to come, tied units are done too.
    if (!GradMode::is_enabled()) {
      for (size_t u = 0; u < units_.size(); ++u) {
        if (units_[u].tied) release(u);
      }
    }
  }
  for (size_t u : units_of(module)) {
    if (!units_[u].tied) release(u);
  }
}

void ZeroState::before_backward(nn::Module* module) {
  for (size_t u : units_of(module)) wait_gathered(u);
  prefetch_after(module, -1);
}

void ZeroState::gather_full_parameters() {
  if (options_.stage() != 3) return;
  for (size_t u = 0; u < units_.size(); ++u) gather(u);
  for (size_t u = 0; u < units_.size(); ++u) wait_gathered(u);
  pinned_ = true;
}

void ZeroState::reshard() {
  if (options_.stage() != 3) return;
  pinned_ = false;
  NoGradGuard no_grad;
  for (size_t u = 0; u < units_.size(); ++u) {
    ZeroUnit& unit = units_[u];
    // The module's parameters may have been loaded while gathered: they are the truth now.
    if (unit.gathered) unit.shard.copy_(unit.flat.narrow(0, group_->rank() * unit.chunk, unit.chunk));
    release(u);
  }
}

// ---- ZeroOptimizer -------------------------------------------------------------------------------

ZeroOptimizer::ZeroOptimizer(nn::Module& module, std::shared_ptr<Communicator> group,
                             std::vector<optim::ParamGroup> groups, const OptimizerFactory& make_optimizer,
                             ZeroOptions options) {
  KILN_CHECK(group != nullptr, "ZeroOptimizer: the communicator is null");
  state_ = std::make_shared<ZeroState>(module, std::move(group), options);
  state_->build(std::move(groups), make_optimizer);
  state_->install_hooks();
}

ZeroOptimizer::~ZeroOptimizer() = default;

void ZeroOptimizer::reduce_gradients() { state_->reduce_gradients(); }
double ZeroOptimizer::clip_grad_norm(double max_norm) { return state_->clip_grad_norm(max_norm); }
double ZeroOptimizer::grad_norm() { return state_->grad_norm(); }
double ZeroOptimizer::grad_square_sum(const GradientWeight& weight) { return state_->grad_square_sum(weight); }
void ZeroOptimizer::scale_gradients(double factor) { state_->scale_gradients(factor); }
void ZeroOptimizer::step() { state_->step(); }
void ZeroOptimizer::zero_grad() { state_->zero_grad(); }
optim::Optimizer& ZeroOptimizer::optimizer() { return state_->optimizer(); }
int ZeroOptimizer::stage() const { return state_->stage(); }
int64_t ZeroOptimizer::shard_numel() const { return state_->shard_numel(); }
void ZeroOptimizer::gather_full_parameters() { state_->gather_full_parameters(); }
void ZeroOptimizer::reshard() { state_->reshard(); }
nn::StateDict ZeroOptimizer::module_state_dict() {
  bool was_gathered = state_->pinned();
  gather_full_parameters();
  nn::StateDict copies;
  for (const auto& [name, tensor] : state_->module().state_dict()) copies[name] = tensor.clone();
  if (!was_gathered) reshard();
  return copies;
}

optim::OptimizerStateDict ZeroOptimizer::state_shard() const { return state_->state_shard(); }
void ZeroOptimizer::load_state_dict(const optim::OptimizerStateDict& state) { state_->load_state_dict(state); }

}  // namespace kiln::parallel

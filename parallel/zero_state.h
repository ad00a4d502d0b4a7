// ZeroState: what ZeroOptimizer keeps (units, the wrapped optimizer, the gradient round and
// stage 3's gather state), shared with the hooks that the module and its parameters hold.
// Private to zero.cpp and zero_state_dict.cpp.
#pragma once

#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "parallel/zero.h"
#include "parallel/zero_units.h"

namespace kiln::parallel {

// The wrapped optimizer's name for unit u's shard.
inline std::string zero_unit_name(size_t unit) { return "zero.unit" + std::to_string(unit); }

class ZeroState : public std::enable_shared_from_this<ZeroState> {
 public:
  ZeroState(nn::Module& module, std::shared_ptr<Communicator> group, ZeroOptions options)
      : module_(module), group_(std::move(group)), options_(options) {}
  ~ZeroState() {
    try {
      wait_launched();  // in-flight reduce-scatters still write into the units' buffers
    } catch (const Error&) {
      // A destructor cannot report a failed collective; step() and zero_grad() do.
    }
  }

  void build(std::vector<optim::ParamGroup> groups, const OptimizerFactory& make_optimizer);
  void install_hooks();

  void reduce_gradients();
  double grad_square_sum(const GradientWeight& weight);
  double grad_norm() { return std::sqrt(grad_square_sum(nullptr)); }
  double clip_grad_norm(double max_norm);
  void scale_gradients(double factor);
  void step();
  void zero_grad();
  void gather_full_parameters();
  void reshard();
  optim::OptimizerStateDict state_shard() const;
  void load_state_dict(const optim::OptimizerStateDict& state);

  optim::Optimizer& optimizer() { return *optimizer_; }
  nn::Module& module() { return module_; }
  bool pinned() const { return pinned_; }
  int stage() const { return options_.stage(); }
  int64_t shard_numel() const {
    int64_t total = 0;
    for (const ZeroUnit& unit : units_) total += unit.chunk;
    return total;
  }

  // ---- stage 3: gathering and releasing units around each module's use ----------------------
  void gather(size_t unit_index);         // starts the all-gather (prefetch)
  void wait_gathered(size_t unit_index);  // gathers if needed and waits: flat holds the parameters
  void release(size_t unit_index);        // frees the flat parameters (stage 3 only)
  void before_forward(nn::Module* module);
  void after_forward(nn::Module* module);
  void before_backward(nn::Module* module);

 private:
  void on_gradient_ready(size_t member_index);
  void launch_ready_units();
  void finish_round();
  void wait_launched();
  const std::vector<size_t>& units_of(nn::Module* module) const;
  void prefetch_after(nn::Module* module, int direction);

  nn::Module& module_;
  std::shared_ptr<Communicator> group_;
  ZeroOptions options_;
  std::vector<ZeroMember> members_;
  std::vector<ZeroUnit> units_;
  std::unique_ptr<optim::Optimizer> optimizer_;
  std::vector<std::vector<std::string>> group_names_;  // the caller's groups, by parameter name
  size_t next_launch_ = 0;       // the next unit whose reduce-scatter may start (index order)
  bool round_active_ = false;     // some gradient arrived since the last reduce
  bool gradients_reduced_ = false;
  bool pinned_ = false;          // gather_full_parameters(): no releases until reshard()
  std::map<nn::Module*, std::vector<size_t>> module_units_;
  std::vector<nn::Module*> forward_order_;  // stage 3: modules in the order the first forward ran them
  std::map<nn::Module*, size_t> forward_position_;
  bool order_recorded_ = false;
};

}  // namespace kiln::parallel

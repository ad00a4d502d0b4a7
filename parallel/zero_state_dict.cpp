// ZeRO's optimizer state in checkpoints: each rank saves the part it owns, keyed by the module's
// parameters rather than by units, so that a run on any number of ranks (or an unsharded
// optimizer, after consolidation) can load it.
#include <algorithm>
#include <set>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "parallel/zero_state.h"

namespace kiln::parallel {

namespace {

constexpr const char* kLayoutSuffix = "#layout";

// "<parameter>/<buffer>" -> (parameter, buffer); parameter names hold dots, never slashes.
std::pair<std::string, std::string> split_key(const std::string& key) {
  size_t slash = key.rfind('/');
  KILN_CHECK(slash != std::string::npos && slash > 0 && slash + 1 < key.size(), "ZeroOptimizer: optimizer state key '",
             key, "' is not <parameter>/<buffer>");
  return {key.substr(0, slash), key.substr(slash + 1)};
}

}  // namespace

optim::OptimizerStateDict ZeroState::state_shard() const {
  optim::OptimizerStateDict inner = optimizer_->state_dict();
  const int rank = group_->rank();
  optim::OptimizerStateDict result;

  nlohmann::json groups = inner.scalars.at("groups");
  for (size_t g = 0; g < groups.size(); ++g) groups[g]["parameters"] = group_names_[g];
  nlohmann::json steps = nlohmann::json::object();
  const nlohmann::json& inner_steps = inner.scalars.at("state");
  for (size_t u = 0; u < units_.size(); ++u) {
    if (!inner_steps.contains(zero_unit_name(u))) continue;
    for (size_t index : units_[u].members) steps[members_[index].name] = inner_steps.at(zero_unit_name(u));
  }
  result.scalars = inner.scalars;
  result.scalars["groups"] = groups;
  result.scalars["state"] = steps;

  NoGradGuard no_grad;
  for (const auto& [key, chunk] : inner.tensors) {
    auto [unit_name, buffer] = split_key(key);
    size_t u = std::stoul(unit_name.substr(std::string("zero.unit").size()));
    const ZeroUnit& unit = units_[u];
    const int64_t own_begin = rank * unit.chunk, own_end = own_begin + unit.chunk;
    for (size_t index : unit.members) {
      const ZeroMember& member = members_[index];
      int64_t begin = std::max(own_begin, member.offset);
      int64_t end = std::min(own_end, member.offset + member.parameter.numel());
      if (begin >= end) continue;
      std::string name = member.name + "/" + buffer;
      result.tensors[name] = chunk.narrow(0, begin - own_begin, end - begin).clone();
      std::vector<int64_t> layout = {begin - member.offset};
      for (int64_t size : member.parameter.shape()) layout.push_back(size);
      result.tensors[name + kLayoutSuffix] = from_vector(layout, {static_cast<int64_t>(layout.size())}, TensorOptions(DType::i64));
    }
  }
  return result;
}

void ZeroState::load_state_dict(const optim::OptimizerStateDict& state) {
  const std::string what = "ZeroOptimizer: load_state_dict";
  KILN_CHECK(state.scalars.is_object() && state.scalars.contains("groups") && state.scalars.contains("state"), what,
             ": the state has no \"groups\" or \"state\"");
  // Buffers per parameter, and which buffer names exist at all.
  std::map<std::string, std::map<std::string, Tensor>> buffers;
  for (const auto& [key, tensor] : state.tensors) {
    auto [parameter, buffer] = split_key(key);
    buffers[parameter][buffer] = tensor;
  }
  std::set<std::string> known;
  for (const ZeroMember& member : members_) known.insert(member.name);
  for (const auto& [parameter, unused] : buffers) {
    KILN_CHECK(known.count(parameter), what, ": the state holds buffers of '", parameter,
               "', which is not a parameter of this optimizer");
  }

  optim::OptimizerStateDict inner;
  inner.scalars = state.scalars;
  nlohmann::json groups = state.scalars.at("groups");
  KILN_CHECK(groups.is_array() && groups.size() == group_names_.size(), what, ": the state has ",
             groups.is_array() ? groups.size() : 0, " parameter groups but the optimizer has ", group_names_.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    KILN_CHECK(groups[g].value("parameters", nlohmann::json::array()) == nlohmann::json(group_names_[g]), what,
               ": group ", g, " of the state lists other parameters than this optimizer's group ", g);
    groups[g]["parameters"] = nlohmann::json::array();
  }
  nlohmann::json steps = nlohmann::json::object();
  const nlohmann::json& saved_steps = state.scalars.at("state");
  const int rank = group_->rank();
  NoGradGuard no_grad;
  for (size_t u = 0; u < units_.size(); ++u) {
    const ZeroUnit& unit = units_[u];
    // Units in index order: the order build() gave the wrapped optimizer its parameters.
    groups[unit.group]["parameters"].push_back(zero_unit_name(u));
    const std::string& first = members_[unit.members.front()].name;
    if (saved_steps.contains(first)) steps[zero_unit_name(u)] = saved_steps.at(first);
    auto first_buffers = buffers.find(first);
    if (first_buffers == buffers.end()) continue;
    for (const auto& [buffer, unused] : first_buffers->second) {
      // The unit's flat buffer, assembled from its parameters' buffers; this rank keeps its chunk.
      Tensor flat = zeros({unit.padded}, TensorOptions(unit.shard.dtype()));
      for (size_t index : unit.members) {
        const ZeroMember& member = members_[index];
        auto found = buffers[member.name].find(buffer);
        KILN_CHECK(found != buffers[member.name].end(), what, ": '", member.name, "' has no '", buffer,
                   "' buffer although '", first, "' has one");
        KILN_CHECK(found->second.numel() == member.parameter.numel(), what, ": '", member.name, "/", buffer, "' has ",
                   found->second.numel(), " elements, the parameter ", member.parameter.numel());
        flat.narrow(0, member.offset, member.parameter.numel()).copy_(found->second.reshape({-1}));
      }
      inner.tensors[zero_unit_name(u) + "/" + buffer] =
          flat.narrow(0, rank * unit.chunk, unit.chunk).clone().to(unit.shard.device());
    }
  }
  inner.scalars["groups"] = groups;
  inner.scalars["state"] = steps;
  optimizer_->load_state_dict(inner);
}

optim::OptimizerStateDict consolidate_optimizer_shards(const std::vector<optim::OptimizerStateDict>& shards) {
  KILN_CHECK(!shards.empty(), "consolidate_optimizer_shards: no shards given");
  optim::OptimizerStateDict result;
  result.scalars = shards.front().scalars;
  std::map<std::string, int64_t> covered;
  NoGradGuard no_grad;
  for (size_t s = 0; s < shards.size(); ++s) {
    for (const auto& [key, part] : shards[s].tensors) {
      if (key.size() > std::string(kLayoutSuffix).size() && key.ends_with(kLayoutSuffix)) continue;
      auto layout_found = shards[s].tensors.find(key + kLayoutSuffix);
      KILN_CHECK(layout_found != shards[s].tensors.end(), "consolidate_optimizer_shards: shard ", s, " holds '", key,
                 "' without its '", key, kLayoutSuffix, "'");
      std::vector<int64_t> layout = layout_found->second.to_vector<int64_t>();
      KILN_CHECK(!layout.empty(), "consolidate_optimizer_shards: shard ", s, ": empty layout for '", key, "'");
      Shape shape(layout.begin() + 1, layout.end());
      Tensor& full = result.tensors[key];
      if (!full.defined()) full = zeros(shape, TensorOptions(part.dtype()));
      KILN_CHECK(full.shape() == shape, "consolidate_optimizer_shards: shard ", s, " gives '", key, "' shape ",
                 shape_str(shape), " but another shard ", shape_str(full.shape()));
      int64_t begin = layout[0];
      KILN_CHECK(begin >= 0 && begin + part.numel() <= full.numel(), "consolidate_optimizer_shards: shard ", s,
                 " places ", part.numel(), " elements of '", key, "' at ", begin, ", outside its ", full.numel());
      full.reshape({-1}).narrow(0, begin, part.numel()).copy_(part.reshape({-1}));
      covered[key] += part.numel();
    }
  }
  for (const auto& [key, full] : result.tensors) {
    KILN_CHECK(covered[key] == full.numel(), "consolidate_optimizer_shards: the shards cover ", covered[key], " of the ",
               full.numel(), " elements of '", key, "' (a shard file is missing or duplicated)");
  }
  return result;
}

}  // namespace kiln::parallel

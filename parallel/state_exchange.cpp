// Gathering named tensors and JSON over a group (see state_exchange.h).
#include "parallel/state_exchange.h"

#include <set>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"

namespace kiln::parallel {
namespace {

// "<parameter>/<buffer>" -> "<parameter>" ("" when there is no slash).
std::string parameter_of(const std::string& key) {
  size_t slash = key.rfind('/');
  return slash == std::string::npos ? std::string() : key.substr(0, slash);
}

}  // namespace

std::vector<nlohmann::json> all_gather_json(const nlohmann::json& value, Communicator& group) {
  const std::string text = value.dump();
  const int n = group.size();
  Tensor length = from_vector(std::vector<int64_t>{static_cast<int64_t>(text.size())});
  Tensor lengths = zeros({n}, TensorOptions(DType::i64));
  group.all_gather(length, lengths);
  std::vector<int64_t> sizes = lengths.to_vector<int64_t>();
  int64_t longest = 0;
  for (int64_t size : sizes) longest = std::max(longest, size);
  // Bytes travel as i32 values: every dtype the backends take holds them exactly.
  std::vector<int32_t> bytes(static_cast<size_t>(std::max<int64_t>(longest, 1)), 0);
  for (size_t i = 0; i < text.size(); ++i) bytes[i] = static_cast<unsigned char>(text[i]);
  Tensor mine = from_vector(bytes);
  Tensor all = zeros({n * mine.numel()}, TensorOptions(DType::i32));
  group.all_gather(mine, all);
  std::vector<int32_t> received = all.to_vector<int32_t>();
  std::vector<nlohmann::json> values;
  for (int r = 0; r < n; ++r) {
    std::string piece;
    for (int64_t i = 0; i < sizes[static_cast<size_t>(r)]; ++i) {
      piece.push_back(static_cast<char>(received[static_cast<size_t>(r * mine.numel() + i)]));
    }
    values.push_back(nlohmann::json::parse(piece));
  }
  return values;
}

std::vector<TensorMap> all_gather_tensors(const TensorMap& tensors, Communicator& group) {
  nlohmann::json manifest = nlohmann::json::object();
  for (const auto& [name, tensor] : tensors) {
    manifest[name] = {{"dtype", static_cast<int>(tensor.dtype())}, {"shape", tensor.sizes()}};
  }
  std::vector<nlohmann::json> manifests = all_gather_json(manifest, group);
  std::vector<TensorMap> gathered(manifests.size());
  NoGradGuard no_grad;
  for (int r = 0; r < group.size(); ++r) {
    for (const auto& [name, entry] : manifests[static_cast<size_t>(r)].items()) {
      Tensor buffer = r == group.rank()
                          ? tensors.at(name).detach().to(Device::cpu()).contiguous().clone()
                          : empty(entry.at("shape").get<Shape>(), TensorOptions(static_cast<DType>(entry.at("dtype").get<int>())));
      group.broadcast(buffer, r);
      gathered[static_cast<size_t>(r)][name] = buffer;
    }
  }
  return gathered;
}

std::vector<optim::OptimizerStateDict> all_gather_optimizer_states(const optim::OptimizerStateDict& state,
                                                                   Communicator& group) {
  std::vector<TensorMap> tensors = all_gather_tensors(state.tensors, group);
  std::vector<nlohmann::json> scalars = all_gather_json(state.scalars, group);
  std::vector<optim::OptimizerStateDict> states;
  for (size_t r = 0; r < tensors.size(); ++r) states.push_back({tensors[r], scalars[r]});
  return states;
}

TensorMap union_over(const TensorMap& tensors, Communicator& group) {
  TensorMap all;
  for (const TensorMap& part : all_gather_tensors(tensors, group)) {
    for (const auto& [name, tensor] : part) all.emplace(name, tensor);  // the lowest rank's stays
  }
  return all;
}

optim::OptimizerStateDict union_over(const optim::OptimizerStateDict& state, Communicator& group) {
  optim::OptimizerStateDict merged{union_over(state.tensors, group), nlohmann::json()};
  std::vector<nlohmann::json> parts = all_gather_json(state.scalars, group);
  merged.scalars = parts.front();
  for (size_t r = 1; r < parts.size(); ++r) {
    for (const auto& [name, entry] : parts[r].at("state").items()) {
      if (!merged.scalars["state"].contains(name)) merged.scalars["state"][name] = entry;
    }
    nlohmann::json& groups = merged.scalars["groups"];
    KILN_CHECK(groups.size() == parts[r].at("groups").size(), "optimizer state: rank ", r, " has ",
               parts[r].at("groups").size(), " parameter groups, rank 0 has ", groups.size());
    for (size_t g = 0; g < groups.size(); ++g) {
      std::set<std::string> have;
      for (const auto& name : groups[g]["parameters"]) have.insert(name.get<std::string>());
      for (const auto& name : parts[r]["groups"][g]["parameters"]) {
        if (have.insert(name.get<std::string>()).second) groups[g]["parameters"].push_back(name);
      }
    }
  }
  return merged;
}

optim::OptimizerStateDict restrict_to(const optim::OptimizerStateDict& state, const std::vector<std::string>& names) {
  std::set<std::string> wanted(names.begin(), names.end());
  optim::OptimizerStateDict part{{}, state.scalars};
  for (const auto& [key, tensor] : state.tensors) {
    if (wanted.count(parameter_of(key))) part.tensors[key] = tensor;
  }
  if (!part.scalars.is_object()) return part;
  if (part.scalars.contains("state")) {
    nlohmann::json kept = nlohmann::json::object();
    for (const auto& [name, entry] : part.scalars["state"].items()) {
      if (wanted.count(name)) kept[name] = entry;
    }
    part.scalars["state"] = kept;
  }
  if (part.scalars.contains("groups")) {
    for (auto& group : part.scalars["groups"]) {
      nlohmann::json kept = nlohmann::json::array();
      for (const auto& name : group["parameters"]) {
        if (wanted.count(name.get<std::string>())) kept.push_back(name);
      }
      group["parameters"] = kept;
    }
  }
  return part;
}

}  // namespace kiln::parallel

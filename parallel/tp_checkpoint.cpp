// Moving a ParallelTransformer's state between tensor-parallel layouts (see tp_checkpoint.h).
#include "parallel/tp_checkpoint.h"

#include <map>
#include <string>

#include "autograd/grad_mode.h"

namespace kiln::parallel {
namespace {

// The layer that owns a parameter, when it is split; all null for replicated parameters.
struct Owner {
  const ColumnParallelLinear* column = nullptr;
  const RowParallelLinear* row = nullptr;
  const VocabParallelEmbedding* vocab = nullptr;
};

void collect_owners(const nn::Module& module, const std::string& prefix, std::map<std::string, Owner>& owners) {
  Owner owner{dynamic_cast<const ColumnParallelLinear*>(&module), dynamic_cast<const RowParallelLinear*>(&module),
              dynamic_cast<const VocabParallelEmbedding*>(&module)};
  for (const NamedParameter& p : module.named_parameters(false)) owners.emplace(prefix + p.name, owner);
  for (const auto& [name, child] : module.named_children()) collect_owners(*child, prefix + name + ".", owners);
}

std::map<std::string, Owner> owners_of(const ParallelTransformer& model) {
  std::map<std::string, Owner> owners;
  collect_owners(model, "", owners);
  return owners;
}

// Applies `convert` (to_master or from_master) of the layer that owns `name`; a replicated
// tensor is the same in every layout and is copied.
template <typename Convert>
Tensor convert_for(const std::map<std::string, Owner>& owners, const std::string& name, const Tensor& tensor,
                   Convert convert) {
  auto found = owners.find(name);
  if (found != owners.end()) {
    if (found->second.column) return convert(*found->second.column, tensor);
    if (found->second.row) return convert(*found->second.row, tensor);
    if (found->second.vocab) return convert(*found->second.vocab, tensor);
  }
  NoGradGuard no_grad;
  return tensor.detach().clone();
}

Tensor to_master(const std::map<std::string, Owner>& owners, const std::string& name, const Tensor& local) {
  return convert_for(owners, name, local, [](const auto& layer, const Tensor& t) { return layer.to_master(t); });
}

Tensor from_master(const std::map<std::string, Owner>& owners, const std::string& name, const Tensor& master) {
  return convert_for(owners, name, master, [](const auto& layer, const Tensor& t) { return layer.from_master(t); });
}

// "<parameter>/<buffer>" -> "<parameter>".
std::string parameter_of(const std::string& key) {
  size_t slash = key.rfind('/');
  KILN_CHECK(slash != std::string::npos, "tensor-parallel optimizer state: key '", key, "' is not <parameter>/<buffer>");
  return key.substr(0, slash);
}

}  // namespace

nn::StateDict master_state_dict(ParallelTransformer& model) {
  std::map<std::string, Owner> owners = owners_of(model);
  nn::StateDict master;
  for (const auto& [name, tensor] : model.state_dict()) master[name] = to_master(owners, name, tensor);
  return master;
}

void load_master_state_dict(ParallelTransformer& model, const nn::StateDict& master) {
  std::map<std::string, Owner> owners = owners_of(model);
  nn::StateDict local;
  for (const auto& [name, tensor] : model.state_dict()) {
    auto found = master.find(name);
    // A missing key is left for load_state_dict's strict check, which names every one.
    if (found != master.end()) local[name] = from_master(owners, name, found->second);
  }
  for (const auto& [name, tensor] : master) {
    if (!local.count(name)) local[name] = tensor;  // unexpected keys: reported by load_state_dict too
  }
  model.load_state_dict(local);
}

optim::OptimizerStateDict master_optimizer_state(ParallelTransformer& model, const optim::OptimizerStateDict& local) {
  std::map<std::string, Owner> owners = owners_of(model);
  optim::OptimizerStateDict master{{}, local.scalars};
  for (const auto& [key, tensor] : local.tensors) master.tensors[key] = to_master(owners, parameter_of(key), tensor);
  return master;
}

optim::OptimizerStateDict local_optimizer_state(ParallelTransformer& model, const optim::OptimizerStateDict& master) {
  std::map<std::string, Owner> owners = owners_of(model);
  optim::OptimizerStateDict local{{}, master.scalars};
  for (const auto& [key, tensor] : master.tensors) local.tensors[key] = from_master(owners, parameter_of(key), tensor);
  return local;
}

}  // namespace kiln::parallel

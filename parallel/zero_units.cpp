// Packing parameters into ZeRO's flat units (see zero_units.h).
#include "parallel/zero_units.h"

#include <map>
#include <tuple>

namespace kiln::parallel {

std::vector<ZeroUnit> make_zero_units(const NamedParameters& registration_order, const std::vector<int>& owners,
                                      bool split_by_owner, const std::vector<optim::ParamGroup>& groups,
                                      int group_size, int64_t bucket_bytes, std::vector<ZeroMember>& members) {
  std::map<const TensorImpl*, size_t> group_of;
  for (size_t g = 0; g < groups.size(); ++g) {
    for (const NamedParameter& p : groups[g].parameters) {
      KILN_CHECK(group_of.emplace(p.tensor.impl_ptr().get(), g).second, "ZeroOptimizer: parameter '", p.name,
                 "' is in more than one optimizer group");
    }
  }
  size_t grouped = 0;
  for (const NamedParameter& p : registration_order) grouped += group_of.count(p.tensor.impl_ptr().get());
  KILN_CHECK(grouped == group_of.size(), "ZeroOptimizer: the optimizer groups hold ", group_of.size() - grouped,
             " tensor(s) that are not parameters of the module");

  std::vector<ZeroUnit> units;
  // The unit still open for each (group, dtype, device); an owner change closes them all.
  std::map<std::tuple<size_t, DType, DeviceType, int>, size_t> open;
  int current_owner = -1;
  for (size_t i = registration_order.size(); i-- > 0;) {
    const NamedParameter& p = registration_order[i];
    auto found_group = group_of.find(p.tensor.impl_ptr().get());
    if (found_group == group_of.end()) {
      KILN_CHECK(!p.tensor.requires_grad(), "ZeroOptimizer: parameter '", p.name,
                 "' requires grad but is in no optimizer group");
      continue;
    }
    KILN_CHECK(p.tensor.is_contiguous(), "ZeroOptimizer: parameter '", p.name, "' is not contiguous");
    if (split_by_owner && owners[i] != current_owner) {
      open.clear();
      current_owner = owners[i];
    }
    const Tensor& tensor = p.tensor;
    auto key = std::make_tuple(found_group->second, tensor.dtype(), tensor.device().type, tensor.device().index);
    int64_t element_bytes = static_cast<int64_t>(dtype_size(tensor.dtype()));
    auto it = open.find(key);
    if (it == open.end() || (units[it->second].numel > 0 &&
                             (units[it->second].numel + tensor.numel()) * element_bytes > bucket_bytes)) {
      units.emplace_back();
      units.back().group = found_group->second;
      it = open.insert_or_assign(key, units.size() - 1).first;
    }
    ZeroUnit& unit = units[it->second];
    members.push_back(ZeroMember{p.name, tensor, it->second, unit.numel, false});
    unit.members.push_back(members.size() - 1);
    unit.numel += tensor.numel();
  }
  for (ZeroUnit& unit : units) {
    unit.padded = (unit.numel + group_size - 1) / group_size * group_size;
    unit.chunk = unit.padded / group_size;
  }
  return units;
}

}  // namespace kiln::parallel

// Moving named tensors and JSON between the ranks of a group, for checkpoints of layouts in
// which no rank holds the whole model (pipeline stages, expert-parallel ranks, ZeRO shards).
//
// Every function is collective over the group and gives every rank the same result. They are
// written for checkpoints, not for the training step: each tensor travels in its own broadcast.
#pragma once

#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "optim/optimizer.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

using TensorMap = std::map<std::string, Tensor>;

// Every rank's `value`, in rank order.
std::vector<nlohmann::json> all_gather_json(const nlohmann::json& value, Communicator& group);

// Every rank's tensors (contiguous CPU copies), in rank order.
std::vector<TensorMap> all_gather_tensors(const TensorMap& tensors, Communicator& group);

// Every rank's optimizer state_dict (ZeRO shards, to consolidate), in rank order.
std::vector<optim::OptimizerStateDict> all_gather_optimizer_states(const optim::OptimizerStateDict& state,
                                                                   Communicator& group);

// The union of every rank's tensors; a name held by several ranks (a tied embedding on the
// first and last pipeline stage) takes the lowest rank's tensor.
TensorMap union_over(const TensorMap& tensors, Communicator& group);

// The union of every rank's optimizer state_dict over disjoint (or identically shared)
// parameters: tensors as union_over, the per-parameter "state" entries merged, and each group's
// "parameters" list the union in rank order. Options and base lrs come from the lowest rank.
optim::OptimizerStateDict union_over(const optim::OptimizerStateDict& state, Communicator& group);

// The part of an optimizer state_dict that concerns `names` (every tensor "<name>/<buffer>",
// "state" entry and group member), for an optimizer over those parameters only.
optim::OptimizerStateDict restrict_to(const optim::OptimizerStateDict& state, const std::vector<std::string>& names);

}  // namespace kiln::parallel

// Parameters with their typed metadata, the currency between nn (which creates them), optim
// (which updates them) and parallel (which shards them).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "autograd/tensor.h"

namespace kiln {

struct ParameterInfo {
  // false for biases, normalisation gains and (by the model's choice) embeddings: the usual
  // AdamW split into decay and no-decay groups reads this field.
  bool weight_decay = true;
  // The dim split across tensor-parallel ranks, or -1 when every rank holds the whole tensor.
  int64_t partition_dim = -1;
  // Shared with another parameter (tied input/output embeddings): updated once, not twice.
  bool tied = false;
};

struct NamedParameter {
  std::string name;  // dotted path, e.g. "blocks.3.attn.qkv.weight"
  Tensor tensor;
  ParameterInfo info;
};

using NamedParameters = std::vector<NamedParameter>;

}  // namespace kiln

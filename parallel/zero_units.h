// The flat, evenly sharded units that ZeRO keeps parameters, gradients and optimizer state in.
//
// A unit packs parameters of one dtype, device and optimizer group into one flat buffer
// (reverse registration order, the order backward finishes them), padded to a multiple of the
// group size n; chunk r of it belongs to rank r. Model parameters become views into the flat
// buffer, so gathering the buffer updates every parameter at once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "autograd/parameter.h"
#include "optim/optimizer.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

struct ZeroMember {
  std::string name;
  Tensor parameter;
  size_t unit = 0;
  int64_t offset = 0;  // elements into the unit's flat buffer
  bool ready = false;  // its gradient for the current backward is in the unit's flat gradient
};

struct ZeroUnit {
  size_t group = 0;  // the caller's optimizer group
  std::vector<size_t> members;
  int64_t numel = 0;   // parameter elements
  int64_t padded = 0;  // numel rounded up to a multiple of the group size
  int64_t chunk = 0;   // padded / n: what each rank owns
  Tensor flat;         // (padded) the full parameters (stage 3: memory only while gathered)
  Tensor shard;        // (chunk) this rank's part: the wrapped optimizer's parameter

  // The gradient round: the full gradient while it is being filled, and the reduce-scatter.
  Tensor flat_grad;  // (padded)
  Tensor incoming;   // (chunk) the averaged chunk, folded into shard.grad once its work is done
  size_t pending = 0;
  bool launched = false;
  WorkHandle reduce_work;

  // Stage 3: whether flat holds data, and the all-gather that fills it.
  bool gathered = true;
  bool gathering = false;
  Tensor gather_buffer;
  WorkHandle gather_work;
  bool tied = false;  // holds a parameter used outside its module (kept until its gradient)
};

// Packs the parameters of `groups` into units of at most bucket_bytes, walking
// `registration_order` (the module's named_parameters()) backwards. `owners[i]` identifies the
// module that owns registration_order[i]; a unit never spans two owners when split_by_owner is
// set (stage 3 gathers per module). Fills `members` (one per parameter in a group).
std::vector<ZeroUnit> make_zero_units(const NamedParameters& registration_order, const std::vector<int>& owners,
                                      bool split_by_owner, const std::vector<optim::ParamGroup>& groups,
                                      int group_size, int64_t bucket_bytes, std::vector<ZeroMember>& members);

}  // namespace kiln::parallel

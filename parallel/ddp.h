// DistributedDataParallel: data parallelism by gradient averaging, overlapped with backward.
//
// Every rank holds the whole model and runs forward and backward on its own slice of the
// batch. DDP makes every rank's gradients the average over the group, so the optimizer step
// that follows is the same everywhere and the ranks stay identical:
//
//   parallel::DistributedDataParallel ddp(model, world.communicator);  // broadcasts rank 0's weights
//   loss = model.forward(...);  loss.backward();   // buckets are all-reduced as they fill
//   ddp.synchronize();                             // waits; .grad now holds the average
//   optimizer.step();
//
// Parameters are packed, in reverse registration order (roughly the order backward produces
// their gradients), into buckets of about bucket_bytes per dtype and device. A post-accumulate
// hook on each parameter copies its gradient into its bucket; a full bucket is all-reduced
// asynchronously at once, so communication overlaps the rest of backward. Buckets start in
// index order on every rank (a full bucket waits for the ones before it), which keeps the
// ranks' collectives in the same order whatever order the hooks fire in.
//
// Gradient accumulation: backward passes inside a no_sync() scope only accumulate locally;
// the first backward after it communicates the accumulated gradients (as in PyTorch).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "nn/module.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

class DDPOptions {
 public:
  // 25 MiB, PyTorch's default: large enough to amortise a collective's latency, small enough
  // that the first bucket starts early in backward.
  DDPOptions& bucket_bytes(int64_t value) { bucket_bytes_ = value; return *this; }
  // Whether a parameter may receive no gradient in a backward (a branch that was not taken):
  // it then contributes zeros. When false, such a parameter is an error naming it.
  DDPOptions& find_unused_parameters(bool value) { find_unused_parameters_ = value; return *this; }
  // Whether rank 0's parameters and buffers are broadcast to every rank at construction.
  DDPOptions& broadcast_at_start(bool value) { broadcast_at_start_ = value; return *this; }
  // The dtype gradients are averaged in (default: each parameter's own). A bf16 model's
  // gradients reduced in f32 are summed without bf16 rounding at every step of the reduction,
  // and rounded once when the average is written back, at twice the bytes.
  DDPOptions& reduce_dtype(DType value) { reduce_dtype_ = value; return *this; }

  int64_t bucket_bytes() const { return bucket_bytes_; }
  std::optional<DType> reduce_dtype() const { return reduce_dtype_; }
  bool find_unused_parameters() const { return find_unused_parameters_; }
  bool broadcast_at_start() const { return broadcast_at_start_; }

 private:
  int64_t bucket_bytes_ = 25 * 1024 * 1024;
  bool find_unused_parameters_ = false;
  bool broadcast_at_start_ = true;
  std::optional<DType> reduce_dtype_;
};

class GradientReducer;

class DistributedDataParallel {
 public:
  // Collective over `group`: every rank constructs it with the same model layout.
  DistributedDataParallel(nn::Module& module, std::shared_ptr<Communicator> group, DDPOptions options = {});
  ~DistributedDataParallel();
  DistributedDataParallel(const DistributedDataParallel&) = delete;
  DistributedDataParallel& operator=(const DistributedDataParallel&) = delete;

  nn::Module& module() { return module_; }
  Communicator& group() { return *group_; }

  // After backward and before anything reads the gradients: starts the buckets still waiting
  // (parameters without a gradient), waits for every all-reduce and writes the averages into
  // each parameter's .grad. Throws kiln::Error naming the parameters that received no gradient
  // unless find_unused_parameters is set.
  void synchronize();

  // While a guard lives, backward only accumulates gradients locally (no communication).
  class NoSyncGuard {
   public:
    explicit NoSyncGuard(GradientReducer& reducer);
    ~NoSyncGuard();
    NoSyncGuard(const NoSyncGuard&) = delete;
    NoSyncGuard& operator=(const NoSyncGuard&) = delete;

   private:
    GradientReducer& reducer_;
    bool previous_;
  };
  [[nodiscard]] NoSyncGuard no_sync();

  // The parameter names of each bucket, in the order the buckets are all-reduced.
  std::vector<std::vector<std::string>> bucket_parameter_names() const;

 private:
  nn::Module& module_;
  std::shared_ptr<Communicator> group_;
  // Shared with the parameters' hooks, which outlive this object; detached on destruction.
  std::shared_ptr<GradientReducer> reducer_;
};

}  // namespace kiln::parallel

// DistributedDataParallel: gradient buckets filled by post-accumulate hooks and all-reduced
// asynchronously while backward goes on (see ddp.h for the contract).
#include "parallel/ddp.h"

#include <map>
#include <sstream>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"

namespace kiln::parallel {

// The state the parameters' hooks share: the buckets and what this backward has produced.
class GradientReducer {
 public:
  struct Slot {
    std::string name;
    Tensor parameter;
    size_t bucket = 0;
    int64_t offset = 0;  // elements into the bucket's flat buffer
    bool ready = false;  // its gradient is in the bucket for this round
  };
  struct Bucket {
    Tensor flat;                // (elements) in the reduce dtype, on the parameters' device
    std::vector<size_t> slots;  // indices into slots_
    size_t pending = 0;         // slots not ready yet this round
    bool launched = false;
    WorkHandle work;
  };

  GradientReducer(const NamedParameters& parameters, std::shared_ptr<Communicator> group, const DDPOptions& options)
      : group_(std::move(group)), options_(options) {
    // Reverse registration order, grouped by dtype and device: one bucket never mixes them.
    std::map<std::pair<DType, int>, size_t> open_bucket;
    std::map<size_t, int64_t> bucket_elements;
    for (auto it = parameters.rbegin(); it != parameters.rend(); ++it) {
      if (!it->tensor.requires_grad()) continue;
      const Tensor& tensor = it->tensor;
      auto key = std::make_pair(tensor.dtype(), static_cast<int>(tensor.device().type) * 1024 + tensor.device().index);
      auto found = open_bucket.find(key);
      int64_t bytes = tensor.numel() * static_cast<int64_t>(dtype_size(tensor.dtype()));
      if (found == open_bucket.end() ||
          (bucket_elements[found->second] > 0 &&
           (bucket_elements[found->second] * static_cast<int64_t>(dtype_size(tensor.dtype())) + bytes) > options_.bucket_bytes())) {
        buckets_.emplace_back();
        found = open_bucket.insert_or_assign(key, buckets_.size() - 1).first;
      }
      size_t bucket = found->second;
      slots_.push_back(Slot{it->name, tensor, bucket, bucket_elements[bucket], false});
      buckets_[bucket].slots.push_back(slots_.size() - 1);
      bucket_elements[bucket] += tensor.numel();
    }
    for (size_t b = 0; b < buckets_.size(); ++b) {
      const Tensor& first = slots_[buckets_[b].slots.front()].parameter;
      const DType reduced = options_.reduce_dtype().value_or(first.dtype());
      buckets_[b].flat = empty({bucket_elements[b]}, TensorOptions(reduced).device(first.device()));
      buckets_[b].pending = buckets_[b].slots.size();
    }
  }

  // The post-accumulate hook of slot `index`: the parameter's gradient for this round is final.
  void on_gradient_ready(size_t index) {
    if (detached_ || no_sync_) return;
    Slot& slot = slots_[index];
    KILN_CHECK(!slot.ready, "DistributedDataParallel: parameter '", slot.name,
               "' received a second gradient before synchronize(); run the backward passes of gradient "
               "accumulation inside no_sync(), or call synchronize() after each backward");
    Bucket& bucket = buckets_[slot.bucket];
    {
      NoGradGuard no_grad;
      bucket.flat.narrow(0, slot.offset, slot.parameter.numel()).copy_(slot.parameter.grad().reshape({-1}));
    }
    slot.ready = true;
    --bucket.pending;
    launch_ready_buckets();
  }

  void synchronize() {
    if (detached_) return;
    std::vector<std::string> unused;
    for (Bucket& bucket : buckets_) {
      if (bucket.pending == 0) continue;
      for (size_t index : bucket.slots) {
        Slot& slot = slots_[index];
        if (slot.ready) continue;
        unused.push_back(slot.name);
        NoGradGuard no_grad;
        bucket.flat.narrow(0, slot.offset, slot.parameter.numel()).zero_();
      }
    }
    if (!unused.empty() && !options_.find_unused_parameters()) {
      std::ostringstream names;
      for (size_t i = 0; i < unused.size(); ++i) names << (i ? ", " : "") << unused[i];
      wait_launched();
      reset_round();
      KILN_FAIL("DistributedDataParallel on ", group_->describe(), ": ", unused.size(),
                " parameter(s) received no gradient in this backward: ", names.str(),
                ". Every rank must give every parameter a gradient, or construct DDP with "
                "DDPOptions().find_unused_parameters(true)");
    }
    for (Bucket& bucket : buckets_) bucket.pending = 0;
    launch_ready_buckets();
    for (Bucket& bucket : buckets_) {
      bucket.work.wait();
      NoGradGuard no_grad;
      for (size_t index : bucket.slots) {
        Slot& slot = slots_[index];
        Tensor averaged = bucket.flat.narrow(0, slot.offset, slot.parameter.numel()).view(slot.parameter.shape());
        Tensor grad = slot.parameter.grad();
        if (grad.defined()) {
          grad.copy_(averaged);
        } else {
          slot.parameter.set_grad(averaged.dtype() == slot.parameter.dtype() ? averaged.clone()
                                                                             : averaged.to(slot.parameter.dtype()));
        }
      }
    }
    reset_round();
  }

  std::vector<std::vector<std::string>> bucket_names() const {
    std::vector<std::vector<std::string>> names;
    for (const Bucket& bucket : buckets_) {
      names.emplace_back();
      for (size_t index : bucket.slots) names.back().push_back(slots_[index].name);
    }
    return names;
  }

  // The buffers of buckets in flight belong to their all-reduce until it finishes.
  void detach() {
    detached_ = true;
    try {
      wait_launched();
    } catch (const Error&) {
      // Destruction cannot report a failed collective; synchronize() is where it is reported.
    }
  }
  bool no_sync() const { return no_sync_; }
  void set_no_sync(bool value) { no_sync_ = value; }

 private:
  // Starts, in index order, every full bucket whose predecessors have all started.
  void launch_ready_buckets() {
    while (next_launch_ < buckets_.size() && buckets_[next_launch_].pending == 0) {
      Bucket& bucket = buckets_[next_launch_++];
      bucket.work = group_->all_reduce_async(bucket.flat, ReduceOp::avg);
      bucket.launched = true;
    }
  }

  void wait_launched() {
    for (Bucket& bucket : buckets_) {
      if (bucket.launched) bucket.work.wait();
    }
  }

  void reset_round() {
    for (Slot& slot : slots_) slot.ready = false;
    for (Bucket& bucket : buckets_) {
      bucket.pending = bucket.slots.size();
      bucket.launched = false;
      bucket.work = WorkHandle();
    }
    next_launch_ = 0;
  }

  std::shared_ptr<Communicator> group_;
  DDPOptions options_;
  std::vector<Slot> slots_;
  std::vector<Bucket> buckets_;
  size_t next_launch_ = 0;
  bool no_sync_ = false;
  bool detached_ = false;
};

DistributedDataParallel::DistributedDataParallel(nn::Module& module, std::shared_ptr<Communicator> group,
                                                 DDPOptions options)
    : module_(module), group_(std::move(group)) {
  KILN_CHECK(group_ != nullptr, "DistributedDataParallel: the communicator is null");
  KILN_CHECK(options.bucket_bytes() > 0, "DistributedDataParallel: bucket_bytes must be positive, got ",
             options.bucket_bytes());
  NamedParameters parameters = module_.named_parameters();
  if (options.broadcast_at_start()) {
    NoGradGuard no_grad;
    for (const NamedParameter& parameter : parameters) group_->broadcast(parameter.tensor, 0);
    for (const auto& [name, buffer] : module_.named_buffers()) group_->broadcast(buffer, 0);
  }
  reducer_ = std::make_shared<GradientReducer>(parameters, group_, options);
  // Hooks hold the reducer weakly: a parameter that outlives this DDP runs a no-op hook.
  size_t index = 0;
  for (auto it = parameters.rbegin(); it != parameters.rend(); ++it) {
    if (!it->tensor.requires_grad()) continue;
    std::weak_ptr<GradientReducer> weak = reducer_;
    it->tensor.register_post_accumulate_grad_hook([weak, index](Tensor&) {
      if (auto reducer = weak.lock()) reducer->on_gradient_ready(index);
    });
    ++index;
  }
}

DistributedDataParallel::~DistributedDataParallel() { reducer_->detach(); }

void DistributedDataParallel::synchronize() { reducer_->synchronize(); }

DistributedDataParallel::NoSyncGuard::NoSyncGuard(GradientReducer& reducer)
    : reducer_(reducer), previous_(reducer.no_sync()) {
  reducer_.set_no_sync(true);
}

DistributedDataParallel::NoSyncGuard::~NoSyncGuard() { reducer_.set_no_sync(previous_); }

DistributedDataParallel::NoSyncGuard DistributedDataParallel::no_sync() { return NoSyncGuard(*reducer_); }

std::vector<std::vector<std::string>> DistributedDataParallel::bucket_parameter_names() const {
  return reducer_->bucket_names();
}

}  // namespace kiln::parallel

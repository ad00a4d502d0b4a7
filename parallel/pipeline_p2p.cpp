// Pipeline point-to-point channels (see pipeline_p2p.h): the split into an activation group
// and a gradient group, their cache, and one direction of messages with a receive posted ahead.
#include "parallel/pipeline_p2p.h"

#include <algorithm>
#include <map>
#include <mutex>

namespace kiln::parallel {

PipelineChannels::PipelineChannels(std::shared_ptr<Communicator> pp_group) : pipeline(std::move(pp_group)) {
  KILN_CHECK(pipeline != nullptr, "PipelineChannels: the pipeline group is null");
  if (pipeline->size() == 1) return;
  // Same color for all: each split is a copy of the group (same ranks, same order) with its own
  // message stream.
  activations = pipeline->split(0, pipeline->rank(), pipeline->name() + ".pipeline_activations");
  gradients = pipeline->split(0, pipeline->rank(), pipeline->name() + ".pipeline_gradients");
}

PipelineChannels::PipelineChannels(std::shared_ptr<Communicator> pp_group,
                                   std::shared_ptr<Communicator> activation_group,
                                   std::shared_ptr<Communicator> gradient_group)
    : pipeline(std::move(pp_group)), activations(std::move(activation_group)), gradients(std::move(gradient_group)) {}

namespace {

// Keyed by the group's address; the weak pointer tells a live group from a later one that
// reuses a destroyed group's address. The cache itself is never destroyed: a group freed among
// the static destructors at exit could touch MPI backend state that is already gone (and
// parallel::finalize has shut every live group down before then).
struct CachedChannels {
  std::weak_ptr<Communicator> pipeline;
  std::shared_ptr<Communicator> activations, gradients;
};
struct ChannelCache {
  std::mutex mutex;
  std::map<const Communicator*, CachedChannels> entries;
};

ChannelCache& channel_cache() {
  static ChannelCache* cache = new ChannelCache;
  return *cache;
}

}  // namespace

PipelineChannels PipelineChannels::for_group(const std::shared_ptr<Communicator>& pp_group) {
  KILN_CHECK(pp_group != nullptr, "PipelineChannels::for_group: the pipeline group is null");
  ChannelCache& cache = channel_cache();
  std::lock_guard lock(cache.mutex);
  std::erase_if(cache.entries, [](const auto& entry) { return entry.second.pipeline.expired(); });
  auto found = cache.entries.find(pp_group.get());
  if (found != cache.entries.end()) {
    return PipelineChannels(pp_group, found->second.activations, found->second.gradients);
  }
  PipelineChannels channels(pp_group);
  cache.entries.emplace(pp_group.get(), CachedChannels{pp_group, channels.activations, channels.gradients});
  return channels;
}

PipelineChannel::PipelineChannel(std::string what, std::shared_ptr<Communicator> group, int destination, int source,
                                 int64_t receives, Shape shape, TensorOptions options)
    : what_(std::move(what)),
      group_(std::move(group)),
      destination_(destination),
      source_(source),
      receives_left_(receives),
      shape_(std::move(shape)),
      options_(options) {
  post_receive();
}

void PipelineChannel::send(const Tensor& tensor) {
  KILN_CHECK(tensor.sizes() == shape_, "pipeline ", what_, ": sending shape ", shape_str(tensor.sizes()),
             " but the channel carries ", shape_str(shape_));
  if (!group_) {
    loopback_.push_back(tensor);
    return;
  }
  release_finished_sends();
  sends_.emplace_back(group_->send_async(tensor, destination_), tensor);
}

Tensor PipelineChannel::receive() {
  if (!group_) {
    // The schedules never receive before the matching send (tests/parallel/test_pipeline_schedule.cpp
    // simulates every order), so an empty queue is a bug in the schedule, not in the caller.
    KILN_CHECK(!loopback_.empty(), "pipeline ", what_, ": receive before any send on a pipeline of one rank");
    Tensor message = loopback_.front();
    loopback_.pop_front();
    return message;
  }
  KILN_CHECK(next_buffer_.defined(), "pipeline ", what_, ": more receives than the schedule expects");
  next_receive_.wait();
  Tensor message = next_buffer_;
  next_buffer_ = Tensor();
  post_receive();
  release_finished_sends();
  return message;
}

void PipelineChannel::finish() {
  for (auto& [handle, buffer] : sends_) handle.wait();
  sends_.clear();
  if (!group_) {
    KILN_CHECK(loopback_.empty(), "pipeline ", what_, ": ", loopback_.size(), " messages were sent but never received");
    return;
  }
  KILN_CHECK(!next_buffer_.defined() && receives_left_ == 0, "pipeline ", what_, ": ",
             receives_left_ + (next_buffer_.defined() ? 1 : 0), " expected messages were never received");
}

void PipelineChannel::post_receive() {
  if (!group_ || receives_left_ == 0) return;
  --receives_left_;
  next_buffer_ = empty(shape_, options_);
  next_receive_ = group_->recv_async(next_buffer_, source_);
}

// Frees the buffers of completed sends as the step goes, so that a sent activation's memory
// goes with its backward rather than at the end of the step.
void PipelineChannel::release_finished_sends() {
  std::erase_if(sends_, [](const auto& send) {
    if (!send.first.is_completed()) return false;
    send.first.wait();  // does not block; rethrows the send's error, if any
    return true;
  });
}

}  // namespace kiln::parallel

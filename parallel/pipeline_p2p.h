// Point-to-point traffic of a pipeline step (pipeline_schedule.h): the two groups it sends on
// and one direction of messages over either of them.
//
// Messages between two ranks of one communicator match in send order, with no tags, and an
// activation and a gradient have the same shape: on one group a gradient could be taken for
// an activation (at p = 2 both flow between the same two ranks). So activations travel on one
// group and gradients on another, both split from the pipeline group, and each rank's order of
// sends on a group must equal its peer's order of receives, which pipeline_schedule.cpp shows.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>

#include "autograd/tensor.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

struct PipelineChannels {
  std::shared_ptr<Communicator> pipeline;     // the pipeline group itself (losses are broadcast on it)
  std::shared_ptr<Communicator> activations;  // forward: virtual stage s -> s + 1
  std::shared_ptr<Communicator> gradients;    // backward: virtual stage s -> s - 1

  // Collective over pp_group (two splits): every rank makes its channels at the same point.
  // At group size 1 nothing is split (a step on one rank sends nothing).
  explicit PipelineChannels(std::shared_ptr<Communicator> pp_group);

  // From groups split earlier (each a copy of pp_group's ranks in the same order).
  PipelineChannels(std::shared_ptr<Communicator> pp_group, std::shared_ptr<Communicator> activation_group,
                   std::shared_ptr<Communicator> gradient_group);

  // The channels of pp_group from a process-wide cache, split on the first call for that group
  // (collectively: every rank's first step on a group is at the same point). The cache holds
  // the split groups, not pp_group: they are dropped by the first call after pp_group is
  // destroyed. It is keyed by the group object, never by its name.
  static PipelineChannels for_group(const std::shared_ptr<Communicator>& pp_group);
};

// One direction of messages on this rank: sends go to `destination`, receives come from
// `source`, over `group`. The number of receives the step will make is known, so the next one
// is always posted ahead (one buffer) and its transfer overlaps compute. Sends are async: their
// buffers are kept until they complete, and finish() waits for all of them. A null group is
// the pipeline of one rank, where every message goes to this rank and passes through a queue.
class PipelineChannel {
 public:
  PipelineChannel(std::string what, std::shared_ptr<Communicator> group, int destination, int source,
                  int64_t receives, Shape shape, TensorOptions options);
  PipelineChannel(const PipelineChannel&) = delete;
  PipelineChannel& operator=(const PipelineChannel&) = delete;

  // tensor (shape, contiguous): sent as is; do not write to it afterwards.
  void send(const Tensor& tensor);
  // The next message from source (shape), waiting for it; a fresh tensor without autograd.
  Tensor receive();
  // Waits for every send; throws if a receive the step expected was never taken.
  void finish();

 private:
  void post_receive();
  void release_finished_sends();

  std::string what_;
  std::shared_ptr<Communicator> group_;
  int destination_, source_;
  int64_t receives_left_;
  Shape shape_;
  TensorOptions options_;
  std::deque<std::pair<WorkHandle, Tensor>> sends_;  // in flight, with the buffer each reads
  WorkHandle next_receive_;
  Tensor next_buffer_;
  std::deque<Tensor> loopback_;  // the pipeline of one rank
};

}  // namespace kiln::parallel

// Pipeline-parallel schedules: GPipe, 1F1B and interleaved 1F1B as one function,
// run_pipeline_step, around the user's forward_step (Huang et al., GPipe, 2019; Narayanan et al.,
// "Efficient Large-Scale Language Model Training on GPU Clusters Using Megatron-LM", 2021).
//
// The model is cut into p * v virtual stages; rank r of the pipeline group (p ranks) holds v
// chunks, chunk c being virtual stage c * p + r. A step runs every micro-batch's forward and
// backward through all stages, in an order fixed by the schedule:
//
//   gpipe        every forward (micro-batch order), then every backward: m activations in flight
//   1f1b         min(p - r - 1, m) warm-up forwards, then one forward / one backward, then the
//                remaining backwards: at most min(p - r, m) in flight, the same bubble as GPipe
//   interleaved  Megatron's 1F1B over v chunks per rank: bubble (p - 1) / (m v), needs m % p == 0
//
//   forward_step(chunk, microbatch, input) -> output
//     input   undefined on virtual stage 0; elsewhere the activation received from the previous
//             virtual stage: a fresh leaf (activation_shape, dtype) with requires_grad
//     output  on the last virtual stage (p v - 1) the micro-batch's scalar loss, backpropagated as
//             is (so the caller divides by microbatches); elsewhere the activation (activation_shape)
//             sent to the next virtual stage
//
// The backward of a non-last stage is output.backward(gradient received from the next stage),
// after which input.grad goes to the previous stage. Parameter gradients accumulate over the
// micro-batches; the optimizer step is the caller's. Activations travel on their own group and
// gradients on another (pipeline_p2p.h), so the two streams never match each other's messages.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/tensor.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

struct PipelineChannels;

enum class PipelineSchedule { gpipe, one_forward_one_backward, interleaved };

// "gpipe", "1f1b", "interleaved".
const char* pipeline_schedule_name(PipelineSchedule schedule);
// The inverse of pipeline_schedule_name; an unknown name is an error listing the valid ones.
PipelineSchedule parse_pipeline_schedule(const std::string& name);

struct PipelineOptions {
  PipelineSchedule schedule = PipelineSchedule::one_forward_one_backward;
  int64_t microbatches = 1;
  int virtual_stages = 1;                 // model chunks per rank; > 1 only with interleaved
  std::vector<int64_t> activation_shape;  // what passes between stages, the same for every micro-batch and chunk
  DType dtype = DType::f32;
  Device device = Device::cpu();          // where activations, gradients and the losses live

  PipelineOptions& with_schedule(PipelineSchedule value) { schedule = value; return *this; }
  PipelineOptions& with_microbatches(int64_t value) { microbatches = value; return *this; }
  PipelineOptions& with_virtual_stages(int value) { virtual_stages = value; return *this; }
  PipelineOptions& with_activation_shape(std::vector<int64_t> value) {
    activation_shape = std::move(value);
    return *this;
  }
  PipelineOptions& with_dtype(DType value) { dtype = value; return *this; }
  PipelineOptions& with_device(Device value) { device = value; return *this; }
};

// Throws kiln::Error naming the bad option unless `options` can run on `pipeline_size` ranks.
void validate_pipeline_options(const PipelineOptions& options, int pipeline_size);

// One entry of a rank's schedule: the forward or the backward of (chunk, microbatch).
enum class PipelinePass { forward, backward };
struct PipelineAction {
  PipelinePass pass = PipelinePass::forward;
  int chunk = 0;
  int64_t microbatch = 0;
  bool operator==(const PipelineAction&) const = default;
};

// The order in which rank `rank` of a pipeline of `pipeline_size` ranks runs its forwards and
// backwards under `options` (validated): m v forwards and m v backwards. Every rank runs its
// forwards in the same (chunk, microbatch) order, and its backwards too; only how the two
// interleave depends on the rank. This is what run_pipeline_step executes.
std::vector<PipelineAction> pipeline_actions(const PipelineOptions& options, int pipeline_size, int rank);

using PipelineForwardStep = std::function<Tensor(int chunk, int64_t microbatch, const Tensor& input)>;

struct PipelineStepResult {
  std::vector<double> losses;   // per micro-batch as forward_step returned it, on every rank (from the last stage)
  double seconds = 0;           // wall time of the step on this rank
  double compute_seconds = 0;   // time inside forward_step and inside backward on this rank
  // (seconds - compute_seconds) / compute_seconds: the share of idle (and communication) time.
  double bubble_fraction() const;
  int64_t max_in_flight = 0;    // most micro-batch forwards (over all chunks) whose backward had not yet run
  // Peak of options.device's allocator during the step minus its current bytes at the start
  // (the step resets that allocator's peak counter when it starts).
  int64_t peak_bytes = 0;
};

// Runs forward and backward of every micro-batch in the schedule's order. Collective over
// pp_group: every rank calls it with the same options. The first call for a pp_group splits it
// into its channels (PipelineChannels::for_group); pass PipelineChannels to manage them yourself.
// Bad options throw on every rank before anything is sent; an error inside a step (in
// forward_step, or a wrong output) throws on its rank only and leaves the peers waiting, which
// the group's watchdog ends.
PipelineStepResult run_pipeline_step(const PipelineOptions& options, const std::shared_ptr<Communicator>& pp_group,
                                     const PipelineForwardStep& forward_step);
PipelineStepResult run_pipeline_step(const PipelineOptions& options, const PipelineChannels& channels,
                                     const PipelineForwardStep& forward_step);

// The predicted bubble: (p - 1) / m, or (p - 1) / (m v) for interleaved.
double predicted_bubble_fraction(const PipelineOptions& options, int pipeline_size);

}  // namespace kiln::parallel

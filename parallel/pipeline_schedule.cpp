// Pipeline schedules (see pipeline_schedule.h): each schedule as a list of actions per rank,
// then one executor that runs any such list, sending activations and gradients between stages.
//
// Why every channel's messages match without tags. Every rank runs its forwards in one global
// sequence F of (chunk, microbatch) and its backwards in one global sequence B
// (pipeline_actions below); only how F and B interleave depends on the rank. A rank sends on a
// channel in the order of its own actions and its peer receives in the order of the peer's
// actions, so on each (sender, receiver) pair both orders are F (or B) filtered:
//   activations r -> r + 1 (r < p - 1): r sends after every forward (none of its chunks is the
//     last stage) and r + 1 receives before every forward (none of its chunks is stage 0), chunk
//     for chunk: both are all of F.
//   activations p - 1 -> 0 (interleaved, v > 1): p - 1 sends after the forwards of chunks
//     c < v - 1, which rank 0 receives before chunk c + 1. F runs micro-batches in groups of p:
//     in group g, chunk 0 for micro-batches g p .. g p + p - 1, then chunk 1 for the same, up to
//     chunk v - 1. Dropping chunk v - 1 and adding one to each chunk gives exactly F without
//     chunk 0, which is the order rank 0 receives in.
//   gradients r -> r - 1 and 0 -> p - 1 mirror this with B, whose chunks run from v - 1 down to
//     0 in each group.
// At p = 2 the next and the previous rank are the same rank; the two channels keep the
// activation and gradient streams apart. Deadlock freedom (no rank waits for a message its peer
// can only send after a message from the waiting rank) holds for these orders with sends that
// never block; tests/parallel/test_pipeline_schedule.cpp simulates every schedule to show it.
#include "parallel/pipeline_schedule.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>

#include "autograd/ops.h"
#include "kernels/allocator.h"
#include "parallel/pipeline_p2p.h"

namespace kiln::parallel {

const char* pipeline_schedule_name(PipelineSchedule schedule) {
  switch (schedule) {
    case PipelineSchedule::gpipe: return "gpipe";
    case PipelineSchedule::one_forward_one_backward: return "1f1b";
    case PipelineSchedule::interleaved: return "interleaved";
  }
  KILN_FAIL("pipeline_schedule_name: unknown schedule value ", static_cast<int>(schedule));
}

PipelineSchedule parse_pipeline_schedule(const std::string& name) {
  for (PipelineSchedule schedule :
       {PipelineSchedule::gpipe, PipelineSchedule::one_forward_one_backward, PipelineSchedule::interleaved}) {
    if (name == pipeline_schedule_name(schedule)) return schedule;
  }
  KILN_FAIL("parse_pipeline_schedule: unknown schedule '", name, "' (expected gpipe, 1f1b or interleaved)");
}

void validate_pipeline_options(const PipelineOptions& options, int pipeline_size) {
  const char* schedule = pipeline_schedule_name(options.schedule);
  KILN_CHECK(pipeline_size >= 1, "pipeline: the pipeline size must be >= 1, got ", pipeline_size);
  KILN_CHECK(options.microbatches >= 1, "pipeline: microbatches must be >= 1, got ", options.microbatches);
  KILN_CHECK(options.virtual_stages >= 1, "pipeline: virtual_stages must be >= 1, got ", options.virtual_stages);
  KILN_CHECK(options.virtual_stages == 1 || options.schedule == PipelineSchedule::interleaved,
             "pipeline: virtual_stages ", options.virtual_stages, " needs the interleaved schedule (schedule is ",
             schedule, ")");
  KILN_CHECK(!options.activation_shape.empty(),
             "pipeline: activation_shape is empty (set the shape of what passes between stages)");
  for (int64_t size : options.activation_shape) {
    KILN_CHECK(size >= 0, "pipeline: activation_shape ", shape_str(options.activation_shape), " has a negative size");
  }
  KILN_CHECK(options.schedule != PipelineSchedule::interleaved || options.microbatches % pipeline_size == 0,
             "pipeline: the interleaved schedule needs microbatches (", options.microbatches,
             ") divisible by the pipeline size (", pipeline_size, ")");
}

// Megatron-LM's forward_backward_pipelining_without_interleaving (v = 1) and _with_interleaving:
// the k-th forward and the k-th backward of every rank are fixed; a rank's warm-up count (how
// many forwards run before the first backward) sets how they interleave.
std::vector<PipelineAction> pipeline_actions(const PipelineOptions& options, int pipeline_size, int rank) {
  validate_pipeline_options(options, pipeline_size);
  KILN_CHECK(rank >= 0 && rank < pipeline_size, "pipeline_actions: rank ", rank, " is not in a pipeline of ",
             pipeline_size, " ranks");
  const int64_t p = pipeline_size, v = options.virtual_stages, total = options.microbatches * v;
  // Micro-batches go in groups of p through chunk 0, then chunk 1, ... (for v = 1: k itself).
  auto action = [&](PipelinePass pass, int64_t k) {
    const int64_t chunk = (k % (p * v)) / p;
    return PipelineAction{pass, static_cast<int>(pass == PipelinePass::forward ? chunk : v - 1 - chunk),
                          (k / (p * v)) * p + k % p};
  };
  int64_t warmup = 0;
  switch (options.schedule) {
    case PipelineSchedule::gpipe: warmup = total; break;
    case PipelineSchedule::one_forward_one_backward: warmup = std::min(p - rank - 1, total); break;
    case PipelineSchedule::interleaved: warmup = std::min((p - rank - 1) * 2 + (v - 1) * p, total); break;
  }
  std::vector<PipelineAction> actions;
  actions.reserve(static_cast<size_t>(2 * total));
  for (int64_t k = 0; k < warmup; ++k) actions.push_back(action(PipelinePass::forward, k));
  for (int64_t k = 0; k < total - warmup; ++k) {
    actions.push_back(action(PipelinePass::forward, k + warmup));
    actions.push_back(action(PipelinePass::backward, k));
  }
  for (int64_t k = total - warmup; k < total; ++k) actions.push_back(action(PipelinePass::backward, k));
  return actions;
}

double PipelineStepResult::bubble_fraction() const {
  return compute_seconds > 0 ? (seconds - compute_seconds) / compute_seconds : 0.0;
}

double predicted_bubble_fraction(const PipelineOptions& options, int pipeline_size) {
  validate_pipeline_options(options, pipeline_size);
  return static_cast<double>(pipeline_size - 1) /
         static_cast<double>(options.microbatches * options.virtual_stages);
}

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One rank's step: the actions of pipeline_actions, run in order.
class PipelineStepRun {
 public:
  PipelineStepRun(const PipelineOptions& options, const PipelineChannels& channels,
                  const PipelineForwardStep& forward_step, const std::vector<PipelineAction>& actions)
      : options_(options),
        forward_step_(forward_step),
        p_(channels.pipeline->size()),
        rank_(channels.pipeline->rank()),
        last_stage_(p_ * options.virtual_stages - 1),
        tensor_options_(TensorOptions(options.dtype).device(options.device)),
        activations_("activations", channels.activations, (rank_ + 1) % p_, (rank_ + p_ - 1) % p_,
                     count(actions, PipelinePass::forward, [&](int stage) { return stage != 0; }),
                     options.activation_shape, tensor_options_),
        gradients_("gradients", channels.gradients, (rank_ + p_ - 1) % p_, (rank_ + 1) % p_,
                   count(actions, PipelinePass::backward, [&](int stage) { return stage != last_stage_; }),
                   options.activation_shape, tensor_options_) {
    result_.losses.assign(static_cast<size_t>(options.microbatches), 0.0);
  }

  void run(const PipelineAction& action) {
    if (action.pass == PipelinePass::forward) {
      forward(action.chunk, action.microbatch);
    } else {
      backward(action.chunk, action.microbatch);
    }
  }

  // Waits for the sends; the result's losses are this rank's (broadcast by the caller).
  PipelineStepResult finish() {
    activations_.finish();
    gradients_.finish();
    return result_;
  }

 private:
  // A forward whose backward has not run: what the backward needs.
  struct InFlight {
    Tensor input;
    Tensor output;
  };

  int stage_of(int chunk) const { return chunk * p_ + rank_; }

  int64_t count(const std::vector<PipelineAction>& actions, PipelinePass pass, const std::function<bool(int)>& keep) {
    return std::count_if(actions.begin(), actions.end(),
                         [&](const PipelineAction& a) { return a.pass == pass && keep(stage_of(a.chunk)); });
  }

  void forward(int chunk, int64_t microbatch) {
    const int stage = stage_of(chunk);
    Tensor input;
    if (stage != 0) input = activations_.receive().set_requires_grad(true);
    const Clock::time_point start = Clock::now();
    Tensor output = forward_step_(chunk, microbatch, input);
    result_.compute_seconds += seconds_since(start);
    const auto where = detail::concat("run_pipeline_step: forward_step(chunk ", chunk, ", microbatch ", microbatch,
                                      ") on virtual stage ", stage, " of ", last_stage_ + 1);
    KILN_CHECK(output.defined(), where, " returned an undefined tensor");
    if (stage == last_stage_) {
      KILN_CHECK(output.numel() == 1, where, " (the last) must return the micro-batch's scalar loss, got shape ",
                 shape_str(output.sizes()));
      result_.losses[static_cast<size_t>(microbatch)] = output.item();
    } else {
      KILN_CHECK(output.sizes() == options_.activation_shape && output.dtype() == options_.dtype &&
                     output.device() == options_.device,
                 where, " returned ", shape_str(output.sizes()), " ", dtype_name(output.dtype()), " on ",
                 output.device().str(), " but activation_shape is ", shape_str(options_.activation_shape), " ",
                 dtype_name(options_.dtype), " on ", options_.device.str());
      activations_.send(output.detach().contiguous());
    }
    in_flight_.emplace(std::make_pair(chunk, microbatch), InFlight{input, output});
    result_.max_in_flight = std::max(result_.max_in_flight, static_cast<int64_t>(in_flight_.size()));
  }

  void backward(int chunk, int64_t microbatch) {
    const int stage = stage_of(chunk);
    auto found = in_flight_.find({chunk, microbatch});
    KILN_CHECK(found != in_flight_.end(), "run_pipeline_step: backward of chunk ", chunk, ", microbatch ", microbatch,
               " before its forward");
    // Taken out of the map so that its activations are freed when this backward ends.
    InFlight pass = std::move(found->second);
    in_flight_.erase(found);
    Tensor gradient;
    if (stage != last_stage_) gradient = gradients_.receive();
    // An output that needs no gradient depends on no parameter and no input: every gradient
    // this backward would produce is zero.
    if (pass.output.requires_grad()) {
      const Clock::time_point start = Clock::now();
      pass.output.backward(gradient);
      result_.compute_seconds += seconds_since(start);
    }
    if (stage != 0) {
      Tensor input_gradient = pass.input.grad();
      if (!input_gradient.defined()) input_gradient = zeros(options_.activation_shape, tensor_options_);
      gradients_.send(input_gradient.detach().contiguous());
    }
  }

  const PipelineOptions& options_;
  const PipelineForwardStep& forward_step_;
  const int p_, rank_, last_stage_;
  const TensorOptions tensor_options_;
  PipelineChannel activations_;  // to the next virtual stage, from the previous one
  PipelineChannel gradients_;    // to the previous virtual stage, from the next one
  std::map<std::pair<int, int64_t>, InFlight> in_flight_;
  PipelineStepResult result_;
};

void check_channels(const PipelineChannels& channels) {
  KILN_CHECK(channels.pipeline != nullptr, "run_pipeline_step: the pipeline group is null");
  const int p = channels.pipeline->size();
  if (p == 1) return;
  for (const auto& channel : {channels.activations, channels.gradients}) {
    KILN_CHECK(channel != nullptr && channel->size() == p && channel->rank() == channels.pipeline->rank(),
               "run_pipeline_step: the channels were not split from ", channels.pipeline->describe(),
               " (make them with PipelineChannels(pp_group))");
  }
}

}  // namespace

PipelineStepResult run_pipeline_step(const PipelineOptions& options, const std::shared_ptr<Communicator>& pp_group,
                                     const PipelineForwardStep& forward_step) {
  KILN_CHECK(pp_group != nullptr, "run_pipeline_step: the pipeline group is null");
  // Before the collective split, so that a bad call throws alike on every rank.
  validate_pipeline_options(options, pp_group->size());
  KILN_CHECK(forward_step != nullptr, "run_pipeline_step: forward_step is empty");
  return run_pipeline_step(options, PipelineChannels::for_group(pp_group), forward_step);
}

PipelineStepResult run_pipeline_step(const PipelineOptions& options, const PipelineChannels& channels,
                                     const PipelineForwardStep& forward_step) {
  check_channels(channels);
  KILN_CHECK(forward_step != nullptr, "run_pipeline_step: forward_step is empty");
  Communicator& group = *channels.pipeline;
  const std::vector<PipelineAction> actions = pipeline_actions(options, group.size(), group.rank());

  const Clock::time_point start = Clock::now();
  const int64_t bytes_at_start = memory_stats(options.device).current_bytes;
  reset_peak_memory(options.device);
  PipelineStepResult result;
  {
    PipelineStepRun step(options, channels, forward_step, actions);
    for (const PipelineAction& action : actions) step.run(action);
    result = step.finish();
  }
  // The losses exist on the last stage's rank (p - 1) only.
  Tensor losses = from_vector(result.losses, {options.microbatches}, TensorOptions(DType::f64)).to(options.device);
  group.broadcast(losses, group.size() - 1);
  result.losses = losses.to_vector<double>();
  result.peak_bytes = memory_stats(options.device).peak_bytes - bytes_at_start;
  result.seconds = seconds_since(start);
  return result;
}

}  // namespace kiln::parallel

// Learning-rate schedules: each is a function of the optimizer step (0 = the first update)
// giving a factor that multiplies every group's base lr, so groups with different lrs keep
// their ratio. apply() writes base_lr(group) * factor(step) into each group before a step:
//
//   auto schedule = optim::cosine_schedule(/*warmup_steps=*/100, /*total_steps=*/5000, /*min_factor=*/0.1);
//   for (int64_t step = 0; step < 5000; ++step) {
//     schedule.apply(optimizer, step);
//     ... forward, backward ...
//     optimizer.step();
//   }
//
// Warmup is linear and never zero: factor = (step + 1) / warmup_steps for step < warmup_steps,
// the same values as torch's LinearLR(start_factor=1/warmup_steps, total_iters=warmup_steps-1).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>

#include "optim/optimizer.h"

namespace kiln::optim {

class LrSchedule {
 public:
  LrSchedule(std::string description, std::function<double(int64_t step)> factor);

  // The multiplier of the base lr at `step` (>= 0).
  double factor(int64_t step) const;
  double lr(double base_lr, int64_t step) const { return base_lr * factor(step); }
  // Sets every group's lr to base_lr(group) * factor(step).
  void apply(Optimizer& optimizer, int64_t step) const;
  // E.g. "cosine(warmup_steps=100, total_steps=5000, min_factor=0.1)".
  const std::string& description() const { return description_; }

 private:
  std::string description_;
  std::function<double(int64_t)> factor_;
};

// 1 at every step.
LrSchedule constant_schedule();
// Linear warmup to 1 over warmup_steps, then 1.
LrSchedule linear_warmup_schedule(int64_t warmup_steps);
// Warmup, then half a cosine from 1 at step warmup_steps down to min_factor at total_steps,
// then min_factor. With warmup_steps = 0 this is torch's CosineAnnealingLR(T_max=total_steps,
// eta_min=min_factor * base_lr) up to T_max.
LrSchedule cosine_schedule(int64_t warmup_steps, int64_t total_steps, double min_factor = 0.0);
// Warmup, then a straight line from 1 at warmup_steps to end_factor at total_steps, then
// end_factor (torch's LinearLR(1, end_factor, total_steps) when warmup_steps = 0).
LrSchedule linear_decay_schedule(int64_t warmup_steps, int64_t total_steps, double end_factor = 0.0);
// Warmup, then gamma^((step - warmup_steps) / step_size) (integer division; torch's StepLR when
// warmup_steps = 0).
LrSchedule step_decay_schedule(int64_t step_size, double gamma, int64_t warmup_steps = 0);

enum class DecayShape { linear, cosine };
// Warmup-stable-decay: warmup over warmup_steps, 1 for stable_steps, then decay to min_factor
// over decay_steps (reached at step warmup_steps + stable_steps + decay_steps), then min_factor.
LrSchedule warmup_stable_decay_schedule(int64_t warmup_steps, int64_t stable_steps, int64_t decay_steps,
                                        double min_factor = 0.0, DecayShape shape = DecayShape::linear);

// A schedule from a config object, e.g. {"type": "cosine", "warmup_steps": 100,
// "total_steps": 5000, "min_factor": 0.1}. Types: constant, linear_warmup, cosine,
// linear_decay, step_decay, warmup_stable_decay (with "shape": "linear" or "cosine"). Unknown
// types or keys and missing required keys are errors naming `path`.
LrSchedule schedule_from_json(const nlohmann::json& json, const std::string& path = "schedule");

}  // namespace kiln::optim

// The learning-rate schedules: argument checks, the factor formulas and config parsing.
#include "optim/schedule.h"

#include <cmath>
#include <numbers>
#include <sstream>
#include <type_traits>
#include <utility>

#include "autograd/json_reader.h"

namespace kiln::optim {
namespace {

// (step + 1) / warmup_steps during warmup, or nothing after it.
bool in_warmup(int64_t step, int64_t warmup_steps, double& factor) {
  if (step >= warmup_steps) return false;
  factor = static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  return true;
}

// How far `step` is through [start, start + length], clamped to [0, 1].
double progress(int64_t step, int64_t start, int64_t length) {
  double fraction = static_cast<double>(step - start) / static_cast<double>(length);
  return std::min(1.0, std::max(0.0, fraction));
}

double cosine_between(double min_factor, double fraction) {
  return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + std::cos(std::numbers::pi * fraction));
}

void check_steps(const char* schedule, const char* what, int64_t value, int64_t low) {
  KILN_CHECK(value >= low, schedule, ": invalid ", what, " ", value, " (expected >= ", low, ")");
}

void check_factor(const char* schedule, const char* what, double value) {
  KILN_CHECK(value >= 0 && std::isfinite(value), schedule, ": invalid ", what, " ", format_value(value),
             " (expected a finite value >= 0)");
}

// Doubles print in their shortest round-trip form.
template <typename Part>
void append(std::ostringstream& out, const Part& part) {
  if constexpr (std::is_floating_point_v<Part>) {
    out << format_value(part);
  } else {
    out << part;
  }
}

template <typename... Parts>
std::string describe(const Parts&... parts) {
  std::ostringstream out;
  (append(out, parts), ...);
  return out.str();
}

}  // namespace

LrSchedule::LrSchedule(std::string description, std::function<double(int64_t)> factor)
    : description_(std::move(description)), factor_(std::move(factor)) {
  KILN_CHECK(factor_ != nullptr, "LrSchedule ", description_, ": no factor function given");
}

double LrSchedule::factor(int64_t step) const {
  KILN_CHECK(step >= 0, "LrSchedule ", description_, ": step ", step, " is negative");
  return factor_(step);
}

void LrSchedule::apply(Optimizer& optimizer, int64_t step) const {
  double multiplier = factor(step);
  for (size_t g = 0; g < optimizer.group_count(); ++g) optimizer.set_lr(g, optimizer.base_lr(g) * multiplier);
}

LrSchedule constant_schedule() {
  return LrSchedule("constant", [](int64_t) { return 1.0; });
}

LrSchedule linear_warmup_schedule(int64_t warmup_steps) {
  check_steps("linear_warmup_schedule", "warmup_steps", warmup_steps, 1);
  return LrSchedule(describe("linear_warmup(warmup_steps=", warmup_steps, ")"), [=](int64_t step) {
    double factor = 1.0;
    in_warmup(step, warmup_steps, factor);
    return factor;
  });
}

LrSchedule cosine_schedule(int64_t warmup_steps, int64_t total_steps, double min_factor) {
  check_steps("cosine_schedule", "warmup_steps", warmup_steps, 0);
  check_steps("cosine_schedule", "total_steps", total_steps, warmup_steps + 1);
  check_factor("cosine_schedule", "min_factor", min_factor);
  return LrSchedule(describe("cosine(warmup_steps=", warmup_steps, ", total_steps=", total_steps,
                             ", min_factor=", min_factor, ")"),
                    [=](int64_t step) {
                      double factor;
                      if (in_warmup(step, warmup_steps, factor)) return factor;
                      return cosine_between(min_factor, progress(step, warmup_steps, total_steps - warmup_steps));
                    });
}

LrSchedule linear_decay_schedule(int64_t warmup_steps, int64_t total_steps, double end_factor) {
  check_steps("linear_decay_schedule", "warmup_steps", warmup_steps, 0);
  check_steps("linear_decay_schedule", "total_steps", total_steps, warmup_steps + 1);
  check_factor("linear_decay_schedule", "end_factor", end_factor);
  return LrSchedule(describe("linear_decay(warmup_steps=", warmup_steps, ", total_steps=", total_steps,
                             ", end_factor=", end_factor, ")"),
                    [=](int64_t step) {
                      double factor;
                      if (in_warmup(step, warmup_steps, factor)) return factor;
                      return 1.0 + (end_factor - 1.0) * progress(step, warmup_steps, total_steps - warmup_steps);
                    });
}

LrSchedule step_decay_schedule(int64_t step_size, double gamma, int64_t warmup_steps) {
  check_steps("step_decay_schedule", "step_size", step_size, 1);
  check_factor("step_decay_schedule", "gamma", gamma);
  check_steps("step_decay_schedule", "warmup_steps", warmup_steps, 0);
  return LrSchedule(describe("step_decay(step_size=", step_size, ", gamma=", gamma, ", warmup_steps=", warmup_steps,
                             ")"),
                    [=](int64_t step) {
                      double factor;
                      if (in_warmup(step, warmup_steps, factor)) return factor;
                      return std::pow(gamma, static_cast<double>((step - warmup_steps) / step_size));
                    });
}

LrSchedule warmup_stable_decay_schedule(int64_t warmup_steps, int64_t stable_steps, int64_t decay_steps,
                                        double min_factor, DecayShape shape) {
  check_steps("warmup_stable_decay_schedule", "warmup_steps", warmup_steps, 0);
  check_steps("warmup_stable_decay_schedule", "stable_steps", stable_steps, 0);
  check_steps("warmup_stable_decay_schedule", "decay_steps", decay_steps, 1);
  check_factor("warmup_stable_decay_schedule", "min_factor", min_factor);
  return LrSchedule(describe("warmup_stable_decay(warmup_steps=", warmup_steps, ", stable_steps=", stable_steps,
                             ", decay_steps=", decay_steps, ", min_factor=", min_factor, ", shape=",
                             shape == DecayShape::linear ? "linear" : "cosine", ")"),
                    [=](int64_t step) {
                      double factor;
                      if (in_warmup(step, warmup_steps, factor)) return factor;
                      double fraction = progress(step, warmup_steps + stable_steps, decay_steps);
                      if (shape == DecayShape::cosine) return cosine_between(min_factor, fraction);
                      return 1.0 - (1.0 - min_factor) * fraction;
                    });
}

LrSchedule schedule_from_json(const nlohmann::json& json, const std::string& path) {
  JsonReader reader(json, path);
  std::string type;
  reader.require("type", type);
  int64_t warmup_steps = 0, total_steps = 0, step_size = 0, stable_steps = 0, decay_steps = 0;
  double min_factor = 0.0, end_factor = 0.0, gamma = 0.0;
  std::string shape = "linear";
  LrSchedule schedule = constant_schedule();
  if (type == "constant") {
  } else if (type == "linear_warmup") {
    reader.require("warmup_steps", warmup_steps);
    schedule = linear_warmup_schedule(warmup_steps);
  } else if (type == "cosine") {
    reader.read("warmup_steps", warmup_steps);
    reader.require("total_steps", total_steps);
    reader.read("min_factor", min_factor);
    schedule = cosine_schedule(warmup_steps, total_steps, min_factor);
  } else if (type == "linear_decay") {
    reader.read("warmup_steps", warmup_steps);
    reader.require("total_steps", total_steps);
    reader.read("end_factor", end_factor);
    schedule = linear_decay_schedule(warmup_steps, total_steps, end_factor);
  } else if (type == "step_decay") {
    reader.require("step_size", step_size);
    reader.require("gamma", gamma);
    reader.read("warmup_steps", warmup_steps);
    schedule = step_decay_schedule(step_size, gamma, warmup_steps);
  } else if (type == "warmup_stable_decay") {
    reader.read("warmup_steps", warmup_steps);
    reader.read("stable_steps", stable_steps);
    reader.require("decay_steps", decay_steps);
    reader.read("min_factor", min_factor);
    reader.read("shape", shape);
    KILN_CHECK(shape == "linear" || shape == "cosine", reader.where("shape"), ": unknown decay shape '", shape,
               "' (expected linear or cosine)");
    schedule = warmup_stable_decay_schedule(warmup_steps, stable_steps, decay_steps, min_factor,
                                            shape == "linear" ? DecayShape::linear : DecayShape::cosine);
  } else {
    KILN_FAIL(reader.where("type"), ": unknown schedule type '", type,
              "' (expected constant, linear_warmup, cosine, linear_decay, step_decay or warmup_stable_decay)");
  }
  reader.finish();
  return schedule;
}

}  // namespace kiln::optim

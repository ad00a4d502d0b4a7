// LR schedules: their formulas at every step, torch.optim.lr_scheduler's values where torch has
// the same schedule (one Python process for all of them), applying a schedule to an
// optimizer's groups, configs and errors.
//
// Tolerance against torch: 1e-12 relative (torch computes CosineAnnealingLR and StepLR
// recursively, step by step, so its values drift by a few ulps from the closed forms).
#include <catch2/catch.hpp>
#include <cmath>
#include <numbers>

#include "kiln.h"
#include "optim/optim.h"

using namespace kiln;
using Catch::Contains;
using json = nlohmann::json;

namespace kiln::testing {
// Defined in test_optim.cpp.
std::map<std::string, Tensor> run_torch_optim_reference(const json& manifest,
                                                        const std::map<std::string, Tensor>& tensors);
}  // namespace kiln::testing

namespace {

constexpr double kPi = std::numbers::pi;

double warmup(int64_t step, int64_t steps) { return static_cast<double>(step + 1) / static_cast<double>(steps); }

}  // namespace

TEST_CASE("schedules follow their formulas", "[schedule]") {
  using namespace optim;
  SECTION("constant and linear warmup") {
    LrSchedule constant = constant_schedule();
    LrSchedule linear = linear_warmup_schedule(8);
    for (int64_t step = 0; step < 30; ++step) {
      CHECK(constant.factor(step) == 1.0);
      CHECK(linear.factor(step) == Approx(step < 8 ? warmup(step, 8) : 1.0).epsilon(1e-15));
    }
    CHECK(linear.factor(0) == 0.125);
    CHECK(linear.factor(7) == 1.0);
  }
  SECTION("cosine with warmup") {
    LrSchedule cosine = cosine_schedule(10, 110, 0.1);
    for (int64_t step = 0; step < 130; ++step) {
      double expected = step < 10 ? warmup(step, 10)
                                  : 0.1 + 0.9 * 0.5 * (1 + std::cos(kPi * std::min(1.0, (step - 10) / 100.0)));
      CHECK(cosine.factor(step) == Approx(expected).epsilon(1e-14));
      if (step > 10) CHECK(cosine.factor(step) <= cosine.factor(step - 1));
    }
    CHECK(cosine.factor(10) == 1.0);
    CHECK(cosine.factor(60) == Approx(0.55).epsilon(1e-14));
    CHECK(cosine.factor(110) == Approx(0.1).epsilon(1e-14));
    CHECK(cosine.factor(1000) == Approx(0.1).epsilon(1e-14));
    CHECK(cosine.description() == "cosine(warmup_steps=10, total_steps=110, min_factor=0.1)");
  }
  SECTION("linear decay") {
    LrSchedule linear = linear_decay_schedule(4, 24, 0.2);
    for (int64_t step = 0; step < 40; ++step) {
      double expected = step < 4 ? warmup(step, 4) : 1.0 - 0.8 * std::min(1.0, (step - 4) / 20.0);
      CHECK(linear.factor(step) == Approx(expected).epsilon(1e-14));
    }
    CHECK(linear.factor(14) == Approx(0.6).epsilon(1e-14));
  }
  SECTION("step decay") {
    LrSchedule decay = step_decay_schedule(5, 0.5, 2);
    for (int64_t step = 0; step < 30; ++step) {
      double expected = step < 2 ? warmup(step, 2) : std::pow(0.5, (step - 2) / 5);
      CHECK(decay.factor(step) == Approx(expected).epsilon(1e-15));
    }
    CHECK(decay.factor(6) == 1.0);
    CHECK(decay.factor(7) == 0.5);
    CHECK(decay.factor(12) == 0.25);
  }
  SECTION("warmup-stable-decay, linear and cosine") {
    LrSchedule linear = warmup_stable_decay_schedule(5, 10, 20, 0.05);
    LrSchedule cosine = warmup_stable_decay_schedule(5, 10, 20, 0.05, DecayShape::cosine);
    for (int64_t step = 0; step < 50; ++step) {
      double fraction = std::min(1.0, std::max(0.0, (step - 15) / 20.0));
      double linear_expected = step < 5 ? warmup(step, 5) : 1.0 - 0.95 * fraction;
      double cosine_expected = step < 5 ? warmup(step, 5) : 0.05 + 0.95 * 0.5 * (1 + std::cos(kPi * fraction));
      CHECK(linear.factor(step) == Approx(linear_expected).epsilon(1e-14));
      CHECK(cosine.factor(step) == Approx(cosine_expected).epsilon(1e-14));
    }
    for (int64_t step = 5; step <= 15; ++step) CHECK(linear.factor(step) == 1.0);
    CHECK(linear.factor(25) == Approx(0.525).epsilon(1e-14));
    CHECK(linear.factor(35) == Approx(0.05).epsilon(1e-14));
    CHECK(cosine.factor(35) == Approx(0.05).epsilon(1e-14));
  }
}

TEST_CASE("schedules match torch.optim.lr_scheduler", "[schedule][parity]") {
  using namespace optim;
  struct Case {
    std::string name;
    LrSchedule schedule;
    json torch;
  };
  const double base = 0.3;
  std::vector<Case> cases = {
      {"cosine", cosine_schedule(0, 50, 0.1),
       {{"kind", "CosineAnnealingLR"}, {"kwargs", {{"T_max", 50}, {"eta_min", 0.1 * base}}}, {"steps", 51}}},
      {"linear_decay", linear_decay_schedule(0, 40, 0.05),
       {{"kind", "LinearLR"}, {"kwargs", {{"start_factor", 1.0}, {"end_factor", 0.05}, {"total_iters", 40}}},
        {"steps", 50}}},
      {"linear_warmup/LinearLR", linear_warmup_schedule(8),
       {{"kind", "LinearLR"}, {"kwargs", {{"start_factor", 1.0 / 8}, {"end_factor", 1.0}, {"total_iters", 7}}},
        {"steps", 20}}},
      {"linear_warmup/LambdaLR", linear_warmup_schedule(6),
       {{"kind", "LambdaLR-warmup"}, {"kwargs", {{"warmup_steps", 6}}}, {"steps", 15}}},
      {"step_decay", step_decay_schedule(7, 0.5),
       {{"kind", "StepLR"}, {"kwargs", {{"step_size", 7}, {"gamma", 0.5}}}, {"steps", 40}}},
      {"warmup+cosine", cosine_schedule(5, 30, 0.1),
       {{"kind", "SequentialLR"},
        {"kwargs",
         {{"kinds", {"LinearLR", "CosineAnnealingLR"}},
          {"kwargs", {{{"start_factor", 1.0 / 5}, {"end_factor", 1.0}, {"total_iters", 4}},
                      {{"T_max", 25}, {"eta_min", 0.1 * base}}}},
          {"milestones", {5}}}},
        {"steps", 31}}},
  };
  json manifest = {{"schedule", json::array()}};
  for (Case& c : cases) {
    c.torch["name"] = c.name;
    c.torch["base_lr"] = base;
    manifest["schedule"].push_back(c.torch);
  }
  std::map<std::string, Tensor> torch = kiln::testing::run_torch_optim_reference(manifest, {});
  for (const Case& c : cases) {
    INFO(c.name << ": " << c.schedule.description());
    REQUIRE(torch.count(c.name + "/lrs") == 1);
    std::vector<double> expected = torch.at(c.name + "/lrs").to_vector<double>();
    REQUIRE(static_cast<int64_t>(expected.size()) == c.torch["steps"].get<int64_t>());
    for (size_t step = 0; step < expected.size(); ++step) {
      INFO("step " << step);
      CHECK(std::abs(c.schedule.lr(base, static_cast<int64_t>(step)) - expected[step]) <= 1e-12 * expected[step]);
    }
  }
}

TEST_CASE("apply sets every group's lr from its base lr", "[schedule]") {
  using namespace optim;
  Tensor a = zeros({3}).set_requires_grad(true);
  Tensor b = zeros({2}).set_requires_grad(true);
  std::vector<ParamGroup> groups = {ParamGroup(NamedParameters{{"a", a, {}}}), ParamGroup(NamedParameters{{"b", b, {}}})};
  groups[1].lr = 0.01;
  SGD optimizer(groups, SGDOptions(0.1));
  LrSchedule schedule = linear_decay_schedule(2, 12, 0.0);
  for (int64_t step = 0; step < 15; ++step) {
    schedule.apply(optimizer, step);
    CHECK(optimizer.lr(0) == 0.1 * schedule.factor(step));
    CHECK(optimizer.lr(1) == 0.01 * schedule.factor(step));
  }
  CHECK(optimizer.lr(0) == 0.0);
  optimizer.set_base_lr(0, 1.0);
  schedule.apply(optimizer, 7);
  CHECK(optimizer.lr(0) == Approx(0.5).epsilon(1e-15));
}

TEST_CASE("schedules from JSON configs", "[schedule]") {
  using namespace optim;
  std::vector<std::pair<json, LrSchedule>> same = {
      {{{"type", "constant"}}, constant_schedule()},
      {{{"type", "linear_warmup"}, {"warmup_steps", 4}}, linear_warmup_schedule(4)},
      {{{"type", "cosine"}, {"warmup_steps", 3}, {"total_steps", 20}, {"min_factor", 0.1}}, cosine_schedule(3, 20, 0.1)},
      {{{"type", "linear_decay"}, {"total_steps", 20}, {"end_factor", 0.5}}, linear_decay_schedule(0, 20, 0.5)},
      {{{"type", "step_decay"}, {"step_size", 3}, {"gamma", 0.7}}, step_decay_schedule(3, 0.7)},
      {{{"type", "warmup_stable_decay"}, {"warmup_steps", 2}, {"stable_steps", 5}, {"decay_steps", 8}, {"shape", "cosine"}},
       warmup_stable_decay_schedule(2, 5, 8, 0.0, DecayShape::cosine)},
  };
  for (const auto& [config, direct] : same) {
    LrSchedule parsed = schedule_from_json(config);
    CHECK(parsed.description() == direct.description());
    for (int64_t step = 0; step < 25; ++step) CHECK(parsed.factor(step) == direct.factor(step));
  }
  CHECK_THROWS_WITH(schedule_from_json({{"type", "cosine"}, {"warmup_step", 3}, {"total_steps", 20}}),
                    Contains("schedule.warmup_step") && Contains("unknown key") && Contains("warmup_steps"));
  CHECK_THROWS_WITH(schedule_from_json({{"type", "cosine"}}), Contains("schedule.total_steps") && Contains("missing"));
  CHECK_THROWS_WITH(schedule_from_json({{"type", "exponential"}}, "train.schedule"),
                    Contains("train.schedule.type") && Contains("exponential"));
  CHECK_THROWS_WITH(schedule_from_json({{"type", "warmup_stable_decay"}, {"decay_steps", 3}, {"shape", "sqrt"}}),
                    Contains("schedule.shape") && Contains("sqrt"));
}

TEST_CASE("schedules reject bad arguments", "[schedule][errors]") {
  using namespace optim;
  CHECK_THROWS_WITH(linear_warmup_schedule(0), Contains("linear_warmup_schedule") && Contains("warmup_steps 0"));
  CHECK_THROWS_WITH(cosine_schedule(10, 10), Contains("cosine_schedule") && Contains("total_steps 10") &&
                                                 Contains(">= 11"));
  CHECK_THROWS_WITH(cosine_schedule(0, 10, -0.5), Contains("cosine_schedule") && Contains("min_factor -0.5"));
  CHECK_THROWS_WITH(linear_decay_schedule(-1, 10), Contains("linear_decay_schedule") && Contains("warmup_steps -1"));
  CHECK_THROWS_WITH(step_decay_schedule(0, 0.5), Contains("step_decay_schedule") && Contains("step_size 0"));
  CHECK_THROWS_WITH(step_decay_schedule(3, NAN), Contains("step_decay_schedule") && Contains("gamma nan"));
  CHECK_THROWS_WITH(warmup_stable_decay_schedule(1, 1, 0), Contains("warmup_stable_decay") && Contains("decay_steps 0"));
  CHECK_THROWS_WITH(constant_schedule().factor(-1), Contains("constant") && Contains("step -1"));
}

// Running an optimizer study: every (optimizer, grid point, seed) run of a StudyConfig on its
// task, each logging one JSONL file, with a progress line per evaluation:
//
//   [run 3/20] adam lr=0.001 seed=1 | step 150/470 | train loss 0.5123 | test loss 0.5410 acc 81.2% | 4.1s
//
// Training time (`seconds`) counts the optimizer steps only, not evaluations, so a study's
// evaluation cadence does not change its time-to-target. Everything a run computes is a function
// of the config and the seed; only the seconds differ between two runs of the same study.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "optim/schedule.h"
#include "train/study_config.h"
#include "train/study_tasks.h"

namespace kiln::train {

// The state of a run at one evaluation.
struct CurvePoint {
  int64_t step = 0;        // optimizer steps done
  double seconds = 0.0;    // training time so far (evaluations excluded)
  double train_loss = 0.0;      // mean minibatch loss since the previous evaluation
  double train_accuracy = 0.0;  // likewise, in [0, 1]
  double test_loss = 0.0;
  double test_accuracy = 0.0;
};

struct RunResult {
  RunSpec spec;
  std::vector<CurvePoint> curve;  // one point per evaluation
  bool diverged = false;          // stopped at a non-finite loss
  double seconds = 0.0;           // training time of the whole run
};

struct StudyResult {
  StudyConfig config;
  std::string task_description;
  int64_t steps = 0;  // optimizer steps per run
  std::vector<GridPoint> points;
  std::vector<RunResult> runs;
  double seconds = 0.0;  // wall time of the whole study, evaluations included
};

// The first evaluation at which `metric` ("train_loss" or "test_loss") is at or below `target`.
std::optional<CurvePoint> first_reaching(const std::vector<CurvePoint>& curve, const std::string& metric,
                                         double target);
// The value of `metric` (train_loss, train_accuracy, test_loss, test_accuracy) at `point`.
double metric_value(const CurvePoint& point, const std::string& metric);

// The study's lr schedule for runs of `steps` steps: a cosine or linear decay without
// total_steps ends with the run.
optim::LrSchedule study_schedule(const StudyConfig& config, int64_t steps);

// Runs the study, writing <out_dir>/runs/run_<index>.jsonl (a header record, then one record per
// evaluation). `progress` receives each progress line (no newline).
StudyResult run_study(const StudyConfig& config, const StudyTask& task, const std::filesystem::path& out_dir,
                      const std::function<void(const std::string&)>& progress);

}  // namespace kiln::train

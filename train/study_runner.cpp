// The study loop: for each run, a fresh model from its seed, the optimizer of its grid point,
// and a plain training loop with evaluations at the study's cadence.
#include "train/study_runner.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include "autograd/tensor.h"
#include "optim/optim.h"
#include "train/metrics_log.h"

namespace kiln::train {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string format_line(size_t index, size_t total, const std::string& optimizer, const std::string& label,
                        uint64_t seed, const CurvePoint& point, int64_t steps) {
  char text[320];
  std::snprintf(text, sizeof(text),
                "[run %zu/%zu] %s %s seed=%llu | step %lld/%lld | train loss %.4f | test loss %.4f acc %.1f%% | %.1fs",
                index + 1, total, optimizer.c_str(), label.c_str(), static_cast<unsigned long long>(seed),
                static_cast<long long>(point.step), static_cast<long long>(steps), point.train_loss, point.test_loss,
                100.0 * point.test_accuracy, point.seconds);
  return text;
}

nlohmann::json point_record(const CurvePoint& point) {
  return {{"step", point.step},
          {"seconds", point.seconds},
          {"train_loss", point.train_loss},
          {"train_accuracy", point.train_accuracy},
          {"test_loss", point.test_loss},
          {"test_accuracy", point.test_accuracy}};
}

RunResult run_one(const StudyConfig& config, const StudyTask& task, const GridPoint& point, const RunSpec& spec,
                  size_t total, int64_t steps, const optim::LrSchedule& schedule, MetricsLog& log,
                  const std::function<void(const std::string&)>& progress) {
  const StudyOptimizer& optimizer_config = config.optimizers[point.optimizer];
  RunResult result;
  result.spec = spec;
  std::unique_ptr<TaskRun> run = task.start(spec.seed, config.training.batch_size);
  NamedParameters parameters = run->parameters();
  std::unique_ptr<optim::Optimizer> optimizer = make_optimizer(optimizer_config.type, *point.options, parameters);
  log.write({{"run", spec.index},
             {"optimizer", optimizer_config.name},
             {"type", optimizer_config.type},
             {"hyperparameters", point.hyperparameters},
             {"options", point.options->to_json()},
             {"seed", spec.seed},
             {"steps", steps}});

  double loss_sum = 0.0;
  int64_t correct = 0, count = 0, since_eval = 0;
  for (int64_t step = 0; step < steps; ++step) {
    Clock::time_point start = Clock::now();
    schedule.apply(*optimizer, step);
    TrainStep train = run->train_step(step);
    double loss = train.loss.item();
    if (!std::isfinite(loss)) {
      result.diverged = true;
      result.seconds += seconds_since(start);
      CurvePoint last{step, result.seconds, loss, 0.0, loss, 0.0};
      result.curve.push_back(last);
      nlohmann::json record = point_record(last);
      record["diverged"] = true;
      log.write(record);
      break;
    }
    optimizer->zero_grad();
    train.loss.backward();
    if (config.training.grad_clip > 0) {
      optim::ClipGradNormOptions clip;
      clip.error_if_nonfinite = false;  // a non-finite loss ends the run at the next step's check
      optim::clip_grad_norm(parameters, config.training.grad_clip, clip);
    }
    optimizer->step();
    result.seconds += seconds_since(start);
    loss_sum += loss;
    correct += train.correct;
    count += train.count;
    ++since_eval;
    if ((step + 1) % config.eval_interval == 0 || step + 1 == steps) {
      Evaluation evaluation = run->evaluate();
      CurvePoint now{step + 1,
                     result.seconds,
                     loss_sum / static_cast<double>(since_eval),
                     static_cast<double>(correct) / static_cast<double>(count),
                     evaluation.loss,
                     evaluation.accuracy};
      result.curve.push_back(now);
      log.write(point_record(now));
      progress(format_line(spec.index, total, optimizer_config.name, point.label, spec.seed, now, steps));
      loss_sum = 0.0;
      correct = count = since_eval = 0;
    }
  }
  return result;
}

}  // namespace

std::optional<CurvePoint> first_reaching(const std::vector<CurvePoint>& curve, const std::string& metric,
                                         double target) {
  for (const CurvePoint& point : curve) {
    double value = metric_value(point, metric);
    if (std::isfinite(value) && value <= target) return point;
  }
  return std::nullopt;
}

double metric_value(const CurvePoint& point, const std::string& metric) {
  if (metric == "train_loss") return point.train_loss;
  if (metric == "train_accuracy") return point.train_accuracy;
  if (metric == "test_loss") return point.test_loss;
  if (metric == "test_accuracy") return point.test_accuracy;
  KILN_FAIL("metric_value: unknown metric '", metric, "' (expected train_loss, train_accuracy, test_loss or ",
            "test_accuracy)");
}

optim::LrSchedule study_schedule(const StudyConfig& config, int64_t steps) {
  nlohmann::json schedule = config.training.schedule;
  std::string type = schedule.value("type", std::string());
  if ((type == "cosine" || type == "linear_decay") && !schedule.contains("total_steps")) {
    schedule["total_steps"] = steps;
  }
  return optim::schedule_from_json(schedule, "training.schedule");
}

StudyResult run_study(const StudyConfig& config, const StudyTask& task, const std::filesystem::path& out_dir,
                      const std::function<void(const std::string&)>& progress) {
  Clock::time_point start = Clock::now();
  StudyResult study;
  study.config = config;
  study.task_description = task.description();
  study.steps = config.training.steps > 0 ? config.training.steps
                                          : config.training.epochs * task.steps_per_epoch(config.training.batch_size);
  KILN_CHECK(study.steps > 0, "training.epochs: ", config.training.epochs, " epoch(s) of batch_size ",
             config.training.batch_size, " make no optimizer steps on this task");
  study.points = expand_grid(config);
  std::vector<RunSpec> runs = expand_runs(config, study.points);
  optim::LrSchedule schedule = study_schedule(config, study.steps);
  for (const RunSpec& spec : runs) {
    char name[32];
    std::snprintf(name, sizeof(name), "run_%03zu.jsonl", spec.index);
    MetricsLog log(out_dir / "runs" / name, /*append=*/false);
    study.runs.push_back(
        run_one(config, task, study.points[spec.point], spec, runs.size(), study.steps, schedule, log, progress));
    if (study.runs.back().diverged) {
      progress("[run " + std::to_string(spec.index + 1) + "/" + std::to_string(runs.size()) + "] " +
               config.optimizers[study.points[spec.point].optimizer].name + " " + study.points[spec.point].label +
               " diverged (non-finite loss) at step " + std::to_string(study.runs.back().curve.back().step));
    }
  }
  study.seconds = seconds_since(start);
  return study;
}

}  // namespace kiln::train

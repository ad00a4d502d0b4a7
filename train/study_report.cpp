// Summaries of a finished study, results.csv and the Markdown report (plots: study_plots.cpp).
#include "train/study_report.h"

#include <cmath>
#include <cstdio>
#include <limits>
#include <sstream>


namespace kiln::train {

namespace {

constexpr double kInfinity = std::numeric_limits<double>::infinity();

std::string number(double value) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.6g", value);
  return text;
}

std::string csv_quoted(const std::string& text) {
  std::string quoted = "\"";
  for (char c : text) quoted += c == '"' ? std::string("\"\"") : std::string(1, c);
  return quoted + "\"";
}

// "0.4123 ± 0.0051" (or "-" when no seed gave a value); `percent` shows accuracies in %.
std::string mean_std(const Statistic& statistic, int digits = 4, bool percent = false) {
  if (statistic.count == 0) return "-";
  double scale = percent ? 100.0 : 1.0;
  char text[64];
  std::snprintf(text, sizeof(text), "%.*f ± %.*f%s", digits, statistic.mean * scale, digits, statistic.std * scale,
                percent ? "%" : "");
  return text;
}

std::string to_target(const StudyResult& study, const PointSummary& summary, bool seconds) {
  if (study.config.target.value <= 0) return "-";
  if (summary.reached_target == 0) return "not reached";
  const Statistic& statistic = seconds ? summary.seconds_to_target : summary.steps_to_target;
  std::string text = mean_std(statistic, seconds ? 1 : 0);
  if (seconds) text += " s";
  if (summary.reached_target < summary.seeds) {
    text += " (" + std::to_string(summary.reached_target) + "/" + std::to_string(summary.seeds) + " seeds)";
  }
  return text;
}

// The best point's value of one grid key as shown in tables: 0.001 rather than 0.0010000000000000002.
std::string grid_value(const nlohmann::json& value) {
  return value.is_number_float() ? number(value.get<double>()) : value.dump();
}

void grid_table(std::ostringstream& out, const StudyResult& study, const std::vector<PointSummary>& summaries,
                size_t optimizer) {
  const StudyOptimizer& config = study.config.optimizers[optimizer];
  std::vector<std::string> keys;
  for (const auto& [key, values] : config.grid.items()) keys.push_back(key);
  std::vector<const PointSummary*> rows;
  for (const PointSummary& summary : summaries) {
    if (study.points[summary.point].optimizer == optimizer) rows.push_back(&summary);
  }
  out << "\n### " << config.name << " (" << config.type << ")\n\n";
  if (config.options.size()) out << "Fixed options: `" << config.options.dump() << "`\n\n";
  if (keys.size() == 2) {
    // A matrix of mean final test loss: rows = the first key, columns = the second.
    const nlohmann::json& row_values = config.grid[keys[0]];
    const nlohmann::json& column_values = config.grid[keys[1]];
    out << "Mean final test loss; rows " << keys[0] << ", columns " << keys[1] << ".\n\n| " << keys[0] << " \\ "
        << keys[1] << " |";
    for (const auto& value : column_values) out << " " << grid_value(value) << " |";
    out << "\n| --- |";
    for (size_t c = 0; c < column_values.size(); ++c) out << " --- |";
    out << "\n";
    for (size_t r = 0; r < row_values.size(); ++r) {
      out << "| " << grid_value(row_values[r]) << " |";
      for (size_t c = 0; c < column_values.size(); ++c) {
        const PointSummary& cell = *rows[r * column_values.size() + c];
        out << " " << (cell.diverged ? std::string("diverged") : mean_std(cell.final_test_loss)) << " |";
      }
      out << "\n";
    }
    return;
  }
  out << "| hyperparameters | final train loss | final test loss | final test acc | steps to target | diverged |\n"
      << "| --- | --- | --- | --- | --- | --- |\n";
  for (const PointSummary* row : rows) {
    out << "| " << study.points[row->point].label << " | " << mean_std(row->final_train_loss) << " | "
        << mean_std(row->final_test_loss) << " | " << mean_std(row->final_test_accuracy, 2, true) << " | "
        << to_target(study, *row, false) << " | " << row->diverged << "/" << row->seeds << " |\n";
  }
}

}  // namespace

Statistic summarize(const std::vector<double>& values) {
  Statistic statistic;
  double sum = 0.0;
  for (double value : values) {
    if (!std::isfinite(value)) continue;
    sum += value;
    ++statistic.count;
  }
  if (statistic.count == 0) return statistic;
  statistic.mean = sum / static_cast<double>(statistic.count);
  if (statistic.count > 1) {
    double squares = 0.0;
    for (double value : values) {
      if (std::isfinite(value)) squares += (value - statistic.mean) * (value - statistic.mean);
    }
    statistic.std = std::sqrt(squares / static_cast<double>(statistic.count - 1));
  }
  return statistic;
}

std::vector<PointSummary> summarize_points(const StudyResult& study) {
  std::vector<PointSummary> summaries(study.points.size());
  std::vector<std::vector<const RunResult*>> by_point(study.points.size());
  for (const RunResult& run : study.runs) by_point[run.spec.point].push_back(&run);
  for (size_t p = 0; p < study.points.size(); ++p) {
    PointSummary& summary = summaries[p];
    summary.point = p;
    summary.seeds = by_point[p].size();
    std::vector<double> final_train, best_train, final_train_acc, final_test, best_test, final_acc, best_acc, steps,
        seconds;
    for (const RunResult* run : by_point[p]) {
      if (run->diverged || run->curve.empty()) {
        ++summary.diverged;
        continue;
      }
      const CurvePoint& last = run->curve.back();
      final_train.push_back(last.train_loss);
      final_train_acc.push_back(last.train_accuracy);
      final_test.push_back(last.test_loss);
      final_acc.push_back(last.test_accuracy);
      double lowest_train = kInfinity, lowest_test = kInfinity, highest_acc = 0.0;
      for (const CurvePoint& point : run->curve) {
        lowest_train = std::min(lowest_train, point.train_loss);
        lowest_test = std::min(lowest_test, point.test_loss);
        highest_acc = std::max(highest_acc, point.test_accuracy);
      }
      best_train.push_back(lowest_train);
      best_test.push_back(lowest_test);
      best_acc.push_back(highest_acc);
      if (study.config.target.value > 0) {
        if (auto hit = first_reaching(run->curve, study.config.target.metric, study.config.target.value)) {
          ++summary.reached_target;
          steps.push_back(static_cast<double>(hit->step));
          seconds.push_back(hit->seconds);
        }
      }
    }
    summary.final_train_loss = summarize(final_train);
    summary.best_train_loss = summarize(best_train);
    summary.final_train_accuracy = summarize(final_train_acc);
    summary.final_test_loss = summarize(final_test);
    summary.best_test_loss = summarize(best_test);
    summary.final_test_accuracy = summarize(final_acc);
    summary.best_test_accuracy = summarize(best_acc);
    summary.steps_to_target = summarize(steps);
    summary.seconds_to_target = summarize(seconds);
    bool usable = summary.diverged == 0 && summary.final_test_loss.count > 0;
    summary.selection_loss = usable ? summary.final_test_loss.mean : kInfinity;
  }
  return summaries;
}

std::vector<size_t> best_points(const StudyResult& study, const std::vector<PointSummary>& summaries) {
  std::vector<size_t> best(study.config.optimizers.size(), summaries.size());
  for (size_t p = 0; p < summaries.size(); ++p) {
    size_t optimizer = study.points[p].optimizer;
    // Strictly lower wins, so ties (all diverged) keep the first point of the grid.
    if (best[optimizer] == summaries.size() || summaries[p].selection_loss < summaries[best[optimizer]].selection_loss) {
      best[optimizer] = p;
    }
  }
  return best;
}

std::string results_csv(const StudyResult& study) {
  std::ostringstream out;
  out << "run,optimizer,type,hyperparameters,seed,steps,diverged,final_train_loss,final_train_accuracy,"
         "final_test_loss,final_test_accuracy,best_train_loss,best_test_loss,best_test_accuracy,steps_to_target\n";
  for (const RunResult& run : study.runs) {
    const GridPoint& point = study.points[run.spec.point];
    const StudyOptimizer& optimizer = study.config.optimizers[point.optimizer];
    double best_train = kInfinity, best_test = kInfinity, best_acc = 0.0;
    for (const CurvePoint& p : run.curve) {
      best_train = std::min(best_train, p.train_loss);
      best_test = std::min(best_test, p.test_loss);
      best_acc = std::max(best_acc, p.test_accuracy);
    }
    CurvePoint last = run.curve.empty() ? CurvePoint{} : run.curve.back();
    std::optional<CurvePoint> hit;
    if (study.config.target.value > 0) {
      hit = first_reaching(run.curve, study.config.target.metric, study.config.target.value);
    }
    out << run.spec.index << "," << optimizer.name << "," << optimizer.type << "," << csv_quoted(point.label) << ","
        << run.spec.seed << "," << last.step << "," << (run.diverged ? 1 : 0) << "," << number(last.train_loss) << ","
        << number(last.train_accuracy) << "," << number(last.test_loss) << "," << number(last.test_accuracy) << ","
        << number(best_train) << "," << number(best_test) << "," << number(best_acc) << ","
        << (hit ? std::to_string(hit->step) : std::string()) << "\n";
  }
  return out.str();
}

std::string timings_csv(const StudyResult& study) {
  std::ostringstream out;
  out << "run,seconds,seconds_to_target\n";
  for (const RunResult& run : study.runs) {
    std::optional<CurvePoint> hit;
    if (study.config.target.value > 0) {
      hit = first_reaching(run.curve, study.config.target.metric, study.config.target.value);
    }
    out << run.spec.index << "," << number(run.seconds) << "," << (hit ? number(hit->seconds) : std::string()) << "\n";
  }
  return out.str();
}

std::string markdown_report(const StudyResult& study, const std::vector<std::string>& plots,
                            const std::string& command) {
  const StudyConfig& config = study.config;
  std::vector<PointSummary> summaries = summarize_points(study);
  std::vector<size_t> best = best_points(study, summaries);
  std::ostringstream out;
  out << "# Optimizer study: " << config.name << "\n\n"
      << "- Task: " << study.task_description << "\n"
      << "- Training: " << study.steps << " steps of batch " << config.training.batch_size;
  if (config.training.epochs > 0) out << " (" << config.training.epochs << " epochs)";
  out << ", schedule " << study_schedule(config, study.steps).description();
  out << (config.training.grad_clip > 0 ? ", gradient clipping at " + number(config.training.grad_clip) : "")
      << "; evaluation every " << config.eval_interval << " steps\n"
      << "- Runs: " << study.runs.size() << " (" << study.points.size() << " grid points x " << config.seeds.size()
      << " seeds), " << number(study.seconds) << " s in all\n";
  if (config.target.value > 0) out << "- Target: " << config.target.metric << " <= " << number(config.target.value) << "\n";
  out << "- Command: `" << command << "`\n\n"
      << "Train loss is the mean minibatch loss since the previous evaluation (dropout on); test loss and accuracy "
         "are measured on the held-out split in evaluation mode. Times count optimizer steps only.\n\n"
      << "## Best setting of each optimizer (mean ± std over " << config.seeds.size() << " seeds)\n\n"
      << "| optimizer | best hyperparameters | final train loss | best train loss | final test loss | best test loss | "
         "final test acc | best test acc | steps to target | time to target |\n"
      << "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n";
  for (size_t o = 0; o < config.optimizers.size(); ++o) {
    const PointSummary& summary = summaries[best[o]];
    out << "| " << config.optimizers[o].name << " | " << study.points[best[o]].label
        << (summary.diverged ? " (diverged)" : "") << " | " << mean_std(summary.final_train_loss) << " | "
        << mean_std(summary.best_train_loss) << " | " << mean_std(summary.final_test_loss) << " | "
        << mean_std(summary.best_test_loss) << " | " << mean_std(summary.final_test_accuracy, 2, true) << " | "
        << mean_std(summary.best_test_accuracy, 2, true) << " | " << to_target(study, summary, false) << " | "
        << to_target(study, summary, true) << " |\n";
  }
  out << "\n## Grids\n";
  for (size_t o = 0; o < config.optimizers.size(); ++o) grid_table(out, study, summaries, o);
  if (!plots.empty()) {
    out << "\n## Plots\n\nThe best setting of each optimizer, mean over seeds.\n\n";
    for (const std::string& plot : plots) out << "![" << plot << "](" << plot << ")\n\n";
  }
  return out.str();
}

}  // namespace kiln::train

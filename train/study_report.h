// What kiln-compare writes from a finished study: results.csv (one row per run), a Markdown
// report (per optimizer: its best grid point's final and best losses and accuracies, mean ±
// std over seeds, steps and time to the target loss; every grid as a table) and gnuplot PNGs
// (loss vs step, loss vs time, a heatmap for each two-parameter grid).
//
// results.csv's last two columns, seconds and seconds_to_target, are wall-clock measurements;
// every other column is a function of the config and so identical when a study is run again.
// An optimizer's best grid point is the one with the lowest mean final test loss (a diverged
// seed counts as +inf).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "train/study_runner.h"

namespace kiln::train {

// Mean and sample standard deviation (0 for one value) of the finite values among `values`.
struct Statistic {
  double mean = 0.0;
  double std = 0.0;
  size_t count = 0;  // finite values
};
Statistic summarize(const std::vector<double>& values);

// One grid point over its seeds.
struct PointSummary {
  size_t point = 0;
  size_t seeds = 0, diverged = 0, reached_target = 0;
  Statistic final_train_loss, best_train_loss, final_train_accuracy;
  Statistic final_test_loss, best_test_loss, final_test_accuracy, best_test_accuracy;
  Statistic steps_to_target, seconds_to_target;  // over the seeds that reached it
  double selection_loss = 0.0;  // mean final test loss, +inf when any seed diverged
};

// Every grid point of the study, in grid order.
std::vector<PointSummary> summarize_points(const StudyResult& study);
// For each optimizer (config order), the index into summaries of its best grid point.
std::vector<size_t> best_points(const StudyResult& study, const std::vector<PointSummary>& summaries);

// results.csv: a header line, then one line per run. It holds no wall-clock times, so the same
// config run twice gives the same file byte for byte.
std::string results_csv(const StudyResult& study);
// timings.csv: each run's training seconds and seconds to the target (wall clock).
std::string timings_csv(const StudyResult& study);
// The Markdown report; `plots` are PNG file names (relative to the report) to embed, and
// `command` is the command line that produced the study, quoted in the report.
std::string markdown_report(const StudyResult& study, const std::vector<std::string>& plots,
                            const std::string& command);

struct PlotOutcome {
  std::vector<std::string> files;  // PNGs written, relative to the output directory
  std::string message;             // why plotting was skipped or failed; empty on success
};
// Writes plots/*.dat and plots/plots.gp under `out_dir` and renders the PNGs with gnuplot when
// it is on the PATH; without it the data and script are still written and `message` says so.
PlotOutcome write_plots(const StudyResult& study, const std::filesystem::path& out_dir);

}  // namespace kiln::train

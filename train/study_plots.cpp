// The study's plots: gnuplot data files and a script under <out_dir>/plots, rendered to PNGs
// when Debian's gnuplot is installed. Plotting is the one optional output: without gnuplot the
// CSV and the report are still complete.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <sstream>

#include "train/study_report.h"

namespace kiln::train {

namespace {

// The best point's mean curve over its non-diverged seeds (evaluations line up by index).
std::vector<CurvePoint> mean_curve(const StudyResult& study, size_t point) {
  std::vector<const RunResult*> runs;
  for (const RunResult& run : study.runs) {
    if (run.spec.point == point && !run.diverged) runs.push_back(&run);
  }
  std::vector<CurvePoint> curve;
  if (runs.empty()) return curve;
  size_t length = runs.front()->curve.size();
  for (const RunResult* run : runs) length = std::min(length, run->curve.size());
  for (size_t i = 0; i < length; ++i) {
    CurvePoint mean = runs.front()->curve[i];
    mean.seconds = mean.train_loss = mean.test_loss = 0.0;
    for (const RunResult* run : runs) {
      mean.seconds += run->curve[i].seconds;
      mean.train_loss += run->curve[i].train_loss;
      mean.test_loss += run->curve[i].test_loss;
    }
    double n = static_cast<double>(runs.size());
    mean.seconds /= n;
    mean.train_loss /= n;
    mean.test_loss /= n;
    curve.push_back(mean);
  }
  return curve;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  KILN_CHECK(out.good(), "kiln-compare: cannot write ", path.string());
}

std::string escaped(const std::string& text) {
  std::string result;
  for (char c : text) result += c == '\'' ? std::string("''") : std::string(1, c);
  return result;
}

std::string tic_label(const nlohmann::json& value) {
  char text[32];
  if (value.is_number()) std::snprintf(text, sizeof(text), "%g", value.get<double>());
  else std::snprintf(text, sizeof(text), "%s", value.dump().c_str());
  return text;
}

}  // namespace

PlotOutcome write_plots(const StudyResult& study, const std::filesystem::path& out_dir) {
  PlotOutcome outcome;
  std::filesystem::path plots = out_dir / "plots";
  std::filesystem::create_directories(plots);
  std::vector<PointSummary> summaries = summarize_points(study);
  std::vector<size_t> best = best_points(study, summaries);
  const StudyConfig& config = study.config;

  std::ostringstream curves_step, curves_time;
  for (size_t o = 0; o < config.optimizers.size(); ++o) {
    std::vector<CurvePoint> curve = mean_curve(study, best[o]);
    if (curve.empty()) continue;
    std::string file = "plots/" + config.optimizers[o].name + ".dat";
    std::ostringstream data;
    data << "# step seconds train_loss test_loss (" << config.optimizers[o].name << " "
         << study.points[best[o]].label << ", mean over seeds)\n";
    for (const CurvePoint& point : curve) {
      data << point.step << " " << point.seconds << " " << point.train_loss << " " << point.test_loss << "\n";
    }
    write_text(out_dir / file, data.str());
    std::string title = escaped(config.optimizers[o].name + " " + study.points[best[o]].label);
    curves_step << (curves_step.tellp() ? ", " : "") << "'" << file << "' using 1:COLUMN with lines lw 2 title '"
                << title << "'";
  }
  std::string step_plot = curves_step.str();
  std::string time_plot = step_plot;
  for (size_t at; (at = time_plot.find("using 1:")) != std::string::npos;) time_plot.replace(at, 8, "using 2:");

  auto with_column = [](const std::string& text, const std::string& column) {
    std::string result;
    size_t from = 0;
    for (size_t at; (at = text.find("COLUMN", from)) != std::string::npos; from = at + 6) {
      result += text.substr(from, at - from) + column;
    }
    return result + text.substr(from);
  };
  std::ostringstream script;
  script << "set terminal pngcairo noenhanced size 1200,450 font ',10'\nset grid\nset key top right\n";
  if (!step_plot.empty()) {
    for (const auto& [name, plot, xlabel] : {std::tuple{"loss_vs_step", step_plot, "step"},
                                            std::tuple{"loss_vs_time", time_plot, "training time (s)"}}) {
      script << "set output '" << name << ".png'\nset multiplot layout 1,2 title '" << escaped(config.name) << "'\n"
             << "set xlabel '" << xlabel << "'\nset ylabel 'train loss'\nplot " << with_column(plot, "3") << "\n"
             << "set ylabel 'test loss'\nplot " << with_column(plot, "4") << "\nunset multiplot\n";
      outcome.files.push_back(std::string(name) + ".png");
    }
  }
  // Two-parameter grids as heatmaps on one colour scale, so that grids can be compared.
  double low = std::numeric_limits<double>::infinity(), high = -low;
  for (const PointSummary& summary : summaries) {
    if (config.optimizers[study.points[summary.point].optimizer].grid.size() == 2 && summary.diverged == 0) {
      low = std::min(low, summary.final_test_loss.mean);
      high = std::max(high, summary.final_test_loss.mean);
    }
  }
  for (size_t o = 0; o < config.optimizers.size(); ++o) {
    const StudyOptimizer& optimizer = config.optimizers[o];
    if (optimizer.grid.size() != 2 || !std::isfinite(low)) continue;
    std::vector<std::string> keys;
    for (const auto& [key, values] : optimizer.grid.items()) keys.push_back(key);
    const nlohmann::json& rows = optimizer.grid[keys[0]];
    const nlohmann::json& columns = optimizer.grid[keys[1]];
    std::ostringstream data;
    size_t cell = 0;
    for (const PointSummary& summary : summaries) {
      if (study.points[summary.point].optimizer != o) continue;
      size_t r = cell / columns.size(), c = cell % columns.size();
      ++cell;
      bool diverged = summary.diverged > 0;
      char label[32];
      std::snprintf(label, sizeof(label), "%.3f", summary.final_test_loss.mean);
      data << c << " " << r << " " << (diverged ? high : summary.final_test_loss.mean) << " \""
           << (diverged ? "div" : label) << "\"\n";
    }
    std::string file = "plots/heatmap_" + optimizer.name + ".dat";
    write_text(out_dir / file, data.str());
    script << "set output 'heatmap_" << optimizer.name << ".png'\nset terminal pngcairo noenhanced size 560,450 font ',10'\n"
           << "unset grid\nset title '" << escaped(optimizer.name) << ": mean final test loss'\nset xlabel '"
           << escaped(keys[1]) << "'\nset ylabel '" << escaped(keys[0]) << "'\nset cbrange [" << low << ":" << high
           << "]\nset palette rgbformulae 33,13,10\nset xtics (";
    for (size_t c = 0; c < columns.size(); ++c) script << (c ? ", " : "") << "'" << tic_label(columns[c]) << "' " << c;
    script << ")\nset ytics (";
    for (size_t r = 0; r < rows.size(); ++r) script << (r ? ", " : "") << "'" << tic_label(rows[r]) << "' " << r;
    script << ")\nset xrange [-0.5:" << columns.size() - 0.5 << "]\nset yrange [-0.5:" << rows.size() - 0.5
           << "]\nplot '" << file << "' using 1:2:3 with image notitle, '' using 1:2:4 with labels notitle\n"
           << "set xtics auto\nset ytics auto\nunset title\nset autoscale\nset grid\n";
    outcome.files.push_back("heatmap_" + optimizer.name + ".png");
  }
  write_text(plots / "plots.gp", script.str());

  if (std::system("command -v gnuplot > /dev/null 2>&1") != 0) {
    outcome.files.clear();
    outcome.message = "gnuplot is not installed (apt-get install gnuplot-nox); plots skipped, data and script in " +
                      plots.string();
    return outcome;
  }
  std::string command = "cd '" + out_dir.string() + "' && gnuplot plots/plots.gp > plots/gnuplot.log 2>&1";
  if (std::system(command.c_str()) != 0) {
    outcome.files.clear();
    outcome.message = "gnuplot failed; see " + (plots / "gnuplot.log").string();
  }
  return outcome;
}

}  // namespace kiln::train

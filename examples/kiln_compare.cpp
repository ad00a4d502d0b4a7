// kiln-compare: runs an optimizer study (train/study_config.h) and writes its results.
//
//   kiln-compare configs/optim/fashion_mnist_mlp.json [--full] [--out DIR] [--set key.path=value]
//
// Writes DIR/runs/run_NNN.jsonl (one per run), DIR/results.csv, DIR/timings.csv, DIR/report.md
// and, when gnuplot is installed, DIR/loss_vs_step.png, DIR/loss_vs_time.png and a heatmap per
// two-parameter grid. DIR defaults to the config's out_dir. The work is in train/study_*.cpp;
// this program parses arguments and reports progress.
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "train/study_report.h"

using namespace kiln;

namespace {

constexpr const char* kUsage =
    "usage: kiln-compare CONFIG.json [--full] [--out DIR] [--set key.path=value ...]\n"
    "  --full   apply the config's \"full\" setting (the paper-sized study)\n"
    "  --out    output directory (default: the config's out_dir)\n"
    "  --set    override one config value, e.g. --set seeds=[0] or --set training.epochs=1\n";

struct Arguments {
  std::string config;
  bool full = false;
  std::string out;
  std::vector<std::string> overrides;
};

Arguments parse_arguments(const std::vector<std::string>& args) {
  Arguments arguments;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&]() -> const std::string& {
      KILN_CHECK(i + 1 < args.size(), arg, ": expected a value");
      return args[++i];
    };
    if (arg == "--full") arguments.full = true;
    else if (arg == "--out") arguments.out = value();
    else if (arg == "--set") arguments.overrides.push_back(value());
    else if (arg.rfind("--", 0) == 0) KILN_FAIL("unknown option ", arg);
    else if (arguments.config.empty()) arguments.config = arg;
    else KILN_FAIL("unexpected argument ", arg, " (the config is ", arguments.config, ")");
  }
  KILN_CHECK(!arguments.config.empty(), "expected a study config file");
  return arguments;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  KILN_CHECK(out.good(), "cannot write ", path.string());
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h") {
    std::printf("%s", kUsage);
    return args.empty() ? 2 : 0;
  }
  Arguments arguments;
  train::StudyConfig config;
  try {
    arguments = parse_arguments(args);
    config = train::StudyConfig::load(arguments.config, arguments.full, arguments.overrides);
  } catch (const Error& error) {
    std::fprintf(stderr, "kiln-compare: %s\n%s", error.what(), kUsage);
    return 2;
  }
  try {
    std::filesystem::path out_dir = arguments.out.empty() ? config.out_dir : arguments.out;
    std::filesystem::create_directories(out_dir);
    std::unique_ptr<train::StudyTask> task = train::make_study_task(config.task);
    std::string command = "kiln-compare " + arguments.config;
    for (size_t i = 1; i < args.size(); ++i) command += " " + args[i];
    size_t runs = train::expand_runs(config, train::expand_grid(config)).size();
    std::printf("kiln-compare: %s, %zu runs\n  task: %s\n", config.name.c_str(), runs,
                task->description().c_str());
    std::fflush(stdout);
    train::StudyResult study = train::run_study(config, *task, out_dir, [](const std::string& line) {
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
    });
    write_file(out_dir / "results.csv", train::results_csv(study));
    write_file(out_dir / "timings.csv", train::timings_csv(study));
    train::PlotOutcome plots = train::write_plots(study, out_dir);
    write_file(out_dir / "report.md", train::markdown_report(study, plots.files, command));
    std::printf("kiln-compare: %zu runs in %.1f s; wrote %s/results.csv, timings.csv, report.md, runs/*.jsonl\n", study.runs.size(),
                study.seconds, out_dir.string().c_str());
    if (plots.message.empty()) {
      for (const std::string& file : plots.files) std::printf("  %s/%s\n", out_dir.string().c_str(), file.c_str());
    } else {
      std::printf("kiln-compare: %s\n", plots.message.c_str());
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "kiln-compare: %s\n", error.what());
    return 1;
  }
  return 0;
}

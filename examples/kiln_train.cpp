// kiln-train: pretrains a transformer from a JSON config, alone or data-parallel under mpirun.
//
//   kiln-train --config configs/shakespeare_char.json [--set training.max_steps=500]... [--resume [DIR]]
//   mpirun -np 2 --bind-to none kiln-train --config configs/shakespeare_char.json
//
// The loop is train::Trainer (train/trainer.h); this program reads arguments, joins the job,
// installs the SIGINT/SIGTERM handlers and reports. Exit status: 0 when the run finished (or
// had nothing left to do), 128 + the signal number (130 for SIGINT, 143 for SIGTERM) when a
// signal stopped it after saving a final checkpoint, 1 on an error, 2 on bad arguments.
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "parallel/checkpoint.h"
#include "parallel/init.h"
#include "train/signals.h"
#include "train/trainer.h"

using namespace kiln;

namespace {

const char* kUsage =
    "usage: kiln-train --config FILE [--set KEY.PATH=VALUE]... [--resume [DIR]] [--quiet]\n"
    "\n"
    "  --config FILE     the run's JSON config (see configs/ and docs/TRAINING.md)\n"
    "  --set K=V         override one config value, e.g. --set training.max_steps=500\n"
    "                    (V is read as JSON when it parses, else as a string)\n"
    "  --resume [DIR]    continue from the latest checkpoint of the run directory (out_dir), or\n"
    "                    of DIR (a run directory or one checkpoint directory); without --config\n"
    "                    the config saved in DIR is used. A run with no checkpoint yet starts fresh.\n"
    "  --quiet           no progress output\n";

struct Arguments {
  std::optional<std::string> config;
  std::vector<std::string> overrides;
  bool resume = false;
  std::optional<std::string> resume_dir;
  bool quiet = false;
};

Arguments parse_arguments(const std::vector<std::string>& args) {
  Arguments parsed;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto value = [&](const char* option) {
      KILN_CHECK(i + 1 < args.size(), option, " needs a value");
      return args[++i];
    };
    if (arg == "--config") {
      parsed.config = value("--config");
    } else if (arg == "--set") {
      parsed.overrides.push_back(value("--set"));
    } else if (arg == "--resume") {
      parsed.resume = true;
      if (i + 1 < args.size() && args[i + 1].rfind("--", 0) != 0) parsed.resume_dir = args[++i];
    } else if (arg == "--quiet") {
      parsed.quiet = true;
    } else {
      KILN_FAIL("unknown argument ", arg);
    }
  }
  KILN_CHECK(parsed.config || parsed.resume_dir, "--config is required (or --resume DIR of a saved run)");
  return parsed;
}

// The config saved with a run (run directory) or with one checkpoint (its state.json).
nlohmann::json saved_config(const std::filesystem::path& dir) {
  if (std::filesystem::exists(dir / "config.json")) {
    return nlohmann::json::parse(data::read_file((dir / "config.json").string(), "kiln-train"));
  }
  if (std::filesystem::exists(dir / "state.json")) {
    nlohmann::json state = nlohmann::json::parse(data::read_file((dir / "state.json").string(), "kiln-train"));
    KILN_CHECK(state.contains("config"), (dir / "state.json").string(), ": no 'config' saved");
    return state.at("config");
  }
  KILN_FAIL("--resume ", dir.string(), ": no config.json or state.json there; pass --config");
}

int run_training(const Arguments& arguments, const parallel::World& world) {
  train::TrainConfig config =
      arguments.config ? train::TrainConfig::from_file(*arguments.config, arguments.overrides)
                       : train::TrainConfig::from_json(saved_config(*arguments.resume_dir), arguments.overrides);
  train::TrainerOptions options;
  options.quiet = arguments.quiet;
  options.gpu = world.gpu();
  std::filesystem::path run_dir = config.out_dir;
  if (arguments.resume) {
    std::filesystem::path from = arguments.resume_dir ? std::filesystem::path(*arguments.resume_dir) : run_dir;
    bool is_checkpoint = std::filesystem::exists(from / "state.json");
    if (is_checkpoint || parallel::latest_checkpoint(from)) {
      options.resume_from = from;
    } else if (world.rank == 0 && !arguments.quiet) {
      std::printf("kiln-train: no checkpoint in %s yet; starting from scratch\n", from.string().c_str());
    }
  } else {
    KILN_CHECK(!parallel::latest_checkpoint(run_dir), "run directory ", run_dir.string(),
               " already has checkpoints: pass --resume to continue it, or choose another directory with --set "
               "out_dir=...");
  }

  train::Trainer trainer(std::move(config), world.communicator, options);
  train::TrainResult result = trainer.run();
  if (world.rank == 0 && !arguments.quiet) {
    std::printf("kiln-train: %s at step %lld in %.1f s; last loss %.4f", result.interrupted ? "stopped" : "finished",
                static_cast<long long>(result.steps), result.seconds, result.last_loss);
    if (result.last_val_loss) std::printf(", val loss %.4f", *result.last_val_loss);
    if (result.skipped_steps > 0) std::printf(", %lld non-finite steps skipped", static_cast<long long>(result.skipped_steps));
    if (result.last_checkpoint) std::printf("\n  checkpoint %s", result.last_checkpoint->string().c_str());
    std::printf("\n");
  }
  return result.stop_signal != 0 ? 128 + result.stop_signal : 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
  }
  Arguments arguments;
  try {
    arguments = parse_arguments(args);
  } catch (const Error& error) {
    std::fprintf(stderr, "kiln-train: %s\n%s", error.what(), kUsage);
    return 2;
  }
  parallel::World world;
  try {
    world = parallel::init();
  } catch (const Error& error) {
    std::fprintf(stderr, "kiln-train: %s\n", error.what());
    return 1;
  }
  train::install_stop_handlers();
  int status = 1;
  try {
    status = run_training(arguments, world);
  } catch (const std::exception& error) {
    if (world.rank == 0) std::fprintf(stderr, "kiln-train: %s\n", error.what());
    else std::fprintf(stderr, "kiln-train (rank %d): %s\n", world.rank, error.what());
    std::fflush(stderr);
    // An error on some ranks only (one that writes samples, one whose file is corrupt) would
    // leave the others waiting in their next collective: end the whole job now instead.
    if (world.size > 1) world.communicator->abort_job();
  }
  parallel::finalize();
  return status;
}

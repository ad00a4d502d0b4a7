// Checkpoints: a training run's model, optimizer and loop state on disk, written atomically.
//
// Layout (docs/CHECKPOINTS.md):
//   <run_dir>/checkpoints/step_00001000/{model.safetensors, optimizer.safetensors, state.json}
//   <run_dir>/checkpoints/latest           text file holding "step_00001000"
// A checkpoint is written into a temporary sibling directory (".tmp-step_..."), every file and
// the directory are fsync'ed, the directory is renamed into place, and only then is `latest`
// replaced (temp file + fsync + rename). A crash at any point leaves either the previous
// checkpoint or the new one as what `latest` names, never a half-written one: temporary
// directories are never loaded and are removed by the next save.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "autograd/safetensors.h"
#include "autograd/tensor.h"
#include "optim/optimizer.h"
#include "parallel/communicator.h"

namespace kiln::parallel {

struct Checkpoint {
  int64_t step = 0;
  std::map<std::string, Tensor> model;        // nn::Module::state_dict() contents (name -> tensor)
  optim::OptimizerStateDict optimizer;         // optim/optimizer.h: tensors + json scalars
  nlohmann::json state;                        // everything else: config, RNG states, loader position...
  // Sharded optimizer state (ZeRO), one file per rank (optimizer_shard_<rank>.safetensors): to
  // save, this rank's part as the only entry; after loading, every rank's part by rank.
  std::vector<std::map<std::string, Tensor>> shards;
};

// The version written to state.json as "format_version"; load_checkpoint rejects others.
inline constexpr int kCheckpointFormatVersion = 1;

// Writes <run_dir>/checkpoints/step_<%08d step>/ {model.safetensors, optimizer.safetensors, state.json}
// atomically: written into a temporary sibling directory, every file and the directory fsync'ed,
// renamed into place, then <run_dir>/checkpoints/latest (a small text file holding the directory
// name) replaced atomically (write temp + fsync + rename). Then keeps only the newest `keep_last`
// checkpoint directories (0 = keep all), and removes stale temporary directories.
// Returns the checkpoint directory. Throws kiln::Error naming the path on any I/O failure.
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, const Checkpoint& checkpoint,
                                      int64_t keep_last);

// The collective form, for sharded state: every rank of `group` calls it with its own part in
// checkpoint.shards (one entry, or none when unsharded). Each rank writes and fsyncs its shard
// file into the temporary directory; rank 0 then writes the rest (its model, optimizer and state
// are what is saved; other ranks' are ignored) and commits as above. Returns on every rank once
// the checkpoint is in place. A failure on one rank leaves the others waiting in a collective,
// which the communicator's watchdog ends.
std::filesystem::path save_checkpoint(const std::filesystem::path& run_dir, const Checkpoint& checkpoint,
                                      int64_t keep_last, Communicator& group);
// Loads a checkpoint directory (or, given a run directory, the one `latest` names). Missing or
// corrupt files are kiln::Error naming the file.
Checkpoint load_checkpoint(const std::filesystem::path& path);

// One self-contained file's worth of a checkpoint: the model's tensors under their names, the
// optimizer's (consolidated from the ranks' shards when sharded) as "optimizer.<name>", and the
// step and optimizer scalars as metadata ("step", "optimizer": JSON). What kiln-consolidate writes.
SafetensorsFile consolidate_checkpoint(const Checkpoint& checkpoint);
// The directory `latest` names under run_dir, or nullopt when the run has no checkpoint yet.
std::optional<std::filesystem::path> latest_checkpoint(const std::filesystem::path& run_dir);

// Test-only hook: when set, save_checkpoint calls it with each file's final name after that file
// is written into the temporary directory (before the rename). The crash test uses it to kill
// a saving process at a known point. Not thread-safe; leave unset in programs.
void set_checkpoint_write_hook(std::function<void(const std::string& file)> hook);

}  // namespace kiln::parallel

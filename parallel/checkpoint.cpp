// Checkpoints written atomically and read back with their consistency checked (checkpoint.h).
//
// The order of a save is what makes it crash-safe:
//   1. write model.safetensors, optimizer.safetensors, state.json into checkpoints/.tmp-<name>.<pid>
//      and fsync each file (data on disk before any name points at it);
//   2. fsync the temporary directory (its entries on disk), rename it to checkpoints/<name> and
//      fsync checkpoints/ (the rename on disk);
//   3. write checkpoints/latest.tmp, fsync it, rename it over checkpoints/latest, fsync checkpoints/.
// A kill before 2 leaves only a temporary directory, never loaded; a kill between 2 and 3 leaves
// a complete checkpoint that `latest` does not name yet. state.json records each tensor file's
// size, so a file truncated afterwards (a full disk, a bad copy) is caught on load.
#include "parallel/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "autograd/ops.h"
#include "autograd/safetensors.h"
#include "kernels/error.h"
#include "parallel/zero.h"

namespace kiln::parallel {
namespace fs = std::filesystem;
namespace {

constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kLatestFile = "latest";
constexpr const char* kStepPrefix = "step_";
constexpr const char* kTemporaryPrefix = ".tmp-";

std::function<void(const std::string&)>& write_hook() {
  static std::function<void(const std::string&)> hook;
  return hook;
}

void call_hook(const std::string& stage) {
  if (write_hook()) write_hook()(stage);
}

std::string shard_file_name(int rank) { return "optimizer_shard_" + std::to_string(rank) + ".safetensors"; }

std::string errno_text() { return std::strerror(errno); }

// fsync of a file or a directory (the latter makes its entries, i.e. renames, durable).
void sync_path(const fs::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KILN_CHECK(fd >= 0, "checkpoint: cannot open ", path.string(), " to fsync it (", errno_text(), ")");
  int result = ::fsync(fd);
  std::string error = result == 0 ? "" : errno_text();
  ::close(fd);
  KILN_CHECK(result == 0, "checkpoint: fsync of ", path.string(), " failed (", error, ")");
}

void write_file_synced(const fs::path& path, const std::string& contents) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  KILN_CHECK(fd >= 0, "checkpoint: cannot create ", path.string(), " (", errno_text(), ")");
  size_t written = 0;
  while (written < contents.size()) {
    ssize_t count = ::write(fd, contents.data() + written, contents.size() - written);
    if (count < 0 && errno == EINTR) continue;
    if (count <= 0) {
      std::string error = errno_text();
      ::close(fd);
      KILN_FAIL("checkpoint: write to ", path.string(), " failed (", error, ")");
    }
    written += static_cast<size_t>(count);
  }
  int result = ::fsync(fd);
  std::string error = result == 0 ? "" : errno_text();
  ::close(fd);
  KILN_CHECK(result == 0, "checkpoint: fsync of ", path.string(), " failed (", error, ")");
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  KILN_CHECK(in.good(), "checkpoint: cannot open ", path.string(), " for reading");
  std::ostringstream contents;
  contents << in.rdbuf();
  return contents.str();
}

void rename_path(const fs::path& from, const fs::path& to) {
  KILN_CHECK(::rename(from.c_str(), to.c_str()) == 0, "checkpoint: cannot rename ", from.string(), " to ",
             to.string(), " (", errno_text(), ")");
}

void remove_tree(const fs::path& path) {
  std::error_code error;
  fs::remove_all(path, error);
  KILN_CHECK(!error, "checkpoint: cannot remove ", path.string(), " (", error.message(), ")");
}

std::string directory_name(int64_t step) {
  char name[32];
  std::snprintf(name, sizeof name, "%s%08" PRId64, kStepPrefix, step);
  return name;
}

// The step of a "step_<digits>" name, or -1 for any other name.
int64_t parse_step_name(const std::string& name) {
  std::string prefix = kStepPrefix;
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return -1;
  std::string digits = name.substr(prefix.size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoll(digits);
}

// Puts the finished temporary directory at `target`. A checkpoint of the same step already there
// (a resumed run saving the step it resumed from) is swapped out atomically with
// RENAME_EXCHANGE, so `target` is never missing; filesystems without it get remove + rename.
void move_into_place(const fs::path& temporary, const fs::path& target) {
  if (!fs::exists(target)) {
    rename_path(temporary, target);
    return;
  }
  if (::renameat2(AT_FDCWD, temporary.c_str(), AT_FDCWD, target.c_str(), RENAME_EXCHANGE) == 0) {
    remove_tree(temporary);  // now holds the replaced checkpoint
    return;
  }
  remove_tree(target);
  rename_path(temporary, target);
}

// Removes temporary directories (a crashed or failed save) and all but the newest `keep_last`
// checkpoints by step. The checkpoint just written is always kept.
void prune(const fs::path& checkpoints, const std::string& keep_name, int64_t keep_last) {
  std::vector<std::pair<int64_t, fs::path>> steps;
  for (const fs::directory_entry& entry : fs::directory_iterator(checkpoints)) {
    std::string name = entry.path().filename().string();
    if (name.rfind(kTemporaryPrefix, 0) == 0) {
      remove_tree(entry.path());
    } else if (entry.is_directory() && name != keep_name && parse_step_name(name) >= 0) {
      steps.emplace_back(parse_step_name(name), entry.path());
    }
  }
  if (keep_last <= 0) return;
  std::sort(steps.begin(), steps.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t i = static_cast<size_t>(keep_last - 1); i < steps.size(); ++i) remove_tree(steps[i].second);
}

// Checks a tensor file against the size state.json recorded, then loads it.
std::map<std::string, Tensor> load_tensor_file(const fs::path& directory, const nlohmann::json& files,
                                               const std::string& name) {
  fs::path path = directory / name;
  KILN_CHECK(files.contains(name), "checkpoint ", (directory / kStateFile).string(), ": \"files\" does not list ",
             name);
  std::error_code error;
  auto size = fs::file_size(path, error);
  KILN_CHECK(!error, "checkpoint: ", path.string(), " is missing or unreadable (", error.message(), ")");
  auto expected = files.at(name).at("bytes").get<uint64_t>();
  KILN_CHECK(size == expected, "checkpoint: ", path.string(), " is ", size, " bytes but state.json records ", expected,
             " (truncated or replaced file)");
  return load_safetensors(path.string()).tensors;
}

}  // namespace

void set_checkpoint_write_hook(std::function<void(const std::string& file)> hook) { write_hook() = std::move(hook); }

namespace {

// Both forms of save_checkpoint; `group` is null for the single-process one.
fs::path save(const fs::path& run_dir, const Checkpoint& checkpoint, int64_t keep_last, Communicator* group) {
  const int rank = group ? group->rank() : 0;
  const int ranks = group ? group->size() : 1;
  const bool sharded = !checkpoint.shards.empty();
  KILN_CHECK(checkpoint.step >= 0, "save_checkpoint: step must be >= 0, got ", checkpoint.step);
  KILN_CHECK(keep_last >= 0, "save_checkpoint: keep_last must be >= 0 (0 keeps all), got ", keep_last);
  KILN_CHECK(checkpoint.shards.size() <= 1, "save_checkpoint: checkpoint.shards must hold only this rank's part, got ",
             checkpoint.shards.size(), " parts");
  fs::path checkpoints = run_dir / "checkpoints";
  std::string name = directory_name(checkpoint.step);
  // Rank 0's pid names the temporary directory on every rank.
  Tensor pid = from_vector(std::vector<int64_t>{static_cast<int64_t>(::getpid())}, {1}, TensorOptions(DType::i64));
  if (group) group->broadcast(pid, 0);
  fs::path temporary = checkpoints / (kTemporaryPrefix + name + "." + std::to_string(pid.item<int64_t>()));
  std::error_code error;
  if (rank == 0) {
    bool created = fs::create_directories(checkpoints, error);
    KILN_CHECK(!error, "checkpoint: cannot create ", checkpoints.string(), " (", error.message(), ")");
    if (created) sync_path(run_dir);
    remove_tree(temporary);
    KILN_CHECK(fs::create_directory(temporary, error) && !error, "checkpoint: cannot create ", temporary.string(), " (",
               error.message(), ")");
  }
  if (group) group->barrier();

  // The "format": "pt" metadata is what safetensors.torch.save_file writes; tools such as
  // transformers check for it.
  std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", std::to_string(checkpoint.step)}};
  nlohmann::json files = nlohmann::json::object();
  auto write_tensors = [&](const std::string& file, const std::map<std::string, Tensor>& tensors) {
    fs::path path = temporary / file;
    save_safetensors(path.string(), tensors, metadata);
    sync_path(path);
    files[file] = {{"bytes", fs::file_size(path)}, {"tensors", tensors.size()}};
    call_hook(file);
  };
  // Every rank's shard, then what rank 0 learns of their sizes (which also waits for all).
  Tensor sizes = zeros({2 * ranks}, TensorOptions(DType::i64));
  if (sharded) {
    std::string file = shard_file_name(rank);
    write_tensors(file, checkpoint.shards.front());
    Tensor mine = from_vector(std::vector<int64_t>{files[file]["bytes"].get<int64_t>(),
                                                   static_cast<int64_t>(checkpoint.shards.front().size())},
                              {2}, TensorOptions(DType::i64));
    if (group) {
      group->all_gather(mine, sizes);
    } else {
      sizes = mine;
    }
  }
  if (rank == 0) {
    std::vector<int64_t> shard_sizes = sizes.to_vector<int64_t>();
    for (int r = 0; sharded && r < ranks; ++r) {
      files[shard_file_name(r)] = {{"bytes", shard_sizes[2 * r]}, {"tensors", shard_sizes[2 * r + 1]}};
    }
    write_tensors(kModelFile, checkpoint.model);
    write_tensors(kOptimizerFile, checkpoint.optimizer.tensors);
    nlohmann::json state = {{"format_version", kCheckpointFormatVersion},
                            {"step", checkpoint.step},
                            {"files", files},
                            {"optimizer_shards", sharded ? ranks : 0},
                            {"optimizer", checkpoint.optimizer.scalars},
                            {"state", checkpoint.state}};
    write_file_synced(temporary / kStateFile, state.dump(2) + "\n");
    call_hook(kStateFile);
    sync_path(temporary);

    move_into_place(temporary, checkpoints / name);
    sync_path(checkpoints);
    call_hook("renamed");

    fs::path latest_temporary = checkpoints / (std::string(kLatestFile) + ".tmp");
    write_file_synced(latest_temporary, name + "\n");
    rename_path(latest_temporary, checkpoints / kLatestFile);
    sync_path(checkpoints);
    prune(checkpoints, name, keep_last);
  }
  if (group) group->barrier();
  return checkpoints / name;
}

}  // namespace

fs::path save_checkpoint(const fs::path& run_dir, const Checkpoint& checkpoint, int64_t keep_last) {
  return save(run_dir, checkpoint, keep_last, nullptr);
}

fs::path save_checkpoint(const fs::path& run_dir, const Checkpoint& checkpoint, int64_t keep_last, Communicator& group) {
  return save(run_dir, checkpoint, keep_last, &group);
}

std::optional<fs::path> latest_checkpoint(const fs::path& run_dir) {
  fs::path latest = run_dir / "checkpoints" / kLatestFile;
  if (!fs::exists(latest)) return std::nullopt;
  std::string name = read_file(latest);
  while (!name.empty() && (name.back() == '\n' || name.back() == '\r' || name.back() == ' ')) name.pop_back();
  KILN_CHECK(parse_step_name(name) >= 0, "checkpoint: ", latest.string(), " holds '", name,
             "', not a checkpoint directory name (step_<digits>)");
  fs::path directory = run_dir / "checkpoints" / name;
  KILN_CHECK(fs::is_directory(directory), "checkpoint: ", latest.string(), " names ", directory.string(),
             ", which does not exist");
  return directory;
}

Checkpoint load_checkpoint(const fs::path& path) {
  fs::path directory = path;
  if (fs::is_directory(path / "checkpoints")) {
    std::optional<fs::path> latest = latest_checkpoint(path);
    KILN_CHECK(latest.has_value(), "checkpoint: run directory ", path.string(), " has no checkpoint yet (no ",
               (path / "checkpoints" / kLatestFile).string(), ")");
    directory = *latest;
  }
  KILN_CHECK(fs::is_directory(directory), "checkpoint: ", directory.string(),
             " is neither a checkpoint directory nor a run directory");
  KILN_CHECK(directory.filename().string().rfind(kTemporaryPrefix, 0) != 0, "checkpoint: ", directory.string(),
             " is the temporary directory of an unfinished save and is never loaded");

  fs::path state_path = directory / kStateFile;
  KILN_CHECK(fs::exists(state_path), "checkpoint: ", state_path.string(), " is missing");
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(read_file(state_path));
  } catch (const nlohmann::json::exception& error) {
    KILN_FAIL("checkpoint: ", state_path.string(), " is not valid JSON (", error.what(), ")");
  }
  Checkpoint checkpoint;
  try {
    KILN_CHECK(state.is_object() && state.contains("format_version"), "checkpoint: ", state_path.string(),
               " has no format_version");
    int version = state.at("format_version").get<int>();
    KILN_CHECK(version == kCheckpointFormatVersion, "checkpoint: ", state_path.string(), " has format_version ",
               version, ", this build reads version ", kCheckpointFormatVersion);
    checkpoint.step = state.at("step").get<int64_t>();
    const nlohmann::json& files = state.at("files");
    checkpoint.model = load_tensor_file(directory, files, kModelFile);
    checkpoint.optimizer.tensors = load_tensor_file(directory, files, kOptimizerFile);
    checkpoint.optimizer.scalars = state.at("optimizer");
    int shards = state.value("optimizer_shards", 0);
    for (int r = 0; r < shards; ++r) checkpoint.shards.push_back(load_tensor_file(directory, files, shard_file_name(r)));
    checkpoint.state = state.at("state");
  } catch (const nlohmann::json::exception& error) {
    KILN_FAIL("checkpoint: ", state_path.string(), " is malformed (", error.what(), ")");
  }
  return checkpoint;
}

SafetensorsFile consolidate_checkpoint(const Checkpoint& checkpoint) {
  SafetensorsFile file;
  file.tensors = checkpoint.model;
  std::map<std::string, Tensor> optimizer = checkpoint.optimizer.tensors;
  if (!checkpoint.shards.empty()) {
    std::vector<optim::OptimizerStateDict> parts;
    for (const auto& shard : checkpoint.shards) parts.push_back({shard, checkpoint.optimizer.scalars});
    optimizer = consolidate_optimizer_shards(parts).tensors;
  }
  for (const auto& [name, tensor] : optimizer) file.tensors["optimizer." + name] = tensor;
  file.metadata = {{"format", "pt"}, {"step", std::to_string(checkpoint.step)},
                   {"optimizer", checkpoint.optimizer.scalars.dump()}};
  return file;
}

}  // namespace kiln::parallel

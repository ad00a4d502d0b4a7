// Checkpoints: round trips, pruning, the `latest` pointer, load errors that name the file, crash
// safety under SIGKILL, and model files that the Python `safetensors` package and torch load.
#include <catch2/catch.hpp>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kiln.h"
#include "parallel/checkpoint.h"

namespace fs = std::filesystem;
using Catch::Contains;
using kiln::parallel::Checkpoint;
using nlohmann::json;
using namespace kiln;

namespace {

fs::path fresh_directory(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kiln-test-ckpt-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// A checkpoint like kiln-train's: f32 weights (one made from a transposed view), i64 buffers at
// the edges of the range (not representable as doubles), AdamW-style optimizer state.
Checkpoint make_checkpoint(int64_t step, uint64_t seed, int64_t width = 5) {
  Generator generator(seed);
  Checkpoint checkpoint;
  checkpoint.step = step;
  checkpoint.model["embed.weight"] = randn({7, width}, {}, &generator);
  checkpoint.model["blocks.0.attn.qkv.weight"] = randn({width, 3}, {}, &generator).t();
  checkpoint.model["blocks.0.ln.scale"] = scalar_tensor(1.5);
  checkpoint.model["position_ids"] = from_vector<int64_t>(
      {0, -3, (int64_t{1} << 53) + 1, INT64_MAX, INT64_MIN, static_cast<int64_t>(seed)}, {2, 3});
  checkpoint.optimizer.tensors["embed.weight/exp_avg"] = randn({7, width}, {}, &generator);
  checkpoint.optimizer.tensors["embed.weight/exp_avg_sq"] = rand({7, width}, {}, &generator);
  checkpoint.optimizer.scalars = {{"name", "AdamW"},
                                  {"groups", {{{"lr", 3e-4}, {"betas", {0.9, 0.95}}, {"weight_decay", 0.1}}}},
                                  {"steps", {{"embed.weight", step}}}};
  checkpoint.state = {{"rng", {{"seed", seed}, {"offset", 12345678901234ULL}}},
                      {"loader", {{"shard", 2}, {"position", step * 4096}}},
                      {"config", {{"model", "gpt2-tiny"}, {"lr", 3e-4}}}};
  return checkpoint;
}

// Same dtype, shape and bytes (no tolerance: a checkpoint must restore exactly).
bool bit_equal(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || a.sizes() != b.sizes()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return std::memcmp(ca.raw_data(), cb.raw_data(), static_cast<size_t>(ca.numel()) * dtype_size(ca.dtype())) == 0;
}

void require_same_tensors(const std::map<std::string, Tensor>& expected, const std::map<std::string, Tensor>& actual) {
  REQUIRE(actual.size() == expected.size());
  for (const auto& [name, tensor] : expected) {
    INFO("tensor " << name);
    REQUIRE(actual.count(name) == 1);
    CHECK(bit_equal(tensor, actual.at(name)));
  }
}

void require_same_checkpoint(const Checkpoint& expected, const Checkpoint& actual) {
  CHECK(actual.step == expected.step);
  require_same_tensors(expected.model, actual.model);
  require_same_tensors(expected.optimizer.tensors, actual.optimizer.tensors);
  CHECK(actual.optimizer.scalars == expected.optimizer.scalars);
  CHECK(actual.state == expected.state);
}

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

std::vector<std::string> entries(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

// Runs `command`; its stdout goes to `output`, its stderr to `errors` (kept apart so that a
// warning on stderr cannot break the JSON on stdout). Returns the exit status.
int run_command(const std::string& command, std::string& output, std::string& errors) {
  fs::path error_file = fs::temp_directory_path() / ("kiln-test-ckpt-stderr-" + std::to_string(::getpid()));
  output.clear();
  std::FILE* pipe = ::popen((command + " 2>'" + error_file.string() + "'").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t count;
  while ((count = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, count);
  int status = ::pclose(pipe);
  errors = read_text(error_file);
  fs::remove(error_file);
  return status;
}

// Waits (up to two minutes) for one byte from a child on `fd`; false on timeout or EOF.
bool wait_for_child(int fd) {
  pollfd request{fd, POLLIN, 0};
  if (::poll(&request, 1, 120'000) != 1) return false;
  char byte;
  return ::read(fd, &byte, 1) == 1;
}

void notify_parent(int fd) {
  char byte = 'k';
  if (::write(fd, &byte, 1) != 1) ::_exit(5);
}

// SIGKILLs `pid` and reaps it; true when it died of that signal (not of its own accord first).
bool kill_child(pid_t pid) {
  ::kill(pid, SIGKILL);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
}

// Forks a process that saves `first`, then runs `body` (a second save), reporting through a pipe
// with notify_parent; the child never returns into Catch. Returns the pid and the read end.
template <typename Body>
std::pair<pid_t, int> fork_saver(const fs::path& run, const Checkpoint& first, Body body) {
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(fds[0]);
    int code = 4;  // body returned: the parent expected to kill the child before that
    try {
      kiln::parallel::save_checkpoint(run, first, 0);
      body(fds[1]);
    } catch (...) {
      code = 3;
    }
    ::_exit(code);
  }
  ::close(fds[1]);
  return {pid, fds[0]};
}

}  // namespace

TEST_CASE("checkpoints round-trip bit for bit", "[checkpoint]") {
  fs::path run = fresh_directory("roundtrip");
  CHECK_FALSE(kiln::parallel::latest_checkpoint(run).has_value());
  Checkpoint written = make_checkpoint(42, 7);
  fs::path dir = kiln::parallel::save_checkpoint(run, written, 3);

  CHECK(dir == run / "checkpoints" / "step_00000042");
  CHECK(entries(dir) == std::vector<std::string>{"model.safetensors", "optimizer.safetensors", "state.json"});
  CHECK(entries(run / "checkpoints") == std::vector<std::string>{"latest", "step_00000042"});
  CHECK(read_text(run / "checkpoints" / "latest") == "step_00000042\n");
  REQUIRE(kiln::parallel::latest_checkpoint(run) == dir);

  json state = json::parse(read_text(dir / "state.json"));
  CHECK(state.at("format_version") == kiln::parallel::kCheckpointFormatVersion);
  CHECK(state.at("step") == 42);
  CHECK(state.at("files").at("model.safetensors").at("bytes") == fs::file_size(dir / "model.safetensors"));
  CHECK(state.at("files").at("optimizer.safetensors").at("tensors") == 2);

  SECTION("from the checkpoint directory") { require_same_checkpoint(written, kiln::parallel::load_checkpoint(dir)); }
  SECTION("from the run directory") { require_same_checkpoint(written, kiln::parallel::load_checkpoint(run)); }
  SECTION("with empty optimizer state and state") {
    Checkpoint bare;
    bare.step = 0;
    bare.model["w"] = ones({2, 2});
    fs::path bare_dir = kiln::parallel::save_checkpoint(run, bare, 0);
    CHECK(bare_dir.filename() == "step_00000000");
    Checkpoint loaded = kiln::parallel::load_checkpoint(run);  // latest is now step 0
    require_same_checkpoint(bare, loaded);
    CHECK(loaded.optimizer.tensors.empty());
  }
  fs::remove_all(run);
}

TEST_CASE("save_checkpoint keeps the newest keep_last checkpoints and moves latest", "[checkpoint]") {
  fs::path run = fresh_directory("prune");
  for (int64_t step = 100; step <= 500; step += 100) {
    kiln::parallel::save_checkpoint(run, make_checkpoint(step, static_cast<uint64_t>(step)), 2);
    CHECK(kiln::parallel::latest_checkpoint(run)->filename() == "step_00000" + std::to_string(step));
  }
  CHECK(entries(run / "checkpoints") == std::vector<std::string>{"latest", "step_00000400", "step_00000500"});
  require_same_checkpoint(make_checkpoint(500, 500), kiln::parallel::load_checkpoint(run));
  require_same_checkpoint(make_checkpoint(400, 400),
                          kiln::parallel::load_checkpoint(run / "checkpoints" / "step_00000400"));

  // keep_last 0 keeps everything.
  kiln::parallel::save_checkpoint(run, make_checkpoint(600, 600), 0);
  CHECK(entries(run / "checkpoints").size() == 4);

  // Saving a step that exists (a resumed run re-saving its step) replaces it; the checkpoint just
  // written is kept even when higher steps fill keep_last.
  Checkpoint again = make_checkpoint(400, 4444);
  kiln::parallel::save_checkpoint(run, again, 2);
  CHECK(entries(run / "checkpoints") == std::vector<std::string>{"latest", "step_00000400", "step_00000600"});
  require_same_checkpoint(again, kiln::parallel::load_checkpoint(run));

  CHECK_THROWS_WITH(kiln::parallel::save_checkpoint(run, make_checkpoint(-1, 1), 2), Contains("step"));
  CHECK_THROWS_WITH(kiln::parallel::save_checkpoint(run, make_checkpoint(1, 1), -1), Contains("keep_last"));
  fs::remove_all(run);
}

TEST_CASE("temporary directories are never loaded and are cleaned by the next save", "[checkpoint]") {
  fs::path run = fresh_directory("stale");
  Checkpoint first = make_checkpoint(10, 1);
  kiln::parallel::save_checkpoint(run, first, 0);
  // What a crashed save of step 20 leaves: a complete-looking temporary copy.
  fs::path stale = run / "checkpoints" / ".tmp-step_00000020.12345";
  fs::copy(run / "checkpoints" / "step_00000010", stale, fs::copy_options::recursive);
  require_same_checkpoint(first, kiln::parallel::load_checkpoint(run));
  CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(stale), Contains(stale.string()) && Contains("unfinished"));

  kiln::parallel::save_checkpoint(run, make_checkpoint(11, 2), 0);
  CHECK_FALSE(fs::exists(stale));
  CHECK(entries(run / "checkpoints") == std::vector<std::string>{"latest", "step_00000010", "step_00000011"});
  fs::remove_all(run);
}

TEST_CASE("load_checkpoint errors name the missing or corrupt file", "[checkpoint][errors]") {
  fs::path run = fresh_directory("errors");
  CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(run / "nowhere"), Contains((run / "nowhere").string()));
  fs::create_directories(run / "checkpoints");
  CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(run), Contains("no checkpoint") && Contains("latest"));

  fs::path dir = kiln::parallel::save_checkpoint(run, make_checkpoint(3, 3), 0);
  fs::path model = dir / "model.safetensors", optimizer = dir / "optimizer.safetensors", state = dir / "state.json";

  SECTION("missing model.safetensors") {
    fs::remove(model);
    CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(run), Contains(model.string()) && Contains("missing"));
  }
  SECTION("truncated optimizer.safetensors") {
    fs::resize_file(optimizer, fs::file_size(optimizer) - 16);
    CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(dir), Contains(optimizer.string()) && Contains("truncated"));
  }
  SECTION("corrupt model.safetensors of the recorded size") {
    std::fstream file(model, std::ios::in | std::ios::out | std::ios::binary);
    file.write("\xff\xff\xff\xff\xff\xff\xff\x7f", 8);  // an absurd header length
    file.close();
    CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(dir), Contains(model.string()));
  }
  SECTION("unknown format version") {
    json contents = json::parse(read_text(state));
    contents["format_version"] = 99;
    std::ofstream(state) << contents.dump();
    CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(dir),
                      Contains(state.string()) && Contains("format_version 99"));
  }
  SECTION("state.json without the file list") {
    json contents = json::parse(read_text(state));
    contents.erase("files");
    std::ofstream(state) << contents.dump();
    CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(dir), Contains(state.string()));
  }
  SECTION("state.json that is not JSON") {
    std::ofstream(state) << "{\"format_version\": 1, \"step\":";
    CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(dir), Contains(state.string()) && Contains("not valid JSON"));
  }
  SECTION("missing state.json") {
    fs::remove(state);
    CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(dir), Contains(state.string()) && Contains("missing"));
  }
  SECTION("latest naming a directory that is gone") {
    fs::remove_all(dir);
    fs::path latest = run / "checkpoints" / "latest";
    CHECK_THROWS_WITH(kiln::parallel::load_checkpoint(run), Contains(latest.string()) && Contains("does not exist"));
    CHECK_THROWS_WITH(kiln::parallel::latest_checkpoint(run), Contains(latest.string()));
  }
  SECTION("latest holding garbage") {
    std::ofstream(run / "checkpoints" / "latest") << "../../etc";
    CHECK_THROWS_WITH(kiln::parallel::latest_checkpoint(run), Contains("latest") && Contains("../../etc"));
  }
  fs::remove_all(run);
}

TEST_CASE("a save killed by SIGKILL at any stage leaves the previous checkpoint loadable", "[checkpoint][crash]") {
  Checkpoint first = make_checkpoint(1, 11), second = make_checkpoint(2, 22);
  // The stages at which save_checkpoint calls the write hook, in order.
  for (const std::string stage : {"model.safetensors", "optimizer.safetensors", "state.json", "renamed"}) {
    DYNAMIC_SECTION("killed after " << stage) {
      fs::path run = fresh_directory("kill");
      auto [pid, from_child] = fork_saver(run, first, [&](int to_parent) {
        kiln::parallel::set_checkpoint_write_hook([&](const std::string& reached) {
          if (reached != stage) return;
          notify_parent(to_parent);
          while (true) ::pause();
        });
        kiln::parallel::save_checkpoint(run, second, 0);
      });
      bool reached = wait_for_child(from_child);
      ::close(from_child);
      REQUIRE(kill_child(pid));
      REQUIRE(reached);

      // The kill really interrupted a save: its files are on disk, but not as a checkpoint.
      bool renamed = stage == "renamed";
      CHECK(fs::exists(run / "checkpoints" / "step_00000002") == renamed);
      size_t temporaries = 0;
      for (const std::string& name : entries(run / "checkpoints")) temporaries += name.rfind(".tmp-", 0) == 0;
      CHECK(temporaries == (renamed ? 0u : 1u));

      CHECK(kiln::parallel::latest_checkpoint(run) == run / "checkpoints" / "step_00000001");
      require_same_checkpoint(first, kiln::parallel::load_checkpoint(run));

      // The run resumes: the next save succeeds and sweeps the crash's leftovers.
      Checkpoint third = make_checkpoint(3, 33);
      kiln::parallel::save_checkpoint(run, third, 0);
      for (const std::string& name : entries(run / "checkpoints")) CHECK(name.rfind(".tmp-", 0) != 0);
      require_same_checkpoint(third, kiln::parallel::load_checkpoint(run));
      fs::remove_all(run);
    }
  }
}

TEST_CASE("a large save killed at arbitrary moments never yields a corrupt checkpoint", "[checkpoint][crash]") {
  // 32 MiB of weights, so that the kill lands inside the writes or fsyncs for the short delays.
  Checkpoint first = make_checkpoint(1, 11);
  Checkpoint second = make_checkpoint(2, 22);
  Generator generator(5);
  for (int i = 0; i < 4; ++i) second.model["big." + std::to_string(i)] = randn({2048, 1024}, {}, &generator);

  int completed = 0;
  for (int delay_us : {0, 500, 2'000, 10'000, 50'000, 200'000}) {
    INFO("kill " << delay_us << " us after the second save started");
    fs::path run = fresh_directory("kill-timed");
    auto [pid, from_child] = fork_saver(run, first, [&](int to_parent) {
      notify_parent(to_parent);
      kiln::parallel::save_checkpoint(run, second, 0);
      while (true) ::pause();  // keep the status "killed" for the parent's check
    });
    bool started = wait_for_child(from_child);
    ::close(from_child);
    ::usleep(static_cast<useconds_t>(delay_us));
    REQUIRE(kill_child(pid));
    REQUIRE(started);

    Checkpoint loaded = kiln::parallel::load_checkpoint(run);
    REQUIRE((loaded.step == 1 || loaded.step == 2));
    require_same_checkpoint(loaded.step == 1 ? first : second, loaded);
    completed += loaded.step == 2;
    fs::remove_all(run);
  }
  // Which kills land mid-save depends on the disk; report it rather than assert it.
  WARN("timed kills: " << completed << " of 6 saves had completed");
}

TEST_CASE("checkpoint files load with the Python safetensors package and with torch", "[checkpoint][python]") {
  fs::path run = fresh_directory("python");
  Checkpoint written = make_checkpoint(77, 9);
  fs::path dir = kiln::parallel::save_checkpoint(run, written, 0);

  struct Reader {
    std::string python, mode, float_dtype, int_dtype;
  };
  // The PATH python3 has PyPI's safetensors (numpy arrays); Debian's python3 has torch and reads
  // through safetensors.torch (scripts/setup.sh installs both).
  const std::vector<Reader> readers = {{"python3", "numpy", "float32", "int64"},
                                       {KILN_PYTHON, "torch", "torch.float32", "torch.int64"}};
  for (const Reader& reader : readers) {
    for (const auto& [file, tensors] : {std::pair{"model.safetensors", &written.model},
                                        std::pair{"optimizer.safetensors", &written.optimizer.tensors}}) {
      std::string command = reader.python + " " KILN_TEST_REFERENCE_DIR "/read_safetensors.py " + reader.mode + " '" +
                            (dir / file).string() + "'";
      std::string output, errors;
      int status = run_command(command, output, errors);
      INFO(command << "\nstderr: " << errors);
      REQUIRE(status == 0);
      json read = json::parse(output);
      CHECK(read.at("metadata") == json{{"format", "pt"}, {"step", "77"}});
      REQUIRE(read.at("tensors").size() == tensors->size());
      for (const auto& [name, tensor] : *tensors) {
        INFO("tensor " << name);
        REQUIRE(read.at("tensors").contains(name));
        const json& entry = read.at("tensors").at(name);
        CHECK(entry.at("shape").get<Shape>() == tensor.sizes());
        const json& values = entry.at("values");
        REQUIRE(values.size() == static_cast<size_t>(tensor.numel()));
        if (tensor.dtype() == DType::f32) {
          CHECK(entry.at("dtype") == reader.float_dtype);
          std::vector<float> expected = tensor.to_vector<float>();
          for (size_t i = 0; i < expected.size(); ++i) {
            CHECK(values[i].get<double>() == static_cast<double>(expected[i]));  // float32 widens exactly
          }
        } else {
          REQUIRE(tensor.dtype() == DType::i64);
          CHECK(entry.at("dtype") == reader.int_dtype);
          std::vector<int64_t> expected = tensor.to_vector<int64_t>();
          for (size_t i = 0; i < expected.size(); ++i) CHECK(values[i].get<int64_t>() == expected[i]);
        }
      }
    }
  }
  fs::remove_all(run);
}

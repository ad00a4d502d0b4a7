// The run's log files: CRC-32C, TensorBoard event files read back by tensorboard's own loader
// (tests/reference/read_tfevents.py under the PATH python3), and the JSONL metrics log.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/error.h"
#include "train/crc32c.h"
#include "train/metrics_log.h"
#include "train/tensorboard_writer.h"

namespace fs = std::filesystem;
using Catch::Contains;
using nlohmann::json;

namespace {

fs::path fresh_directory(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / ("kiln-test-logs-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

// Runs `command`, returns its exit status; stdout goes to `output`, stderr is appended to it
// after a marker so that a failure shows the script's message.
int run_command(const std::string& command, std::string& output) {
  output.clear();
  std::FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t count;
  while ((count = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) output.append(buffer, count);
  return ::pclose(pipe);
}

std::vector<std::string> read_lines(const fs::path& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

}  // namespace

TEST_CASE("crc32c matches the standard check values", "[train][crc32c]") {
  using kiln::train::crc32c;
  CHECK(crc32c("123456789") == 0xE3069283u);
  CHECK(crc32c("") == 0u);
  // RFC 3720 (iSCSI) appendix B.4 vectors: 32 zero bytes and the bytes 0..31.
  std::string zeros(32, '\0'), ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  CHECK(crc32c(zeros) == 0x8A9136AAu);
  CHECK(crc32c(ascending) == 0x46DD794Eu);
  // TensorFlow's mask: rotate right by 15, add 0xA282EAD8 (value from tensorboard's own
  // masked_crc32c(b"123456789")).
  CHECK(kiln::train::masked_crc32c("123456789", 9) == 0xC78AB0E5u);
}

TEST_CASE("TensorBoard event files load in tensorboard's EventAccumulator", "[train][tensorboard]") {
  fs::path dir = fresh_directory("tensorboard");
  kiln::train::TensorBoardWriter writer(dir / "tb");
  REQUIRE(writer.path().parent_path() == dir / "tb");
  REQUIRE(writer.path().filename().string().rfind("events.out.tfevents.", 0) == 0);

  std::vector<std::pair<int64_t, double>> loss, lr;
  for (int64_t step = 0; step < 6; ++step) loss.emplace_back(step, 2.5 / (1.0 + step) + 1e-3 * step);
  for (int64_t step : {0, 100, 200, 300}) lr.emplace_back(step, 3e-4 * (1.0 - step / 1000.0));
  lr.emplace_back(1'000'000'000'000LL, -7.25);  // a step past 32 bits and a negative value
  // Interleaved, as a training loop writes them.
  for (size_t i = 0; i < std::max(loss.size(), lr.size()); ++i) {
    if (i < loss.size()) writer.add_scalar("train/loss", loss[i].second, loss[i].first);
    if (i < lr.size()) writer.add_scalar("train/lr", lr[i].second, lr[i].first);
  }
  const std::string text = "{\"model\": \"gpt2-small\", \"note\": \"ünïcode ✓\"}";
  writer.add_text("config", text, 0);
  writer.flush();

  // Read while the writer is still open: a live TensorBoard sees what was written so far.
  std::string output;
  std::string command = "python3 " KILN_TEST_REFERENCE_DIR "/read_tfevents.py '" + writer.path().string() + "'";
  int status = run_command(command, output);
  INFO(command << "\n" << output);
  REQUIRE(status == 0);
  json read = json::parse(output);

  CHECK(read.at("records").get<int>() == 1 + static_cast<int>(loss.size() + lr.size()) + 1);
  CHECK(read.at("file_version").get<double>() == 2.0);
  auto expect_series = [&](const std::string& tag, const std::vector<std::pair<int64_t, double>>& expected) {
    INFO("tag " << tag);
    const json& series = read.at("scalars").at(tag);
    REQUIRE(series.size() == expected.size());
    for (size_t i = 0; i < expected.size(); ++i) {
      CHECK(series[i][0].get<int64_t>() == expected[i].first);
      // simple_value is a float32: exact after the same rounding, no tolerance.
      CHECK(series[i][1].get<double>() == static_cast<double>(static_cast<float>(expected[i].second)));
    }
  };
  CHECK(read.at("scalars").size() == 2);
  expect_series("train/loss", loss);
  expect_series("train/lr", lr);
  REQUIRE(read.at("text").contains("config"));
  CHECK(read.at("text").at("config") == json::array({json::array({0, text})}));
  fs::remove_all(dir);
}

TEST_CASE("TensorBoard writer reports an unusable log directory", "[train][tensorboard][errors]") {
  fs::path dir = fresh_directory("tensorboard-errors");
  std::ofstream(dir / "file") << "not a directory";
  CHECK_THROWS_WITH(kiln::train::TensorBoardWriter(dir / "file" / "tb"), Contains((dir / "file" / "tb").string()));
  fs::remove_all(dir);
}

TEST_CASE("MetricsLog writes one JSON object per line and appends on resume", "[train][metrics]") {
  fs::path dir = fresh_directory("metrics");
  fs::path path = dir / "run" / "metrics.jsonl";  // the parent directory is created
  {
    kiln::train::MetricsLog log(path, false);
    for (int step = 1; step <= 3; ++step) {
      log.write({{"step", step}, {"loss", 4.0 / step}, {"phase", "train"}});
      // Flushed per record: the line is on disk before the log is closed.
      CHECK(read_lines(path).size() == static_cast<size_t>(step));
    }
  }
  {
    kiln::train::MetricsLog log(path, true);
    log.write({{"step", 4}, {"loss", std::nan("")}});  // a diverged loss is logged as null
    log.write({{"step", 5}, {"eval", {{"loss", 1.5}, {"tokens", 1 << 20}}}});
  }
  std::vector<std::string> lines = read_lines(path);
  REQUIRE(lines.size() == 5);
  for (size_t i = 0; i < lines.size(); ++i) {
    INFO("line " << i << ": " << lines[i]);
    json record = json::parse(lines[i]);
    REQUIRE(record.is_object());
    CHECK(record.at("step").get<int>() == static_cast<int>(i) + 1);
  }
  CHECK(json::parse(lines[1]).at("loss").get<double>() == 2.0);
  CHECK(json::parse(lines[3]).at("loss").is_null());
  CHECK(json::parse(lines[4]).at("eval").at("tokens").get<int>() == 1 << 20);

  {
    kiln::train::MetricsLog log(path, false);  // a new run truncates
    log.write({{"step", 1}});
  }
  CHECK(read_lines(path).size() == 1);
  fs::remove_all(dir);
}

TEST_CASE("MetricsLog errors name the path", "[train][metrics][errors]") {
  fs::path dir = fresh_directory("metrics-errors");
  std::ofstream(dir / "file") << "not a directory";
  fs::path bad = dir / "file" / "metrics.jsonl";
  CHECK_THROWS_WITH(kiln::train::MetricsLog(bad, true), Contains(bad.string()));
  kiln::train::MetricsLog log(dir / "metrics.jsonl", false);
  CHECK_THROWS_WITH(log.write(json::array({1, 2})), Contains("metrics.jsonl") && Contains("JSON object"));
  fs::remove_all(dir);
}

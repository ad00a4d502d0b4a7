// MetricsLog: the run's machine-readable log, one JSON object per line (JSONL).
//
// Each record is written and flushed on its own, so a run that is killed keeps every line it
// logged before the kill, and `tail -f metrics.jsonl | jq` works while the run is live. Append
// mode is how a resumed run continues the same file.
#pragma once

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

namespace kiln::train {

// One JSON object per line (JSONL), flushed after each record so a killed run keeps its log.
class MetricsLog {
 public:
  // Opens (append) or truncates (!append) `path`, creating its parent directory.
  // Throws kiln::Error naming the path when it cannot be opened.
  MetricsLog(const std::filesystem::path& path, bool append);
  ~MetricsLog();
  MetricsLog(const MetricsLog&) = delete;
  MetricsLog& operator=(const MetricsLog&) = delete;

  // Writes `record` (which must be a JSON object) as one line and flushes it.
  // Throws kiln::Error naming the path on a non-object record or a failed write.
  void write(const nlohmann::json& record);

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

}  // namespace kiln::train

// MetricsLog: JSONL through a C stdio stream, flushed per record (see metrics_log.h).
#include "train/metrics_log.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "kernels/error.h"

namespace kiln::train {

MetricsLog::MetricsLog(const std::filesystem::path& path, bool append) : path_(path) {
  std::error_code error;
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path(), error);
  KILN_CHECK(!error, "metrics log ", path.string(), ": cannot create directory ", path.parent_path().string(), " (",
             error.message(), ")");
  file_ = std::fopen(path.c_str(), append ? "a" : "w");
  KILN_CHECK(file_ != nullptr, "metrics log ", path.string(), ": cannot open for writing (", std::strerror(errno), ")");
}

MetricsLog::~MetricsLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void MetricsLog::write(const nlohmann::json& record) {
  KILN_CHECK(record.is_object(), "metrics log ", path_.string(), ": a record must be a JSON object, got ",
             record.type_name());
  // NaN and infinities (a diverged loss) are written as null rather than failing the run.
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  line.push_back('\n');
  bool ok = std::fwrite(line.data(), 1, line.size(), file_) == line.size();
  ok = std::fflush(file_) == 0 && ok;
  KILN_CHECK(ok, "metrics log ", path_.string(), ": write failed (", std::strerror(errno), ")");
}

}  // namespace kiln::train

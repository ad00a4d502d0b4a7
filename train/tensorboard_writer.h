// TensorBoardWriter: scalar (and text) summaries in TensorBoard's event-file format, written
// without TensorFlow or protobuf.
//
// Writes TensorBoard event files: tfevents framing (uint64 length, masked CRC32C of length,
// data, masked CRC32C of data), an Event protobuf per record (wall_time, step, file_version
// "brain.Event:2" first, then Summary with simple_value scalars), hand-encoded protobuf.
// The few protobuf fields needed are encoded by hand (see tensorboard_writer.cpp), which keeps
// the dependency list short; tests read the files back with tensorboard's own loader.
#pragma once

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>

namespace kiln::train {

class TensorBoardWriter {
 public:
  // Creates `log_dir` and a new events.out.tfevents.<unix time>.<host> file in it, and writes
  // the file_version event. Throws kiln::Error naming the path on I/O failure.
  explicit TensorBoardWriter(const std::filesystem::path& log_dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One scalar point (stored as float32 simple_value, as TensorBoard does).
  void add_scalar(const std::string& tag, double value, int64_t step);
  // A text summary (plugin "text", a DT_STRING tensor), shown on TensorBoard's Text tab.
  void add_text(const std::string& tag, const std::string& text, int64_t step);
  // Flushes buffered records to the OS (every record is already flushed as it is written).
  void flush();
  const std::filesystem::path& path() const { return path_; }

 private:
  void write_record(const std::string& event);

  std::filesystem::path path_;
  std::FILE* file_ = nullptr;
};

}  // namespace kiln::train

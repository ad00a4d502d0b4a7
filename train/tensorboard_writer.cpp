// TensorBoardWriter: tfevents records holding hand-encoded Event protobufs.
//
// The messages and field numbers used (tensorflow/core/util/event.proto, summary.proto,
// tensor.proto, tensor_shape.proto):
//   Event          { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//   Summary        { repeated Value value = 1; }
//   Summary.Value  { string tag = 1; float simple_value = 2; TensorProto tensor = 8; SummaryMetadata metadata = 9; }
//   SummaryMetadata{ PluginData plugin_data = 1; }   PluginData { string plugin_name = 1; bytes content = 2; }
//   TensorProto    { DataType dtype = 1; TensorShapeProto tensor_shape = 2; repeated bytes string_val = 8; }
// Protobuf wire format: each field is a varint key (field_number << 3 | wire_type) followed by a
// varint (type 0), 8 little-endian bytes (type 1), a varint length and bytes (type 2), or 4
// little-endian bytes (type 5).
#include "train/tensorboard_writer.h"

#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "kernels/error.h"
#include "train/crc32c.h"

namespace kiln::train {
namespace {

enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };
constexpr int kDataTypeString = 7;  // tensorflow DataType DT_STRING

void put_varint(std::string& out, uint64_t value) {
  while (value >= 0x80) {
    out.push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out.push_back(static_cast<char>(value));
}

void put_key(std::string& out, uint32_t field, WireType type) { put_varint(out, (uint64_t{field} << 3) | type); }

void put_little_endian(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

void put_bytes(std::string& out, uint32_t field, const std::string& bytes) {
  put_key(out, field, kLengthDelimited);
  put_varint(out, bytes.size());
  out += bytes;
}

void put_double(std::string& out, uint32_t field, double value) {
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, kFixed64);
  put_little_endian(out, bits, 8);
}

void put_float(std::string& out, uint32_t field, float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, kFixed32);
  put_little_endian(out, bits, 4);
}

void put_int64(std::string& out, uint32_t field, int64_t value) {
  put_key(out, field, kVarint);
  put_varint(out, static_cast<uint64_t>(value));  // int64 negatives are 10-byte two's complement
}

double unix_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event { wall_time, step, summary { value } }.
std::string summary_event(const std::string& value, int64_t step) {
  std::string summary;
  put_bytes(summary, 1, value);
  std::string event;
  put_double(event, 1, unix_seconds());
  put_int64(event, 2, step);
  put_bytes(event, 5, summary);
  return event;
}

std::string host_name() {
  char name[256] = {};
  if (gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(const std::filesystem::path& log_dir) {
  std::error_code error;
  std::filesystem::create_directories(log_dir, error);
  KILN_CHECK(!error, "tensorboard: cannot create log directory ", log_dir.string(), " (", error.message(), ")");
  // TensorBoard reads every file whose name contains "tfevents"; the pid and a per-process
  // counter (as torch's SummaryWriter adds) keep two writers started in the same second apart.
  static std::atomic<int> writers{0};
  auto seconds = static_cast<long long>(unix_seconds());
  path_ = log_dir / ("events.out.tfevents." + std::to_string(seconds) + "." + host_name() + "." +
                     std::to_string(getpid()) + "." + std::to_string(writers++));
  file_ = std::fopen(path_.c_str(), "wbx");
  KILN_CHECK(file_ != nullptr, "tensorboard: cannot create event file ", path_.string(), " (", std::strerror(errno),
             ")");
  std::string event;
  put_double(event, 1, unix_seconds());
  put_int64(event, 2, 0);
  put_bytes(event, 3, "brain.Event:2");
  write_record(event);
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_ != nullptr) std::fclose(file_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step) {
  std::string summary_value;
  put_bytes(summary_value, 1, tag);
  put_float(summary_value, 2, static_cast<float>(value));
  write_record(summary_event(summary_value, step));
}

void TensorBoardWriter::add_text(const std::string& tag, const std::string& text, int64_t step) {
  std::string plugin_data;
  put_bytes(plugin_data, 1, "text");
  std::string metadata;
  put_bytes(metadata, 1, plugin_data);
  std::string tensor;  // a scalar (empty shape) DT_STRING tensor holding the text
  put_key(tensor, 1, kVarint);
  put_varint(tensor, kDataTypeString);
  put_bytes(tensor, 2, "");
  put_bytes(tensor, 8, text);
  std::string summary_value;
  put_bytes(summary_value, 1, tag);
  put_bytes(summary_value, 8, tensor);
  put_bytes(summary_value, 9, metadata);
  write_record(summary_event(summary_value, step));
}

void TensorBoardWriter::flush() {
  KILN_CHECK(std::fflush(file_) == 0, "tensorboard: flush of ", path_.string(), " failed (", std::strerror(errno), ")");
}

// Record framing (tensorflow/core/lib/io/record_writer.cc):
//   uint64 length, uint32 masked_crc32c(length bytes), data, uint32 masked_crc32c(data).
void TensorBoardWriter::write_record(const std::string& event) {
  std::string header;
  put_little_endian(header, event.size(), 8);
  put_little_endian(header, masked_crc32c(header.data(), header.size()), 4);
  std::string footer;
  put_little_endian(footer, masked_crc32c(event.data(), event.size()), 4);
  bool ok = std::fwrite(header.data(), 1, header.size(), file_) == header.size();
  ok = ok && std::fwrite(event.data(), 1, event.size(), file_) == event.size();
  ok = ok && std::fwrite(footer.data(), 1, footer.size(), file_) == footer.size();
  KILN_CHECK(ok, "tensorboard: write to ", path_.string(), " failed (", std::strerror(errno), ")");
  // Every record reaches the OS at once, so a live TensorBoard sees it and a killed run keeps it.
  flush();
}

}  // namespace kiln::train

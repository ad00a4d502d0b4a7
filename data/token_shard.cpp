// Writing and memory-mapping llm.c token shards (see token_shard.h).
#include "data/token_shard.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

#include "kernels/error.h"

namespace kiln::data {

static_assert(std::endian::native == std::endian::little, "token shards are little-endian");

int shard_token_bytes(int64_t vocab_size) { return vocab_size <= 65536 ? 2 : 4; }

void write_token_shard(const std::string& path, std::span<const TokenId> tokens, int64_t vocab_size) {
  KILN_CHECK(vocab_size > 0 && vocab_size <= (int64_t{1} << 32), "write_token_shard: ", path, ": vocab_size ",
             vocab_size, " is not in [1, 2^32]");
  KILN_CHECK(tokens.size() <= static_cast<size_t>(INT32_MAX), "write_token_shard: ", path, ": ", tokens.size(),
             " tokens do not fit the header's int32 count; split them into several shards");
  const int width = shard_token_bytes(vocab_size);
  for (size_t i = 0; i < tokens.size(); ++i) {
    KILN_CHECK(tokens[i] >= 0 && tokens[i] < vocab_size, "write_token_shard: ", path, ": token ", i, " is ", tokens[i],
               ", outside the vocabulary [0, ", vocab_size, ")");
  }
  std::vector<int32_t> header(256, 0);
  header[0] = width == 2 ? kShardMagicUint16 : kShardMagicUint32;
  header[1] = width == 2 ? kShardVersionUint16 : kShardVersionUint32;
  header[2] = static_cast<int32_t>(tokens.size());
  auto write = [&](std::ostream& out) {
    out.write(reinterpret_cast<const char*>(header.data()), kShardHeaderBytes);
    // Converted and written a chunk at a time, so a large shard needs no second full copy.
    constexpr size_t chunk = size_t{1} << 16;
    std::vector<uint16_t> narrow(width == 2 ? chunk : 0);
    std::vector<uint32_t> wide(width == 4 ? chunk : 0);
    for (size_t begin = 0; begin < tokens.size(); begin += chunk) {
      size_t count = std::min(chunk, tokens.size() - begin);
      for (size_t i = 0; i < count; ++i) {
        if (width == 2) {
          narrow[i] = static_cast<uint16_t>(tokens[begin + i]);
        } else {
          wide[i] = static_cast<uint32_t>(tokens[begin + i]);
        }
      }
      const char* data = width == 2 ? reinterpret_cast<const char*>(narrow.data()) : reinterpret_cast<const char*>(wide.data());
      out.write(data, static_cast<std::streamsize>(count * static_cast<size_t>(width)));
    }
  };
  write_file_atomically(path, write, "write_token_shard");
}

TokenShard::TokenShard(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  KILN_CHECK(fd >= 0, "token shard ", path, ": cannot open: ", std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    int error = errno;
    ::close(fd);
    KILN_FAIL("token shard ", path, ": cannot stat: ", std::strerror(error));
  }
  const auto file_bytes = static_cast<int64_t>(info.st_size);
  if (file_bytes < kShardHeaderBytes) {
    ::close(fd);
    KILN_FAIL("token shard ", path, ": truncated: ", file_bytes, " bytes, less than the ", kShardHeaderBytes, "-byte header");
  }
  mapping_bytes_ = static_cast<size_t>(file_bytes);
  mapping_ = ::mmap(nullptr, mapping_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_error = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (mapping_ == MAP_FAILED) {
    mapping_ = nullptr;
    KILN_FAIL("token shard ", path, ": mmap failed: ", std::strerror(map_error));
  }
  try {
    int32_t header[3];
    std::memcpy(header, mapping_, sizeof(header));
    const int32_t magic = header[0], version = header[1], count = header[2];
    KILN_CHECK(magic == kShardMagicUint16 || magic == kShardMagicUint32, "token shard ", path, ": bad magic ", magic,
               " (expected ", kShardMagicUint16, " for uint16 tokens or ", kShardMagicUint32, " for uint32 tokens)");
    const int32_t expected_version = magic == kShardMagicUint16 ? kShardVersionUint16 : kShardVersionUint32;
    KILN_CHECK(version == expected_version, "token shard ", path, ": unsupported version ", version, " (magic ", magic,
               " expects version ", expected_version, ")");
    KILN_CHECK(count >= 0, "token shard ", path, ": negative token count ", count, " in the header");
    token_bytes_ = magic == kShardMagicUint16 ? 2 : 4;
    const int64_t expected_bytes = kShardHeaderBytes + int64_t{count} * token_bytes_;
    KILN_CHECK(file_bytes >= expected_bytes, "token shard ", path, ": truncated: the header says ", count, " tokens (",
               expected_bytes, " bytes) but the file has ", file_bytes, " bytes");
    KILN_CHECK(file_bytes == expected_bytes, "token shard ", path, ": the header's token count ", count,
               " does not match the file size: ", file_bytes, " bytes instead of ", expected_bytes);
    size_ = count;
    tokens_ = static_cast<const char*>(mapping_) + kShardHeaderBytes;
  } catch (...) {
    release();
    throw;
  }
}

void TokenShard::release() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
  mapping_ = nullptr;
  tokens_ = nullptr;
  mapping_bytes_ = 0;
  size_ = 0;
}

TokenShard::~TokenShard() { release(); }

TokenShard::TokenShard(TokenShard&& other) noexcept { *this = std::move(other); }

TokenShard& TokenShard::operator=(TokenShard&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    mapping_ = std::exchange(other.mapping_, nullptr);
    mapping_bytes_ = std::exchange(other.mapping_bytes_, 0);
    tokens_ = std::exchange(other.tokens_, nullptr);
    size_ = std::exchange(other.size_, 0);
    token_bytes_ = other.token_bytes_;
  }
  return *this;
}

void TokenShard::read(int64_t start, int64_t count, int64_t* out) const {
  KILN_CHECK(start >= 0 && count >= 0 && start + count <= size_, "token shard ", path_, ": cannot read tokens [", start,
             ", ", start + count, ") of ", size_);
  if (token_bytes_ == 2) {
    const auto* tokens = static_cast<const uint16_t*>(tokens_) + start;
    for (int64_t i = 0; i < count; ++i) out[i] = tokens[i];
  } else {
    const auto* tokens = static_cast<const uint32_t*>(tokens_) + start;
    for (int64_t i = 0; i < count; ++i) out[i] = tokens[i];
  }
}

}  // namespace kiln::data

// llm.c token shards: the header and token widths as bytes on disk, and the reader's errors.
#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "data/token_shard.h"
#include "kernels/error.h"

using namespace kiln::data;
using Catch::Contains;

namespace {

std::string scratch(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("kiln-test-data-" + name)).string();
}

std::string file_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

int32_t header_field(const std::string& bytes, int index) {
  int32_t value;
  std::memcpy(&value, bytes.data() + 4 * index, 4);
  return value;
}

void set_header_field(const std::string& path, int index, int32_t value) {
  std::fstream file(path, std::ios::binary | std::ios::in | std::ios::out);
  file.seekp(4 * index);
  file.write(reinterpret_cast<const char*>(&value), 4);
}

}  // namespace

TEST_CASE("token shards: uint16 up to 65536 ids, uint32 beyond, llm.c's header", "[data][shards]") {
  struct Case {
    int64_t vocab_size;
    std::vector<TokenId> tokens;
    int32_t magic, version, width;
  };
  const std::vector<Case> cases = {
      {1000, {0, 1, 999, 500, 7}, 20240520, 1, 2},
      {65536, {65535, 0, 65534}, 20240520, 1, 2},
      {70000, {69999, 65536, 3, 0}, 20240801, 7, 4},
      {50257, {}, 20240520, 1, 2},
  };
  const std::string path = scratch("shard.bin");
  for (const Case& c : cases) {
    write_token_shard(path, c.tokens, c.vocab_size);
    const std::string bytes = file_bytes(path);
    REQUIRE(bytes.size() == 1024 + c.tokens.size() * static_cast<size_t>(c.width));
    CHECK(header_field(bytes, 0) == c.magic);
    CHECK(header_field(bytes, 1) == c.version);
    CHECK(header_field(bytes, 2) == static_cast<int32_t>(c.tokens.size()));
    for (int i = 3; i < 256; ++i) CHECK(header_field(bytes, i) == 0);
    for (size_t i = 0; i < c.tokens.size(); ++i) {  // little-endian, right after the header
      uint32_t value = 0;
      std::memcpy(&value, bytes.data() + 1024 + i * static_cast<size_t>(c.width), static_cast<size_t>(c.width));
      CHECK(value == static_cast<uint32_t>(c.tokens[i]));
    }
    TokenShard shard(path);
    CHECK(shard.size() == static_cast<int64_t>(c.tokens.size()));
    CHECK(shard.token_bytes() == c.width);
    std::vector<int64_t> read(c.tokens.size());
    shard.read(0, shard.size(), read.data());
    for (size_t i = 0; i < c.tokens.size(); ++i) {
      CHECK(read[i] == c.tokens[i]);
      CHECK(shard[static_cast<int64_t>(i)] == c.tokens[i]);
    }
  }
  std::vector<int64_t> out(4);
  CHECK_THROWS_WITH(TokenShard(path).read(0, 1, out.data()), Contains("cannot read tokens [0, 1) of 0"));
  std::vector<TokenId> bad = {1, 2, 1000};
  CHECK_THROWS_WITH(write_token_shard(path, bad, 1000), Contains(path) && Contains("token 2 is 1000"));
  std::filesystem::remove(path);
}

TEST_CASE("token shard errors name the file and the problem", "[data][shards][errors]") {
  const std::string path = scratch("bad-shard.bin");
  const std::vector<TokenId> tokens = {1, 2, 3, 4, 5, 6};
  auto fresh = [&] { write_token_shard(path, tokens, 100); };

  fresh();
  set_header_field(path, 0, 12345);
  CHECK_THROWS_WITH(TokenShard(path), Contains(path) && Contains("bad magic 12345") && Contains("20240520"));

  fresh();
  set_header_field(path, 1, 2);
  CHECK_THROWS_WITH(TokenShard(path), Contains(path) && Contains("unsupported version 2") && Contains("expects version 1"));

  fresh();
  set_header_field(path, 0, 20240801);  // uint32 magic with uint16 version
  CHECK_THROWS_WITH(TokenShard(path), Contains("unsupported version 1") && Contains("expects version 7"));

  fresh();
  std::filesystem::resize_file(path, 1024 + 2 * 6 - 1);
  CHECK_THROWS_WITH(TokenShard(path), Contains(path) && Contains("truncated: the header says 6 tokens (1036 bytes)") &&
                                          Contains("1035 bytes"));

  fresh();
  std::filesystem::resize_file(path, 1000);
  CHECK_THROWS_WITH(TokenShard(path), Contains(path) && Contains("truncated: 1000 bytes, less than the 1024-byte header"));

  fresh();
  set_header_field(path, 2, 4);
  CHECK_THROWS_WITH(TokenShard(path), Contains(path) && Contains("token count 4 does not match the file size: 1036 bytes instead of 1032"));

  std::filesystem::remove(path);
  CHECK_THROWS_WITH(TokenShard(path), Contains(path) && Contains("cannot open"));
}

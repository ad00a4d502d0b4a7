// Token shards in llm.c's format: the tokenised dataset that kiln-prepare writes and the loader
// memory-maps.
//
//   header: 256 little-endian int32: [0] magic, [1] version, [2] token count, the rest 0
//   data:   token count little-endian tokens right after the 1024-byte header
//
//   magic 20240520, version 1: uint16 tokens (vocabularies of up to 65536 ids, GPT-2's)
//   magic 20240801, version 7: uint32 tokens (larger vocabularies, e.g. Llama 3's)
//
// The reader checks magic, version and that the file is exactly header + count tokens long;
// every error names the file.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "data/tokenizer.h"

namespace kiln::data {

inline constexpr int32_t kShardMagicUint16 = 20240520;
inline constexpr int32_t kShardVersionUint16 = 1;
inline constexpr int32_t kShardMagicUint32 = 20240801;
inline constexpr int32_t kShardVersionUint32 = 7;
inline constexpr int64_t kShardHeaderBytes = 256 * 4;

// The bytes per token a shard uses for a vocabulary: 2 when every id fits uint16, else 4.
int shard_token_bytes(int64_t vocab_size);

// Writes `tokens` (each in [0, vocab_size), checked) to `path` through a temporary file and a
// rename. The token count must fit the int32 header field.
void write_token_shard(const std::string& path, std::span<const TokenId> tokens, int64_t vocab_size);

// A read-only memory map of a shard, checked when opened. Move-only.
class TokenShard {
 public:
  explicit TokenShard(const std::string& path);
  ~TokenShard();
  TokenShard(TokenShard&& other) noexcept;
  TokenShard& operator=(TokenShard&& other) noexcept;
  TokenShard(const TokenShard&) = delete;
  TokenShard& operator=(const TokenShard&) = delete;

  const std::string& path() const { return path_; }
  int64_t size() const { return size_; }            // tokens
  int token_bytes() const { return token_bytes_; }  // 2 or 4
  int64_t operator[](int64_t index) const {
    return token_bytes_ == 2 ? static_cast<const uint16_t*>(tokens_)[index] : static_cast<const uint32_t*>(tokens_)[index];
  }
  // Copies tokens [start, start + count) to out as int64 (bounds checked).
  void read(int64_t start, int64_t count, int64_t* out) const;

 private:
  void release();

  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  const void* tokens_ = nullptr;
  int64_t size_ = 0;
  int token_bytes_ = 2;
};

}  // namespace kiln::data

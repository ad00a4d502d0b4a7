// BpeTokenizer: byte-level byte-pair encoding (GPT-2's scheme).
//
// Text is split into pieces by GPT-2's pre-tokenisation pattern (data/pretokenizer.h); each
// piece's bytes start as byte tokens and are merged by rank, lowest first, so merges never
// cross a piece boundary. Every byte has a token, so encoding is lossless on any byte string,
// valid UTF-8 or not. Special tokens (e.g. <|endoftext|>) are whole strings with their own ids:
// encode() recognises them in the text while special tokens are enabled (the default);
// encode_ordinary() never does. No merge ever produces a special token.
//
// Vocabulary: 256 byte tokens, one token per merge (its result), then the special tokens. A
// trained tokenizer numbers them 0..255, 256.., then the specials; a GPT-2 tokenizer keeps
// GPT-2's ids. Files: kiln's JSON (bpe_files.cpp) or GPT-2's encoder.json + vocab.bpe.
#pragma once

#include <array>
#include <optional>
#include <unordered_map>

#include "data/tokenizer.h"

namespace kiln::data {

// Merge `left` followed by `right` into `result`; a merge's rank is its index in the list.
struct BpeMerge {
  TokenId left = 0, right = 0, result = 0;
  bool operator==(const BpeMerge&) const = default;
};

struct SpecialToken {
  std::string text;
  TokenId id = 0;
  bool operator==(const SpecialToken&) const = default;
};

class BpeTrainerOptions {
 public:
  // The vocabulary size to reach: 256 byte tokens + merges + special tokens.
  explicit BpeTrainerOptions(int64_t vocab_size) : vocab_size_(vocab_size) {}
  BpeTrainerOptions& special_tokens(std::vector<std::string> value) { special_tokens_ = std::move(value); return *this; }
  int64_t vocab_size() const { return vocab_size_; }
  const std::vector<std::string>& special_tokens() const { return special_tokens_; }

 private:
  int64_t vocab_size_;
  std::vector<std::string> special_tokens_{"<|endoftext|>"};
};

class BpeTokenizer : public Tokenizer {
 public:
  // Checks that the ids 0..vocab_size-1 are each defined exactly once (by a byte, a merge
  // result or a special token) and that a merge only uses tokens defined before it. `source`
  // names the origin in errors.
  BpeTokenizer(const std::array<TokenId, 256>& byte_tokens, std::vector<BpeMerge> merges,
               std::vector<SpecialToken> special_tokens, const std::string& source = "BpeTokenizer");

  // Learns merges on `corpus` (most frequent adjacent pair first; ties to the smallest
  // (left, right) ids) until the vocabulary reaches options.vocab_size() or no pair is left.
  // Occurrences of the special tokens in the corpus are cut out, not learned from.
  static BpeTokenizer train(std::string_view corpus, const BpeTrainerOptions& options);
  static BpeTokenizer load(const std::string& path);
  static BpeTokenizer from_json(const nlohmann::json& json, const std::string& source);
  // GPT-2's files: encoder.json (token string -> id, bytes shown through GPT-2's
  // bytes-to-unicode table) and vocab.bpe (one merge "a b" per line, by rank). Entries of
  // encoder.json that are neither a byte nor a merge result are special tokens.
  static BpeTokenizer load_gpt2(const std::string& encoder_json_path, const std::string& vocab_bpe_path);

  std::string kind() const override { return "bpe"; }
  int64_t vocab_size() const override { return static_cast<int64_t>(token_bytes_.size()); }
  std::vector<TokenId> encode(std::string_view text) const override;
  std::vector<TokenId> encode_ordinary(std::string_view text) const;
  std::string decode(std::span<const TokenId> tokens) const override;
  void save(const std::string& path) const override;

  void set_special_tokens_enabled(bool enabled) { special_tokens_enabled_ = enabled; }
  bool special_tokens_enabled() const { return special_tokens_enabled_; }
  std::optional<TokenId> special_token_id(std::string_view text) const;

  const std::array<TokenId, 256>& byte_tokens() const { return byte_tokens_; }
  const std::vector<BpeMerge>& merges() const { return merges_; }
  const std::vector<SpecialToken>& special_tokens() const { return special_tokens_; }
  // The bytes a token stands for (a special token's text).
  const std::string& token_bytes(TokenId id) const;

 private:
  struct RankedMerge {
    int32_t rank;
    TokenId result;
  };
  struct Scratch;
  void encode_text(std::string_view text, std::vector<TokenId>& out, Scratch& scratch) const;
  void encode_piece(std::string_view piece, std::vector<TokenId>& out, Scratch& scratch) const;

  std::array<TokenId, 256> byte_tokens_;
  std::vector<BpeMerge> merges_;
  std::vector<SpecialToken> special_tokens_;
  std::vector<std::string> token_bytes_;                    // id -> bytes
  std::unordered_map<uint64_t, RankedMerge> merge_ranks_;  // (left << 32 | right) -> rank, result
  bool special_tokens_enabled_ = true;
};

// Splits `text` at occurrences of `specials` (earliest first; the longest at one position):
// on_text(segment) for the text between them (only non-empty segments), on_special(index into
// specials) for each occurrence.
template <typename OnText, typename OnSpecial>
void split_on_special_tokens(std::string_view text, const std::vector<std::string>& specials, OnText&& on_text,
                             OnSpecial&& on_special) {
  // next_at[i]: the next occurrence of specials[i] at or after `position` (each text is
  // searched once per occurrence, not once per segment).
  constexpr size_t none = std::string_view::npos;
  std::vector<size_t> next_at(specials.size());
  for (size_t i = 0; i < specials.size(); ++i) next_at[i] = text.find(specials[i]);
  size_t position = 0;
  while (position < text.size()) {
    size_t best_at = none, best = 0;
    for (size_t i = 0; i < specials.size(); ++i) {
      if (next_at[i] != none && next_at[i] < position) next_at[i] = text.find(specials[i], position);
      bool longer = next_at[i] == best_at && best_at != none && specials[i].size() > specials[best].size();
      if (next_at[i] < best_at || longer) {
        best_at = next_at[i];
        best = i;
      }
    }
    size_t segment_end = best_at == none ? text.size() : best_at;
    if (segment_end > position) on_text(text.substr(position, segment_end - position));
    if (best_at == none) break;
    on_special(best);
    position = best_at + specials[best].size();
  }
}

}  // namespace kiln::data

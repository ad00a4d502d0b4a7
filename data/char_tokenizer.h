// CharTokenizer: one token per character, the vocabulary being the distinct characters of a
// training corpus sorted by code point (nanoGPT's shakespeare_char). Characters are Unicode
// code points, so the corpus must be valid UTF-8; text containing a character outside the
// vocabulary cannot be encoded (an error naming the character and its byte offset).
//
// File: {"kind": "char", "version": 1, "characters": ["\n", " ", "!", ...]}, id = array index.
#pragma once

#include <array>
#include <unordered_map>

#include "data/tokenizer.h"

namespace kiln::data {

class CharTokenizer : public Tokenizer {
 public:
  // Each entry one UTF-8 character, strictly increasing by code point (checked).
  explicit CharTokenizer(std::vector<std::string> characters);
  // The distinct characters of `corpus` (which must be valid UTF-8).
  static CharTokenizer train(std::string_view corpus);
  static CharTokenizer load(const std::string& path);
  // `source` (the file) prefixes every error.
  static CharTokenizer from_json(const nlohmann::json& json, const std::string& source);

  std::string kind() const override { return "char"; }
  int64_t vocab_size() const override { return static_cast<int64_t>(characters_.size()); }
  std::vector<TokenId> encode(std::string_view text) const override;
  std::string decode(std::span<const TokenId> tokens) const override;
  void save(const std::string& path) const override;
  const std::vector<std::string>& characters() const { return characters_; }

 private:
  std::vector<std::string> characters_;
  std::array<TokenId, 128> ascii_ids_;               // -1 where absent
  std::unordered_map<uint32_t, TokenId> other_ids_;  // code points >= 128
};

}  // namespace kiln::data

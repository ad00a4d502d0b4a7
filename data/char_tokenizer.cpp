// Character-level tokenizer (see char_tokenizer.h).
#include "data/char_tokenizer.h"

#include <cstdio>
#include <set>

#include "autograd/json_reader.h"
#include "data/unicode.h"
#include "kernels/error.h"

namespace kiln::data {

namespace {

// "'a' (U+0061)" for printable ASCII, "U+000A" otherwise: readable in an error message.
std::string describe(uint32_t code_point) {
  char hex[16];
  std::snprintf(hex, sizeof(hex), "U+%04X", static_cast<unsigned>(code_point));
  if (code_point >= 0x21 && code_point < 0x7F) return "'" + std::string(1, static_cast<char>(code_point)) + "' (" + hex + ")";
  return hex;
}

// The character at text[position]; invalid UTF-8 is an error naming `who` and the offset.
DecodedChar decode_strict(std::string_view text, size_t position, const std::string& who) {
  DecodedChar decoded = decode_utf8(text, position);
  KILN_CHECK(decoded.valid, who, ": invalid UTF-8 byte 0x", std::hex, decoded.code_point, std::dec, " at byte offset ",
             position, " (the char tokenizer works on Unicode characters; use the bpe tokenizer for arbitrary bytes)");
  return decoded;
}

}  // namespace

CharTokenizer::CharTokenizer(std::vector<std::string> characters) : characters_(std::move(characters)) {
  KILN_CHECK(!characters_.empty(), "CharTokenizer: the vocabulary is empty");
  ascii_ids_.fill(-1);
  uint32_t previous = 0;
  for (size_t id = 0; id < characters_.size(); ++id) {
    const std::string& character = characters_[id];
    std::string who = "CharTokenizer: character " + std::to_string(id);
    KILN_CHECK(!character.empty(), who, " is empty");
    DecodedChar decoded = decode_strict(character, 0, who);
    KILN_CHECK(static_cast<size_t>(decoded.length) == character.size(), who, " holds more than one character");
    KILN_CHECK(id == 0 || decoded.code_point > previous, who, " (", describe(decoded.code_point),
               ") is not after the previous one (", describe(previous), "): the vocabulary must be sorted and distinct");
    previous = decoded.code_point;
    if (decoded.code_point < 128) {
      ascii_ids_[decoded.code_point] = static_cast<TokenId>(id);
    } else {
      other_ids_[decoded.code_point] = static_cast<TokenId>(id);
    }
  }
}

CharTokenizer CharTokenizer::train(std::string_view corpus) {
  KILN_CHECK(!corpus.empty(), "CharTokenizer::train: the corpus is empty");
  std::set<uint32_t> seen;
  std::set<std::string> characters;  // UTF-8 byte order is code point order
  for (size_t position = 0; position < corpus.size();) {
    DecodedChar decoded = decode_strict(corpus, position, "CharTokenizer::train");
    if (seen.insert(decoded.code_point).second) characters.emplace(corpus.substr(position, static_cast<size_t>(decoded.length)));
    position += static_cast<size_t>(decoded.length);
  }
  return CharTokenizer(std::vector<std::string>(characters.begin(), characters.end()));
}

std::vector<TokenId> CharTokenizer::encode(std::string_view text) const {
  std::vector<TokenId> tokens;
  tokens.reserve(text.size());
  for (size_t position = 0; position < text.size();) {
    DecodedChar decoded = decode_strict(text, position, "CharTokenizer::encode");
    TokenId id = -1;
    if (decoded.code_point < 128) {
      id = ascii_ids_[decoded.code_point];
    } else if (auto found = other_ids_.find(decoded.code_point); found != other_ids_.end()) {
      id = found->second;
    }
    KILN_CHECK(id >= 0, "CharTokenizer::encode: character ", describe(decoded.code_point), " at byte offset ", position,
               " is not in the vocabulary of ", characters_.size(), " characters");
    tokens.push_back(id);
    position += static_cast<size_t>(decoded.length);
  }
  return tokens;
}

std::string CharTokenizer::decode(std::span<const TokenId> tokens) const {
  std::string text;
  text.reserve(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    KILN_CHECK(tokens[i] >= 0 && tokens[i] < vocab_size(), "CharTokenizer::decode: token ", tokens[i], " at index ", i,
               " is outside the vocabulary [0, ", vocab_size(), ")");
    text += characters_[static_cast<size_t>(tokens[i])];
  }
  return text;
}

void CharTokenizer::save(const std::string& path) const {
  nlohmann::json json = {{"kind", "char"}, {"version", 1}, {"characters", characters_}};
  write_file_atomically(path, json.dump(1) + "\n", "CharTokenizer::save");
}

CharTokenizer CharTokenizer::from_json(const nlohmann::json& json, const std::string& source) {
  try {
    JsonReader reader(json, "");
    std::string kind;
    int64_t version = 0;
    std::vector<std::string> characters;
    reader.require("kind", kind);
    reader.require("version", version);
    reader.require("characters", characters);
    reader.finish();
    KILN_CHECK(kind == "char", "kind: expected \"char\", got \"", kind, "\"");
    KILN_CHECK(version == 1, "version: expected 1, got ", version);
    return CharTokenizer(std::move(characters));
  } catch (const Error& error) {
    KILN_FAIL("tokenizer ", source, ": ", error.what());
  }
}

CharTokenizer CharTokenizer::load(const std::string& path) { return from_json(read_tokenizer_json(path), path); }

}  // namespace kiln::data

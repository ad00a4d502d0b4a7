// BpeTokenizer's files: kiln's JSON format and GPT-2's encoder.json + vocab.bpe.
//
// kiln's format lists every id explicitly, so it holds trained and GPT-2 vocabularies alike:
//
//   {"kind": "bpe", "version": 1, "pretokenizer": "gpt2", "vocab_size": 4096,
//    "byte_tokens": [256 ids: byte b's token],
//    "merges": [[left, right, result], ...]            (by rank, one per line),
//    "special_tokens": [{"text": "<|endoftext|>", "id": 4095}]}
//
// GPT-2's files show bytes through its bytes-to-unicode table: the printable bytes '!'..'~',
// 0xA1..0xAC and 0xAE..0xFF stand for themselves, and the other 68 bytes, in increasing order,
// for U+0100, U+0101, ... (so ' ' is 'Ġ' U+0120 and '\n' is 'Ċ' U+010A). A token's string in
// encoder.json is its bytes written that way; vocab.bpe's lines "a b" merge tokens a and b.
#include <algorithm>
#include <sstream>

#include "autograd/json_reader.h"
#include "data/bpe_tokenizer.h"
#include "data/unicode.h"
#include "kernels/error.h"

namespace kiln::data {

namespace {

// byte -> the code point GPT-2 shows it as.
std::array<uint32_t, 256> gpt2_byte_to_code_point() {
  std::array<uint32_t, 256> table{};
  uint32_t next_unprintable = 256;
  for (uint32_t b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174);
    table[b] = printable ? b : next_unprintable++;
  }
  return table;
}

std::string utf8_encode(uint32_t code_point) {
  std::string out;
  if (code_point < 0x80) {
    out += static_cast<char>(code_point);
  } else if (code_point < 0x800) {
    out += static_cast<char>(0xC0 | (code_point >> 6));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  } else {  // the table only reaches U+0143
    out += static_cast<char>(0xE0 | (code_point >> 12));
    out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (code_point & 0x3F));
  }
  return out;
}

// GPT-2's string for a token -> its bytes, or nullopt when a character is not in the table
// (a special token such as "<|endoftext|>" is printable ASCII and always decodes).
std::optional<std::string> gpt2_string_to_bytes(std::string_view text) {
  static const std::unordered_map<uint32_t, char> byte_of = [] {
    std::unordered_map<uint32_t, char> inverse;
    auto table = gpt2_byte_to_code_point();
    for (int b = 0; b < 256; ++b) inverse[table[static_cast<size_t>(b)]] = static_cast<char>(b);
    return inverse;
  }();
  std::string bytes;
  for (size_t position = 0; position < text.size();) {
    DecodedChar decoded = decode_utf8(text, position);
    auto found = byte_of.find(decoded.code_point);
    if (!decoded.valid || found == byte_of.end()) return std::nullopt;
    bytes += found->second;
    position += static_cast<size_t>(decoded.length);
  }
  return bytes;
}

TokenId read_id(const nlohmann::json& value, const std::string& where) {
  KILN_CHECK(value.is_number_integer(), where, ": expected an integer token id, got ", value.dump());
  int64_t id = value.get<int64_t>();
  KILN_CHECK(id >= 0 && id <= INT32_MAX, where, ": token id ", id, " is out of range");
  return static_cast<TokenId>(id);
}

}  // namespace

void BpeTokenizer::save(const std::string& path) const {
  std::ostringstream out;
  out << "{\n \"kind\": \"bpe\",\n \"version\": 1,\n \"pretokenizer\": \"gpt2\",\n \"vocab_size\": " << vocab_size()
      << ",\n \"byte_tokens\": [";
  for (size_t b = 0; b < 256; ++b) out << (b ? ", " : "") << byte_tokens_[b];
  out << "],\n \"merges\": [";
  for (size_t i = 0; i < merges_.size(); ++i) {
    out << (i ? ",\n  [" : "\n  [") << merges_[i].left << ", " << merges_[i].right << ", " << merges_[i].result << "]";
  }
  out << (merges_.empty() ? "],\n" : "\n ],\n") << " \"special_tokens\": [";
  for (size_t i = 0; i < special_tokens_.size(); ++i) {
    std::string text;
    try {
      text = nlohmann::json(special_tokens_[i].text).dump();
    } catch (const nlohmann::json::exception&) {
      KILN_FAIL("BpeTokenizer::save: ", path, ": special token ", special_tokens_[i].id, " is not valid UTF-8 and cannot be stored in JSON");
    }
    out << (i ? ", " : "") << "{\"text\": " << text << ", \"id\": " << special_tokens_[i].id << "}";
  }
  out << "]\n}\n";
  write_file_atomically(path, out.str(), "BpeTokenizer::save");
}

BpeTokenizer BpeTokenizer::from_json(const nlohmann::json& json, const std::string& source) {
  try {
    JsonReader reader(json, "");
    std::string kind, pretokenizer;
    int64_t version = 0, vocab_size = 0;
    std::vector<int64_t> byte_ids;
    reader.require("kind", kind);
    reader.require("version", version);
    reader.require("pretokenizer", pretokenizer);
    reader.require("vocab_size", vocab_size);
    reader.require("byte_tokens", byte_ids);
    const nlohmann::json& merge_list = reader.raw("merges");
    const nlohmann::json& special_list = reader.raw("special_tokens");
    reader.finish();
    KILN_CHECK(kind == "bpe", "kind: expected \"bpe\", got \"", kind, "\"");
    KILN_CHECK(version == 1, "version: expected 1, got ", version);
    KILN_CHECK(pretokenizer == "gpt2", "pretokenizer: expected \"gpt2\", got \"", pretokenizer, "\"");
    KILN_CHECK(byte_ids.size() == 256, "byte_tokens: expected 256 ids, got ", byte_ids.size());
    std::array<TokenId, 256> byte_tokens{};
    for (size_t b = 0; b < 256; ++b) byte_tokens[b] = read_id(byte_ids[b], "byte_tokens[" + std::to_string(b) + "]");

    KILN_CHECK(merge_list.is_array(), "merges: expected an array, got ", merge_list.type_name());
    std::vector<BpeMerge> merges;
    merges.reserve(merge_list.size());
    for (size_t i = 0; i < merge_list.size(); ++i) {
      std::string where = "merges[" + std::to_string(i) + "]";
      const nlohmann::json& m = merge_list[i];
      KILN_CHECK(m.is_array() && m.size() == 3, where, ": expected [left, right, result], got ", m.dump());
      merges.push_back({read_id(m[0], where), read_id(m[1], where), read_id(m[2], where)});
    }
    KILN_CHECK(special_list.is_array(), "special_tokens: expected an array, got ", special_list.type_name());
    std::vector<SpecialToken> specials;
    for (size_t i = 0; i < special_list.size(); ++i) {
      JsonReader entry(special_list[i], "special_tokens[" + std::to_string(i) + "]");
      SpecialToken token;
      int64_t id = -1;
      entry.require("text", token.text);
      entry.require("id", id);
      entry.finish();
      token.id = read_id(id, entry.where("id"));
      specials.push_back(std::move(token));
    }
    BpeTokenizer tokenizer(byte_tokens, std::move(merges), std::move(specials), "bpe tokenizer");
    KILN_CHECK(tokenizer.vocab_size() == vocab_size, "vocab_size: the file says ", vocab_size, " but defines ",
               tokenizer.vocab_size(), " tokens");
    return tokenizer;
  } catch (const Error& error) {
    KILN_FAIL("tokenizer ", source, ": ", error.what());
  }
}

BpeTokenizer BpeTokenizer::load(const std::string& path) { return from_json(read_tokenizer_json(path), path); }

BpeTokenizer BpeTokenizer::load_gpt2(const std::string& encoder_json_path, const std::string& vocab_bpe_path) {
  nlohmann::json encoder;
  try {
    encoder = nlohmann::json::parse(read_file(encoder_json_path, "BpeTokenizer::load_gpt2"));
  } catch (const nlohmann::json::exception& error) {
    KILN_FAIL("BpeTokenizer::load_gpt2: ", encoder_json_path, " is not valid JSON: ", error.what());
  }
  KILN_CHECK(encoder.is_object(), "BpeTokenizer::load_gpt2: ", encoder_json_path, ": expected an object of token -> id");
  auto id_of = [&](const std::string& token, const std::string& where) {
    KILN_CHECK(encoder.contains(token), "BpeTokenizer::load_gpt2: ", where, ": token \"", token, "\" is not in ", encoder_json_path);
    return read_id(encoder[token], encoder_json_path + ": \"" + token + "\"");
  };

  std::array<TokenId, 256> byte_tokens{};
  auto table = gpt2_byte_to_code_point();
  for (size_t b = 0; b < 256; ++b) byte_tokens[b] = id_of(utf8_encode(table[b]), "byte " + std::to_string(b));

  std::vector<BpeMerge> merges;
  std::istringstream lines(read_file(vocab_bpe_path, "BpeTokenizer::load_gpt2"));
  std::string line;
  for (int64_t number = 1; std::getline(lines, line); ++number) {
    if (line.empty() || (number == 1 && line.rfind("#version", 0) == 0)) continue;
    std::string where = vocab_bpe_path + ":" + std::to_string(number);
    size_t space = line.find(' ');
    bool two_parts = space != std::string::npos && space > 0 && space + 1 < line.size() && line.find(' ', space + 1) == std::string::npos;
    KILN_CHECK(two_parts, where, ": expected two tokens separated by one space, got \"", line, "\"");
    std::string left = line.substr(0, space), right = line.substr(space + 1);
    merges.push_back({id_of(left, where), id_of(right, where), id_of(left + right, where)});
  }

  std::vector<bool> used(encoder.size(), false);
  auto mark = [&](TokenId id) { if (static_cast<size_t>(id) < used.size()) used[static_cast<size_t>(id)] = true; };
  for (TokenId id : byte_tokens) mark(id);
  for (const BpeMerge& m : merges) mark(m.result);
  std::vector<SpecialToken> specials;
  for (const auto& [token, value] : encoder.items()) {
    TokenId id = read_id(value, encoder_json_path + ": \"" + token + "\"");
    if (static_cast<size_t>(id) < used.size() && used[static_cast<size_t>(id)]) continue;
    specials.push_back({gpt2_string_to_bytes(token).value_or(token), id});
  }
  std::sort(specials.begin(), specials.end(), [](const SpecialToken& a, const SpecialToken& b) { return a.id < b.id; });
  BpeTokenizer tokenizer(byte_tokens, std::move(merges), std::move(specials), encoder_json_path + " + " + vocab_bpe_path);
  KILN_CHECK(static_cast<size_t>(tokenizer.vocab_size()) == encoder.size(), "BpeTokenizer::load_gpt2: ", encoder_json_path,
             " has ", encoder.size(), " entries but only ", tokenizer.vocab_size(), " distinct tokens (repeated ids)");
  return tokenizer;
}

}  // namespace kiln::data

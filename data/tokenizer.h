// Tokenizer: the interface every tokenizer kind implements (text <-> token ids), and the
// factory that loads any kind from its JSON file.
//
// Kinds: "char" (data/char_tokenizer.h: one token per character of the training corpus) and
// "bpe" (data/bpe_tokenizer.h: byte-level BPE, lossless on every byte string). Files are
// kiln's own JSON; each starts with {"kind": ..., "version": 1}.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <ostream>
#include <nlohmann/json.hpp>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kiln::data {

// Token ids are int32 everywhere (shards store them as uint16 or uint32).
using TokenId = int32_t;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // "char" or "bpe": the "kind" field of the tokenizer's file.
  virtual std::string kind() const = 0;
  // Ids are 0 .. vocab_size() - 1.
  virtual int64_t vocab_size() const = 0;
  virtual std::vector<TokenId> encode(std::string_view text) const = 0;
  // Throws kiln::Error naming the first id outside the vocabulary.
  virtual std::string decode(std::span<const TokenId> tokens) const = 0;
  // Writes the tokenizer's JSON file (replacing `path` atomically).
  virtual void save(const std::string& path) const = 0;
};

// Loads a tokenizer of any kind from its file; errors name the file.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

// A tokenizer file's JSON (errors name the file).
nlohmann::json read_tokenizer_json(const std::string& path);

// The whole content of a file as bytes; `who` prefixes the error ("kiln-prepare: cannot read
// corpus.txt: No such file or directory").
std::string read_file(const std::string& path, const std::string& who);
// Creates `path` through a temporary file (filled by write(stream)) and a rename, so that a
// reader never sees a partial file.
void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write, const std::string& who);
void write_file_atomically(const std::string& path, std::string_view contents, const std::string& who);

}  // namespace kiln::data

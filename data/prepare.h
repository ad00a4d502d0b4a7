// Dataset preparation behind kiln-prepare: text files -> a tokenizer + train/val token shards.
//
//   kiln-prepare --out DIR [--tokenizer char|bpe] [--vocab-size N] [--val-fraction F] FILE...
//
// writes DIR/tokenizer.json, DIR/train.bin and (when F > 0) DIR/val.bin. The tokenizer is
// trained on all the input text. With bpe each file is a document and starts with the
// <|endoftext|> special token (llm.c's convention); with char the files are concatenated. The
// token stream is split in order: the first (1 - F) of the tokens train, the last F validate.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace kiln::data {

struct PrepareOptions {
  std::vector<std::string> inputs;  // text files, in order
  std::string output_dir;
  std::string tokenizer = "char";   // "char" or "bpe"
  int64_t vocab_size = 0;           // bpe only, and required there
  double val_fraction = 0.1;        // in [0, 1)
};

// kiln-prepare's arguments (without the program name) -> options, or nullopt for --help.
// Errors name the argument and what was expected.
std::optional<PrepareOptions> parse_prepare_arguments(const std::vector<std::string>& args);
std::string prepare_usage();

struct PrepareReport {
  int64_t input_files = 0, input_bytes = 0;
  std::string tokenizer_path, tokenizer_kind;
  int64_t vocab_size = 0;
  double tokenizer_seconds = 0, encode_seconds = 0;  // training the tokenizer; encoding the text
  std::string train_path, val_path;                  // val_path empty when val_fraction is 0
  int64_t train_tokens = 0, val_tokens = 0;
  int token_bytes = 2;                               // per token in the shards
};

PrepareReport prepare_dataset(const PrepareOptions& options);

}  // namespace kiln::data

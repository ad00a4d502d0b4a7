// kiln-prepare's argument parsing and the preparation itself (see prepare.h).
#include "data/prepare.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "data/bpe_tokenizer.h"
#include "data/char_tokenizer.h"
#include "data/token_shard.h"
#include "kernels/error.h"

namespace kiln::data {

namespace {

constexpr const char* kEndOfText = "<|endoftext|>";

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int64_t parse_integer(const std::string& option, const std::string& text) {
  size_t used = 0;
  int64_t value = 0;
  try {
    value = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  KILN_CHECK(used == text.size() && !text.empty(), option, ": expected an integer, got '", text, "'");
  return value;
}

double parse_number(const std::string& option, const std::string& text) {
  size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  KILN_CHECK(used == text.size() && !text.empty(), option, ": expected a number, got '", text, "'");
  return value;
}

}  // namespace

std::string prepare_usage() {
  return "usage: kiln-prepare --out DIR [--tokenizer char|bpe] [--vocab-size N] [--val-fraction F] FILE...\n"
         "  Trains a tokenizer on the text FILEs and writes DIR/tokenizer.json, DIR/train.bin and DIR/val.bin\n"
         "  (llm.c token shards).\n"
         "  --out DIR           output directory (created if missing)\n"
         "  --tokenizer KIND    char (one token per character, the default) or bpe (byte-level BPE)\n"
         "  --vocab-size N      bpe vocabulary size: 256 bytes + merges + 1 special token (<|endoftext|>)\n"
         "  --val-fraction F    the last fraction F of the tokens becomes val.bin (default 0.1; 0: no val.bin)\n";
}

std::optional<PrepareOptions> parse_prepare_arguments(const std::vector<std::string>& args) {
  PrepareOptions options;
  bool vocab_size_given = false;
  for (size_t i = 0; i < args.size(); ++i) {
    std::string arg = args[i];
    if (arg == "--help" || arg == "-h") return std::nullopt;
    if (arg.rfind("--", 0) != 0 || arg == "--") {
      options.inputs.push_back(arg);
      continue;
    }
    std::string value;
    if (size_t equals = arg.find('='); equals != std::string::npos) {
      value = arg.substr(equals + 1);
      arg = arg.substr(0, equals);
    } else if (arg == "--out" || arg == "--tokenizer" || arg == "--vocab-size" || arg == "--val-fraction") {
      KILN_CHECK(i + 1 < args.size(), arg, " needs a value");
      value = args[++i];
    }
    if (arg == "--out") {
      options.output_dir = value;
    } else if (arg == "--tokenizer") {
      KILN_CHECK(value == "char" || value == "bpe", "--tokenizer: expected char or bpe, got '", value, "'");
      options.tokenizer = value;
    } else if (arg == "--vocab-size") {
      options.vocab_size = parse_integer(arg, value);
      vocab_size_given = true;
    } else if (arg == "--val-fraction") {
      options.val_fraction = parse_number(arg, value);
      KILN_CHECK(options.val_fraction >= 0 && options.val_fraction < 1, "--val-fraction: must be in [0, 1), got ", value);
    } else {
      KILN_FAIL("unknown option ", arg);
    }
  }
  KILN_CHECK(!options.inputs.empty(), "no input files given");
  KILN_CHECK(!options.output_dir.empty(), "--out DIR is required");
  if (options.tokenizer == "bpe") {
    KILN_CHECK(vocab_size_given, "--tokenizer bpe needs --vocab-size");
    KILN_CHECK(options.vocab_size >= 257, "--vocab-size: must be at least 257 (256 byte tokens + <|endoftext|>), got ",
               options.vocab_size);
  } else {
    KILN_CHECK(!vocab_size_given, "--vocab-size applies to --tokenizer bpe only (a char vocabulary is the corpus's characters)");
  }
  return options;
}

PrepareReport prepare_dataset(const PrepareOptions& options) {
  PrepareReport report;
  std::vector<std::string> texts;
  for (const std::string& path : options.inputs) {
    texts.push_back(read_file(path, "input file"));
    report.input_bytes += static_cast<int64_t>(texts.back().size());
  }
  report.input_files = static_cast<int64_t>(texts.size());
  KILN_CHECK(report.input_bytes > 0, "the input files are empty");
  std::filesystem::create_directories(options.output_dir);
  const std::filesystem::path out(options.output_dir);
  report.tokenizer_path = (out / "tokenizer.json").string();
  report.tokenizer_kind = options.tokenizer;

  std::vector<TokenId> tokens;
  auto start = std::chrono::steady_clock::now();
  if (options.tokenizer == "char") {
    std::string corpus;
    for (const std::string& text : texts) corpus += text;
    CharTokenizer tokenizer = CharTokenizer::train(corpus);
    report.tokenizer_seconds = seconds_since(start);
    start = std::chrono::steady_clock::now();
    tokens = tokenizer.encode(corpus);
    report.encode_seconds = seconds_since(start);
    tokenizer.save(report.tokenizer_path);
    report.vocab_size = tokenizer.vocab_size();
  } else {
    KILN_CHECK(options.tokenizer == "bpe", "unknown tokenizer '", options.tokenizer, "'");
    std::string corpus;  // documents separated by <|endoftext|>, which training cuts out again
    for (const std::string& text : texts) corpus += (corpus.empty() ? "" : kEndOfText) + text;
    BpeTokenizer tokenizer = BpeTokenizer::train(corpus, BpeTrainerOptions(options.vocab_size).special_tokens({kEndOfText}));
    report.tokenizer_seconds = seconds_since(start);
    start = std::chrono::steady_clock::now();
    const TokenId end_of_text = *tokenizer.special_token_id(kEndOfText);
    for (const std::string& text : texts) {
      tokens.push_back(end_of_text);
      std::vector<TokenId> document = tokenizer.encode_ordinary(text);
      tokens.insert(tokens.end(), document.begin(), document.end());
    }
    report.encode_seconds = seconds_since(start);
    tokenizer.save(report.tokenizer_path);
    report.vocab_size = tokenizer.vocab_size();
  }

  const auto n = static_cast<int64_t>(tokens.size());
  report.val_tokens = static_cast<int64_t>(std::llround(static_cast<double>(n) * options.val_fraction));
  report.train_tokens = n - report.val_tokens;
  KILN_CHECK(options.val_fraction == 0 || report.val_tokens > 0, "--val-fraction ", options.val_fraction,
             " of ", n, " tokens leaves no validation tokens");
  KILN_CHECK(report.train_tokens > 0, "no training tokens are left");
  std::span<const TokenId> all(tokens);
  report.token_bytes = shard_token_bytes(report.vocab_size);
  report.train_path = (out / "train.bin").string();
  write_token_shard(report.train_path, all.first(static_cast<size_t>(report.train_tokens)), report.vocab_size);
  if (report.val_tokens > 0) {
    report.val_path = (out / "val.bin").string();
    write_token_shard(report.val_path, all.last(static_cast<size_t>(report.val_tokens)), report.vocab_size);
  }
  return report;
}

}  // namespace kiln::data

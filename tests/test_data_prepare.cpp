// kiln-prepare: argument errors, and text -> tokenizer + shards that decode back to the text.
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "data/bpe_tokenizer.h"
#include "data/prepare.h"
#include "data/token_shard.h"
#include "kernels/error.h"

using namespace kiln::data;
using Catch::Contains;

namespace {

std::vector<TokenId> shard_tokens(const std::string& path) {
  TokenShard shard(path);
  std::vector<int64_t> values(static_cast<size_t>(shard.size()));
  shard.read(0, shard.size(), values.data());
  return std::vector<TokenId>(values.begin(), values.end());
}

}  // namespace

TEST_CASE("kiln-prepare arguments: defaults, both option spellings and clear errors", "[data][prepare]") {
  auto parse = [](std::vector<std::string> args) { return parse_prepare_arguments(args); };
  auto options = parse({"--out", "dir", "a.txt", "b.txt"});
  REQUIRE(options);
  CHECK(options->inputs == std::vector<std::string>{"a.txt", "b.txt"});
  CHECK(options->output_dir == "dir");
  CHECK(options->tokenizer == "char");
  CHECK(options->val_fraction == 0.1);
  options = parse({"--tokenizer=bpe", "--vocab-size", "4096", "--val-fraction=0.05", "--out=d", "x"});
  REQUIRE(options);
  CHECK(options->tokenizer == "bpe");
  CHECK(options->vocab_size == 4096);
  CHECK(options->val_fraction == 0.05);
  CHECK_FALSE(parse({"--help"}));

  CHECK_THROWS_WITH(parse({"--out", "d"}), Contains("no input files"));
  CHECK_THROWS_WITH(parse({"a.txt"}), Contains("--out DIR is required"));
  CHECK_THROWS_WITH(parse({"a.txt", "--out"}), Contains("--out needs a value"));
  CHECK_THROWS_WITH(parse({"--tokenizer", "word", "--out", "d", "a"}), Contains("--tokenizer: expected char or bpe, got 'word'"));
  CHECK_THROWS_WITH(parse({"--tokenizer", "bpe", "--out", "d", "a"}), Contains("--tokenizer bpe needs --vocab-size"));
  CHECK_THROWS_WITH(parse({"--tokenizer", "bpe", "--vocab-size", "12k", "--out", "d", "a"}),
                    Contains("--vocab-size: expected an integer, got '12k'"));
  CHECK_THROWS_WITH(parse({"--tokenizer", "bpe", "--vocab-size", "100", "--out", "d", "a"}), Contains("at least 257"));
  CHECK_THROWS_WITH(parse({"--vocab-size", "300", "--out", "d", "a"}), Contains("applies to --tokenizer bpe only"));
  CHECK_THROWS_WITH(parse({"--val-fraction", "1", "--out", "d", "a"}), Contains("--val-fraction: must be in [0, 1), got 1"));
  CHECK_THROWS_WITH(parse({"--val-fraction", "x", "--out", "d", "a"}), Contains("--val-fraction: expected a number, got 'x'"));
  CHECK_THROWS_WITH(parse({"--vocab", "3", "--out", "d", "a"}), Contains("unknown option --vocab"));
}

TEST_CASE("kiln-prepare writes a tokenizer and shards that decode back to the input", "[data][prepare]") {
  const auto dir = std::filesystem::temp_directory_path() / "kiln-test-prepare";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string first = (dir / "a.txt").string(), second = (dir / "b.txt").string();
  std::string text_a, text_b = "Fin. \xC3\x89t\xC3\xA9 <|endoftext|> stays text.\n";
  for (int i = 0; i < 200; ++i) text_a += "To be, or not to be, that is the question " + std::to_string(i) + ".\n";
  std::ofstream(first) << text_a;
  std::ofstream(second) << text_b;

  PrepareOptions options;
  options.inputs = {first, second};
  options.output_dir = (dir / "char").string();
  options.val_fraction = 0.25;
  PrepareReport report = prepare_dataset(options);
  auto tokenizer = load_tokenizer(report.tokenizer_path);
  CHECK(tokenizer->kind() == "char");
  const std::string corpus = text_a + text_b;
  std::vector<TokenId> tokens = shard_tokens(report.train_path);
  std::vector<TokenId> val = shard_tokens(report.val_path);
  CHECK(static_cast<int64_t>(val.size()) == std::llround(0.25 * static_cast<double>(tokens.size() + val.size())));
  CHECK(report.val_tokens == static_cast<int64_t>(val.size()));
  tokens.insert(tokens.end(), val.begin(), val.end());
  CHECK(tokenizer->decode(tokens) == corpus);
  CHECK(report.input_bytes == static_cast<int64_t>(corpus.size()));

  // bpe: each file is a document that starts with <|endoftext|>; the text "<|endoftext|>" in
  // a file stays ordinary text.
  options.tokenizer = "bpe";
  options.vocab_size = 300;
  options.val_fraction = 0;
  options.output_dir = (dir / "bpe").string();
  report = prepare_dataset(options);
  CHECK(report.val_path.empty());
  CHECK_FALSE(std::filesystem::exists(dir / "bpe" / "val.bin"));
  BpeTokenizer bpe = BpeTokenizer::load(report.tokenizer_path);
  CHECK(bpe.vocab_size() == 300);
  tokens = shard_tokens(report.train_path);
  const TokenId eot = *bpe.special_token_id("<|endoftext|>");
  CHECK(std::count(tokens.begin(), tokens.end(), eot) == 2);
  CHECK(tokens.front() == eot);
  CHECK(bpe.decode(tokens) == "<|endoftext|>" + text_a + "<|endoftext|>" + text_b);

  options.inputs = {(dir / "missing.txt").string()};
  CHECK_THROWS_WITH(prepare_dataset(options), Contains("input file: cannot read") && Contains("missing.txt"));
  std::filesystem::remove_all(dir);
}

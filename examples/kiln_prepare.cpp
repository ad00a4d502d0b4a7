// kiln-prepare: turns text files into a tokenizer and llm.c token shards for kiln-train.
//
//   kiln-prepare --out data/shakespeare --tokenizer bpe --vocab-size 4096 tinyshakespeare.txt
//
// The work is in data/prepare.cpp; this program parses arguments and reports what it wrote.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "kernels/error.h"

using namespace kiln::data;

int main(int argc, char** argv) {
  std::optional<PrepareOptions> options;
  try {
    options = parse_prepare_arguments(std::vector<std::string>(argv + 1, argv + argc));
  } catch (const kiln::Error& error) {
    std::fprintf(stderr, "kiln-prepare: %s\n(run kiln-prepare --help for usage)\n", error.what());
    return 2;
  }
  if (!options) {
    std::printf("%s", prepare_usage().c_str());
    return 0;
  }
  try {
    PrepareReport report = prepare_dataset(*options);
    std::printf("kiln-prepare: read %lld bytes from %lld file(s)\n", static_cast<long long>(report.input_bytes),
                static_cast<long long>(report.input_files));
    std::printf("  %s  %s tokenizer, %lld tokens (trained in %.2f s)\n", report.tokenizer_path.c_str(),
                report.tokenizer_kind.c_str(), static_cast<long long>(report.vocab_size), report.tokenizer_seconds);
    std::printf("  %s  %lld tokens (uint%d)\n", report.train_path.c_str(), static_cast<long long>(report.train_tokens),
                8 * report.token_bytes);
    if (!report.val_path.empty()) {
      std::printf("  %s  %lld tokens (uint%d)\n", report.val_path.c_str(), static_cast<long long>(report.val_tokens),
                  8 * report.token_bytes);
    }
    std::printf("  encoded in %.2f s (%.2f MB/s)\n", report.encode_seconds,
                static_cast<double>(report.input_bytes) / 1e6 / std::max(report.encode_seconds, 1e-9));
  } catch (const std::exception& error) {
    std::fprintf(stderr, "kiln-prepare: %s\n", error.what());
    return 1;
  }
  return 0;
}

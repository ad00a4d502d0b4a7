// kiln-generate: text from a kiln-train checkpoint, with every decoding option of nn::generate.
//
//   kiln-generate --checkpoint runs/shakespeare_char --prompt "ROMEO:" --max-tokens 300 --top-k 40
//   kiln-generate --checkpoint runs/shakespeare_char/checkpoints/step_00002000 --greedy --beams 4
//
// --checkpoint takes a run directory (its latest checkpoint) or one checkpoint directory. The
// model's architecture comes from the checkpoint; the tokenizer from --tokenizer, else the run
// directory's tokenizer.json (kiln-train copies it there). Exit status 2 on bad arguments.
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "nn/transformer.h"
#include "parallel/checkpoint.h"
#include "train/text_generation.h"

using namespace kiln;

namespace {

const char* kUsage =
    "usage: kiln-generate --checkpoint DIR [options]\n"
    "\n"
    "  --checkpoint DIR          a run directory (latest checkpoint) or a checkpoint directory\n"
    "  --tokenizer FILE          default: tokenizer.json of the run directory\n"
    "  --prompt TEXT             default: a newline\n"
    "  --max-tokens N            new tokens per sample (default 200)\n"
    "  --num-samples N           samples, seeds seed, seed+1, ... (default 1)\n"
    "  --greedy                  argmax decoding (beam search without sampling); default: sampling\n"
    "  --temperature T           divides the logits (default 1.0)\n"
    "  --top-k K                 keep the K most likely tokens (default 0: all)\n"
    "  --top-p P                 nucleus sampling threshold (default 1.0)\n"
    "  --repetition-penalty R    > 1 discourages repeats (default 1.0)\n"
    "  --beams N                 beam search with N beams (default 1)\n"
    "  --length-penalty L        beam score = log p / length^L (default 1.0)\n"
    "  --eos ID                  stop at this token id\n"
    "  --seed S                  the sampling seed (default 0)\n";

struct Arguments {
  std::string checkpoint;
  std::optional<std::string> tokenizer;
  std::string prompt = "\n";
  int64_t samples = 1;
  nn::GenerationOptions generation;
};

Arguments parse_arguments(const std::vector<std::string>& args) {
  Arguments parsed;
  parsed.generation.max_new_tokens = 200;
  parsed.generation.do_sample = true;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    auto text = [&] {
      KILN_CHECK(i + 1 < args.size(), arg, " needs a value");
      return args[++i];
    };
    auto number = [&] {
      std::string value = text();
      size_t used = 0;
      double parsed_value = 0;
      try {
        parsed_value = std::stod(value, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      KILN_CHECK(used == value.size() && !value.empty(), arg, ": expected a number, got '", value, "'");
      return parsed_value;
    };
    auto integer = [&] {
      double value = number();
      KILN_CHECK(value == static_cast<double>(static_cast<int64_t>(value)), arg, ": expected an integer, got ", value);
      return static_cast<int64_t>(value);
    };
    if (arg == "--checkpoint") parsed.checkpoint = text();
    else if (arg == "--tokenizer") parsed.tokenizer = text();
    else if (arg == "--prompt") parsed.prompt = text();
    else if (arg == "--max-tokens") parsed.generation.max_new_tokens = integer();
    else if (arg == "--num-samples") parsed.samples = integer();
    else if (arg == "--greedy") parsed.generation.do_sample = false;
    else if (arg == "--temperature") parsed.generation.temperature = number();
    else if (arg == "--top-k") parsed.generation.top_k = integer();
    else if (arg == "--top-p") parsed.generation.top_p = number();
    else if (arg == "--repetition-penalty") parsed.generation.repetition_penalty = number();
    else if (arg == "--beams") parsed.generation.num_beams = integer();
    else if (arg == "--length-penalty") parsed.generation.length_penalty = number();
    else if (arg == "--eos") parsed.generation.eos_token = integer();
    else if (arg == "--seed") parsed.generation.seed = static_cast<uint64_t>(integer());
    else KILN_FAIL("unknown argument ", arg);
  }
  KILN_CHECK(!parsed.checkpoint.empty(), "--checkpoint is required");
  KILN_CHECK(parsed.samples >= 1, "--num-samples must be >= 1, got ", parsed.samples);
  return parsed;
}

// The run directory's tokenizer.json: beside config.json, or two levels above a checkpoint
// (<run>/checkpoints/step_N).
std::string find_tokenizer(const std::filesystem::path& checkpoint) {
  for (const std::filesystem::path& candidate :
       {checkpoint / "tokenizer.json", checkpoint.parent_path().parent_path() / "tokenizer.json"}) {
    if (std::filesystem::exists(candidate)) return candidate.string();
  }
  KILN_FAIL("no tokenizer.json in ", checkpoint.string(), " or its run directory; pass --tokenizer");
}

int generate(const Arguments& arguments) {
  std::filesystem::path path = std::filesystem::absolute(arguments.checkpoint).lexically_normal();
  parallel::Checkpoint checkpoint = parallel::load_checkpoint(path);
  KILN_CHECK(checkpoint.state.contains("model"), path.string(), ": the checkpoint's state has no model config");
  nn::TransformerConfig config = nn::TransformerConfig::from_json(checkpoint.state.at("model"), "state.model");
  nn::Transformer model(config);
  model.load_state_dict(checkpoint.model);
  std::unique_ptr<data::Tokenizer> tokenizer =
      data::load_tokenizer(arguments.tokenizer ? *arguments.tokenizer : find_tokenizer(path));

  for (int64_t i = 0; i < arguments.samples; ++i) {
    nn::GenerationOptions options = arguments.generation;
    options.seed += static_cast<uint64_t>(i);
    train::TextGeneration text = train::generate_text(model, *tokenizer, arguments.prompt, options);
    if (arguments.samples > 1) std::printf("---- sample %lld ----\n", static_cast<long long>(i + 1));
    std::printf("%s%s\n", text.prompt.c_str(), text.completion.c_str());
    if (options.num_beams > 1) std::printf("(beam score %.4f)\n", text.score);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  for (const std::string& arg : args) {
    if (arg == "--help" || arg == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
  }
  Arguments arguments;
  try {
    arguments = parse_arguments(args);
  } catch (const Error& error) {
    std::fprintf(stderr, "kiln-generate: %s\n%s", error.what(), kUsage);
    return 2;
  }
  try {
    return generate(arguments);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "kiln-generate: %s\n", error.what());
    return 1;
  }
}

// Prompt -> text, with a sliding window past a learned-position model's block size.
#include "train/text_generation.h"

#include <algorithm>

#include "kernels/error.h"

namespace kiln::train {

TextGeneration generate_text(nn::Transformer& model, const data::Tokenizer& tokenizer, const std::string& prompt,
                             const nn::GenerationOptions& options) {
  std::vector<data::TokenId> encoded = tokenizer.encode(prompt);
  KILN_CHECK(!encoded.empty(), "generate: the prompt '", prompt, "' encodes to no tokens");
  KILN_CHECK(tokenizer.vocab_size() <= model.config.vocab_size, "generate: the tokenizer has ", tokenizer.vocab_size(),
             " tokens but the model only ", model.config.vocab_size);
  std::vector<int64_t> tokens(encoded.begin(), encoded.end());
  const size_t prompt_length = tokens.size();
  const int64_t block = model.config.block_size;
  const bool windowed = !model.config.is_llama();
  KILN_CHECK(options.num_beams == 1 || !windowed ||
                 static_cast<int64_t>(prompt_length) + options.max_new_tokens <= block,
             "generate: beam search needs prompt + max_new_tokens (", prompt_length + options.max_new_tokens,
             ") to fit in block_size ", block);

  TextGeneration result;
  result.prompt = prompt;
  int64_t remaining = options.max_new_tokens;
  for (uint64_t window = 0; remaining > 0; ++window) {
    // The context: everything so far, or its last half block once the block is full.
    int64_t keep = static_cast<int64_t>(tokens.size());
    if (windowed && keep + remaining > block) keep = std::min<int64_t>(keep, std::max<int64_t>(1, block / 2));
    std::vector<int64_t> context(tokens.end() - keep, tokens.end());
    nn::GenerationOptions step = options;
    step.max_new_tokens = windowed ? std::min(remaining, block - keep) : remaining;
    step.seed = options.seed + window;  // each window its own stream, still deterministic
    nn::GenerationResult out = nn::generate(model, context, step);
    std::vector<int64_t> generated(out.tokens.begin() + keep, out.tokens.end());
    tokens.insert(tokens.end(), generated.begin(), generated.end());
    result.score = out.score;
    remaining -= static_cast<int64_t>(generated.size());
    bool stopped = static_cast<int64_t>(generated.size()) < step.max_new_tokens;  // eos
    if (stopped || generated.empty()) break;
  }
  std::vector<data::TokenId> completion(tokens.begin() + static_cast<std::ptrdiff_t>(prompt_length), tokens.end());
  result.completion = tokenizer.decode(completion);
  result.tokens = std::move(tokens);
  return result;
}

}  // namespace kiln::train

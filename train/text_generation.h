// Text in, text out: nn::generate behind a tokenizer, for kiln-train's samples and kiln-generate.
//
// nn::generate cannot run a GPT-2-style model past its block_size (its learned position table
// ends there). generate_text then slides a window: once prompt + output fill the block, it keeps
// the last block_size / 2 tokens as the new prompt and continues, nanoGPT's cropping done a half
// block at a time so that each continuation reuses the KV cache for half a block. Llama-style
// models (RoPE) decode in one call. Beam search needs the whole output to fit in one window.
#pragma once

#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "nn/generation.h"

namespace kiln::train {

struct TextGeneration {
  std::string prompt;
  std::string completion;          // the generated text only
  std::vector<int64_t> tokens;     // prompt + generated tokens
  double score = 0.0;              // beam search's length-penalised log-probability
};

// Encodes `prompt`, generates options.max_new_tokens tokens (fewer at an eos token) and decodes.
// Throws kiln::Error for an empty prompt, a token outside the model's vocabulary, or beam search
// past the block.
TextGeneration generate_text(nn::Transformer& model, const data::Tokenizer& tokenizer, const std::string& prompt,
                             const nn::GenerationOptions& options);

}  // namespace kiln::train

// Transformer blocks and the full model, with GPT-2's initialisation.
#include "nn/transformer.h"

#include "autograd/ops.h"
#include "nn/checkpoint.h"
#include "nn/init.h"

namespace kiln::nn {

TransformerBlock::TransformerBlock(const TransformerConfig& config, int64_t layer, Generator* generator)
    : Module("TransformerBlock") {
  if (config.is_llama()) {
    rms_norm1 = register_module("norm1", std::make_shared<RMSNorm>(config.d_model, config.norm_eps));
  } else {
    layer_norm1 = register_module("norm1", std::make_shared<LayerNorm>(config.d_model, config.norm_eps, true, config.bias));
  }
  AttentionOptions attention{config.d_model, config.n_heads, config.n_kv_heads, config.bias, config.is_llama(),
                             config.rope_theta};
  attn = register_module("attn", std::make_shared<CausalSelfAttention>(attention, generator));
  if (config.is_llama()) {
    rms_norm2 = register_module("norm2", std::make_shared<RMSNorm>(config.d_model, config.norm_eps));
  } else {
    layer_norm2 = register_module("norm2", std::make_shared<LayerNorm>(config.d_model, config.norm_eps, true, config.bias));
  }
  bool is_moe_layer = config.moe.n_experts > 0 && (layer + 1) % config.moe.every == 0;
  if (is_moe_layer) {
    moe = register_module("moe", std::make_shared<MoE>(config.d_model, config.moe, generator));
  } else if (config.is_llama()) {
    swiglu = register_module("mlp", std::make_shared<SwiGLU>(config.d_model, config.ffn_hidden, config.bias, generator));
  } else {
    mlp = register_module("mlp", std::make_shared<MLP>(config.d_model, config.ffn_hidden, config.bias,
                                                       GeluApproximation::tanh, generator));
  }
  if (config.dropout > 0.0) dropout = register_module("dropout", std::make_shared<Dropout>(config.dropout, generator));
}

Tensor TransformerBlock::norm1(const Tensor& x) { return rms_norm1 ? rms_norm1->forward(x) : layer_norm1->forward(x); }
ResidualNorm TransformerBlock::add_norm2(const Tensor& x, const Tensor& update) {
  return rms_norm2 ? rms_norm2->forward_residual(x, update) : layer_norm2->forward_residual(x, update);
}

Tensor TransformerBlock::ffn(const Tensor& x) {
  if (moe) return moe->forward(x);
  return swiglu ? swiglu->forward(x) : mlp->forward(x);
}

Tensor TransformerBlock::forward(const Tensor& x, const Tensor& positions, KVCache* cache) {
  return with_hooks(x, [&] {
    auto residual = [&](const Tensor& update) { return dropout ? dropout->forward(update) : update; };
    ResidualNorm h = add_norm2(x, residual(attn->forward(norm1(x), positions, cache)));
    return add(h.sum, residual(ffn(h.normed)));
  });
}

Transformer::Transformer(const TransformerConfig& model_config, Generator* generator)
    : Module("Transformer"), config(model_config), generator_(generator) {
  config.resolve();
  token_embedding = register_module("token_embedding", std::make_shared<Embedding>(config.vocab_size, config.d_model,
                                                                                   std::nullopt, generator));
  if (!config.is_llama()) {
    position_embedding = register_module(
        "position_embedding", std::make_shared<Embedding>(config.block_size, config.d_model, std::nullopt, generator));
  }
  if (config.dropout > 0.0) dropout = register_module("dropout", std::make_shared<Dropout>(config.dropout, generator));
  blocks = register_module("blocks", std::make_shared<ModuleList>());
  for (int64_t layer = 0; layer < config.n_layers; ++layer) {
    blocks->push_back(std::make_shared<TransformerBlock>(config, layer, generator));
  }
  if (config.is_llama()) {
    final_rms_norm = register_module("final_norm", std::make_shared<RMSNorm>(config.d_model, config.norm_eps));
  } else {
    final_layer_norm =
        register_module("final_norm", std::make_shared<LayerNorm>(config.d_model, config.norm_eps, true, config.bias));
  }
  if (config.tie_embeddings) {
    // The output projection reuses the input embedding (read in forward below).
    token_embedding->parameter_info("weight").tied = true;
  } else {
    head = register_module("head", std::make_shared<Linear>(config.d_model, config.vocab_size, false, generator));
  }

  // GPT-2 initialisation: N(0, 0.02) weights and embeddings, zero biases, and the projections
  // that write into the residual stream scaled by 1/sqrt(2 L).
  for (NamedParameter& p : named_parameters()) {
    const std::string& name = p.name;
    bool is_bias = name.size() >= 5 && name.compare(name.size() - 5, 5, ".bias") == 0;
    bool is_norm = name.find("norm") != std::string::npos;
    if (is_norm) continue;
    if (is_bias) {
      init::zeros_(p.tensor);
    } else if (name.find("attn.proj.weight") != std::string::npos || name.find("mlp.proj.weight") != std::string::npos ||
               name.find(".down.weight") != std::string::npos) {
      init::gpt2_residual_normal_(p.tensor, config.n_layers, config.init_std, generator);
    } else {
      init::normal_(p.tensor, 0.0, config.init_std, generator);
    }
  }
}

Tensor Transformer::forward(const Tensor& tokens, std::vector<KVCache>* caches, const Tensor& positions) {
  return with_hooks(tokens, [&] {
    KILN_CHECK(tokens.ndim() == 2, "Transformer: tokens must be (B, T), got shape ", shape_str(tokens.sizes()));
    int64_t steps = tokens.size(1);
    int64_t start = caches && !caches->empty() ? (*caches)[0].length() : 0;
    KILN_CHECK(caches == nullptr || static_cast<int64_t>(caches->size()) == config.n_layers, "Transformer: ",
               caches ? caches->size() : 0, " caches for ", config.n_layers, " layers");
    KILN_CHECK(start + steps <= config.block_size || config.is_llama(), "Transformer: sequence of ", start + steps,
               " tokens exceeds block_size ", config.block_size);
    Tensor where = positions;
    if (!where.defined()) {
      where = arange(static_cast<double>(start), static_cast<double>(start + steps), 1.0,
                     TensorOptions(DType::i64).device(tokens.device()));
    }
    Tensor x = token_embedding->forward(tokens);  // (B, T, d)
    if (position_embedding) x = add(x, position_embedding->forward(where));
    if (dropout) x = dropout->forward(x);
    for (size_t layer = 0; layer < blocks->size(); ++layer) {
      auto block = blocks->at<TransformerBlock>(layer);
      KVCache* cache = caches ? &(*caches)[layer] : nullptr;
      if (config.activation_checkpointing && is_training() && cache == nullptr) {
        x = checkpoint([block, where](const Tensor& h) { return block->forward(h, where); }, x, generator_);
      } else {
        x = block->forward(x, where, cache);
      }
    }
    x = final_rms_norm ? final_rms_norm->forward(x) : final_layer_norm->forward(x);
    return head ? head->forward(x) : linear(x, token_embedding->weight);
  });
}

Tensor Transformer::aux_loss() const {
  Tensor total;
  for (size_t layer = 0; layer < blocks->size(); ++layer) {
    Tensor part = blocks->at<TransformerBlock>(layer)->aux_loss();
    if (part.defined()) total = total.defined() ? add(total, part) : part;
  }
  return total;
}

Tensor Transformer::loss(const Tensor& tokens, const Tensor& targets) {
  Tensor logits = forward(tokens);
  last_cross_entropy = cross_entropy(logits, targets);
  Tensor aux = aux_loss();
  return aux.defined() ? add(last_cross_entropy, aux) : last_cross_entropy;
}

std::vector<KVCache> Transformer::make_caches(int64_t capacity) const {
  return std::vector<KVCache>(static_cast<size_t>(config.n_layers), KVCache(capacity));
}

}  // namespace kiln::nn

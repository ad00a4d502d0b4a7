// ParallelTransformer (see tp_transformer.h): the master model's slices for this rank's
// pipeline stages, and the forward with optional sequence and context parallelism.
#include "parallel/tp_transformer.h"

#include "autograd/function.h"
#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "parallel/context_parallel.h"
#include "parallel/local_communicator.h"

namespace kiln::parallel {
namespace {

// A replicated copy of a master module's parameter.
void copy_parameter(const Tensor& into, const Tensor& master) {
  if (!into.defined()) return;
  NoGradGuard no_grad;
  Tensor target = into;
  target.copy_(master.detach());
}

std::shared_ptr<nn::LayerNorm> copy_layer_norm(const std::shared_ptr<nn::LayerNorm>& master) {
  if (!master) return nullptr;
  auto copy = std::make_shared<nn::LayerNorm>(master->features, master->eps, master->weight.defined(),
                                              master->bias.defined());
  copy_parameter(copy->weight, master->weight);
  copy_parameter(copy->bias, master->bias);
  return copy;
}

std::shared_ptr<nn::RMSNorm> copy_rms_norm(const std::shared_ptr<nn::RMSNorm>& master) {
  if (!master) return nullptr;
  auto copy = std::make_shared<nn::RMSNorm>(master->features, master->eps);
  copy_parameter(copy->weight, master->weight);
  return copy;
}

// A replicated parameter as this rank's graph reads it: under sequence parallelism each rank
// applies it to its own tokens only, so its gradient is the sum over the group.
Tensor replicated(const Tensor& parameter, const Group& group, bool sequence_parallel) {
  if (!parameter.defined() || !sequence_parallel) return parameter;
  return copy_to_tensor_parallel_region(parameter, group);
}

Tensor normalize(const std::shared_ptr<nn::LayerNorm>& layer, const std::shared_ptr<nn::RMSNorm>& rms, const Tensor& x,
                 const Group& group, bool sequence_parallel) {
  if (!sequence_parallel) return rms ? rms->forward(x) : layer->forward(x);
  if (rms) return rms_norm(x, replicated(rms->weight, group, sequence_parallel), rms->eps);
  return layer_norm(x, replicated(layer->weight, group, sequence_parallel), replicated(layer->bias, group, sequence_parallel),
                    layer->eps);
}

// {x + update, its norm} in one fused op, as nn::TransformerBlock computes them.
ResidualNorm add_normalize(const std::shared_ptr<nn::LayerNorm>& layer, const std::shared_ptr<nn::RMSNorm>& rms,
                           const Tensor& x, const Tensor& update, const Group& group, bool sequence_parallel) {
  if (!sequence_parallel) return rms ? rms->forward_residual(x, update) : layer->forward_residual(x, update);
  if (rms) return add_rms_norm(x, update, replicated(rms->weight, group, sequence_parallel), rms->eps);
  return add_layer_norm(x, update, replicated(layer->weight, group, sequence_parallel),
                        replicated(layer->bias, group, sequence_parallel), layer->eps);
}

// forward: the hidden state unchanged; backward: the hidden state's gradient, and `weight` as the
// gradient of the auxiliary loss. A pipeline stage's MoE auxiliary loss enters backward this way,
// through the activation that the next stage sends a gradient for (as Megatron-LM does).
struct AttachAuxiliaryLoss : Function<AttachAuxiliaryLoss> {
  static std::vector<Tensor> forward(FunctionContext& ctx, const std::vector<Tensor>& inputs, double weight) {
    ctx.set("weight", weight);
    ctx.set("aux_shape", inputs[1].sizes());
    ctx.set("aux_options", TensorOptions(inputs[1].dtype()).device(inputs[1].device()));
    return {inputs[0].clone()};
  }
  static std::vector<Tensor> backward(FunctionContext& ctx, const std::vector<Tensor>& grads) {
    return {grads[0], full(ctx.get<Shape>("aux_shape"), ctx.get<double>("weight"), ctx.get<TensorOptions>("aux_options"))};
  }
};

Group or_local(const Group& group, const char* name) { return group ? group : make_local_communicator(name); }

ParallelTransformerOptions resolved(ParallelTransformerOptions options) {
  options.tp = or_local(options.tp, "tp");
  options.cp = or_local(options.cp, "cp");
  options.ep = or_local(options.ep, "ep");
  return options;
}

}  // namespace

std::pair<int64_t, int64_t> pipeline_stage_layers(int64_t layers, int stage, int stages) {
  KILN_CHECK(stages >= 1 && stage >= 0 && stage < stages, "pipeline_stage_layers: stage ", stage, " of ", stages);
  KILN_CHECK(layers >= stages, "pipeline: ", layers, " layers are fewer than the ", stages,
             " pipeline stages (pp x virtual stages); every stage needs at least one layer");
  const int64_t base = layers / stages, extra = layers % stages;
  const int64_t first = stage * base + std::min<int64_t>(stage, extra);
  return {first, first + base + (stage < extra ? 1 : 0)};
}

ParallelTransformerBlock::ParallelTransformerBlock(const nn::TransformerBlock& master,
                                                   const ParallelTransformerOptions& options)
    : nn::Module("ParallelTransformerBlock"), tp_(options.tp), sequence_parallel_(options.sequence) {
  if (master.rms_norm1) {
    rms_norm1 = register_module("norm1", copy_rms_norm(master.rms_norm1));
  } else {
    layer_norm1 = register_module("norm1", copy_layer_norm(master.layer_norm1));
  }
  attn = register_module("attn", std::make_shared<ParallelSelfAttention>(*master.attn, tp_, sequence_parallel_));
  attn->context_parallel_group = options.cp;
  if (master.rms_norm2) {
    rms_norm2 = register_module("norm2", copy_rms_norm(master.rms_norm2));
  } else {
    layer_norm2 = register_module("norm2", copy_layer_norm(master.layer_norm2));
  }
  if (master.moe) {
    // Tensor-parallel ranks hold the same tokens and run the MoE layer alike (replicated
    // router and experts); a sequence-parallel stream would give each its own tokens.
    KILN_CHECK(!sequence_parallel_ || tp_->size() == 1,
               "ParallelTransformer: MoE layers are not supported with sequence parallelism");
    moe = register_module("moe", std::make_shared<ExpertParallelMoE>(*master.moe, options.ep));
  } else if (master.swiglu) {
    swiglu = register_module("mlp", std::make_shared<ParallelSwiGLU>(*master.swiglu, tp_, sequence_parallel_));
  } else {
    mlp = register_module("mlp", std::make_shared<ParallelMLP>(*master.mlp, tp_, sequence_parallel_));
  }
  if (master.dropout) dropout = register_module("dropout", std::make_shared<nn::Dropout>(master.dropout->p, options.generator));
}

Tensor ParallelTransformerBlock::forward(const Tensor& x, const Tensor& positions) {
  return with_hooks(x, [&] {
    auto residual = [&](const Tensor& update) { return dropout ? dropout->forward(update) : update; };
    Tensor attended = attn->forward(normalize(layer_norm1, rms_norm1, x, tp_, sequence_parallel_), positions);
    auto [h, normed] = add_normalize(layer_norm2, rms_norm2, x, residual(attended), tp_, sequence_parallel_);
    if (moe) return add(h, residual(moe->forward(normed)));
    return add(h, residual(swiglu ? swiglu->forward(normed) : mlp->forward(normed)));
  });
}

void StageBlocks::add(int64_t layer, std::shared_ptr<ParallelTransformerBlock> block) {
  layers_[layer] = register_module(std::to_string(layer), std::move(block));
}

ParallelTransformerBlock& StageBlocks::at(int64_t layer) const {
  auto found = layers_.find(layer);
  KILN_CHECK(found != layers_.end(), "ParallelTransformer: layer ", layer, " is not held by this pipeline stage");
  return *found->second;
}

ParallelTransformer::ParallelTransformer(const nn::TransformerConfig& model_config, Group tp, Generator* generator,
                                         bool sequence_parallel)
    : ParallelTransformer(nn::Transformer(model_config, generator),
                          ParallelTransformerOptions().tensor_parallel(std::move(tp)).sequence_parallel(sequence_parallel)
                              .dropout_generator(generator)) {}

ParallelTransformer::ParallelTransformer(const nn::Transformer& master, Group tp, bool sequence_parallel)
    : ParallelTransformer(master, ParallelTransformerOptions().tensor_parallel(std::move(tp)).sequence_parallel(
                                      sequence_parallel)) {}

ParallelTransformer::ParallelTransformer(const nn::Transformer& master, const ParallelTransformerOptions& options)
    : nn::Module("ParallelTransformer"), config(master.config), options_(resolved(options)) {
  KILN_CHECK(!config.activation_checkpointing,
             "ParallelTransformer: activation checkpointing is not supported under model parallelism yet");
  KILN_CHECK(!master.dropout || options_.generator != nullptr,
             "ParallelTransformer: the model has dropout ", config.dropout,
             " but no dropout generator was given (ParallelTransformerOptions::dropout_generator)");
  KILN_CHECK(options_.pipeline_size >= 1 && options_.pipeline_rank >= 0 &&
                 options_.pipeline_rank < options_.pipeline_size && options_.chunks >= 1,
             "ParallelTransformer: pipeline rank ", options_.pipeline_rank, " of ", options_.pipeline_size, " with ",
             options_.chunks, " virtual stages is not a valid place");
  const Group& tp = options_.tp;
  const bool sequence = options_.sequence;
  const bool first = is_first(0), last = is_last(chunks() - 1);
  if (first || (last && !master.head)) {
    token_embedding = register_module(
        "token_embedding", std::make_shared<VocabParallelEmbedding>(master.token_embedding->weight, tp, sequence));
  }
  if (first && master.position_embedding) {
    const Tensor& table = master.position_embedding->weight;
    position_embedding = register_module("position_embedding",
                                         std::make_shared<nn::Embedding>(table.size(0), table.size(1)));
    copy_parameter(position_embedding->weight, table);
  }
  if (first && master.dropout) {
    dropout = register_module("dropout", std::make_shared<nn::Dropout>(master.dropout->p, options_.generator));
  }
  blocks = register_module("blocks", std::make_shared<StageBlocks>());
  for (int chunk = 0; chunk < chunks(); ++chunk) {
    auto [begin, end] = chunk_layers(chunk);
    for (int64_t layer = begin; layer < end; ++layer) {
      blocks->add(layer, std::make_shared<ParallelTransformerBlock>(
                             *master.blocks->at<nn::TransformerBlock>(static_cast<size_t>(layer)), options_));
    }
  }
  if (last) {
    if (master.final_rms_norm) {
      final_rms_norm = register_module("final_norm", copy_rms_norm(master.final_rms_norm));
    } else {
      final_layer_norm = register_module("final_norm", copy_layer_norm(master.final_layer_norm));
    }
    if (master.head) {
      head = register_module("head", std::make_shared<ColumnParallelLinear>(
                                         master.head->weight, master.head->bias, tp,
                                         ColumnParallelOptions().sequence_parallel(sequence)));
    }
  }
  if (token_embedding && !master.head) token_embedding->parameter_info("weight").tied = true;
}

std::pair<int64_t, int64_t> ParallelTransformer::chunk_layers(int chunk) const {
  return pipeline_stage_layers(config.n_layers, virtual_stage(chunk), options_.pipeline_size * options_.chunks);
}

Tensor ParallelTransformer::positions(int64_t local_steps, Device device) const {
  const Communicator& cp = *options_.cp;
  if (cp.size() > 1) return context_parallel_positions(local_steps * cp.size(), cp).to(device);
  return arange(0.0, static_cast<double>(local_steps), 1.0, TensorOptions(DType::i64).device(device));
}

Tensor ParallelTransformer::embed(const Tensor& tokens, const Tensor& where) {
  const Group& tp = options_.tp;
  const bool sequence = options_.sequence;
  Tensor x = token_embedding->forward(tokens);  // (B, T, d), or (B, T / tp, d)
  if (position_embedding) {
    const int64_t steps = where.size(0), local = sequence ? steps / tp->size() : steps;
    Tensor mine = where.narrow(0, sequence ? tp->rank() * local : 0, local);
    x = add(x, embedding(mine, replicated(position_embedding->weight, tp, sequence)));
  }
  return dropout ? dropout->forward(x) : x;
}

Tensor ParallelTransformer::logits(const Tensor& hidden) {
  const Group& tp = options_.tp;
  const bool sequence = options_.sequence;
  Tensor x = normalize(final_layer_norm, final_rms_norm, hidden, tp, sequence);
  if (head) return head->forward(x);  // (B, T, V / tp)
  // Tied: the embedding's rows are a column-parallel head over the same vocabulary split.
  Tensor full = sequence ? gather_from_sequence_parallel_region(x, tp) : copy_to_tensor_parallel_region(x, tp);
  return linear(full, token_embedding->weight);
}

Tensor ParallelTransformer::forward_chunk(int chunk, const Tensor& input, const Tensor& targets, double aux_weight) {
  KILN_CHECK(chunk >= 0 && chunk < chunks(), "ParallelTransformer: chunk ", chunk, " of ", chunks());
  const Group& tp = options_.tp;
  const bool sequence = options_.sequence;
  Tensor x;
  int64_t local_steps = 0;
  if (is_first(chunk)) {
    KILN_CHECK(input.ndim() == 2, "ParallelTransformer: tokens must be (B, T), got shape ", shape_str(input.sizes()));
    local_steps = input.size(1);
    const int64_t steps = local_steps * options_.cp->size();
    KILN_CHECK(steps <= config.block_size || config.is_llama(), "ParallelTransformer: sequence of ", steps,
               " tokens exceeds block_size ", config.block_size);
    KILN_CHECK(!sequence || local_steps % tp->size() == 0, "ParallelTransformer: sequence of ", local_steps,
               " tokens is not divisible by tp ", tp->size(), " (sequence parallelism splits it)");
  } else {
    KILN_CHECK(input.ndim() == 3 && input.size(2) == config.d_model, "ParallelTransformer: stage input of shape ",
               shape_str(input.sizes()), " is not (B, T, ", config.d_model, ")");
    local_steps = input.size(1) * (sequence ? tp->size() : 1);
  }
  Tensor where = positions(local_steps, input.device());
  x = is_first(chunk) ? embed(input, where) : input;
  Tensor aux;
  auto [begin, end] = chunk_layers(chunk);
  for (int64_t layer = begin; layer < end; ++layer) {
    ParallelTransformerBlock& block = blocks->at(layer);
    x = block.forward(x, where);
    if (Tensor block_aux = block.aux_loss(); block_aux.defined()) aux = aux.defined() ? add(aux, block_aux) : block_aux;
  }
  if (!is_last(chunk)) {
    if (!aux.defined() || !GradMode::is_enabled()) return x;
    return AttachAuxiliaryLoss::apply_with("attach_auxiliary_loss", {x, aux}, aux_weight)[0];
  }
  KILN_CHECK(targets.defined(), "ParallelTransformer: the last pipeline stage needs targets");
  last_cross_entropy = vocab_parallel_cross_entropy(logits(x), targets, tp);
  return aux.defined() ? add(last_cross_entropy, aux) : last_cross_entropy;
}

Tensor ParallelTransformer::loss(const Tensor& tokens, const Tensor& targets) {
  KILN_CHECK(options_.pipeline_size == 1, "ParallelTransformer::loss: the model is split over ",
             options_.pipeline_size, " pipeline stages; run it with run_pipeline_step");
  Tensor x = tokens;
  for (int chunk = 0; chunk < chunks(); ++chunk) x = forward_chunk(chunk, x, targets);
  return x;
}

Tensor ParallelTransformer::forward(const Tensor& tokens) {
  KILN_CHECK(options_.pipeline_size == 1 && chunks() == 1, "ParallelTransformer::forward: the model is split over ",
             options_.pipeline_size * chunks(), " pipeline stages");
  return with_hooks(tokens, [&] {
    KILN_CHECK(tokens.ndim() == 2, "ParallelTransformer: tokens must be (B, T), got shape ", shape_str(tokens.sizes()));
    Tensor where = positions(tokens.size(1), tokens.device());
    Tensor x = embed(tokens, where);
    for (int64_t layer = 0; layer < config.n_layers; ++layer) x = blocks->at(layer).forward(x, where);
    return logits(x);
  });
}

}  // namespace kiln::parallel

// ParallelTransformer (see tp_transformer.h): the master model's slices, and the forward with
// optional sequence parallelism.
#include "parallel/tp_transformer.h"

#include "autograd/grad_mode.h"
#include "autograd/ops.h"

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

}  // namespace

ParallelTransformerBlock::ParallelTransformerBlock(const nn::TransformerBlock& master, Group group,
                                                   bool sequence_parallel)
    : nn::Module("ParallelTransformerBlock"), group_(std::move(group)), sequence_parallel_(sequence_parallel) {
  KILN_CHECK(!master.moe, "ParallelTransformer: MoE layers are not supported under tensor parallelism yet");
  KILN_CHECK(!master.dropout, "ParallelTransformer: dropout is not supported under tensor parallelism yet");
  if (master.rms_norm1) {
    rms_norm1 = register_module("norm1", copy_rms_norm(master.rms_norm1));
  } else {
    layer_norm1 = register_module("norm1", copy_layer_norm(master.layer_norm1));
  }
  attn = register_module("attn", std::make_shared<ParallelSelfAttention>(*master.attn, group_, sequence_parallel));
  if (master.rms_norm2) {
    rms_norm2 = register_module("norm2", copy_rms_norm(master.rms_norm2));
  } else {
    layer_norm2 = register_module("norm2", copy_layer_norm(master.layer_norm2));
  }
  if (master.swiglu) {
    swiglu = register_module("mlp", std::make_shared<ParallelSwiGLU>(*master.swiglu, group_, sequence_parallel));
  } else {
    mlp = register_module("mlp", std::make_shared<ParallelMLP>(*master.mlp, group_, sequence_parallel));
  }
}

Tensor ParallelTransformerBlock::forward(const Tensor& x, const Tensor& positions) {
  return with_hooks(x, [&] {
    Tensor h = add(x, attn->forward(normalize(layer_norm1, rms_norm1, x, group_, sequence_parallel_), positions));
    Tensor normed = normalize(layer_norm2, rms_norm2, h, group_, sequence_parallel_);
    return add(h, swiglu ? swiglu->forward(normed) : mlp->forward(normed));
  });
}

ParallelTransformer::ParallelTransformer(const nn::TransformerConfig& model_config, Group group, Generator* generator,
                                         bool sequence_parallel)
    : ParallelTransformer(nn::Transformer(model_config, generator), std::move(group), sequence_parallel) {}

ParallelTransformer::ParallelTransformer(const nn::Transformer& master, Group group, bool sequence_parallel)
    : nn::Module("ParallelTransformer"), config(master.config), group_(std::move(group)),
      sequence_parallel_(sequence_parallel) {
  KILN_CHECK(group_ != nullptr, "ParallelTransformer: the tensor-parallel group is null");
  KILN_CHECK(!config.activation_checkpointing,
             "ParallelTransformer: activation checkpointing is not supported under tensor parallelism yet");
  KILN_CHECK(!master.dropout, "ParallelTransformer: dropout is not supported under tensor parallelism yet");
  token_embedding = register_module(
      "token_embedding", std::make_shared<VocabParallelEmbedding>(master.token_embedding->weight, group_, sequence_parallel));
  if (master.position_embedding) {
    const Tensor& table = master.position_embedding->weight;
    position_embedding = register_module("position_embedding",
                                         std::make_shared<nn::Embedding>(table.size(0), table.size(1)));
    copy_parameter(position_embedding->weight, table);
  }
  blocks = register_module("blocks", std::make_shared<nn::ModuleList>());
  for (size_t layer = 0; layer < master.blocks->size(); ++layer) {
    blocks->push_back(std::make_shared<ParallelTransformerBlock>(*master.blocks->at<nn::TransformerBlock>(layer), group_,
                                                                 sequence_parallel));
  }
  if (master.final_rms_norm) {
    final_rms_norm = register_module("final_norm", copy_rms_norm(master.final_rms_norm));
  } else {
    final_layer_norm = register_module("final_norm", copy_layer_norm(master.final_layer_norm));
  }
  if (master.head) {
    head = register_module("head", std::make_shared<ColumnParallelLinear>(
                                       master.head->weight, master.head->bias, group_,
                                       ColumnParallelOptions().sequence_parallel(sequence_parallel)));
  } else {
    token_embedding->parameter_info("weight").tied = true;
  }
}

Tensor ParallelTransformer::forward(const Tensor& tokens) {
  return with_hooks(tokens, [&] {
    KILN_CHECK(tokens.ndim() == 2, "ParallelTransformer: tokens must be (B, T), got shape ", shape_str(tokens.sizes()));
    const int64_t steps = tokens.size(1);
    KILN_CHECK(steps <= config.block_size || config.is_llama(), "ParallelTransformer: sequence of ", steps,
               " tokens exceeds block_size ", config.block_size);
    KILN_CHECK(!sequence_parallel_ || steps % group_->size() == 0, "ParallelTransformer: sequence of ", steps,
               " tokens is not divisible by tp ", group_->size(), " (sequence parallelism splits it)");
    Tensor where = arange(0.0, static_cast<double>(steps), 1.0, TensorOptions(DType::i64).device(tokens.device()));
    Tensor x = token_embedding->forward(tokens);  // (B, T, d), or (B, T / n, d)
    if (position_embedding) {
      const int64_t local = sequence_parallel_ ? steps / group_->size() : steps;
      Tensor mine = where.narrow(0, sequence_parallel_ ? group_->rank() * local : 0, local);
      x = add(x, embedding(mine, replicated(position_embedding->weight, group_, sequence_parallel_)));
    }
    for (size_t layer = 0; layer < blocks->size(); ++layer) x = blocks->at<ParallelTransformerBlock>(layer)->forward(x, where);
    x = normalize(final_layer_norm, final_rms_norm, x, group_, sequence_parallel_);
    if (head) return head->forward(x);  // (B, T, V / n)
    // Tied: the embedding's rows are a column-parallel head over the same vocabulary split.
    Tensor full = sequence_parallel_ ? gather_from_sequence_parallel_region(x, group_)
                                     : copy_to_tensor_parallel_region(x, group_);
    return linear(full, token_embedding->weight);
  });
}

Tensor ParallelTransformer::loss(const Tensor& tokens, const Tensor& targets) {
  return vocab_parallel_cross_entropy(forward(tokens), targets, group_);
}

}  // namespace kiln::parallel

// ModelParallelRunner (see model_parallel.h): the step, gradient reduction and norm, and
// checkpoints in master layout for any mesh.
#include "parallel/model_parallel.h"

#include <cmath>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "parallel/context_parallel.h"
#include "parallel/pipeline_p2p.h"
#include "parallel/state_exchange.h"
#include "parallel/tp_checkpoint.h"

namespace kiln::parallel {
namespace {

constexpr const char* kTokenEmbedding = "token_embedding.weight";

// Averages (or sums) the gradients of `parameters` over `group` in one flat buffer per dtype.
void all_reduce_gradients(const std::vector<Tensor>& parameters, Communicator& group, ReduceOp op) {
  if (group.size() == 1 || parameters.empty()) return;
  NoGradGuard no_grad;
  std::map<DType, std::vector<Tensor>> by_dtype;
  for (const Tensor& parameter : parameters) {
    if (!parameter.grad().defined()) parameter.set_grad(zeros_like(parameter));
    by_dtype[parameter.dtype()].push_back(parameter);
  }
  for (auto& [dtype, members] : by_dtype) {
    std::vector<Tensor> flats;
    for (const Tensor& parameter : members) flats.push_back(parameter.grad().reshape({-1}));
    Tensor flat = cat(flats);  // (sum of numels)
    group.all_reduce(flat, op);
    int64_t offset = 0;
    for (const Tensor& parameter : members) {
      Tensor grad = parameter.grad();
      grad.copy_(flat.narrow(0, offset, grad.numel()).reshape(grad.sizes()));
      offset += grad.numel();
    }
  }
}

void all_reduce_sum(Tensor& value, const std::shared_ptr<Communicator>& group) {
  if (group->size() > 1) group->all_reduce(value, ReduceOp::sum);
}

}  // namespace

ModelParallelRunner::ModelParallelRunner(const nn::Transformer& master, std::shared_ptr<const Mesh> mesh,
                                         ModelParallelOptions options)
    : mesh_(std::move(mesh)), options_(options) {
  KILN_CHECK(mesh_ != nullptr, "ModelParallelRunner: the mesh is null");
  KILN_CHECK(options_.microbatches() >= 1, "ModelParallelRunner: micro-batches must be at least 1, got ",
             options_.microbatches());
  const int pp = mesh_->size(MeshDim::pp), stages = pp * options_.virtual_stages();
  KILN_CHECK(master.config.n_layers >= stages, "ModelParallelRunner: ", master.config.n_layers,
             " layers are fewer than the ", stages, " pipeline stages (pp ", pp, " x virtual stages ",
             options_.virtual_stages(), ")");
  model_ = std::make_shared<ParallelTransformer>(
      master, ParallelTransformerOptions()
                  .tensor_parallel(mesh_->tp_group())
                  .context_parallel(mesh_->cp_group())
                  .expert_parallel(mesh_->ep_group())
                  .sequence_parallel(options_.sequence_parallel())
                  .dropout_generator(options_.dropout_generator())
                  .pipeline(pp, mesh_->pp_rank(), options_.virtual_stages()));
  replica_group_ = mesh_->group_over({MeshDim::dp, MeshDim::cp, MeshDim::ep});
  expert_replica_group_ = mesh_->group_over({MeshDim::dp, MeshDim::cp});
  if (pp > 1 && !master.head) {
    const int rank = mesh_->pp_rank();
    const bool end = rank == 0 || rank == pp - 1;
    embedding_group_ = mesh_->pp_group()->split(end ? 0 : rank, rank, "embedding");
  }
  // The channels run_pipeline_step uses (made here, where every rank makes them together).
  PipelineChannels channels = PipelineChannels::for_group(mesh_->pp_group());
  activation_channel_ = channels.activations;
  gradient_channel_ = channels.gradients;
}

int ModelParallelRunner::data_rank() const { return mesh_->ep_rank() + mesh_->size(MeshDim::ep) * mesh_->dp_rank(); }
int ModelParallelRunner::data_ranks() const { return mesh_->size(MeshDim::ep) * mesh_->size(MeshDim::dp); }

Tensor ModelParallelRunner::micro_batch(const Tensor& rows, int64_t index) const {
  const int64_t size = rows.size(0) / options_.microbatches();
  return context_parallel_shard(rows.narrow(0, index * size, size), 1, *mesh_->cp_group());
}

double ModelParallelRunner::forward_backward(const Tensor& tokens, const Tensor& targets) {
  const int64_t m = options_.microbatches();
  KILN_CHECK(tokens.ndim() == 2 && targets.sizes() == tokens.sizes(), "ModelParallelRunner: tokens ",
             shape_str(tokens.sizes()), " and targets ", shape_str(targets.sizes()), " must be the same (B, T)");
  KILN_CHECK(tokens.size(0) % m == 0, "ModelParallelRunner: ", tokens.size(0), " rows do not split into ", m,
             " micro-batches");
  const int cp = mesh_->size(MeshDim::cp), tp = mesh_->size(MeshDim::tp);
  KILN_CHECK(tokens.size(1) % (2 * cp) == 0, "ModelParallelRunner: sequence length ", tokens.size(1),
             " is not divisible by 2 x cp = ", 2 * cp);
  std::vector<Tensor> inputs, labels;
  for (int64_t j = 0; j < m; ++j) {
    inputs.push_back(micro_batch(tokens, j));
    labels.push_back(micro_batch(targets, j));
  }
  const int64_t local = tokens.size(1) / cp;
  PipelineOptions pipeline;
  pipeline.with_schedule(options_.schedule())
      .with_microbatches(m)
      .with_virtual_stages(options_.virtual_stages())
      .with_activation_shape({tokens.size(0) / m, options_.sequence_parallel() ? local / tp : local,
                              model_->config.d_model})
      .with_device(tokens.device());
  const double scale = 1.0 / static_cast<double>(m);
  last_step_ = run_pipeline_step(pipeline, mesh_->pp_group(), [&](int chunk, int64_t j, const Tensor& input) {
    const bool first = model_->is_first(chunk), last = model_->is_last(chunk);
    Tensor out = model_->forward_chunk(chunk, first ? inputs[static_cast<size_t>(j)] : input,
                                       last ? labels[static_cast<size_t>(j)] : Tensor(), scale);
    return last ? out * scale : out;
  });
  double sum = 0.0;
  for (double loss : last_step_.losses) sum += loss;
  Tensor mean = from_vector(std::vector<double>{sum});
  replica_group_->all_reduce(mean, ReduceOp::avg);
  return mean.item();
}

double ModelParallelRunner::evaluate(const Tensor& tokens, const Tensor& targets) {
  NoGradGuard no_grad;
  const Communicator& cp = *mesh_->cp_group();
  Communicator& pp = *mesh_->pp_group();
  const int p = pp.size(), rank = pp.rank();
  Tensor inputs = context_parallel_shard(tokens, 1, cp), labels = context_parallel_shard(targets, 1, cp);
  const int64_t local = inputs.size(1);
  const Shape activation{inputs.size(0), options_.sequence_parallel() ? local / mesh_->size(MeshDim::tp) : local,
                         model_->config.d_model};
  // One micro-batch through the virtual stages in order: chunk c of rank r feeds chunk c of rank
  // r + 1, and rank p - 1 feeds chunk c + 1 of rank 0. Sends are asynchronous, so the wave
  // never blocks on itself.
  double cross_entropy = 0.0;
  std::vector<WorkHandle> sends;
  std::vector<Tensor> sent;
  for (int chunk = 0; chunk < model_->chunks(); ++chunk) {
    Tensor input = inputs;
    if (!model_->is_first(chunk)) {
      input = empty(activation, TensorOptions(DType::f32).device(tokens.device()));
      pp.recv(input, (rank + p - 1) % p);
    }
    Tensor out = model_->forward_chunk(chunk, input, model_->is_last(chunk) ? labels : Tensor());
    if (model_->is_last(chunk)) {
      cross_entropy = model_->last_cross_entropy.item();
    } else {
      sent.push_back(out.contiguous());
      sends.push_back(pp.send_async(sent.back(), (rank + 1) % p));
    }
  }
  for (WorkHandle& send : sends) send.wait();
  Tensor value = from_vector(std::vector<double>{cross_entropy});
  pp.broadcast(value, p - 1);
  replica_group_->all_reduce(value, ReduceOp::avg);
  return value.item();
}

std::vector<std::shared_ptr<Communicator>> ModelParallelRunner::groups() const {
  std::vector<std::shared_ptr<Communicator>> all;
  for (int d = 0; d < kMeshDims; ++d) all.push_back(mesh_->group(static_cast<MeshDim>(d)));
  for (const auto& group : {replica_group_, expert_replica_group_, embedding_group_, activation_channel_,
                            gradient_channel_}) {
    if (group) all.push_back(group);
  }
  return all;
}

CommunicationStats ModelParallelRunner::communication_stats() const {
  CommunicationStats total;
  for (const auto& group : groups()) {
    CommunicationStats stats = group->stats();
    for (int c = 0; c < kCollectiveCount; ++c) {
      total.bytes_sent[static_cast<size_t>(c)] += stats.bytes_sent[static_cast<size_t>(c)];
      total.calls[static_cast<size_t>(c)] += stats.calls[static_cast<size_t>(c)];
    }
  }
  return total;
}

void ModelParallelRunner::reset_communication_stats() {
  for (const auto& group : groups()) group->reset_stats();
}

bool ModelParallelRunner::is_expert(const std::string& name) const {
  return name.find(".moe.experts.") != std::string::npos;
}

void ModelParallelRunner::reduce_gradients(bool data_parallel) {
  if (embedding_group_ && embedding_group_->size() > 1) {
    NamedParameters parameters = model_->named_parameters();
    for (const NamedParameter& parameter : parameters) {
      if (parameter.name == kTokenEmbedding) all_reduce_gradients({parameter.tensor}, *embedding_group_, ReduceOp::sum);
    }
  }
  if (!data_parallel) return;
  std::vector<Tensor> dense, experts;
  for (const NamedParameter& parameter : model_->named_parameters()) {
    if (!parameter.tensor.requires_grad()) continue;
    (is_expert(parameter.name) ? experts : dense).push_back(parameter.tensor);
  }
  all_reduce_gradients(dense, *replica_group_, ReduceOp::avg);
  all_reduce_gradients(experts, *expert_replica_group_, ReduceOp::avg);
}

double ModelParallelRunner::norm_weight(const NamedParameter& parameter) const {
  // Count each parameter on one rank of those holding it: tensor-parallel copies of replicated
  // parameters on tp rank 0, dense parameters on ep rank 0, the tied embedding on the first stage.
  if (parameter.info.partition_dim < 0 && mesh_->tp_rank() != 0) return 0.0;
  if (!is_expert(parameter.name) && mesh_->ep_rank() != 0) return 0.0;
  if (parameter.name == kTokenEmbedding && embedding_group_ && mesh_->pp_rank() != 0) return 0.0;
  return 1.0;
}

double ModelParallelRunner::clip_grad_norm(double max_norm, ZeroOptimizer* zero) {
  NamedParameters parameters = model_->named_parameters();
  double local = 0.0;
  if (zero) {
    KILN_CHECK(mesh_->size(MeshDim::ep) == 1, "ModelParallelRunner: ZeRO with expert parallelism is not supported");
    std::map<std::string, double> weights;
    for (const NamedParameter& parameter : parameters) weights[parameter.name] = norm_weight(parameter);
    local = zero->grad_square_sum([&](const std::string& name) { return weights.at(name); });
  } else {
    NoGradGuard no_grad;
    for (const NamedParameter& parameter : parameters) {
      Tensor grad = parameter.tensor.grad();
      const double weight = norm_weight(parameter);
      if (!grad.defined() || weight == 0.0) continue;
      Tensor wide = grad.to(DType::f64);
      local += weight * sum(mul(wide, wide)).item<double>();
    }
  }
  Tensor total = from_vector(std::vector<double>{local});
  all_reduce_sum(total, mesh_->tp_group());
  if (!zero) all_reduce_sum(total, mesh_->ep_group());
  all_reduce_sum(total, mesh_->pp_group());
  const double norm = std::sqrt(total.item());
  // The rule of optim::clip_grad_norm (and torch): scale by max_norm / (norm + 1e-6) when below 1.
  const double coefficient = max_norm / (norm + 1e-6);
  if (max_norm > 0.0 && std::isfinite(norm) && coefficient < 1.0) {
    if (zero) {
      zero->scale_gradients(coefficient);
    } else {
      NoGradGuard no_grad;
      for (const NamedParameter& parameter : parameters) {
        if (Tensor grad = parameter.tensor.grad(); grad.defined()) grad.mul_(coefficient);
      }
    }
  }
  return norm;
}

nn::StateDict ModelParallelRunner::master_state_dict() {
  nn::StateDict local = parallel::master_state_dict(*model_);  // tensor-parallel slices gathered
  local = union_over(local, *mesh_->ep_group());               // every rank's experts
  return union_over(local, *mesh_->pp_group());                // every stage's layers
}

void ModelParallelRunner::load_master_state_dict(const nn::StateDict& master) {
  nn::StateDict mine;
  for (const auto& [name, tensor] : model_->state_dict()) {
    auto found = master.find(name);
    KILN_CHECK(found != master.end(), "load_master_state_dict: the state has no '", name, "'");
    mine[name] = found->second;
  }
  parallel::load_master_state_dict(*model_, mine);
}

optim::OptimizerStateDict ModelParallelRunner::master_optimizer_state(const optim::OptimizerStateDict& local) {
  optim::OptimizerStateDict master = parallel::master_optimizer_state(*model_, local);
  master = union_over(master, *mesh_->ep_group());
  return union_over(master, *mesh_->pp_group());
}

optim::OptimizerStateDict ModelParallelRunner::local_optimizer_state(const optim::OptimizerStateDict& master) {
  std::vector<std::string> names;
  for (const NamedParameter& parameter : model_->named_parameters()) names.push_back(parameter.name);
  return parallel::local_optimizer_state(*model_, restrict_to(master, names));
}

}  // namespace kiln::parallel

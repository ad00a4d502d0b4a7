// Expert-parallel MoE (see expert_parallel.h): replicas of the master's router and shared
// experts, this rank's slice of its experts, the dispatch layout from one all-gather of counts,
// and the forward as nn::MoE's with all-to-alls around the expert computation.
#include "parallel/expert_parallel.h"

#include <algorithm>
#include <string>

#include "autograd/ops.h"

namespace kiln::parallel {
namespace {

using Rows = std::vector<int64_t>;

// A copy of `master` in `fresh` (built with the master's sizes): same values, dtype and device.
template <typename M>
std::shared_ptr<M> replica(const M& master, std::shared_ptr<M> fresh, const Tensor& like) {
  fresh->to(like.dtype());
  fresh->to(like.device());
  fresh->load_state_dict(master.state_dict());
  return fresh;
}

std::shared_ptr<nn::SwiGLU> replica(const nn::SwiGLU& master, const Tensor& like, Generator& scratch) {
  auto fresh = std::make_shared<nn::SwiGLU>(master.gate->in_features, master.gate->out_features,
                                            master.gate->bias.defined(), &scratch);
  return replica(master, fresh, like);
}

// Who sends what to whom, known to every rank after one all-gather of (tokens, per-expert
// counts). Assignments are counted before the capacity limit; kept[j][e] of rank j's counts[j][e]
// assignments to expert e survive it, because ranks < j come first in the global order.
struct DispatchLayout {
  int64_t total_tokens = 0;
  int64_t capacity = 0;
  std::vector<Rows> counts;  // [rank][expert]
  std::vector<Rows> kept;    // [rank][expert]
  Rows send_rows, recv_rows;  // per rank, for this rank's dispatch
};

DispatchLayout exchange_layout(const nn::MoEConfig& config, const Rows& chosen, int64_t tokens, Communicator& group,
                               int64_t per_rank, const Device& device) {
  const int64_t count = config.n_experts;
  const int ep = group.size();
  Rows mine(static_cast<size_t>(count + 1), 0);  // [tokens, counts...]
  mine[0] = tokens;
  for (int64_t e : chosen) ++mine[static_cast<size_t>(e + 1)];
  // On the tokens' device, which every backend of the group takes (NCCL only CUDA tensors).
  Tensor all = empty({ep * (count + 1)}, TensorOptions(DType::i64).device(device));
  group.all_gather(from_vector(mine, {}, TensorOptions(DType::i64).device(device)), all);
  Rows gathered = all.to_vector<int64_t>();

  DispatchLayout layout;
  for (int j = 0; j < ep; ++j) {
    auto first = gathered.begin() + static_cast<std::ptrdiff_t>(j * (count + 1));
    layout.total_tokens += *first;
    layout.counts.emplace_back(first + 1, first + 1 + count);
  }
  layout.capacity = nn::expert_capacity(config, layout.total_tokens * config.top_k);
  Rows before(static_cast<size_t>(count), 0);  // assignments of earlier ranks, per expert
  for (int j = 0; j < ep; ++j) {
    Rows kept(static_cast<size_t>(count));
    for (size_t e = 0; e < kept.size(); ++e) {
      int64_t room = std::max<int64_t>(0, layout.capacity - before[e]);
      kept[e] = std::min(room, layout.counts[static_cast<size_t>(j)][e]);
      before[e] += layout.counts[static_cast<size_t>(j)][e];
    }
    layout.kept.push_back(kept);
  }
  const size_t rank = static_cast<size_t>(group.rank());
  for (int j = 0; j < ep; ++j) {
    int64_t send = 0, recv = 0;
    for (int64_t l = 0; l < per_rank; ++l) {
      send += layout.kept[rank][static_cast<size_t>(j * per_rank + l)];
      recv += layout.kept[static_cast<size_t>(j)][static_cast<size_t>(group.rank() * per_rank + l)];
    }
    layout.send_rows.push_back(send);
    layout.recv_rows.push_back(recv);
  }
  return layout;
}

Tensor index_tensor(const Rows& values, const Device& device) {
  return from_vector(values, {}, TensorOptions(DType::i64).device(device));
}

// This rank's kept assignments, expert-major and in token order within an expert: the order in
// which they travel. chosen (N k) are the experts of token t's slots t k .. t k + k - 1.
struct Assignments {
  Rows tokens;  // the token of each row sent
  Rows slots;   // its slot t k + s (for its routing weight)
};

Assignments kept_assignments(const DispatchLayout& layout, const Rows& chosen, int64_t k, size_t rank) {
  const size_t count = layout.counts[0].size();
  // The places of each expert that earlier ranks' assignments already take.
  Rows seen(count, 0);
  for (size_t j = 0; j < rank; ++j) {
    for (size_t e = 0; e < count; ++e) seen[e] += layout.counts[j][e];
  }
  std::vector<Rows> token_of(count), slot_of(count);
  for (size_t slot = 0; slot < chosen.size(); ++slot) {
    const size_t e = static_cast<size_t>(chosen[slot]);
    if (seen[e]++ >= layout.capacity) continue;
    token_of[e].push_back(static_cast<int64_t>(slot) / k);
    slot_of[e].push_back(static_cast<int64_t>(slot));
  }
  Assignments kept;
  for (size_t e = 0; e < count; ++e) {
    kept.tokens.insert(kept.tokens.end(), token_of[e].begin(), token_of[e].end());
    kept.slots.insert(kept.slots.end(), slot_of[e].begin(), slot_of[e].end());
  }
  return kept;
}

// Loads and drops over the group, as nn::MoE counts them on the whole batch.
nn::MoEStatistics group_statistics(const DispatchLayout& layout, int64_t k) {
  const size_t count = layout.counts[0].size();
  nn::MoEStatistics statistics{Rows(count, 0), 0, 0.0};
  for (size_t e = 0; e < count; ++e) {
    int64_t& load = statistics.tokens_per_expert[e];
    for (const Rows& counts : layout.counts) load += counts[e];
    statistics.dropped += std::max<int64_t>(0, load - layout.capacity);
  }
  const int64_t assignments = layout.total_tokens * k;
  statistics.dropped_fraction =
      assignments > 0 ? static_cast<double>(statistics.dropped) / static_cast<double>(assignments) : 0.0;
  return statistics;
}

// The rows of the received (R, d) that belong to local expert `local` (global index first +
// local): from each source rank in turn, after that source's rows for the local experts before it.
Rows rows_of_local_expert(const DispatchLayout& layout, int64_t first, int64_t local) {
  Rows rows;
  int64_t base = 0;
  for (size_t j = 0; j < layout.kept.size(); ++j) {
    const Rows& kept = layout.kept[j];
    int64_t offset = base;
    for (int64_t before = 0; before < local; ++before) offset += kept[static_cast<size_t>(first + before)];
    for (int64_t i = 0; i < kept[static_cast<size_t>(first + local)]; ++i) rows.push_back(offset + i);
    base += layout.recv_rows[j];
  }
  return rows;
}

}  // namespace

ExpertParallelMoE::ExpertParallelMoE(const nn::MoE& master, std::shared_ptr<Communicator> ep_group)
    : nn::Module("ExpertParallelMoE"), config(master.config), group_(std::move(ep_group)) {
  KILN_CHECK(group_ != nullptr, "ExpertParallelMoE: the expert-parallel group is null");
  const int64_t count = config.n_experts, ep = group_->size();
  KILN_CHECK(count % ep == 0, "ExpertParallelMoE: ", count, " experts are not divisible by ep ", ep, " (",
             group_->describe(), ")");
  KILN_CHECK(static_cast<int64_t>(master.experts->size()) == count, "ExpertParallelMoE: the master has ",
             master.experts->size(), " experts but its config says ", count);
  const Tensor& like = master.router->weight;
  // Fresh modules are drawn from a throwaway stream and then overwritten with the master's values.
  Generator scratch(0);
  router = register_module("router", replica(*master.router,
                                             std::make_shared<nn::Linear>(master.router->in_features, count,
                                                                          master.router->bias.defined(), &scratch),
                                             like));
  experts = register_module("experts", std::make_shared<nn::Module>("ModuleList"));
  const int64_t per_rank = count / ep;
  first_expert_ = group_->rank() * per_rank;
  for (int64_t e = first_expert_; e < first_expert_ + per_rank; ++e) {
    auto expert = replica(*master.experts->at<nn::SwiGLU>(static_cast<size_t>(e)), like, scratch);
    local_experts.push_back(experts->register_module(std::to_string(e), expert));
  }
  if (master.shared) shared = register_module("shared", replica(*master.shared, like, scratch));
}

NamedParameters ExpertParallelMoE::expert_parameters() const {
  NamedParameters named;
  for (NamedParameter& parameter : experts->named_parameters()) {
    parameter.name = "experts." + parameter.name;
    named.push_back(parameter);
  }
  return named;
}

Tensor ExpertParallelMoE::forward(const Tensor& input) {
  return with_hooks(input, [&] {
    const int64_t d_model = input.size(-1);
    Tensor x = input.reshape({-1, d_model});  // (N, d)
    const int64_t tokens = x.size(0), k = config.top_k, count = config.n_experts;
    const int64_t ep = group_->size(), per_rank = count / ep;
    const Device device = x.device();
    nn::MoERouting routing = nn::route_tokens(*router, config, x);
    const Rows chosen = routing.indices.to_vector<int64_t>();
    const DispatchLayout layout = exchange_layout(config, chosen, tokens, *group_, per_rank, device);
    const Assignments kept = kept_assignments(layout, chosen, k, static_cast<size_t>(group_->rank()));
    statistics = group_statistics(layout, k);

    // Dispatch: (S, d) kept rows of this rank -> (R, d) rows for this rank's experts, from rank
    // 0 first, each source's rows grouped by expert.
    Tensor send_index = index_tensor(kept.tokens, device);
    Tensor received = all_to_all_rows(index_select(x, 0, send_index), layout.send_rows, layout.recv_rows, group_);

    // Expert gradients are the sum of every rank's loss's gradients: 1 / ep makes them the mean
    // objective's, and ep on the input restores the token gradients sent back (header).
    Tensor expert_input = ep > 1 ? scale_gradient(received, static_cast<double>(ep)) : received;
    std::vector<Tensor> outputs, destinations;
    for (int64_t l = 0; l < per_rank; ++l) {
      // Every local expert runs, on no rows if it has none: the graph, and so the collectives
      // of backward, are then the same on every rank whatever the routing.
      Tensor row_index = index_tensor(rows_of_local_expert(layout, first_expert_, l), device);
      outputs.push_back(local_experts[static_cast<size_t>(l)]->forward(index_select(expert_input, 0, row_index)));
      destinations.push_back(row_index);
    }
    Tensor expert_out = index_add(zeros(received.sizes(), TensorOptions(x.dtype()).device(device)), 0,
                                  cat(destinations), cat(outputs));  // (R, d)
    if (ep > 1) expert_out = scale_gradient(expert_out, 1.0 / static_cast<double>(ep));

    // Combine: (R, d) -> (S, d) back to the sources, weighted and added into the tokens' rows.
    Tensor returned = all_to_all_rows(expert_out, layout.recv_rows, layout.send_rows, group_);
    Tensor weights = index_select(routing.weights.reshape({-1}), 0, index_tensor(kept.slots, device)).unsqueeze(1);
    Tensor out = index_add(zeros({tokens, d_model}, TensorOptions(x.dtype()).device(device)), 0, send_index,
                           mul(returned, weights));
    if (shared) out = add(out, shared->forward(x));

    // Means over the group's tokens: this rank's sums over N_total, summed over the group.
    const double total = static_cast<double>(std::max<int64_t>(1, layout.total_tokens));
    std::vector<Tensor> local_sums{sum(routing.probabilities, {0}) / total};  // (E)
    if (config.z_loss_weight > 0.0) {
      local_sums.push_back((sum(square(logsumexp(routing.logits, {-1}))) / total).reshape({1}));
    }
    Tensor group_sums = sum_over_group(cat(local_sums), group_);  // (E) or (E + 1)
    Tensor mean_square_logsumexp = config.z_loss_weight > 0.0 ? group_sums.narrow(0, count, 1).reshape({}) : Tensor();
    aux_loss = nn::auxiliary_loss(config, statistics.tokens_per_expert, layout.total_tokens * k,
                                  group_sums.narrow(0, 0, count), mean_square_logsumexp);
    return out.reshape(input.sizes());
  });
}

}  // namespace kiln::parallel

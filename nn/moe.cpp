// Mixture-of-experts: routing, capacity, dispatch by gather/index_add, auxiliary losses.
#include "nn/moe.h"

#include <cmath>

#include "autograd/ops.h"

namespace kiln::nn {

MoE::MoE(int64_t d_model, const MoEConfig& moe_config, Generator* generator) : Module("MoE"), config(moe_config) {
  KILN_CHECK(config.n_experts > 0, "MoE: n_experts must be positive, got ", config.n_experts);
  KILN_CHECK(config.expert_hidden > 0, "MoE: expert_hidden must be positive, got ", config.expert_hidden);
  router = register_module("router", std::make_shared<Linear>(d_model, config.n_experts, false, generator));
  experts = register_module("experts", std::make_shared<ModuleList>());
  for (int64_t e = 0; e < config.n_experts; ++e) {
    experts->push_back(std::make_shared<SwiGLU>(d_model, config.expert_hidden, false, generator));
  }
  if (config.n_shared_experts > 0) {
    shared = register_module(
        "shared", std::make_shared<SwiGLU>(d_model, config.n_shared_experts * config.expert_hidden, false, generator));
  }
}

MoERouting route_tokens(Linear& router, const MoEConfig& config, const Tensor& x) {
  MoERouting routing;
  routing.logits = router.forward(x);  // (N, E)
  int64_t tokens = x.size(0), count = config.n_experts;
  Tensor weights;
  if (config.scoring == RouterScoring::softmax) {
    routing.probabilities = softmax(routing.logits, -1);
    auto [values, indices] = topk(routing.probabilities, config.top_k, -1);
    routing.indices = indices;
    weights = values;
  } else {
    Tensor scores = sigmoid(routing.logits);  // (N, E)
    Tensor eligible = scores.detach();
    if (config.n_groups > 1) {
      // A group's strength is the sum of its two best scores; only the best groups compete.
      int64_t per_group = count / config.n_groups;
      Tensor grouped = eligible.reshape({tokens, config.n_groups, per_group});
      Tensor strength = sum(topk(grouped, std::min<int64_t>(2, per_group), -1).first, {-1});  // (N, G)
      Tensor chosen_groups = topk(strength, config.topk_groups, -1).second;                   // (N, topk_groups)
      Tensor group_mask = scatter_add(zeros({tokens, config.n_groups}), 1, chosen_groups,
                                      ones({tokens, config.topk_groups}));
      Tensor expert_mask = gt(group_mask.unsqueeze(2).expand({tokens, config.n_groups, per_group}), 0.0)
                               .reshape({tokens, count});
      eligible = where(expert_mask, eligible, 0.0);
    }
    routing.indices = topk(eligible, config.top_k, -1).second;
    weights = gather(scores, 1, routing.indices);
    routing.probabilities = div(scores, sum(scores, {-1}, true));
  }
  if (config.normalize_topk) weights = div(weights, sum(weights, {-1}, true));
  if (config.routed_scaling != 1.0) weights = weights * config.routed_scaling;
  routing.weights = weights;
  return routing;
}

int64_t expert_capacity(const MoEConfig& config, int64_t assignments) {
  if (config.capacity_factor <= 0.0) return assignments;
  return static_cast<int64_t>(std::ceil(config.capacity_factor * static_cast<double>(assignments) /
                                        static_cast<double>(config.n_experts)));
}

Tensor auxiliary_loss(const MoEConfig& config, const std::vector<int64_t>& tokens_per_expert, int64_t assignments,
                      const Tensor& mean_probabilities, const Tensor& mean_square_logsumexp) {
  const int64_t count = config.n_experts;
  KILN_CHECK(static_cast<int64_t>(tokens_per_expert.size()) == count, "MoE auxiliary_loss: ", tokens_per_expert.size(),
             " expert loads for ", count, " experts");
  std::vector<double> fraction(static_cast<size_t>(count));
  for (int64_t e = 0; e < count; ++e) {
    fraction[static_cast<size_t>(e)] =
        static_cast<double>(tokens_per_expert[static_cast<size_t>(e)]) / static_cast<double>(assignments);
  }
  Tensor fractions = from_vector(fraction, {}, TensorOptions(DType::f64).device(mean_probabilities.device()))
                         .to(mean_probabilities.dtype());
  // Switch balance loss: E * sum_i (fraction of assignments to i) * (mean probability of i).
  Tensor balance = sum(mul(fractions, mean_probabilities)) * static_cast<double>(count);
  Tensor aux = balance * config.aux_loss_weight;
  if (config.z_loss_weight > 0.0) aux = add(aux, mean_square_logsumexp * config.z_loss_weight);
  return aux;
}

MoERouting MoE::route(const Tensor& x) const { return route_tokens(*router, config, x); }

Tensor MoE::forward(const Tensor& input) {
  return with_hooks(input, [&] {
    int64_t d_model = input.size(-1);
    Tensor x = input.reshape({-1, d_model});  // (N, d)
    int64_t tokens = x.size(0), k = config.top_k, count = config.n_experts;
    MoERouting routing = route(x);

    // Assignments in token order; an expert past its capacity drops the later ones.
    std::vector<int64_t> chosen = routing.indices.to_vector<int64_t>();
    int64_t capacity = expert_capacity(config, tokens * k);
    std::vector<std::vector<int64_t>> token_of(static_cast<size_t>(count)), slot_of(static_cast<size_t>(count));
    statistics = MoEStatistics{std::vector<int64_t>(static_cast<size_t>(count), 0), 0, 0.0};
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t s = 0; s < k; ++s) {
        int64_t e = chosen[static_cast<size_t>(t * k + s)];
        auto& load = statistics.tokens_per_expert[static_cast<size_t>(e)];
        if (load++ >= capacity) {
          ++statistics.dropped;
          continue;
        }
        token_of[static_cast<size_t>(e)].push_back(t);
        slot_of[static_cast<size_t>(e)].push_back(t * k + s);
      }
    }
    statistics.dropped_fraction = static_cast<double>(statistics.dropped) / static_cast<double>(tokens * k);

    // Each expert runs on its own tokens only; the weighted results are added back in one op.
    Tensor flat_weights = routing.weights.reshape({-1});
    std::vector<Tensor> outputs, destinations;
    for (int64_t e = 0; e < count; ++e) {
      if (token_of[static_cast<size_t>(e)].empty()) continue;
      Tensor token_index = from_vector(token_of[static_cast<size_t>(e)], {}, TensorOptions(DType::i64).device(x.device()));
      Tensor slot_index = from_vector(slot_of[static_cast<size_t>(e)], {}, TensorOptions(DType::i64).device(x.device()));
      Tensor expert_out = experts->at<SwiGLU>(static_cast<size_t>(e))->forward(index_select(x, 0, token_index));
      outputs.push_back(mul(expert_out, index_select(flat_weights, 0, slot_index).unsqueeze(1)));
      destinations.push_back(token_index);
    }
    Tensor out = zeros({tokens, d_model}, TensorOptions(x.dtype()).device(x.device()));
    if (!outputs.empty()) out = index_add(out, 0, cat(destinations), cat(outputs));
    if (shared) out = add(out, shared->forward(x));

    Tensor mean_square_logsumexp =
        config.z_loss_weight > 0.0 ? mean(square(logsumexp(routing.logits, {-1}))) : Tensor();
    aux_loss = auxiliary_loss(config, statistics.tokens_per_expert, tokens * k, mean(routing.probabilities, {0}),
                              mean_square_logsumexp);
    return out.reshape(input.sizes());
  });
}

}  // namespace kiln::nn

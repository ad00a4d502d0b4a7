// Mixture-of-experts feed-forward layer.
//
//   x (N, d) -> router scores (N, E) -> top-k experts per token with weights
//   -> each expert computes only its own tokens (index_select ... index_add) -> (N, d)
//
// Routing is either softmax top-k (Switch with k = 1, Mixtral with k = 2 and renormalised
// weights) or sigmoid scores with DeepSeek-V3's group-limited top-k (experts split into groups,
// only the topk_groups groups with the best top-2 score sums are eligible), normalised top-k
// weights and a routed scaling factor. Optional shared experts see every token. A capacity
// factor bounds each expert's tokens (later assignments are dropped, in token order). The layer
// reports the Switch load-balancing loss, an optional router z-loss, per-expert loads and the
// dropped fraction of every forward.
#pragma once

#include "nn/containers.h"
#include "nn/feed_forward.h"
#include "nn/transformer_config.h"

namespace kiln::nn {

struct MoERouting {
  Tensor indices;  // (N, k) i64: the chosen experts, best first
  Tensor weights;  // (N, k): their mixing weights (differentiable towards the router)
  Tensor probabilities;  // (N, E): what the balance loss averages (softmax, or normalised sigmoid)
  Tensor logits;   // (N, E): the router's raw output (for the z-loss)
};

struct MoEStatistics {
  std::vector<int64_t> tokens_per_expert;  // assignments each expert received (before capacity)
  int64_t dropped = 0;                     // assignments dropped by the capacity limit
  double dropped_fraction = 0.0;           // dropped / (N k)
};

// The pieces of MoE::forward that expert parallelism (parallel/expert_parallel.h) shares, so
// that its routing, capacity and loss are this layer's by construction.
//
// Scores and top-k choice of `router` (d -> E) for x (N, d) under `config`.
MoERouting route_tokens(Linear& router, const MoEConfig& config, const Tensor& x);
// How many of `assignments` (N k) routed assignments one expert may keep: ceil(cf N k / E) with
// a capacity factor, else all of them.
int64_t expert_capacity(const MoEConfig& config, int64_t assignments);
// aux_loss_weight * E * sum_i f_i P_i (Switch balance loss) with f_i = tokens_per_expert[i] /
// assignments and P (E) the mean router probability over the tokens, plus z_loss_weight *
// mean_square_logsumexp (a scalar, unused when z_loss_weight is 0).
Tensor auxiliary_loss(const MoEConfig& config, const std::vector<int64_t>& tokens_per_expert, int64_t assignments,
                      const Tensor& mean_probabilities, const Tensor& mean_square_logsumexp);

class MoE : public Module {
 public:
  MoE(int64_t d_model, const MoEConfig& config, Generator* generator = nullptr);
  // x (..., d) -> (..., d). The auxiliary loss of this call (weighted balance loss plus z-loss)
  // is left in aux_loss for the model to add to its objective.
  Tensor forward(const Tensor& x);
  // Scores and top-k choice for x (N, d).
  MoERouting route(const Tensor& x) const;

  MoEConfig config;
  std::shared_ptr<Linear> router;      // d -> E, no bias
  std::shared_ptr<ModuleList> experts;  // E x SwiGLU(d, expert_hidden)
  std::shared_ptr<SwiGLU> shared;       // n_shared_experts * expert_hidden wide, or null
  Tensor aux_loss;                      // scalar, from the last forward
  MoEStatistics statistics;             // from the last forward
};

}  // namespace kiln::nn

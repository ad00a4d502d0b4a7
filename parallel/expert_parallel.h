// Expert parallelism (GShard, Lepikhin et al. 2020; Switch, Fedus et al. 2021): the experts of
// an MoE layer spread over the expert-parallel (ep) group, tokens sent to their experts' ranks
// and back with all-to-alls.
//
//   x (N, d) this rank's tokens -> replicated router -> top-k (expert, weight) per token
//   -> all-gather of the per-expert counts (every rank learns the whole layout and the drops)
//   -> dispatch: all_to_all_rows of the kept token rows to the experts' owners   (R, d)
//   -> each local expert on its rows (index_select ... index_add)                (R, d)
//   -> combine: all_to_all_rows back along the reverse counts                    (S, d)
//   -> times the routing weights, index_add into (N, d), plus the local shared experts
//
// Every ep rank holds different tokens (like data parallelism), and the ranks together compute
// what nn::MoE computes on the concatenation of their batches (rank 0's tokens first): the same
// routing, capacity ceil(cf N_total k / E) over the group's N_total tokens, assignments past an
// expert's capacity dropped in that global token order, statistics over the group's tokens, and
// the same auxiliary loss value on every rank.
//
// Drops are decided before anything is sent: the all-gather of each rank's (N_r, per-expert
// counts) tells rank r how many assignments to expert e come before its own (those of ranks
// < r), so it keeps exactly the ones nn::MoE keeps, and every rank can compute every other
// rank's kept counts, hence all send and receive row counts, without a second exchange. Rows
// travel grouped by expert (expert-major, token order within), so the owner finds expert e's
// rows from source j at known offsets and needs no expert ids on the wire.
//
// Gradient convention (the one DDP uses). The training objective is J = mean over the ep ranks
// of each rank's loss (its local cross-entropy mean plus aux_loss), and each rank runs backward
// on its own loss only, so its backward yields ep x dJ/d(its local tensors); replicated
// parameters (router, shared experts) must then be averaged over the ep group (by DDP over a
// group that contains it), which makes them dJ/dθ. In particular:
// - aux_loss is built from sums over the group taken with sum_over_group (forward all-reduce,
//   backward all-reduce): its value is the group's, and each rank's router gradient from it is
//   ep x the gradient of its own tokens' contribution, so the average is the true gradient.
// - Expert parameters live on one rank and are NOT averaged; through the combine/dispatch
//   backward they receive the sum over ep ranks of their losses' gradients, i.e. ep x dJ/dθ.
//   The expert computation is therefore wrapped in scale_gradient(1 / ep) on its output and
//   scale_gradient(ep) on its input: expert parameter gradients are dJ/dθ, while the token
//   gradients sent back (and so the input gradients) are left as every other rank-local gradient.
// Expert parameters are listed by expert_parameters() so that gradient averaging can skip them.
//
// Collectives: forward runs an all-gather of counts, two all-to-alls and one all-reduce;
// backward the same all-reduce and two all-to-alls, in that order on every rank (the engine runs
// the latest-created ready node first, and every rank builds the same graph: each local expert
// runs even on no rows). So all ranks of the ep group must call forward together, with x
// requiring grad on all or on none, and include aux_loss in their losses on all or on none.
#pragma once

#include <memory>
#include <vector>

#include "nn/moe.h"
#include "parallel/communicator.h"
#include "parallel/ep_mappings.h"

namespace kiln::parallel {

class ExpertParallelMoE : public nn::Module {
 public:
  // Built from the master layer (every rank builds the same nn::MoE from the same seed): the
  // router and shared experts replicated, this rank keeping experts [r E / ep, (r+1) E / ep)
  // (E % ep == 0, else an error naming both). Parameter names are the master's:
  // "router.weight", "experts.<global index>.gate.weight", "shared.up.weight", ...
  ExpertParallelMoE(const nn::MoE& master, std::shared_ptr<Communicator> ep_group);
  // x (..., d): this rank's tokens -> (..., d). Collective over the ep group.
  Tensor forward(const Tensor& x);

  // This rank's experts' parameters, named as in named_parameters() ("experts.2.up.weight"):
  // the ones not to average over the ep group.
  NamedParameters expert_parameters() const;
  int64_t first_expert() const { return first_expert_; }  // global index of local_experts[0]
  const std::shared_ptr<Communicator>& group() const { return group_; }

  nn::MoEConfig config;
  std::shared_ptr<nn::Linear> router;                    // d -> E, no bias, replicated
  std::shared_ptr<nn::Module> experts;                   // children named by global expert index
  std::vector<std::shared_ptr<nn::SwiGLU>> local_experts;  // E / ep experts from first_expert()
  std::shared_ptr<nn::SwiGLU> shared;                    // replicated, or null
  Tensor aux_loss;               // scalar: the ep group's auxiliary loss (the same on every rank)
  nn::MoEStatistics statistics;  // over the ep group's tokens, from the last forward

 private:
  std::shared_ptr<Communicator> group_;
  int64_t first_expert_ = 0;
};

}  // namespace kiln::parallel

// Checkpoints of a tensor-parallel model in the layout of the model without tensor parallelism,
// so that a run saved at one TP degree continues at another (TP = 2 -> 1, 1 -> 2, ...).
//
// ParallelTransformer keeps nn::Transformer's parameter names; only the shapes of the split
// parameters differ. These functions gather every split parameter (and every parameter-shaped
// optimizer buffer, "<parameter>/<buffer>") into its master tensor, or take this rank's slice
// of one. All of them are collective over the model's tensor-parallel group.
#pragma once

#include "nn/module.h"
#include "optim/optimizer.h"
#include "parallel/tp_transformer.h"

namespace kiln::parallel {

// The state_dict that the equivalent nn::Transformer would have.
nn::StateDict master_state_dict(ParallelTransformer& model);
// Loads an nn::Transformer state_dict (strict: every key, master shapes) into this rank's slices.
void load_master_state_dict(ParallelTransformer& model, const nn::StateDict& master);

// An optimizer state_dict over the model's parameters in master shapes (scalars unchanged).
optim::OptimizerStateDict master_optimizer_state(ParallelTransformer& model, const optim::OptimizerStateDict& local);
// This rank's part of a master-shaped optimizer state_dict, for an optimizer over `model`.
optim::OptimizerStateDict local_optimizer_state(ParallelTransformer& model, const optim::OptimizerStateDict& master);

}  // namespace kiln::parallel

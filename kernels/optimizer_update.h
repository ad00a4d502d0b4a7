// The scalar hyperparameters of the fused optimizer updates, shared by every device's kernels
// (kernels/cpu/optimizer_kernels.h states each update's arithmetic; kernels/cuda/optimizer.cu
// mirrors it line for line). Values are doubles; kernels round each to the buffers' type.
#pragma once

namespace kiln::kernels {

struct SgdHyper {
  double lr = 0;
  double momentum = 0;
  double dampening = 0;
  double weight_decay = 0;
  bool nesterov = false;
  bool first_step = false;  // buf is initialised from d rather than decayed
};

struct AdagradHyper {
  double clr = 0;
  double eps = 0;
  double weight_decay = 0;
};

struct RmspropHyper {
  double lr = 0;
  double alpha = 0;
  double eps = 0;
  double weight_decay = 0;
  double momentum = 0;
  bool centered = false;
};

struct AdamHyper {
  double lr = 0;
  double beta1 = 0;
  double beta2 = 0;
  double eps = 0;
  double weight_decay = 0;
  bool decoupled_weight_decay = false;
  bool amsgrad = false;
  double bias_correction1 = 1;
  double bias_correction2 = 1;
};

}  // namespace kiln::kernels

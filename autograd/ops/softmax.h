// Softmax family and the fused softmax cross-entropy loss.
#pragma once

#include "autograd/tensor.h"

namespace kiln {

Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);

enum class Reduction { mean, sum, none };

struct CrossEntropyOptions {
  int64_t ignore_index = -100;
  double label_smoothing = 0.0;
  Reduction reduction = Reduction::mean;
  CrossEntropyOptions& ignore(int64_t value) { ignore_index = value; return *this; }
  CrossEntropyOptions& smoothing(double value) { label_smoothing = value; return *this; }
  CrossEntropyOptions& reduce(Reduction value) { reduction = value; return *this; }
};

// logits (N, C) or (..., C), targets (N) or (...) i64 -> the loss, as F.cross_entropy: mean
// over non-ignored targets, sum, or per target (none). Probabilities are never stored. The loss
// of bf16/f16 logits is f32 (as under PyTorch's autocast, which runs cross_entropy in f32): the
// kernels compute it in f32, and rounding it to 8 bits would blur every logged loss by ~0.4%.
Tensor cross_entropy(const Tensor& logits, const Tensor& targets, CrossEntropyOptions options = {});

}  // namespace kiln

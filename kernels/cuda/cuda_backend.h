// CudaBackend: the CUDA kernels (cuBLAS for matrix products, .cu kernels for the rest).
//
// Same contract and tolerances as CpuBackend (kernels/backend.h); each group of methods is
// defined in the file of the same name under kernels/cuda/. Every method runs on the calling
// thread's current stream (kernels/cuda/stream.h) of the device its operands live on, which
// must be the current device. Methods return once the work is queued, except where the host
// needs a result: copies to the host, and index checks (one flag is read back before the
// kernel that trusts the indices runs).
#pragma once

#include "kernels/backend.h"

namespace kiln::kernels {

class CudaBackend final : public Backend {
 public:
  std::string name() const override { return "cuda"; }

  // copy.cu and transfer.cpp
  void copy(const View& src, const View& dst) override;
  void fill(const View& out, double value) override;
  void arange(const View& out, double start, double step) override;

  // elementwise.cu
  void unary(UnaryOp op, const View& in, const View& out) override;
  void unary_backward(UnaryOp op, const View& grad_out, const View& x, const View& y,
                      const View& grad_in) override;
  void binary(BinaryOp op, const View& a, const View& b, const View& out) override;
  void where(const View& condition, const View& a, const View& b, const View& out) override;
  void clamp(const View& in, const View& out, std::optional<double> low,
             std::optional<double> high) override;
  void clamp_backward(const View& grad_out, const View& x, const View& grad_in,
                      std::optional<double> low, std::optional<double> high) override;

  // reduce.cu
  void reduce(ReduceOp op, const View& in, const View& out, const View* indices) override;
  void variance(const View& in, const View& out, double correction) override;

  // matmul.cpp
  void matmul(const View& a, const View& b, const View& out, bool accumulate) override;

  // softmax.cu
  void softmax(const View& in, const View& out, int dim, bool log) override;
  void softmax_backward(const View& grad_out, const View& out, const View& grad_in, int dim,
                        bool log) override;
  // cross_entropy.cu
  void cross_entropy(const View& logits, const View& targets, const View& loss,
                     const View& logsumexp, int64_t ignore_index, double label_smoothing) override;
  void cross_entropy_backward(const View& logits, const View& targets, const View& logsumexp,
                              const View& grad_loss, const View& grad_logits, int64_t ignore_index,
                              double label_smoothing) override;

  // norm.cu
  void layer_norm(const View& x, const View* residual, const View* weight, const View* bias, double eps,
                  const View* sum, const View& y, const View& mean, const View& rstd) override;
  void layer_norm_backward(const View& grad_y, const View* grad_sum, const View& x, const View* weight,
                           const View& mean, const View& rstd, const View& grad_x, const View* grad_weight,
                           const View* grad_bias) override;
  void rms_norm(const View& x, const View* residual, const View* weight, double eps, const View* sum,
                const View& y, const View& rstd) override;
  void rms_norm_backward(const View& grad_y, const View* grad_sum, const View& x, const View* weight,
                         const View& rstd, const View& grad_x, const View* grad_weight) override;

  // index.cu
  void index_select(const View& in, int dim, const View& index, const View& out) override;
  void index_add(const View& out, int dim, const View& index, const View& src,
                 double alpha) override;
  void gather(const View& in, int dim, const View& index, const View& out) override;
  void scatter_add(const View& out, int dim, const View& index, const View& src) override;
  // sort.cu
  void topk(const View& in, int64_t k, int dim, bool largest, bool sorted, const View& values,
            const View& indices) override;
  void sort(const View& in, int dim, bool descending, const View& values,
            const View& indices) override;

  // attention.cu and rope.cu
  void attention(const View& q, const View& k, const View& v, const View& out, const View& lse, bool causal,
                 double scale) override;
  void attention_backward(const View& q, const View& k, const View& v, const View& out, const View& lse,
                          const View& grad_out, const View& grad_q, const View& grad_k, const View& grad_v, bool causal,
                          double scale) override;
  void rope(const View& x, const View& positions, const View& out, double theta, bool inverse) override;
  // optimizer.cu
  void sgd_update(const View& param, const View& grad, const View& momentum_buffer, const SgdHyper& hyper) override;
  void adagrad_update(const View& param, const View& grad, const View& sum, const AdagradHyper& hyper) override;
  void rmsprop_update(const View& param, const View& grad, const View& square_avg, const View& grad_avg,
                      const View& momentum_buffer, const RmspropHyper& hyper) override;
  void adam_update(const View& param, const View& grad, const View& exp_avg, const View& exp_avg_sq,
                   const View& max_exp_avg_sq, const AdamHyper& hyper) override;

  // random.cu
  void uniform(const View& out, double low, double high, uint64_t seed, uint64_t offset) override;
  void normal(const View& out, double mean, double stddev, uint64_t seed,
              uint64_t offset) override;
  void dropout(const View& in, const View& out, double p, uint64_t seed, uint64_t offset) override;
};

}  // namespace kiln::kernels

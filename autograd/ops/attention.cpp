// scaled_dot_product_attention (fused kernel, saving only the output and the per-row log-sum-exp
// for the backward), attention_reference (the same maths from matmul and softmax) and rope.
#include "autograd/ops/attention.h"

#include <cmath>
#include <limits>

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/elementwise.h"
#include "autograd/ops/matmul.h"
#include "autograd/ops/op_helpers.h"
#include "autograd/ops/softmax.h"

namespace kiln {
namespace {

// Validates q, k, v and returns the softmax scale to use.
double check_attention_arguments(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                 std::optional<double> scale) {
  detail::check_defined(op, q, "query");
  detail::check_defined(op, k, "key");
  detail::check_defined(op, v, "value");
  detail::check_floating(op, q);
  for (const Tensor* other : {&k, &v}) {
    detail::check_same_dtype(op, q, *other);
    detail::check_same_device(op, q, *other);
  }
  for (const Tensor* operand : {&q, &k, &v}) {
    KILN_CHECK(operand->ndim() == 4, op, ": q, k and v must be (B, H, T, D), got shapes ", shape_str(q.sizes()), ", ",
               shape_str(k.sizes()), " and ", shape_str(v.sizes()));
  }
  KILN_CHECK(k.sizes() == v.sizes(), op, ": key shape ", shape_str(k.sizes()), " and value shape ",
             shape_str(v.sizes()), " differ");
  KILN_CHECK(q.size(0) == k.size(0), op, ": query shape ", shape_str(q.sizes()), " and key shape ",
             shape_str(k.sizes()), " have different batch sizes (", q.size(0), " vs ", k.size(0), ")");
  KILN_CHECK(q.size(3) == k.size(3), op, ": query shape ", shape_str(q.sizes()), " and key shape ",
             shape_str(k.sizes()), " have different head dims (", q.size(3), " vs ", k.size(3), ")");
  KILN_CHECK(k.size(1) > 0 && q.size(1) % k.size(1) == 0, op, ": ", q.size(1), " query heads (shape ",
             shape_str(q.sizes()), ") are not a multiple of ", k.size(1), " kv heads (shape ", shape_str(k.sizes()),
             ")");
  KILN_CHECK(q.size(3) > 0, op, ": query shape ", shape_str(q.sizes()), " has an empty head dim");
  KILN_CHECK(k.size(2) > 0, op, ": key shape ", shape_str(k.sizes()), " has no keys to attend to");
  KILN_CHECK(!causal || q.size(2) <= k.size(2), op, ": causal attention needs Tq <= Tk, got query shape ",
             shape_str(q.sizes()), " and key shape ", shape_str(k.sizes()), " (", q.size(2), " > ", k.size(2), ")");
  double value = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  KILN_CHECK(std::isfinite(value), op, ": scale must be finite, got ", value);
  return value;
}

// The kernels need unit stride in the last dim; every other stride is free, so transposed
// (B, T, H, D) views pass through uncopied. The copy is detached: the op records its own node.
Tensor with_unit_last_stride(const Tensor& tensor) {
  return tensor.stride(-1) == 1 || tensor.size(-1) <= 1 ? tensor : tensor.detach().contiguous();
}

}  // namespace

Tensor scaled_dot_product_attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal,
                                    std::optional<double> scale_option) {
  double scale = check_attention_arguments("scaled_dot_product_attention", q_in, k_in, v_in, causal, scale_option);
  Tensor q = with_unit_last_stride(q_in), k = with_unit_last_stride(k_in), v = with_unit_last_stride(v_in);
  // out (B, Hq, Tq, D), lse (B, Hq, Tq) in f64 for f64 inputs and f32 otherwise.
  Tensor out = empty(q.sizes(), TensorOptions(q.dtype()).device(q.device()));
  DType stats = q.dtype() == DType::f64 ? DType::f64 : DType::f32;
  Tensor lse = empty({q.size(0), q.size(1), q.size(2)}, TensorOptions(stats).device(q.device()));
  detail::backend_of(q).attention(q.view_for_kernels(), k.view_for_kernels(), v.view_for_kernels(),
                                  out.view_for_kernels(), lse.view_for_kernels(), causal, scale);
  if (!should_record({q_in, k_in, v_in})) return out;
  SavedTensor saved_q = save(q), saved_k = save(k), saved_v = save(v), saved_out = save(out), saved_lse = save(lse);
  record_op("scaled_dot_product_attention", {q_in, k_in, v_in}, {out},
            [saved_q, saved_k, saved_v, saved_out, saved_lse, causal, scale](const auto& grads, const Node&) {
              const char* op = "scaled_dot_product_attention";
              Tensor q = saved_q.unpack(op), k = saved_k.unpack(op), v = saved_v.unpack(op);
              Tensor grad_out = with_unit_last_stride(grads[0]);
              TensorOptions options = TensorOptions(q.dtype()).device(q.device());
              Tensor grad_q = empty(q.sizes(), options), grad_k = empty(k.sizes(), options);
              Tensor grad_v = empty(v.sizes(), options);
              detail::backend_of(q).attention_backward(
                  q.view_for_kernels(), k.view_for_kernels(), v.view_for_kernels(),
                  saved_out.unpack(op).view_for_kernels(), saved_lse.unpack(op).view_for_kernels(),
                  grad_out.view_for_kernels(), grad_q.view_for_kernels(), grad_k.view_for_kernels(),
                  grad_v.view_for_kernels(), causal, scale);
              return std::vector<Tensor>{grad_q, grad_k, grad_v};
            });
  return out;
}

Tensor attention_reference(const Tensor& q, const Tensor& k_in, const Tensor& v_in, bool causal,
                           std::optional<double> scale_option) {
  double scale = check_attention_arguments("attention_reference", q, k_in, v_in, causal, scale_option);
  int64_t batch = q.size(0), heads = q.size(1), kv_heads = k_in.size(1), query_len = q.size(2);
  int64_t key_len = k_in.size(2), dim = q.size(3);
  Tensor k = k_in, v = v_in;
  if (kv_heads != heads) {
    // Query head h reads kv head h / group: repeat each kv head `group` times, adjacently.
    Shape grouped{batch, kv_heads, heads / kv_heads, key_len, dim};
    k = k.unsqueeze(2).expand(grouped).reshape({batch, heads, key_len, dim});
    v = v.unsqueeze(2).expand(grouped).reshape({batch, heads, key_len, dim});
  }
  Tensor scores = matmul(q, k.transpose(2, 3)) * scale;  // (B, Hq, Tq, Tk)
  if (causal) {
    TensorOptions index_options = TensorOptions(DType::i64).device(q.device());
    Tensor last_visible = arange(0, static_cast<double>(query_len), 1.0, index_options).reshape({query_len, 1}) +
                          static_cast<double>(key_len - query_len);
    Tensor keys = arange(0, static_cast<double>(key_len), 1.0, index_options).reshape({1, key_len});
    scores = masked_fill(scores, gt(keys, last_visible), -std::numeric_limits<double>::infinity());
  }
  return matmul(softmax(scores, -1), v);  // (B, Hq, Tq, D)
}

Tensor rope(const Tensor& x, const Tensor& positions, double theta) {
  const char* op = "rope";
  detail::check_defined(op, x, "input");
  detail::check_defined(op, positions, "positions");
  detail::check_floating(op, x);
  detail::check_same_device(op, x, positions);
  KILN_CHECK(x.ndim() == 4, op, ": input must be (B, T, H, D), got shape ", shape_str(x.sizes()));
  KILN_CHECK(x.size(3) % 2 == 0, op, ": head dim must be even to form rotation pairs, got shape ",
             shape_str(x.sizes()));
  KILN_CHECK(positions.dtype() == DType::i64, op, ": positions must be i64, got ", dtype_name(positions.dtype()));
  KILN_CHECK(positions.ndim() == 1 && positions.size(0) == x.size(1), op, ": positions of shape ",
             shape_str(positions.sizes()), " do not match the ", x.size(1), " positions of input shape ",
             shape_str(x.sizes()));
  KILN_CHECK(theta > 0.0 && std::isfinite(theta), op, ": theta must be positive and finite, got ", theta);
  // x (B, T, H, D) -> out (B, T, H, D)
  Tensor out = empty(x.sizes(), TensorOptions(x.dtype()).device(x.device()));
  detail::backend_of(x).rope(x.view_for_kernels(), positions.view_for_kernels(), out.view_for_kernels(), theta, false);
  if (!should_record({x})) return out;
  SavedTensor saved_positions = save(positions);
  record_op(op, {x}, {out}, [saved_positions, theta](const auto& grads, const Node&) {
    // The rotation is orthogonal: its transpose, the rotation by the negative angle, is the backward.
    Tensor where = saved_positions.unpack("rope");
    Tensor grad_x = empty(grads[0].sizes(), TensorOptions(grads[0].dtype()).device(grads[0].device()));
    detail::backend_of(grad_x).rope(grads[0].view_for_kernels(), where.view_for_kernels(), grad_x.view_for_kernels(),
                                    theta, true);
    return std::vector<Tensor>{grad_x};
  });
  return out;
}

}  // namespace kiln

// Indexing ops and their gradients. Selection (index_select, gather, embedding) scatters its
// gradient back by the same indices; accumulation (index_add, scatter_add) gathers it.
#include "autograd/ops/index.h"

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/elementwise.h"
#include "autograd/ops/op_helpers.h"
#include "autograd/ops/reduce.h"

namespace kiln {
namespace {

TensorOptions like(const Tensor& tensor) { return TensorOptions(tensor.dtype()).device(tensor.device()); }

// zeros(shape) with source accumulated at index along dim (the backward of the selections).
// The backward helpers below sum gradients that share an index (a token's embedding row, say).
// 16-bit gradients are summed in f32 and rounded once at the end, as PyTorch's CUDA embedding
// backward does: summed in bf16, every addition would round, and a row that many tokens hit
// would stall once its total dwarfs each term.
DType accumulation_dtype(DType dtype) { return dtype == DType::bf16 || dtype == DType::f16 ? DType::f32 : dtype; }

Tensor index_add_into_zeros(const Shape& shape, int dim, const Tensor& index, const Tensor& source) {
  DType wide = accumulation_dtype(source.dtype());
  Tensor terms = source.to(wide);
  Tensor result = zeros(shape, TensorOptions(wide).device(source.device()));
  detail::backend_of(source).index_add(result.view_for_kernels(), dim, index.view_for_kernels(),
                                       terms.view_for_kernels(), 1.0);
  return result.to(source.dtype());
}

Tensor scatter_add_into_zeros(const Shape& shape, int dim, const Tensor& index, const Tensor& source) {
  DType wide = accumulation_dtype(source.dtype());
  Tensor terms = source.to(wide);
  Tensor result = zeros(shape, TensorOptions(wide).device(source.device()));
  detail::backend_of(source).scatter_add(result.view_for_kernels(), dim, index.view_for_kernels(),
                                         terms.view_for_kernels());
  return result.to(source.dtype());
}

void check_gather_shapes(const char* op, const Tensor& x, int dim, const Tensor& index) {
  KILN_CHECK(index.ndim() == x.ndim(), op, ": index has ", index.ndim(), " dims but the input has ", x.ndim());
  for (int64_t d = 0; d < x.ndim(); ++d) {
    KILN_CHECK(d == dim || index.size(d) <= x.size(d), op, ": index of shape ", shape_str(index.sizes()),
               " is larger than the input of shape ", shape_str(x.sizes()), " in dim ", d);
  }
}

}  // namespace

Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index) {
  detail::check_defined("index_select", x, "input");
  detail::check_defined("index_select", index, "index");
  detail::check_index_dtype("index_select", index);
  detail::check_same_device("index_select", x, index);
  KILN_CHECK(index.ndim() <= 1, "index_select: index must be 1-D, got shape ", shape_str(index.sizes()));
  Tensor input = x.ndim() == 0 ? x.reshape({1}) : x;
  int d = normalize_dim("index_select", dim, input.ndim());
  Tensor flat_index = index.reshape({-1});
  Shape shape = input.sizes();
  shape[static_cast<size_t>(d)] = flat_index.size(0);
  Tensor out = empty(shape, like(x));
  detail::backend_of(x).index_select(input.view_for_kernels(), d, flat_index.view_for_kernels(), out.view_for_kernels());
  if (x.ndim() == 0) out = out.reshape(index.ndim() == 0 ? Shape{} : Shape{1});
  Shape selected_shape = shape;
  record_op("index_select", {x}, {out},
            [d, saved = save(flat_index), selected_shape, shape = x.sizes(), in_shape = input.sizes()](
                const auto& grads, const Node&) {
              Tensor grad = grads[0].reshape(selected_shape);
              Tensor index = saved.unpack("index_select");
              return std::vector<Tensor>{index_add_into_zeros(in_shape, d, index, grad).reshape(shape)};
            });
  return out;
}

Tensor index_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& source, double alpha) {
  detail::check_defined("index_add", x, "input");
  detail::check_defined("index_add", source, "source");
  detail::check_index_dtype("index_add", index);
  detail::check_same_dtype("index_add", x, source);
  detail::check_same_device("index_add", x, source);
  detail::check_same_device("index_add", x, index);
  KILN_CHECK(index.ndim() == 1, "index_add: index must be 1-D, got shape ", shape_str(index.sizes()));
  int d = normalize_dim("index_add", dim, x.ndim());
  Shape expected = x.sizes();
  expected[static_cast<size_t>(d)] = index.size(0);
  KILN_CHECK(source.sizes() == expected, "index_add: source of shape ", shape_str(source.sizes()), " does not match ",
             shape_str(expected), " (the input's shape with dim ", d, " the index length)");
  Tensor out = x.clone().detach();
  detail::backend_of(x).index_add(out.view_for_kernels(), d, index.view_for_kernels(), source.view_for_kernels(), alpha);
  record_op("index_add", {x, source}, {out}, [d, saved = save(index), alpha](const auto& grads, const Node& node) {
    Tensor grad_source;
    if (node.needs_input_grad(1)) {
      Tensor picked = index_select(grads[0], d, saved.unpack("index_add"));
      grad_source = mul(picked, detail::scalar_like(alpha, grads[0]));
    }
    return std::vector<Tensor>{node.needs_input_grad(0) ? grads[0] : Tensor(), grad_source};
  });
  return out;
}

Tensor gather(const Tensor& x, int64_t dim, const Tensor& index) {
  detail::check_defined("gather", x, "input");
  detail::check_defined("gather", index, "index");
  detail::check_index_dtype("gather", index);
  detail::check_same_device("gather", x, index);
  int d = normalize_dim("gather", dim, x.ndim());
  check_gather_shapes("gather", x, d, index);
  Tensor out = empty(index.sizes(), like(x));
  detail::backend_of(x).gather(x.view_for_kernels(), d, index.view_for_kernels(), out.view_for_kernels());
  record_op("gather", {x}, {out}, [d, saved = save(index), shape = x.sizes()](const auto& grads, const Node&) {
    return std::vector<Tensor>{scatter_add_into_zeros(shape, d, saved.unpack("gather"), grads[0])};
  });
  return out;
}

Tensor scatter_add(const Tensor& x, int64_t dim, const Tensor& index, const Tensor& source) {
  detail::check_defined("scatter_add", x, "input");
  detail::check_defined("scatter_add", source, "source");
  detail::check_index_dtype("scatter_add", index);
  detail::check_same_dtype("scatter_add", x, source);
  detail::check_same_device("scatter_add", x, source);
  detail::check_same_device("scatter_add", x, index);
  int d = normalize_dim("scatter_add", dim, x.ndim());
  check_gather_shapes("scatter_add", x, d, index);
  KILN_CHECK(source.ndim() == index.ndim(), "scatter_add: source has ", source.ndim(), " dims but index has ",
             index.ndim());
  for (int64_t k = 0; k < index.ndim(); ++k) {
    KILN_CHECK(index.size(k) <= source.size(k), "scatter_add: index of shape ", shape_str(index.sizes()),
               " is larger than source of shape ", shape_str(source.sizes()), " in dim ", k);
  }
  Tensor out = x.clone().detach();
  // Only the part of source covered by index takes part (torch.scatter_add semantics).
  Tensor used = source;
  for (int64_t k = 0; k < index.ndim(); ++k) used = used.narrow(k, 0, index.size(k));
  detail::backend_of(x).scatter_add(out.view_for_kernels(), d, index.view_for_kernels(), used.view_for_kernels());
  record_op("scatter_add", {x, source}, {out}, [d, saved = save(index), source_shape = source.sizes()](
                                                const auto& grads, const Node& node) {
    Tensor grad_source;
    if (node.needs_input_grad(1)) {
      Tensor picked = gather(grads[0], d, saved.unpack("scatter_add"));
      grad_source = picked.sizes() == source_shape ? picked : [&] {
        Tensor padded = zeros(source_shape, TensorOptions(picked.dtype()).device(picked.device()));
        Tensor region = padded;
        for (int64_t k = 0; k < picked.ndim(); ++k) region = region.narrow(k, 0, picked.size(k));
        region.copy_(picked);
        return padded;
      }();
    }
    return std::vector<Tensor>{node.needs_input_grad(0) ? grads[0] : Tensor(), grad_source};
  });
  return out;
}

Tensor embedding(const Tensor& indices, const Tensor& weight, std::optional<int64_t> padding_idx) {
  detail::check_defined("embedding", indices, "indices");
  detail::check_defined("embedding", weight, "weight");
  detail::check_index_dtype("embedding", indices);
  KILN_CHECK(weight.ndim() == 2, "embedding: weight must be 2-D (num_embeddings, dim), got shape ",
             shape_str(weight.sizes()));
  int64_t rows = weight.size(0);
  if (padding_idx) {
    KILN_CHECK(*padding_idx >= -rows && *padding_idx < rows, "embedding: padding_idx ", *padding_idx,
               " is out of range for ", rows, " embeddings");
    if (*padding_idx < 0) *padding_idx += rows;
  }
  Tensor flat = indices.reshape({-1}).contiguous();
  Tensor rows_out = empty({flat.size(0), weight.size(1)}, like(weight));
  detail::backend_of(weight).index_select(weight.view_for_kernels(), 0, flat.view_for_kernels(),
                                          rows_out.view_for_kernels());
  Shape shape = indices.sizes();
  shape.push_back(weight.size(1));
  Tensor out = rows_out.view(shape);
  record_op("embedding", {weight}, {out}, [saved = save(flat), padding_idx, weight_shape = weight.sizes()](
                                             const auto& grads, const Node&) {
    Tensor grad_rows = grads[0].reshape({-1, weight_shape[1]});
    Tensor grad_weight = index_add_into_zeros(weight_shape, 0, saved.unpack("embedding"), grad_rows);
    if (padding_idx) grad_weight.select(0, *padding_idx).zero_();
    return std::vector<Tensor>{grad_weight};
  });
  return out;
}

Tensor one_hot(const Tensor& indices, int64_t num_classes) {
  detail::check_defined("one_hot", indices, "indices");
  detail::check_index_dtype("one_hot", indices);
  Tensor flat = indices.reshape({-1}).to(DType::i64);
  if (num_classes < 0) num_classes = flat.numel() == 0 ? 0 : static_cast<int64_t>(amax(flat).item()) + 1;
  if (flat.numel() > 0) {
    KILN_CHECK(amin(flat).item() >= 0, "one_hot: negative class index ", amin(flat).item());
    KILN_CHECK(amax(flat).item() < static_cast<double>(num_classes), "one_hot: class index ", amax(flat).item(),
               " is out of range for ", num_classes, " classes");
  }
  Tensor out = zeros({flat.size(0), num_classes}, TensorOptions(DType::i64).device(indices.device()));
  Tensor ones_column = ones({flat.size(0), 1}, TensorOptions(DType::i64).device(indices.device()));
  detail::backend_of(out).scatter_add(out.view_for_kernels(), 1, flat.unsqueeze(1).view_for_kernels(),
                                      ones_column.view_for_kernels());
  Shape shape = indices.sizes();
  shape.push_back(num_classes);
  return out.view(shape);
}

namespace {
// The gradient of values picked along dim by indices: scattered back to x's shape.
void record_selection(const char* name, const Tensor& x, int d, const Tensor& values, const Tensor& indices) {
  record_op(name, {x}, {values, indices}, [d, name, saved = save(indices), shape = x.sizes()](const auto& grads, const Node&) {
    return std::vector<Tensor>{scatter_add_into_zeros(shape, d, saved.unpack(name), grads[0])};
  });
}
}  // namespace

std::pair<Tensor, Tensor> topk(const Tensor& x, int64_t k, int64_t dim, bool largest, bool sorted) {
  detail::check_defined("topk", x, "input");
  Tensor input = x.ndim() == 0 ? x.reshape({1}) : x;
  int d = normalize_dim("topk", dim, input.ndim());
  int64_t size = input.size(d);
  KILN_CHECK(k >= 0 && k <= size, "topk: k = ", k, " is out of range for dim ", d, " of size ", size);
  Shape shape = input.sizes();
  shape[static_cast<size_t>(d)] = k;
  Tensor values = empty(shape, like(x));
  Tensor indices = empty(shape, TensorOptions(DType::i64).device(x.device()));
  detail::backend_of(x).topk(input.view_for_kernels(), k, d, largest, sorted, values.view_for_kernels(),
                             indices.view_for_kernels());
  record_selection("topk", input, d, values, indices);
  if (x.ndim() == 0) {
    values = values.reshape({});
    indices = indices.reshape({});
  }
  return {values, indices};
}

std::pair<Tensor, Tensor> sort(const Tensor& x, int64_t dim, bool descending) {
  detail::check_defined("sort", x, "input");
  Tensor input = x.ndim() == 0 ? x.reshape({1}) : x;
  int d = normalize_dim("sort", dim, input.ndim());
  Tensor values = empty(input.sizes(), like(x));
  Tensor indices = empty(input.sizes(), TensorOptions(DType::i64).device(x.device()));
  detail::backend_of(x).sort(input.view_for_kernels(), d, descending, values.view_for_kernels(),
                             indices.view_for_kernels());
  record_selection("sort", input, d, values, indices);
  if (x.ndim() == 0) {
    values = values.reshape({});
    indices = indices.reshape({});
  }
  return {values, indices};
}

Tensor argsort(const Tensor& x, int64_t dim, bool descending) {
  NoGradGuard no_grad;
  return sort(x, dim, descending).second;
}

}  // namespace kiln

// Joining and cutting along a dim: cat copies each input into a slice of the output (its
// gradient is a slice of the output's gradient); split and chunk are views.
#include "autograd/ops/shape.h"

#include "autograd/node.h"
#include "autograd/ops/creation.h"
#include "autograd/ops/op_helpers.h"

namespace kiln {

Tensor cat(const std::vector<Tensor>& tensors, int64_t dim) {
  KILN_CHECK(!tensors.empty(), "cat: expected at least one tensor");
  const Tensor& first = tensors[0];
  detail::check_defined("cat", first, "tensor 0");
  KILN_CHECK(first.ndim() > 0, "cat: zero-dim tensors cannot be concatenated");
  int d = normalize_dim("cat", dim, first.ndim());
  Shape shape = first.sizes();
  shape[static_cast<size_t>(d)] = 0;
  std::vector<int64_t> lengths;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor& t = tensors[i];
    detail::check_defined("cat", t, "an input");
    detail::check_same_dtype("cat", first, t);
    detail::check_same_device("cat", first, t);
    KILN_CHECK(t.ndim() == first.ndim(), "cat: tensor ", i, " has ", t.ndim(), " dims but tensor 0 has ",
               first.ndim());
    for (int64_t k = 0; k < t.ndim(); ++k) {
      KILN_CHECK(k == d || t.sizes()[static_cast<size_t>(k)] == first.sizes()[static_cast<size_t>(k)], "cat: tensor ", i,
                 " has shape ", shape_str(t.sizes()), " but tensor 0 has ", shape_str(first.sizes()),
                 " (sizes must match except in dim ", d, ")");
    }
    lengths.push_back(t.sizes()[static_cast<size_t>(d)]);
    shape[static_cast<size_t>(d)] += lengths.back();
  }
  Tensor out = empty(shape, TensorOptions(first.dtype()).device(first.device()));
  int64_t start = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    Tensor piece = out.detach().narrow(d, start, lengths[i]);
    detail::backend_of(out).copy(tensors[i].view_for_kernels(), piece.view_for_kernels());
    start += lengths[i];
  }
  record_op("cat", tensors, {out}, [d, lengths](const auto& grads, const Node& node) {
    std::vector<Tensor> pieces;
    int64_t offset = 0;
    for (size_t i = 0; i < lengths.size(); ++i) {
      pieces.push_back(node.needs_input_grad(i) ? grads[0].narrow(d, offset, lengths[i]) : Tensor());
      offset += lengths[i];
    }
    return pieces;
  });
  return out;
}

Tensor stack(const std::vector<Tensor>& tensors, int64_t dim) {
  KILN_CHECK(!tensors.empty(), "stack: expected at least one tensor");
  detail::check_defined("stack", tensors[0], "tensor 0");
  int d = normalize_dim("stack", dim, tensors[0].ndim() + 1);
  std::vector<Tensor> expanded;
  for (size_t i = 0; i < tensors.size(); ++i) {
    detail::check_defined("stack", tensors[i], "an input");
    KILN_CHECK(tensors[i].sizes() == tensors[0].sizes(), "stack: tensor ", i, " has shape ",
               shape_str(tensors[i].sizes()), " but tensor 0 has ", shape_str(tensors[0].sizes()));
    expanded.push_back(tensors[i].unsqueeze(d));
  }
  return cat(expanded, d);
}

std::vector<Tensor> split(const Tensor& x, const std::vector<int64_t>& sizes, int64_t dim) {
  detail::check_defined("split", x, "input");
  int d = normalize_dim("split", dim, x.ndim());
  int64_t total = 0;
  for (int64_t size : sizes) {
    KILN_CHECK(size >= 0, "split: negative split size ", size);
    total += size;
  }
  KILN_CHECK(total == x.size(d), "split: sizes sum to ", total, " but dim ", d, " has size ", x.size(d));
  std::vector<Tensor> pieces;
  int64_t start = 0;
  for (int64_t size : sizes) {
    pieces.push_back(x.narrow(d, start, size));
    start += size;
  }
  return pieces;
}

std::vector<Tensor> split(const Tensor& x, int64_t split_size, int64_t dim) {
  detail::check_defined("split", x, "input");
  KILN_CHECK(split_size > 0, "split: split_size must be positive, got ", split_size);
  int64_t length = x.size(dim);
  std::vector<int64_t> sizes;
  for (int64_t start = 0; start < length; start += split_size) sizes.push_back(std::min(split_size, length - start));
  if (sizes.empty()) sizes.push_back(0);
  return split(x, sizes, dim);
}

std::vector<Tensor> chunk(const Tensor& x, int64_t chunks, int64_t dim) {
  detail::check_defined("chunk", x, "input");
  KILN_CHECK(chunks > 0, "chunk: number of chunks must be positive, got ", chunks);
  int64_t length = x.size(dim);
  int64_t size = (length + chunks - 1) / chunks;
  return split(x, std::max<int64_t>(size, 1), dim);
}

}  // namespace kiln

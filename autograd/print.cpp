// Printing tensors in PyTorch's layout: nested brackets, aligned columns, and "..." past 1000
// elements (the first and last three entries of each dim).
#include <cmath>
#include <iomanip>
#include <sstream>

#include "autograd/node.h"
#include "autograd/tensor.h"

namespace kiln {
namespace {

constexpr int64_t kSummarizeAbove = 1000;
constexpr int64_t kEdgeItems = 3;

std::string format_value(double value, DType dtype, bool scientific) {
  std::ostringstream out;
  if (dtype == DType::boolean) {
    out << (value != 0.0 ? "true" : "false");
  } else if (!is_floating(dtype)) {
    out << static_cast<int64_t>(value);
  } else if (std::isnan(value) || std::isinf(value)) {
    out << value;
  } else if (scientific) {
    out << std::scientific << std::setprecision(4) << value;
  } else {
    out << std::fixed << std::setprecision(4) << value;
  }
  return out.str();
}

struct Printer {
  std::vector<double> values;
  Shape sizes;
  DType dtype;
  bool summarize;
  bool scientific = false;
  size_t width = 0;

  std::vector<int64_t> shown(int64_t size) const {
    std::vector<int64_t> indices;
    if (!summarize || size <= 2 * kEdgeItems) {
      for (int64_t i = 0; i < size; ++i) indices.push_back(i);
    } else {
      for (int64_t i = 0; i < kEdgeItems; ++i) indices.push_back(i);
      indices.push_back(-1);  // the ellipsis
      for (int64_t i = size - kEdgeItems; i < size; ++i) indices.push_back(i);
    }
    return indices;
  }

  void print(std::ostream& out, size_t dim, int64_t flat, int indent) const {
    if (dim == sizes.size()) {
      std::string text = format_value(values[static_cast<size_t>(flat)], dtype, scientific);
      out << std::string(width - std::min(width, text.size()), ' ') << text;
      return;
    }
    int64_t inner = 1;
    for (size_t d = dim + 1; d < sizes.size(); ++d) inner *= sizes[d];
    out << "[";
    bool first = true;
    for (int64_t i : shown(sizes[dim])) {
      if (!first) {
        out << ",";
        if (dim + 1 == sizes.size()) {
          out << " ";
        } else {
          out << std::string(sizes.size() - dim - 1, '\n') << std::string(static_cast<size_t>(indent + 1), ' ');
        }
      }
      first = false;
      if (i < 0) {
        out << "...";
        continue;
      }
      print(out, dim + 1, flat + i * inner, indent + 1);
    }
    out << "]";
  }
};

}  // namespace

std::string Tensor::str() const {
  if (!defined()) return "tensor(undefined)";
  Printer printer{to_vector<double>(), sizes(), dtype(), numel() > kSummarizeAbove};
  double largest = 0, smallest = INFINITY;
  for (double v : printer.values) {
    if (std::isfinite(v) && v != 0) {
      largest = std::max(largest, std::abs(v));
      smallest = std::min(smallest, std::abs(v));
    }
  }
  printer.scientific = is_floating(dtype()) && (largest >= 1e8 || (smallest < 1e-4 && largest > 0));
  for (double v : printer.values) printer.width = std::max(printer.width, format_value(v, dtype(), printer.scientific).size());
  std::ostringstream out;
  out << "tensor(";
  if (ndim() == 0) {
    out << format_value(printer.values[0], dtype(), printer.scientific);
  } else {
    printer.print(out, 0, 0, 7);
  }
  out << ", dtype=" << dtype_name(dtype());
  if (!device().is_cpu()) out << ", device=" << device().str();
  if (grad_fn()) {
    out << ", grad_fn=" << grad_fn()->name();
  } else if (requires_grad()) {
    out << ", requires_grad=true";
  }
  out << ")";
  return out.str();
}

std::ostream& operator<<(std::ostream& os, const Tensor& tensor) { return os << tensor.str(); }

}  // namespace kiln

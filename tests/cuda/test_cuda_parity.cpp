// The device parity helpers (see test_cuda_parity.h).
#include "test_cuda_parity.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "support/gradcheck.h"

namespace kiln::cuda_test {
namespace {

uint64_t next_seed() {
  static uint64_t seed = 1000;
  return ++seed;
}

}  // namespace

Tensor random(const Shape& shape, DType dtype, double low, double high, bool requires_grad) {
  Tensor values = testing::random_leaf(shape, next_seed(), low, high).detach().to(dtype);
  if (requires_grad && is_floating(dtype)) values.set_requires_grad(true);
  return values;
}

Tensor indices(const std::vector<int64_t>& values, const Shape& shape) { return from_vector<int64_t>(values, shape); }

std::vector<Tensor> to_cuda(const std::vector<Tensor>& inputs) {
  std::vector<Tensor> result;
  for (const Tensor& input : inputs) {
    Tensor copy = input.detach().to(kCuda);
    if (input.requires_grad()) copy.set_requires_grad(true);
    result.push_back(copy);
  }
  return result;
}

std::string mismatch(const Tensor& expected, const Tensor& actual, Tolerance tolerance) {
  std::ostringstream out;
  if (!actual.device().is_cuda()) return "the result is on " + actual.device().str() + ", not on the GPU";
  if (expected.dtype() != actual.dtype()) {
    out << "dtype " << actual.dtype() << " vs " << expected.dtype() << " on the CPU";
    return out.str();
  }
  if (expected.sizes() != actual.sizes()) {
    out << "shape " << shape_str(actual.sizes()) << " vs " << shape_str(expected.sizes()) << " on the CPU";
    return out.str();
  }
  bool exact = !is_floating(expected.dtype());
  std::vector<double> want = expected.detach().to_vector<double>();
  std::vector<double> have = actual.detach().to(Device::cpu()).to_vector<double>();
  for (size_t i = 0; i < want.size(); ++i) {
    bool ok;
    if (std::isnan(want[i]) || std::isnan(have[i])) {
      ok = std::isnan(want[i]) && std::isnan(have[i]);
    } else if (exact || std::isinf(want[i]) || std::isinf(have[i])) {
      ok = want[i] == have[i];
    } else {
      ok = std::abs(have[i] - want[i]) <= tolerance.rtol * std::abs(want[i]) + tolerance.atol;
    }
    if (!ok) {
      out.precision(17);
      out << "element " << i << " (shape " << shape_str(expected.sizes()) << ", " << expected.dtype()
          << "): cuda " << have[i] << " vs cpu " << want[i] << " (difference " << have[i] - want[i]
          << ", allowed " << tolerance.rtol << " relative + " << tolerance.atol << ")";
      return out.str();
    }
  }
  return "";
}

std::string bit_mismatch(const Tensor& expected, const Tensor& actual) {
  if (!actual.device().is_cuda()) return "the result is on " + actual.device().str() + ", not on the GPU";
  if (expected.dtype() != actual.dtype() || expected.sizes() != actual.sizes()) {
    return "dtype or shape differs: " + std::string(dtype_name(actual.dtype())) + shape_str(actual.sizes()) +
           " vs " + dtype_name(expected.dtype()) + shape_str(expected.sizes()) + " on the CPU";
  }
  Tensor want = expected.detach().contiguous();
  Tensor have = actual.detach().to(Device::cpu()).contiguous();
  size_t element = dtype_size(want.dtype());
  const auto* a = static_cast<const unsigned char*>(want.raw_data());
  const auto* b = static_cast<const unsigned char*>(have.raw_data());
  std::vector<double> want_values = want.to_vector<double>(), have_values = have.to_vector<double>();
  for (int64_t i = 0; i < want.numel(); ++i) {
    size_t at = static_cast<size_t>(i);
    if (std::isnan(want_values[at]) && std::isnan(have_values[at])) continue;
    if (std::memcmp(a + i * element, b + i * element, element) != 0) {
      std::ostringstream out;
      out.precision(17);
      out << "element " << i << " (" << dtype_name(want.dtype()) << ") differs in its bits: cuda "
          << have_values[at] << " vs cpu " << want_values[at];
      return out.str();
    }
  }
  return "";
}

void check_parity(const std::vector<Tensor>& inputs, const Function& f, Tolerance forward, Tolerance backward) {
  std::vector<Tensor> device_inputs = to_cuda(inputs);
  std::vector<Tensor> expected = f(inputs);
  std::vector<Tensor> actual = f(device_inputs);
  REQUIRE(expected.size() == actual.size());
  for (size_t k = 0; k < expected.size(); ++k) {
    INFO("output " << k);
    CHECK_MATCH(expected[k], actual[k], forward);
  }
  Tensor loss_cpu, loss_cuda;
  for (size_t k = 0; k < expected.size(); ++k) {
    if (!expected[k].requires_grad() || !is_floating(expected[k].dtype())) continue;
    REQUIRE(actual[k].requires_grad());
    Tensor weights = random(expected[k].sizes(), expected[k].dtype(), 0.5, 1.5, false);
    Tensor term_cpu = sum(mul(expected[k], weights)).to(DType::f64);
    Tensor term_cuda = sum(mul(actual[k], weights.to(kCuda))).to(DType::f64);
    loss_cpu = loss_cpu.defined() ? add(loss_cpu, term_cpu) : term_cpu;
    loss_cuda = loss_cuda.defined() ? add(loss_cuda, term_cuda) : term_cuda;
  }
  if (!loss_cpu.defined()) return;
  loss_cpu.backward();
  loss_cuda.backward();
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].requires_grad()) continue;
    INFO("gradient of input " << i);
    Tensor want = inputs[i].grad(), have = device_inputs[i].grad();
    REQUIRE(want.defined() == have.defined());
    if (want.defined()) CHECK_MATCH(want, have, backward);
  }
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& error) {
    return error.what();
  }
  return "(no error)";
}

}  // namespace kiln::cuda_test

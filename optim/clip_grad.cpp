// Gradient norm, clipping and non-finite detection: on the CPU with the kernels of
// kernels/cpu/optimizer_kernels.h (blocked double sums: the same bits for any thread count), on
// other devices with tensor ops whose results stay on the device until one read per device: a
// step waits for the GPU once, not once per parameter.
#include "optim/clip_grad.h"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "autograd/grad_mode.h"
#include "autograd/ops.h"
#include "kernels/cpu/optimizer_kernels.h"
#include "optim/optimizer.h"

namespace kiln::optim {
namespace {

// The defined gradient of `parameter`, checked to be an f32/f64 tensor; undefined when none.
Tensor checked_grad(const NamedParameter& parameter, const char* op) {
  Tensor grad = parameter.tensor.grad();
  if (!grad.defined()) return grad;
  KILN_CHECK(grad.dtype() == DType::f32 || grad.dtype() == DType::f64, op, ": the gradient of '", parameter.name,
             "' has dtype ", dtype_name(grad.dtype()), " (expected f32 or f64)");
  return grad;
}

// Scalars on devices other than the CPU, combined on their device and read back once each.
class DeviceScalars {
 public:
  // The running f64 sum of `device`: value is added to it there (in call order, as the host adds).
  void accumulate(const Tensor& value) {
    Tensor& total = slot(value.device());
    total = total.defined() ? add(total, value) : value;
  }
  // Every accumulated sum, added on the host.
  double read_sum() const {
    double total = 0.0;
    for (const auto& [device, value] : slots_) total += value.item<double>();
    return total;
  }

 private:
  Tensor& slot(Device device) {
    for (auto& [where, value] : slots_) {
      if (where == device) return value;
    }
    slots_.emplace_back(device, Tensor());
    return slots_.back().second;
  }
  std::vector<std::pair<Device, Tensor>> slots_;
};

double local_squared_norm(const NamedParameters& parameters, const char* op) {
  double total = 0.0;
  DeviceScalars device_totals;
  NoGradGuard no_grad;
  for (const NamedParameter& parameter : parameters) {
    Tensor grad = checked_grad(parameter, op);
    if (!grad.defined()) continue;
    if (!grad.device().is_cpu()) {
      Tensor wide = grad.to(DType::f64);
      device_totals.accumulate(sum(mul(wide, wide)));
      continue;
    }
    Tensor values = grad.contiguous();
    with_value_type(values.dtype(), [&](auto value) {
      using T = decltype(value);
      total += kernels::cpu::sum_of_squares(values.data<T>(), values.numel());
    });
  }
  return total + device_totals.read_sum();
}

double total_norm(const NamedParameters& parameters, const std::function<double(double)>& reduce, const char* op) {
  double squared = local_squared_norm(parameters, op);
  if (reduce) squared = reduce(squared);
  return std::sqrt(squared);
}

std::string join(const std::vector<std::string>& names) {
  std::ostringstream out;
  for (size_t i = 0; i < names.size(); ++i) out << (i ? ", " : "") << names[i];
  return out.str();
}

}  // namespace

double grad_norm(const NamedParameters& parameters, const std::function<double(double)>& reduce_squared_norm) {
  return total_norm(parameters, reduce_squared_norm, "grad_norm");
}

double clip_grad_norm(const NamedParameters& parameters, double max_norm, const ClipGradNormOptions& options) {
  check_positive("clip_grad_norm", "max_norm", max_norm);
  double norm = total_norm(parameters, options.reduce_squared_norm, "clip_grad_norm");
  if (!std::isfinite(norm)) {
    if (!options.error_if_nonfinite) return norm;
    std::vector<std::string> bad = nonfinite_gradients(parameters);
    KILN_FAIL("clip_grad_norm: the total gradient norm is ", norm, "; ",
              bad.empty() ? std::string("every local gradient is finite (the non-finite values come from "
                                        "reduce_squared_norm, i.e. another rank, or the sum overflowed)")
                          : "non-finite gradients in: " + join(bad));
  }
  double coefficient = max_norm / (norm + 1e-6);
  if (coefficient >= 1.0) return norm;
  NoGradGuard no_grad;
  for (const NamedParameter& parameter : parameters) {
    Tensor grad = parameter.tensor.grad();
    if (!grad.defined()) continue;
    if (!grad.is_contiguous() || !grad.device().is_cpu()) {
      grad.mul_(coefficient);
      continue;
    }
    with_value_type(grad.dtype(), [&](auto value) {
      using T = decltype(value);
      kernels::cpu::scale(grad.data<T>(), grad.numel(), coefficient);
    });
    grad.bump_version();
  }
  return norm;
}

void clip_grad_value(const NamedParameters& parameters, double clip_value) {
  check_positive("clip_grad_value", "clip_value", clip_value);
  NoGradGuard no_grad;
  for (const NamedParameter& parameter : parameters) {
    Tensor grad = checked_grad(parameter, "clip_grad_value");
    if (!grad.defined()) continue;
    if (!grad.is_contiguous() || !grad.device().is_cpu()) {
      grad.clamp_(-clip_value, clip_value);
      continue;
    }
    with_value_type(grad.dtype(), [&](auto value) {
      using T = decltype(value);
      kernels::cpu::clamp(grad.data<T>(), grad.numel(), -clip_value, clip_value);
    });
    grad.bump_version();
  }
}

std::vector<std::string> nonfinite_gradients(const NamedParameters& parameters) {
  std::vector<std::string> names;
  // Device gradients: one 0 x sum|g| per parameter (0 when every element is finite, NaN
  // otherwise), stacked per device and read back in one copy.
  std::vector<std::pair<Device, std::vector<std::pair<std::string, Tensor>>>> device_checks;
  NoGradGuard no_grad;
  for (const NamedParameter& parameter : parameters) {
    Tensor grad = checked_grad(parameter, "nonfinite_gradients");
    if (!grad.defined()) continue;
    if (!grad.device().is_cpu()) {
      auto group = std::find_if(device_checks.begin(), device_checks.end(),
                                [&](const auto& entry) { return entry.first == grad.device(); });
      if (group == device_checks.end()) group = device_checks.insert(device_checks.end(), {grad.device(), {}});
      group->second.emplace_back(parameter.name, sum(abs(grad.to(DType::f64))) * 0.0);
      continue;
    }
    Tensor values = grad.contiguous();
    bool finite = true;
    with_value_type(values.dtype(), [&](auto value) {
      using T = decltype(value);
      finite = kernels::cpu::all_finite(values.data<T>(), values.numel());
    });
    if (!finite) names.push_back(parameter.name);
  }
  for (const auto& [device, checks] : device_checks) {
    std::vector<Tensor> values;
    for (const auto& check : checks) values.push_back(check.second);
    std::vector<double> flags = stack(values).to(Device::cpu()).to_vector<double>();
    for (size_t i = 0; i < checks.size(); ++i) {
      if (std::isnan(flags[i])) names.push_back(checks[i].first);
    }
  }
  return names;
}

}  // namespace kiln::optim

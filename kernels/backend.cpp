// The backend registry and the names of the op enums (used in error messages).
#include "kernels/backend.h"

#include "kernels/error.h"

namespace kiln::kernels {

Backend& cpu_backend();  // kernels/cpu/cpu_backend.cpp

namespace {
Backend* registered_cuda_backend = nullptr;
std::string& cuda_unavailable_reason() {
  static std::string reason = "kiln was built without CUDA (KILN_ENABLE_CUDA=OFF or no nvcc)";
  return reason;
}
}  // namespace

void set_unavailable_reason(DeviceType type, const std::string& reason) {
  KILN_CHECK(type == DeviceType::CUDA, "set_unavailable_reason: the CPU is always available");
  cuda_unavailable_reason() = reason;
}

const std::string& unavailable_reason(DeviceType type) {
  KILN_CHECK(type == DeviceType::CUDA, "unavailable_reason: the CPU is always available");
  return cuda_unavailable_reason();
}

void register_backend(DeviceType type, Backend* backend) {
  KILN_CHECK(type == DeviceType::CUDA, "register_backend: only a CUDA backend can be registered");
  registered_cuda_backend = backend;
}

Backend& backend_for(Device device) {
  if (device.is_cpu()) return cpu_backend();
  KILN_CHECK(registered_cuda_backend != nullptr, "device ", device.str(), " is not available: ",
             unavailable_reason(device.type));
  return *registered_cuda_backend;
}

void Backend::attention(const View&, const View&, const View&, const View&, const View&, bool, double) {
  KILN_FAIL("attention: not available on the ", name(), " backend yet");
}

void Backend::attention_backward(const View&, const View&, const View&, const View&, const View&, const View&,
                                 const View&, const View&, const View&, bool, double) {
  KILN_FAIL("attention backward: not available on the ", name(), " backend yet");
}

void Backend::rope(const View&, const View&, const View&, double, bool) {
  KILN_FAIL("rope: not available on the ", name(), " backend yet");
}

void Backend::sgd_update(const View&, const View&, const View&, const SgdHyper&) {
  KILN_FAIL("sgd_update: not available on the ", name(), " backend yet");
}

void Backend::adagrad_update(const View&, const View&, const View&, const AdagradHyper&) {
  KILN_FAIL("adagrad_update: not available on the ", name(), " backend yet");
}

void Backend::rmsprop_update(const View&, const View&, const View&, const View&, const View&, const RmspropHyper&) {
  KILN_FAIL("rmsprop_update: not available on the ", name(), " backend yet");
}

void Backend::adam_update(const View&, const View&, const View&, const View&, const View&, const AdamHyper&) {
  KILN_FAIL("adam_update: not available on the ", name(), " backend yet");
}

const char* unary_op_name(UnaryOp op) {
  switch (op) {
    case UnaryOp::neg: return "neg";
    case UnaryOp::exp: return "exp";
    case UnaryOp::log: return "log";
    case UnaryOp::sqrt: return "sqrt";
    case UnaryOp::rsqrt: return "rsqrt";
    case UnaryOp::abs: return "abs";
    case UnaryOp::tanh: return "tanh";
    case UnaryOp::sigmoid: return "sigmoid";
    case UnaryOp::relu: return "relu";
    case UnaryOp::gelu_tanh: return "gelu_tanh";
    case UnaryOp::gelu_erf: return "gelu";
    case UnaryOp::silu: return "silu";
    case UnaryOp::sin: return "sin";
    case UnaryOp::cos: return "cos";
    case UnaryOp::reciprocal: return "reciprocal";
    case UnaryOp::sign: return "sign";
    case UnaryOp::logical_not: return "logical_not";
  }
  return "?";
}

const char* binary_op_name(BinaryOp op) {
  switch (op) {
    case BinaryOp::add: return "add";
    case BinaryOp::sub: return "sub";
    case BinaryOp::mul: return "mul";
    case BinaryOp::div: return "div";
    case BinaryOp::pow: return "pow";
    case BinaryOp::maximum: return "maximum";
    case BinaryOp::minimum: return "minimum";
    case BinaryOp::eq: return "eq";
    case BinaryOp::ne: return "ne";
    case BinaryOp::lt: return "lt";
    case BinaryOp::le: return "le";
    case BinaryOp::gt: return "gt";
    case BinaryOp::ge: return "ge";
    case BinaryOp::logical_and: return "logical_and";
    case BinaryOp::logical_or: return "logical_or";
  }
  return "?";
}

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::mean: return "mean";
    case ReduceOp::prod: return "prod";
    case ReduceOp::max: return "max";
    case ReduceOp::min: return "min";
    case ReduceOp::logsumexp: return "logsumexp";
    case ReduceOp::argmax: return "argmax";
    case ReduceOp::argmin: return "argmin";
  }
  return "?";
}

}  // namespace kiln::kernels

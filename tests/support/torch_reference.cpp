// The C++ half of the PyTorch parity harness (see torch_reference.h).
#include "support/torch_reference.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "autograd/safetensors.h"

#ifndef KILN_PYTHON
#define KILN_PYTHON "/usr/bin/python3"
#endif

namespace kiln::testing {

Tensor apply_transform(const Tensor& tensor, const Transform& transform) {
  if (transform.is_null()) return tensor;
  if (transform.contains("transpose")) {
    return tensor.transpose(transform["transpose"][0].get<int64_t>(), transform["transpose"][1].get<int64_t>());
  }
  if (transform.contains("slice")) {
    auto s = transform["slice"].get<std::vector<int64_t>>();
    return tensor.slice(s[0], s[1], s[2], s[3]);
  }
  KILN_FAIL("apply_transform: unknown transform ", transform.dump());
}

void ParitySuite::add(const std::string& name, const std::string& op, const std::vector<Tensor>& inputs,
                      nlohmann::json params, const OpFunction& kiln_op, Tolerance tolerance,
                      std::vector<Transform> transforms) {
  Case c{name, op, inputs, transforms, std::move(params), {}, {}, {}, tolerance};
  c.transforms.resize(inputs.size());
  for (const Tensor& input : inputs) {
    if (input.requires_grad()) input.set_grad(Tensor());
  }
  std::vector<Tensor> operands;
  for (size_t i = 0; i < inputs.size(); ++i) operands.push_back(apply_transform(inputs[i], c.transforms[i]));
  c.outputs = kiln_op(operands);
  Generator generator(0xC0FFEE + cases_.size());
  Tensor loss;
  for (const Tensor& out : c.outputs) {
    Tensor w = empty(out.sizes(), TensorOptions(out.dtype()));
    if (is_floating(out.dtype())) {
      uniform_(w, 0.5, 1.5, &generator);
      if (out.requires_grad()) loss = loss.defined() ? kiln::add(loss, sum(mul(out, w))) : sum(mul(out, w));
    } else {
      w = zeros(out.sizes(), TensorOptions(DType::f32));
    }
    c.weights.push_back(w);
  }
  if (loss.defined()) loss.backward();
  for (const Tensor& input : inputs) c.grads.push_back(input.requires_grad() ? input.grad() : Tensor());
  for (Tensor& out : c.outputs) out = out.detach();
  cases_.push_back(std::move(c));
}

namespace {

std::string describe_mismatch(const std::string& what, const Tensor& kiln_value, const Tensor& torch_value,
                              const Tolerance& tolerance) {
  if (!torch_value.defined()) return what + ": torch produced no value";
  if (!kiln_value.defined()) return what + ": kiln produced no value";
  if (kiln_value.sizes() != torch_value.sizes()) {
    return what + ": shape " + shape_str(kiln_value.sizes()) + " vs torch " + shape_str(torch_value.sizes());
  }
  std::vector<double> a = kiln_value.to_vector<double>(), b = torch_value.to_vector<double>();
  for (size_t i = 0; i < a.size(); ++i) {
    bool both_nan = std::isnan(a[i]) && std::isnan(b[i]);
    bool same_inf = std::isinf(a[i]) && a[i] == b[i];
    double limit = tolerance.atol + tolerance.rtol * std::abs(b[i]);
    if (!both_nan && !same_inf && !(std::abs(a[i] - b[i]) <= limit)) {
      std::ostringstream out;
      out.precision(9);
      out << what << ": element " << i << " kiln " << a[i] << " vs torch " << b[i] << " (|diff| "
          << std::abs(a[i] - b[i]) << " > " << limit << ")";
      return out.str();
    }
  }
  return "";
}

}  // namespace

std::vector<std::string> ParitySuite::compare() {
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / ("kiln-parity-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::map<std::string, Tensor> tensors;
  nlohmann::json manifest = nlohmann::json::array();
  for (const Case& c : cases_) {
    nlohmann::json entry = {{"name", c.name}, {"op", c.op}, {"params", c.params}, {"outputs", c.outputs.size()}};
    nlohmann::json inputs = nlohmann::json::array();
    for (size_t i = 0; i < c.inputs.size(); ++i) {
      std::string key = c.name + "/in" + std::to_string(i);
      tensors[key] = c.inputs[i];
      inputs.push_back({{"key", key}, {"requires_grad", c.inputs[i].requires_grad()}, {"transform", c.transforms[i]}});
    }
    entry["inputs"] = inputs;
    for (size_t j = 0; j < c.weights.size(); ++j) tensors[c.name + "/w" + std::to_string(j)] = c.weights[j];
    manifest.push_back(entry);
  }
  fs::path manifest_path = dir / "manifest.json", inputs_path = dir / "inputs.safetensors",
           results_path = dir / "results.safetensors";
  std::ofstream(manifest_path) << manifest.dump(1);
  save_safetensors(inputs_path.string(), tensors);
  std::string command = std::string(KILN_PYTHON) + " " + KILN_TEST_REFERENCE_DIR + "/torch_reference.py " +
                        manifest_path.string() + " " + inputs_path.string() + " " + results_path.string();
  int status = std::system(command.c_str());
  std::vector<std::string> problems;
  if (status != 0) {
    problems.push_back("torch reference failed (exit status " + std::to_string(status) + "): " + command);
    return problems;
  }
  SafetensorsFile results = load_safetensors(results_path.string());
  fs::remove_all(dir);
  auto lookup = [&](const std::string& key) {
    auto found = results.tensors.find(key);
    return found == results.tensors.end() ? Tensor() : found->second;
  };
  for (const Case& c : cases_) {
    for (size_t j = 0; j < c.outputs.size(); ++j) {
      std::string problem = describe_mismatch(c.name + " output " + std::to_string(j), c.outputs[j],
                                              lookup(c.name + "/out" + std::to_string(j)), c.tolerance);
      if (!problem.empty()) problems.push_back(problem);
    }
    for (size_t i = 0; i < c.grads.size(); ++i) {
      Tensor torch_grad = lookup(c.name + "/grad" + std::to_string(i));
      // Neither side has a gradient when no output is differentiable (argsort, comparisons).
      if (!c.inputs[i].requires_grad() || (!c.grads[i].defined() && !torch_grad.defined())) continue;
      std::string problem = describe_mismatch(c.name + " grad of input " + std::to_string(i), c.grads[i],
                                              torch_grad, c.tolerance);
      if (!problem.empty()) problems.push_back(problem);
    }
  }
  return problems;
}

}  // namespace kiln::testing

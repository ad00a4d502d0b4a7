// Device parity for the fused optimizer updates (kernels/cuda/optimizer.cu): each of the five
// optimizers, with the options that take every branch of its kernel, steps a parameter on the
// CPU and a copy on the GPU with the same gradients for three steps. The CUDA kernels repeat the
// CPU kernels' operations in the same order with the same roundings (fma exactly where the CPU
// uses one, IEEE division and square root), so parameters and state agree bit for bit.
#include <catch2/catch.hpp>

#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "optim/optim.h"
#include "test_cuda_parity.h"

using namespace kiln;
using namespace kiln::cuda_test;

namespace {

using MakeOptimizer = std::function<std::unique_ptr<optim::Optimizer>(std::vector<optim::ParamGroup>)>;

struct Case {
  std::string name;
  MakeOptimizer make;
};

std::vector<Case> cases() {
  return {
      {"SGD, Nesterov momentum, weight decay",
       [](auto groups) {
         return std::make_unique<optim::SGD>(std::move(groups),
                                             optim::SGDOptions(0.1).momentum(0.9).nesterov(true).weight_decay(0.01));
       }},
      {"SGD, momentum with dampening",
       [](auto groups) {
         return std::make_unique<optim::SGD>(std::move(groups), optim::SGDOptions(0.1).momentum(0.8).dampening(0.3));
       }},
      {"AdaGrad, lr decay, weight decay",
       [](auto groups) {
         return std::make_unique<optim::Adagrad>(std::move(groups),
                                                 optim::AdagradOptions(0.1).lr_decay(0.01).weight_decay(0.01));
       }},
      {"RMSProp, centered, momentum",
       [](auto groups) {
         return std::make_unique<optim::RMSprop>(std::move(groups),
                                                 optim::RMSpropOptions(0.01).centered(true).momentum(0.9).weight_decay(0.01));
       }},
      {"RMSProp, plain",
       [](auto groups) { return std::make_unique<optim::RMSprop>(std::move(groups), optim::RMSpropOptions(0.01)); }},
      {"Adam, amsgrad, L2",
       [](auto groups) {
         return std::make_unique<optim::Adam>(std::move(groups), optim::AdamOptions(1e-2).amsgrad(true).weight_decay(0.01));
       }},
      {"AdamW",
       [](auto groups) {
         return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions(1e-2).weight_decay(0.1));
       }},
  };
}

}  // namespace

TEST_CASE("cuda: fused optimizer updates match the CPU bit for bit", "[cuda][optim]") {
  for (DType dtype : {DType::f32, DType::f64}) {
    for (const Case& c : cases()) {
      INFO(c.name << ", " << dtype_name(dtype));
      Generator generator(3);
      Tensor initial = randn({1031}, TensorOptions(dtype), &generator);  // not a multiple of a block
      Tensor host = initial.clone().set_requires_grad(true);
      Tensor device = initial.to(kCuda).set_requires_grad(true);
      auto on_host = c.make({optim::ParamGroup({{"w", host, {}}})});
      auto on_device = c.make({optim::ParamGroup({{"w", device, {}}})});
      for (int step = 0; step < 3; ++step) {
        Tensor grad = randn({1031}, TensorOptions(dtype), &generator);
        host.set_grad(grad.clone());
        device.set_grad(grad.to(kCuda));
        on_host->step();
        on_device->step();
        CHECK_BITS(host, device);
      }
      optim::OptimizerStateDict host_state = on_host->state_dict(), device_state = on_device->state_dict();
      for (const auto& [key, tensor] : host_state.tensors) {
        INFO(key);
        REQUIRE(device_state.tensors.count(key));
        CHECK_BITS(tensor, device_state.tensors.at(key));
      }
    }
  }
}

// Clipping on CUDA gradients (tensor ops on the device, a double sum): the norm within double
// rounding of the CPU's blocked sum, the clipped gradients within one f32 rounding, and the
// non-finite check naming the same parameters.
TEST_CASE("cuda: gradient clipping and the non-finite check match the CPU", "[cuda][optim]") {
  Generator generator(5);
  NamedParameters host, device;
  const char* names[] = {"p0", "p1", "p2"};
  for (int i = 0; i < 3; ++i) {
    Tensor grad = randn({257 * (i + 1)}, TensorOptions(DType::f32), &generator);
    Tensor h = zeros({grad.numel()}).set_requires_grad(true), d = zeros({grad.numel()}, kCuda).set_requires_grad(true);
    h.set_grad(grad.clone());
    d.set_grad(grad.to(kCuda));
    host.push_back({names[i], h, {}});
    device.push_back({names[i], d, {}});
  }
  const double host_norm = optim::clip_grad_norm(host, 1.0), device_norm = optim::clip_grad_norm(device, 1.0);
  CHECK(std::abs(host_norm - device_norm) <= 1e-12 * host_norm);
  for (size_t i = 0; i < host.size(); ++i) CHECK_MATCH(host[i].tensor.grad(), device[i].tensor.grad(), kF32);
  CHECK(optim::nonfinite_gradients(device).empty());
  Tensor bad = device[1].tensor.grad();
  bad.narrow(0, 3, 1).fill_(std::numeric_limits<double>::quiet_NaN());
  CHECK(optim::nonfinite_gradients(device) == std::vector<std::string>{"p1"});
}

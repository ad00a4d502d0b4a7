// Mixed precision (optim/mixed_precision.h): the loss scaler's schedule, and bf16 / f16
// training with fp32 masters tracking the fp32 run of the same model, data and seed.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "autograd/generator.h"
#include "autograd/ops.h"
#include "nn/transformer.h"
#include "optim/optim.h"

using namespace kiln;

namespace {

std::unique_ptr<nn::Transformer> make_model() {
  Generator generator(21);
  return std::make_unique<nn::Transformer>(nn::TransformerConfig::llama(32, 16, 2, 4, 2, 32), &generator);
}

Tensor batch(int64_t step, bool targets) {
  std::vector<int64_t> values;
  for (int64_t b = 0; b < 4; ++b) {
    for (int64_t t = 0; t < 16; ++t) values.push_back((b * 5 + (t + (targets ? 1 : 0)) * 3 + step) % 32);
  }
  return from_vector(values, {4, 16}, TensorOptions(DType::i64));
}

optim::OptimizerFactory adamw() {
  return [](std::vector<optim::ParamGroup> groups) -> std::unique_ptr<optim::Optimizer> {
    return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions(3e-3).weight_decay(0.1));
  };
}

// The fp32 run's loss at each of `steps` steps.
std::vector<double> fp32_losses(int steps) {
  auto model = make_model();
  auto optimizer = adamw()(optim::weight_decay_groups(model->named_parameters()));
  std::vector<double> losses;
  for (int step = 0; step < steps; ++step) {
    Tensor loss = model->loss(batch(step, false), batch(step, true));
    losses.push_back(loss.item());
    loss.backward();
    optim::clip_grad_norm(model->named_parameters(), 1.0);
    optimizer->step();
    optimizer->zero_grad();
  }
  return losses;
}

struct MixedRun {
  std::vector<double> losses;
  int64_t skipped = 0;
  double final_scale = 0;
};

MixedRun mixed_losses(DType dtype, int steps, std::optional<optim::LossScalerOptions> scaler = std::nullopt) {
  auto model = make_model();
  optim::MixedPrecisionOptimizer mixed(model->named_parameters(), dtype, adamw(), scaler);
  MixedRun run;
  for (int step = 0; step < steps; ++step) {
    Tensor loss = model->loss(batch(step, false), batch(step, true));
    REQUIRE(loss.dtype() == DType::f32);  // the loss of 16-bit logits is f32
    run.losses.push_back(loss.item());
    mixed.scale_loss(loss).backward();
    mixed.clip_grad_norm(1.0);
    mixed.step();
    mixed.zero_grad();
  }
  for (const auto& [name, tensor] : mixed.optimizer().state_dict().tensors) {
    INFO(name);
    CHECK(tensor.dtype() == DType::f32);  // optimizer state stays fp32
  }
  run.skipped = mixed.scaler().skipped_steps();
  run.final_scale = mixed.scaler().scale();
  return run;
}

}  // namespace

TEST_CASE("the loss scaler grows after growth_interval good steps and backs off on overflow", "[mixed]") {
  optim::LossScaler scaler(optim::LossScalerOptions().init_scale(8).growth_interval(3));
  CHECK(scaler.scale() == 8);
  scaler.update(false);
  scaler.update(false);
  CHECK(scaler.scale() == 8);
  scaler.update(false);
  CHECK(scaler.scale() == 16);
  scaler.update(false);
  scaler.update(true);  // an overflow restarts the count
  CHECK(scaler.scale() == 8);
  CHECK(scaler.skipped_steps() == 1);
  scaler.update(false);
  scaler.update(false);
  CHECK(scaler.scale() == 8);
  CHECK(optim::LossScaler(optim::LossScalerOptions().enabled(false)).scale() == 1);
  CHECK_THROWS_WITH(optim::LossScaler(optim::LossScalerOptions().backoff_factor(2)), Catch::Contains("backoff_factor"));
}

TEST_CASE("bf16 and f16 training with fp32 masters track the fp32 run for 20 steps", "[mixed]") {
  // bf16 keeps 8 bits of mantissa: losses within 2% of fp32 over 20 steps (measured: 0.16%; f16 0.012%).
  std::vector<double> reference = fp32_losses(20);
  MixedRun bf16 = mixed_losses(DType::bf16, 20);
  // f16 (11 bits) with a scale small enough never to overflow here: no skipped steps.
  MixedRun f16 = mixed_losses(DType::f16, 20, optim::LossScalerOptions().init_scale(256));
  for (size_t step = 0; step < reference.size(); ++step) {
    INFO("step " << step);
    CHECK(std::abs(bf16.losses[step] - reference[step]) <= 0.02 * reference[step]);
    CHECK(std::abs(f16.losses[step] - reference[step]) <= 0.02 * reference[step]);
  }
  double worst_bf16 = 0, worst_f16 = 0;
  for (size_t step = 0; step < reference.size(); ++step) {
    worst_bf16 = std::max(worst_bf16, std::abs(bf16.losses[step] - reference[step]) / reference[step]);
    worst_f16 = std::max(worst_f16, std::abs(f16.losses[step] - reference[step]) / reference[step]);
  }
  WARN("largest relative loss difference from fp32 over 20 steps: bf16 " << worst_bf16 << ", f16 " << worst_f16);
  CHECK(reference.back() < 0.8 * reference.front());
  CHECK(bf16.skipped == 0);
  CHECK(f16.skipped == 0);
}

TEST_CASE("f16 with an overflowing loss scale skips steps and backs off until training proceeds", "[mixed]") {
  // The loss is f32; its gradient enters the f16 graph at the logits as scale x (p - y) / 64 rows,
  // with |p - y| near 1 at the targets: from a scale of 2^24 that is ~2.6e5, past f16's largest
  // value (65504), so the first steps overflow.
  const double scale = 16777216.0;
  MixedRun f16 = mixed_losses(DType::f16, 30, optim::LossScalerOptions().init_scale(scale));
  WARN("f16 from scale 2^24: " << f16.skipped << " step(s) skipped, final scale " << f16.final_scale);
  CHECK(f16.skipped >= 1);
  CHECK(f16.final_scale < scale);
  CHECK(f16.losses.back() < 0.8 * f16.losses.front());
}

TEST_CASE("mixed precision refuses a compute dtype that is not 16-bit", "[mixed]") {
  auto model = make_model();
  CHECK_THROWS_WITH(optim::MixedPrecisionOptimizer(model->named_parameters(), DType::f32, adamw()),
                    Catch::Contains("must be bf16 or f16, got f32"));
}

TEST_CASE("unscale gives the masters the fp32 gradients, divided back by the loss scale", "[mixed]") {
  auto reference = make_model();
  reference->loss(batch(0, false), batch(0, true)).backward();
  auto model = make_model();
  optim::MixedPrecisionOptimizer mixed(model->named_parameters(), DType::f16, adamw(),
                                       optim::LossScalerOptions().init_scale(1024));
  mixed.scale_loss(model->loss(batch(0, false), batch(0, true))).backward();
  REQUIRE(mixed.unscale());
  NamedParameters expected = reference->named_parameters();
  for (size_t i = 0; i < expected.size(); ++i) {
    INFO(expected[i].name);
    std::vector<double> want = expected[i].tensor.grad().to_vector<double>();
    std::vector<double> got = mixed.master_parameters()[i].tensor.grad().to_vector<double>();
    double scale = 0, diff = 0;
    for (size_t k = 0; k < want.size(); ++k) {
      scale = std::max(scale, std::abs(want[k]));
      diff = std::max(diff, std::abs(got[k] - want[k]));
    }
    // f16 activations and gradients: about 3 decimal digits of the largest gradient.
    CHECK(diff <= 2e-2 * scale);
  }
}

TEST_CASE("16-bit gradients of embedding, index_select and gather are summed in f32 and rounded once", "[mixed]") {
  // 1000 tokens hit row 3: summed in bf16 the row's total would stall near 256, where one bf16 ulp
  // (2) exceeds each term (in [0.5, 1.5)). The terms are bf16, so their f32 sum (< 2^10, on a
  // grid of 2^-8) is exact in any order and the result is the f64 sum rounded once.
  for (DType dtype : {DType::bf16, DType::f16}) {
    INFO(dtype_name(dtype));
    std::vector<int64_t> tokens(1000, 3);
    tokens[10] = 0;
    tokens[500] = 5;
    Tensor index = from_vector(tokens, {1000}, TensorOptions(DType::i64));
    Generator generator(4);
    Tensor upstream = empty({1000, 4}, DType::f64);
    uniform_(upstream, 0.5, 1.5, &generator);
    upstream = upstream.to(dtype);
    Tensor expected = index_add(zeros({6, 4}, DType::f64), 0, index, upstream.to(DType::f64)).to(dtype);

    Tensor weight = zeros({6, 4}, dtype).set_requires_grad(true);
    embedding(index, weight).backward(upstream);
    CHECK(amax(abs(weight.grad().to(DType::f64) - expected.to(DType::f64))).item() == 0.0);

    Tensor selected_from = zeros({6, 4}, dtype).set_requires_grad(true);
    index_select(selected_from, 0, index).backward(upstream);
    CHECK(amax(abs(selected_from.grad().to(DType::f64) - expected.to(DType::f64))).item() == 0.0);

    Tensor gathered_from = zeros({6, 4}, dtype).set_requires_grad(true);
    gather(gathered_from, 0, index.reshape({1000, 1}).expand({1000, 4})).backward(upstream);
    CHECK(amax(abs(gathered_from.grad().to(DType::f64) - expected.to(DType::f64))).item() == 0.0);
  }
}

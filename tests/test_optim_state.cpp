// Optimizer state dicts (mid-run round trips, names and contents), parameter groups, options,
// the error messages, and the OPTIMIZERS.md example.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>

#include "kiln.h"
#include "nn/linear.h"
#include "optim/optim.h"
#include "optim_trajectory.h"

using namespace kiln;
using namespace kiln::testing;
using Catch::Contains;
using json = nlohmann::json;

namespace {

// Everything an optimizer run leaves behind, as exact values.
struct RunResult {
  std::map<std::string, std::vector<double>> values;
  std::map<std::string, int64_t> steps;
};

RunResult capture(const NamedParameters& parameters, const Optimizer& optimizer) {
  RunResult result;
  for (const NamedParameter& parameter : parameters) {
    result.values["param/" + parameter.name] = parameter.tensor.to_vector<double>();
    const optim::ParameterState* state = optimizer.state(parameter.name);
    if (!state) continue;
    result.steps[parameter.name] = state->step;
    for (const auto& [buffer, tensor] : state->buffers) {
      result.values["state/" + parameter.name + "/" + buffer] = tensor.to_vector<double>();
    }
  }
  return result;
}

// 20 steps straight, or 10 steps, a save through safetensors + JSON text, a load into a fresh
// optimizer (over fresh parameters holding the saved values) and 10 more steps.
RunResult run_with_resume(const Factory& make, DType dtype, bool resume, const optim::LrSchedule& schedule) {
  Generator generator(42);
  NamedParameters parameters = make_parameters(dtype, false, generator);
  std::vector<std::vector<Tensor>> grads = make_gradients(parameters, generator);
  std::unique_ptr<Optimizer> optimizer = make(parameters);
  for (int step = 0; step < kSteps; ++step) {
    if (resume && step == kSteps / 2) {
      optim::OptimizerStateDict saved = optimizer->state_dict();
      std::string path = (std::filesystem::temp_directory_path() /
                          ("kiln-optim-resume-" + std::to_string(::getpid()) + ".safetensors"))
                             .string();
      save_safetensors(path, saved.tensors);
      std::string text = saved.scalars.dump();
      NamedParameters fresh;
      for (const NamedParameter& parameter : parameters) {
        fresh.push_back({parameter.name, parameter.tensor.detach().clone().set_requires_grad(true), parameter.info});
      }
      std::unique_ptr<Optimizer> restored = make(fresh);
      restored->set_lr(123.0);  // load_state_dict must bring back the saved hyperparameters
      restored->load_state_dict({load_safetensors(path).tensors, json::parse(text)});
      std::filesystem::remove(path);
      parameters = fresh;
      optimizer = std::move(restored);
    }
    schedule.apply(*optimizer, step);
    set_gradients(parameters, grads[step]);
    optimizer->step();
  }
  return capture(parameters, *optimizer);
}

}  // namespace

TEST_CASE("state_dict round trip mid-run is bit-identical to a straight run", "[optim][state]") {
  using namespace optim;
  std::vector<std::pair<std::string, Factory>> makers = {
      {"SGD", single_group<SGD>(SGDOptions(0.1).momentum(0.9).nesterov(true).weight_decay(0.01))},
      {"Adagrad", single_group<Adagrad>(AdagradOptions(0.1).lr_decay(0.01).initial_accumulator_value(0.1))},
      {"RMSprop", single_group<RMSprop>(RMSpropOptions(0.01).centered(true).momentum(0.5))},
      {"Adam", single_group<Adam>(AdamOptions(0.01).amsgrad(true).weight_decay(0.1))},
      {"AdamW", [](const NamedParameters& parameters) {
         auto groups = weight_decay_groups(parameters);
         groups[1].lr = 0.003;
         return std::make_unique<AdamW>(groups, AdamWOptions(0.01).betas(0.9, 0.95).amsgrad(true));
       }}};
  for (const auto& [name, make] : makers) {
    for (DType dtype : {DType::f32, DType::f64}) {
      INFO(name << " " << dtype_name(dtype));
      LrSchedule schedule = cosine_schedule(3, kSteps, 0.1);
      RunResult straight = run_with_resume(make, dtype, false, schedule);
      RunResult resumed = run_with_resume(make, dtype, true, schedule);
      CHECK(straight.steps == resumed.steps);
      REQUIRE(straight.values.size() == resumed.values.size());
      for (const auto& [key, values] : straight.values) {
        INFO(key);
        CHECK(values == resumed.values.at(key));
      }
    }
  }
}

TEST_CASE("the state dict names buffers by parameter and records steps and hyperparameters", "[optim][state]") {
  Generator generator(3);
  NamedParameters parameters = make_parameters(DType::f32, false, generator);
  optim::AdamW optimizer(optim::weight_decay_groups(parameters), optim::AdamWOptions(0.01).amsgrad(true));
  std::vector<std::vector<Tensor>> grads = make_gradients(parameters, generator);
  set_gradients(parameters, grads[1]);  // block.0.w has no gradient at step 1
  optimizer.step();
  optim::OptimizerStateDict state = optimizer.state_dict();
  CHECK(state.tensors.count("layer.weight/exp_avg") == 1);
  CHECK(state.tensors.count("layer.weight/max_exp_avg_sq") == 1);
  CHECK(state.tensors.count("block.0.w/exp_avg") == 0);
  CHECK(state.scalars["optimizer"] == "AdamW");
  CHECK(state.scalars["state"]["layer.bias"]["step"] == 1);
  CHECK(state.scalars["groups"][1]["options"]["weight_decay"] == 0.0);
  CHECK(state.scalars["groups"][0]["options"]["weight_decay"] == 0.01);
  CHECK(state.scalars["groups"][0]["parameters"] == json({"layer.weight", "block.0.w"}));

  SECTION("loading the state of another optimizer kind") {
    optim::Adam adam(optim::weight_decay_groups(parameters));
    CHECK_THROWS_WITH(adam.load_state_dict(state), Contains("Adam: load_state_dict") && Contains("AdamW"));
  }
  SECTION("loading into groups with other parameters") {
    optim::AdamW other(parameters);
    CHECK_THROWS_WITH(other.load_state_dict(state), Contains("2 parameter groups") && Contains("has 1"));
    NamedParameters renamed = parameters;
    renamed[0].name = "layer.kernel";
    optim::AdamW renamed_optimizer(optim::weight_decay_groups(renamed));
    CHECK_THROWS_WITH(renamed_optimizer.load_state_dict(state), Contains("layer.kernel"));
  }
  SECTION("a state tensor of the wrong shape") {
    optim::OptimizerStateDict bad = state;
    bad.tensors["layer.weight/exp_avg"] = zeros({4});
    optim::AdamW fresh(optim::weight_decay_groups(parameters));
    CHECK_THROWS_WITH(fresh.load_state_dict(bad), Contains("layer.weight/exp_avg") && Contains("(4)") &&
                                                      Contains("(3, 5)"));
  }
  SECTION("unknown keys and buffers") {
    optim::OptimizerStateDict bad = state;
    bad.scalars["groups"][0]["options"]["beta"] = 0.5;
    optim::AdamW fresh(optim::weight_decay_groups(parameters));
    CHECK_THROWS_WITH(fresh.load_state_dict(bad), Contains("groups[0].options.beta") && Contains("unknown key"));
    optim::OptimizerStateDict extra = state;
    extra.tensors["layer.weight/momentum_buffer"] = zeros({3, 5});
    CHECK_THROWS_WITH(fresh.load_state_dict(extra), Contains("momentum_buffer") && Contains("not a AdamW state"));
    // A failed load leaves the optimizer as it was.
    CHECK(fresh.state("layer.weight") == nullptr);
  }
}

TEST_CASE("optimizers reject bad hyperparameters, naming the optimizer and the value", "[optim][errors]") {
  using namespace optim;
  Generator generator(9);
  NamedParameters parameters = make_parameters(DType::f32, false, generator);
  CHECK_THROWS_WITH(SGD(parameters, SGDOptions(-0.1)), Contains("SGD") && Contains("lr -0.1"));
  CHECK_THROWS_WITH(SGD(parameters, SGDOptions(0.1).momentum(-1)), Contains("SGD") && Contains("momentum -1"));
  CHECK_THROWS_WITH(SGD(parameters, SGDOptions(0.1).dampening(1.5)), Contains("SGD") && Contains("dampening 1.5"));
  CHECK_THROWS_WITH(SGD(parameters, SGDOptions(0.1).weight_decay(-0.01)),
                    Contains("SGD") && Contains("weight_decay -0.01"));
  CHECK_THROWS_WITH(SGD(parameters, SGDOptions(0.1).nesterov(true)), Contains("SGD") && Contains("nesterov"));
  CHECK_THROWS_WITH(SGD(parameters, SGDOptions(0.1).momentum(0.9).dampening(0.1).nesterov(true)),
                    Contains("nesterov") && Contains("dampening 0.1"));
  CHECK_THROWS_WITH(SGD(parameters, SGDOptions(NAN)), Contains("SGD") && Contains("lr nan"));
  CHECK_THROWS_WITH(Adagrad(parameters, AdagradOptions(0.1).lr_decay(-1)), Contains("Adagrad") && Contains("lr_decay -1"));
  CHECK_THROWS_WITH(Adagrad(parameters, AdagradOptions(0.1).eps(0)), Contains("Adagrad") && Contains("eps 0"));
  CHECK_THROWS_WITH(Adagrad(parameters, AdagradOptions(0.1).initial_accumulator_value(-2)),
                    Contains("Adagrad") && Contains("initial_accumulator_value -2"));
  CHECK_THROWS_WITH(RMSprop(parameters, RMSpropOptions(0.1).alpha(1.5)), Contains("RMSprop") && Contains("alpha 1.5"));
  CHECK_THROWS_WITH(RMSprop(parameters, RMSpropOptions(0.1).eps(-1e-8)), Contains("RMSprop") && Contains("eps -1e-08"));
  CHECK_THROWS_WITH(RMSprop(parameters, RMSpropOptions(0.1).momentum(-0.5)),
                    Contains("RMSprop") && Contains("momentum -0.5"));
  CHECK_THROWS_WITH(Adam(parameters, AdamOptions(0.1).betas(1.0, 0.999)),
                    Contains("Adam") && Contains("beta1 1") && Contains("0 <= beta1 < 1"));
  CHECK_THROWS_WITH(Adam(parameters, AdamOptions(0.1).betas(0.9, -0.1)), Contains("Adam") && Contains("beta2 -0.1"));
  CHECK_THROWS_WITH(AdamW(parameters, AdamWOptions(-3e-4)), Contains("AdamW") && Contains("lr -3e-04"));
  CHECK_THROWS_WITH(AdamW(parameters, AdamWOptions(3e-4).eps(0)), Contains("AdamW") && Contains("eps 0"));
  CHECK_THROWS_WITH(AdamW(parameters, AdamWOptions(3e-4).weight_decay(-1)),
                    Contains("AdamW") && Contains("weight_decay -1"));

  // Per-group values are checked too, naming the group.
  auto groups = weight_decay_groups(parameters);
  groups[1].lr = -1.0;
  CHECK_THROWS_WITH(AdamW(groups, AdamWOptions()), Contains("AdamW: group 1") && Contains("lr -1"));
  groups[1].lr.reset();
  groups[1].options = std::make_shared<AdamOptions>();
  CHECK_THROWS_WITH(AdamW(groups, AdamWOptions()), Contains("AdamW: group 1") && Contains("another optimizer"));

  // Options changed after construction are checked at the next step, before anything moves.
  AdamW optimizer(parameters, AdamWOptions(0.01));
  CHECK_THROWS_WITH(optimizer.set_lr(-0.5), Contains("AdamW") && Contains("lr -0.5"));
  static_cast<AdamWOptions&>(optimizer.group_options(0)).betas(0.9, 2.0);
  for (const NamedParameter& parameter : parameters) parameter.tensor.set_grad(ones_like(parameter.tensor));
  std::vector<float> before = parameters[0].tensor.to_vector<float>();
  CHECK_THROWS_WITH(optimizer.step(), Contains("AdamW") && Contains("beta2 2"));
  CHECK(parameters[0].tensor.to_vector<float>() == before);
}

TEST_CASE("optimizers reject parameters they cannot update, naming them", "[optim][errors]") {
  using namespace optim;
  Generator generator(11);
  NamedParameters parameters = make_parameters(DType::f32, false, generator);
  CHECK_THROWS_WITH(SGD(NamedParameters{}, SGDOptions(0.1)), Contains("SGD") && Contains("no parameters"));
  NamedParameters twice = parameters;
  twice.push_back(parameters[0]);
  CHECK_THROWS_WITH(SGD(twice, SGDOptions(0.1)), Contains("'layer.weight' is listed twice"));
  NamedParameters tied = parameters;
  tied.push_back({"head.weight", parameters[0].tensor, {}});
  CHECK_THROWS_WITH(SGD(tied, SGDOptions(0.1)), Contains("'head.weight' is the same tensor as 'layer.weight'"));
  Tensor computed = parameters[0].tensor.exp();
  CHECK_THROWS_WITH(SGD(NamedParameters{{"twice", computed, {}}}, SGDOptions(0.1)),
                    Contains("'twice'") && Contains("not a leaf"));

  // A non-contiguous parameter: nothing is updated, the error names it.
  Tensor transposed = empty({4, 3});
  uniform_(transposed, -1, 1, &generator);
  transposed = transposed.t();
  transposed.set_requires_grad(true);
  NamedParameters mixed = parameters;
  mixed.push_back({"proj.weight_t", transposed, {}});
  Adam adam(mixed, AdamOptions(0.1));
  for (const NamedParameter& parameter : mixed) parameter.tensor.set_grad(zeros(parameter.tensor.sizes()));
  std::vector<float> before = parameters[0].tensor.to_vector<float>();
  CHECK_THROWS_WITH(adam.step(), Contains("Adam") && Contains("'proj.weight_t'") && Contains("not contiguous"));
  CHECK(parameters[0].tensor.to_vector<float>() == before);
  CHECK(adam.state("layer.weight") == nullptr);

  // A parameter converted (Module::to) after its state was created.
  AdamW adamw(parameters, AdamWOptions(0.1));
  for (const NamedParameter& parameter : parameters) parameter.tensor.set_grad(ones_like(parameter.tensor));
  adamw.step();
  parameters[2].tensor.set_data(parameters[2].tensor.to(DType::f64));
  for (const NamedParameter& parameter : parameters) parameter.tensor.set_grad(ones_like(parameter.tensor));
  std::vector<float> weight = parameters[0].tensor.to_vector<float>();
  CHECK_THROWS_WITH(adamw.step(), Contains("AdamW: state 'exp_avg' of parameter 'block.0.w' is f32") &&
                                      Contains("now f64") && Contains("convert the model before"));
  CHECK(parameters[0].tensor.to_vector<float>() == weight);
  CHECK(adamw.state("layer.weight")->step == 1);

  Tensor half = zeros({3}, DType::bf16).set_requires_grad(true);
  SGD sgd(NamedParameters{{"half", half, {}}}, SGDOptions(0.1));
  half.set_grad(zeros({3}, DType::bf16));
  CHECK_THROWS_WITH(sgd.step(), Contains("SGD") && Contains("'half'") && Contains("bf16"));
}

TEST_CASE("step skips parameters without a gradient, bumps versions; zero_grad", "[optim]") {
  using namespace optim;
  Generator generator(13);
  NamedParameters parameters = make_parameters(DType::f64, false, generator);
  SGD optimizer(parameters, SGDOptions(0.5).momentum(0.9));
  std::vector<double> untouched = parameters[1].tensor.to_vector<double>();
  uint64_t version = parameters[0].tensor.version();
  uint64_t untouched_version = parameters[1].tensor.version();
  for (const NamedParameter& parameter : parameters) parameter.tensor.set_grad(ones_like(parameter.tensor));
  parameters[1].tensor.set_grad(Tensor());
  optimizer.step();
  CHECK(parameters[1].tensor.to_vector<double>() == untouched);
  CHECK(parameters[1].tensor.version() == untouched_version);
  CHECK(optimizer.state("layer.bias") == nullptr);
  CHECK(parameters[0].tensor.version() > version);
  CHECK(optimizer.state("layer.weight")->step == 1);

  // A non-contiguous gradient gives the same update as its contiguous copy.
  Tensor a = parameters[0].tensor.detach().clone().set_requires_grad(true);
  Tensor b = parameters[0].tensor.detach().clone().set_requires_grad(true);
  Tensor transposed = empty({5, 3}, DType::f64);
  uniform_(transposed, -1, 1, &generator);
  a.set_grad(transposed.t());
  b.set_grad(transposed.t().contiguous());
  SGD sgd_a(NamedParameters{{"a", a, {}}}, SGDOptions(0.5).momentum(0.9));
  SGD sgd_b(NamedParameters{{"b", b, {}}}, SGDOptions(0.5).momentum(0.9));
  sgd_a.step();
  sgd_b.step();
  CHECK(a.to_vector<double>() == b.to_vector<double>());

  optimizer.zero_grad(false);
  CHECK(parameters[0].tensor.grad().defined());
  CHECK(parameters[0].tensor.grad().to_vector<double>() == std::vector<double>(15, 0.0));
  CHECK_FALSE(parameters[1].tensor.grad().defined());
  optimizer.zero_grad();
  for (const NamedParameter& parameter : parameters) CHECK_FALSE(parameter.tensor.grad().defined());
}

TEST_CASE("parameter groups: the weight-decay split, per-group options and lrs", "[optim]") {
  using namespace optim;
  Generator generator(17);
  NamedParameters parameters = make_parameters(DType::f32, false, generator);
  std::vector<ParamGroup> groups = weight_decay_groups(parameters);
  REQUIRE(groups.size() == 2);
  CHECK(groups[0].parameters.size() == 2);
  CHECK(groups[1].parameters.size() == 2);
  CHECK(groups[1].parameters[0].name == "layer.bias");
  groups[0].lr = 0.1;
  AdamW optimizer(groups, AdamWOptions(0.01).weight_decay(0.1).betas(0.9, 0.95));
  CHECK(optimizer.lr(0) == 0.1);
  CHECK(optimizer.lr(1) == 0.01);
  CHECK(optimizer.base_lr(0) == 0.1);
  CHECK(optimizer.group_options(0).get_weight_decay() == 0.1);
  CHECK(optimizer.group_options(1).get_weight_decay() == 0.0);
  CHECK(static_cast<const AdamWOptions&>(optimizer.group_options(1)).beta2() == 0.95);
  CHECK(optimizer.parameters().size() == 4);
  optimizer.set_lr(0.5);
  CHECK(optimizer.lr(1) == 0.5);
  CHECK(optimizer.base_lr(1) == 0.01);
  CHECK_THROWS_WITH(optimizer.group_options(2), Contains("group 2 does not exist"));
}

TEST_CASE("options: chained setters, defaults as torch, JSON round trip", "[optim]") {
  using namespace optim;
  AdamWOptions options = AdamWOptions(3e-4).betas(0.9, 0.95).weight_decay(0.1).eps(1e-6);
  CHECK(options.lr() == 3e-4);
  CHECK(options.beta1() == 0.9);
  CHECK(options.beta2() == 0.95);
  CHECK(AdamWOptions().weight_decay() == 0.01);
  CHECK(AdamOptions().weight_decay() == 0.0);
  CHECK(AdagradOptions().eps() == 1e-10);
  CHECK(RMSpropOptions().alpha() == 0.99);
  AdamWOptions copy;
  copy.update_from_json(json::parse(options.to_json().dump()), "optimizer");
  CHECK(copy.to_json() == options.to_json());
  CHECK_THROWS_WITH(copy.update_from_json({{"betas", {0.9}}}, "optimizer"), Contains("optimizer.betas"));
  CHECK_THROWS_WITH(copy.update_from_json({{"nesterov", true}}, "optimizer"),
                    Contains("optimizer.nesterov") && Contains("unknown key"));
  CHECK_THROWS_WITH(copy.update_from_json({{"lr", "fast"}}, "optimizer"), Contains("optimizer.lr"));
  SGDOptions sgd(0.1);
  sgd.update_from_json({{"momentum", 0.9}, {"nesterov", true}}, "sgd");
  CHECK(sgd.momentum() == 0.9);
  CHECK(sgd.nesterov());
}

// The usage example of docs/OPTIMIZERS.md, kept compiling and running here.
TEST_CASE("the OPTIMIZERS.md example trains a linear model", "[optim][docs]") {
  // Fit y = x A^T + b with AdamW, a warmup + cosine schedule and gradient clipping.
  Generator generator(0);
  auto model = std::make_shared<nn::Linear>(8, 4, /*bias=*/true, &generator);
  Tensor x = randn({64, 8}, {}, &generator);
  Tensor y = randn({64, 4}, {}, &generator);

  auto groups = optim::weight_decay_groups(model->named_parameters());  // biases: no decay
  optim::AdamW optimizer(groups, optim::AdamWOptions(1e-2).betas(0.9, 0.95).weight_decay(0.1));
  optim::LrSchedule schedule = optim::cosine_schedule(/*warmup_steps=*/10, /*total_steps=*/200,
                                                      /*min_factor=*/0.1);
  double first_loss = 0.0, last_loss = 0.0;
  for (int64_t step = 0; step < 200; ++step) {
    schedule.apply(optimizer, step);
    Tensor loss = mean(square(sub(model->forward(x), y)));
    optimizer.zero_grad();
    loss.backward();
    optim::clip_grad_norm(optimizer.parameters(), /*max_norm=*/1.0);
    optimizer.step();
    (step == 0 ? first_loss : last_loss) = loss.item();
  }
  CHECK(last_loss < 0.8 * first_loss);
  CHECK(optimizer.lr(0) == Approx(1e-2 * schedule.factor(199)));
}

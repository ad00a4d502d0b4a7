// The optimizers and gradient clipping against torch.optim / torch.nn.utils. State dicts,
// groups, options and errors are in test_optim_state.cpp.
//
// Trajectories: four parameters of different shapes (plus a 40000-element one in some cases, to
// run the OpenMP path) start from the same random values on both sides and see the same random
// gradients for 20 steps; "block.0.w" gets a gradient on even steps only, so torch's skipping of
// parameters without .grad is exercised everywhere. Gradients and initial values are drawn here,
// sent to tests/reference/torch_optim_reference.py in one process with the clipping cases, and
// the final parameters, every state buffer and every step count are compared.
//
// Tolerances: |kiln - torch| <= rtol (|torch| + max |torch| of the tensor), rtol 1e-6 for f32
// and 1e-10 for f64. The kernels round where torch's CPU kernels round (FMA included), so on an
// FMA machine f32 results are bit-identical to torch; the test prints how many values are.
// The tolerance covers builds without FMA, where each fused step differs by an ulp.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>

#include "kiln.h"
#include "optim/optim.h"
#include "optim_trajectory.h"

using namespace kiln;
using Catch::Contains;
using json = nlohmann::json;
using namespace kiln::testing;

namespace kiln::testing {

// Runs the torch reference on `manifest` and `tensors`; returns what it wrote. Shared with
// test_schedule.cpp (same executable).
std::map<std::string, Tensor> run_torch_optim_reference(const json& manifest,
                                                        const std::map<std::string, Tensor>& tensors) {
  namespace fs = std::filesystem;
  static int calls = 0;
  fs::path dir = fs::temp_directory_path() /
                 ("kiln-optim-" + std::to_string(::getpid()) + "-" + std::to_string(calls++));
  fs::create_directories(dir);
  fs::path manifest_path = dir / "manifest.json", inputs_path = dir / "inputs.safetensors",
           results_path = dir / "results.safetensors";
  std::ofstream(manifest_path) << manifest.dump(1);
  save_safetensors(inputs_path.string(), tensors);
  std::string command = std::string(KILN_PYTHON) + " " + KILN_TEST_REFERENCE_DIR + "/torch_optim_reference.py " +
                        manifest_path.string() + " " + inputs_path.string() + " " + results_path.string();
  int status = std::system(command.c_str());
  KILN_CHECK(status == 0, "torch reference failed (exit status ", status, "): ", command);
  SafetensorsFile results = load_safetensors(results_path.string());
  fs::remove_all(dir);
  return results.tensors;
}

}  // namespace kiln::testing

namespace {

// |kiln - torch| <= rtol * (|torch| + the largest |torch| of the tensor): relative to each
// element and to the tensor's scale, since momentum-style buffers cancel down to values far
// below the magnitudes they were computed from.
double tolerance_for(DType dtype) { return dtype == DType::f32 ? 1e-6 : 1e-10; }

struct Agreement {
  double worst = 0.0;        // the largest |kiln - torch| / allowed seen
  int64_t elements = 0;
  int64_t identical = 0;     // bit-for-bit equal elements
};

// Compares element-wise; returns a description of the first disagreement ("" when none).
std::string compare(const std::string& what, const Tensor& kiln_value, const Tensor& torch_value, double rtol,
                    Agreement& agreement) {
  if (!torch_value.defined()) return what + ": torch has no value";
  if (!kiln_value.defined()) return what + ": kiln has no value";
  if (kiln_value.sizes() != torch_value.sizes()) {
    return what + ": shape " + shape_str(kiln_value.sizes()) + " vs torch " + shape_str(torch_value.sizes());
  }
  std::vector<double> a = kiln_value.to_vector<double>(), b = torch_value.to_vector<double>();
  double scale = 0.0;
  for (double value : b) scale = std::max(scale, std::abs(value));
  std::string problem;
  for (size_t i = 0; i < a.size(); ++i) {
    double limit = rtol * (std::abs(b[i]) + scale);
    double difference = std::abs(a[i] - b[i]);
    agreement.worst = std::max(agreement.worst, limit > 0 ? difference / limit : difference);
    ++agreement.elements;
    if (a[i] == b[i]) ++agreement.identical;
    if (!(difference <= limit) && problem.empty()) {
      std::ostringstream out;
      out.precision(10);
      out << what << ": element " << i << " kiln " << a[i] << " vs torch " << b[i] << " (|diff| " << difference
          << " > " << limit << ")";
      problem = out.str();
    }
  }
  return problem;
}


struct Trajectory {
  std::string name;
  DType dtype;
  NamedParameters parameters;
  std::unique_ptr<Optimizer> optimizer;
};

struct ClipCase {
  std::string name;
  NamedParameters parameters;  // their grads are clipped by kiln
  double norm = 0.0;           // what clip_grad_norm returned
  DType dtype;
};

// Every trajectory and clipping case, run once by kiln and once by torch (one Python process).
struct Reference {
  std::vector<Trajectory> trajectories;
  std::vector<ClipCase> clips;
  std::map<std::string, Tensor> torch;
};

void add_trajectories(Reference& reference, json& manifest, std::map<std::string, Tensor>& tensors,
                      const std::string& base_name, const Factory& make, bool big = false,
                      std::optional<optim::LrSchedule> schedule = std::nullopt) {
  for (DType dtype : {DType::f32, DType::f64}) {
    std::string name = base_name + (dtype == DType::f32 ? "/f32" : "/f64");
    Generator generator(1000 + reference.trajectories.size());
    Trajectory trajectory{name, dtype, make_parameters(dtype, big, generator), nullptr};
    for (const NamedParameter& parameter : trajectory.parameters) {
      tensors[name + "/init/" + parameter.name] = parameter.tensor.clone();
    }
    trajectory.optimizer = make(trajectory.parameters);
    Optimizer& optimizer = *trajectory.optimizer;
    json groups = json::array();
    for (size_t g = 0; g < optimizer.group_count(); ++g) {
      json names = json::array();
      for (const NamedParameter& parameter : optimizer.group_parameters(g)) names.push_back(parameter.name);
      groups.push_back({{"params", names}, {"options", optimizer.group_options(g).to_json()}});
    }
    json names = json::array(), lrs = json::array();
    for (const NamedParameter& parameter : trajectory.parameters) names.push_back(parameter.name);
    std::vector<std::vector<Tensor>> grads = make_gradients(trajectory.parameters, generator);
    for (int step = 0; step < kSteps; ++step) {
      if (schedule) {
        schedule->apply(optimizer, step);
        json step_lrs = json::array();
        for (size_t g = 0; g < optimizer.group_count(); ++g) step_lrs.push_back(optimizer.lr(g));
        lrs.push_back(step_lrs);
      }
      for (size_t i = 0; i < trajectory.parameters.size(); ++i) {
        if (grads[step][i].defined()) {
          tensors[name + "/grad/" + std::to_string(step) + "/" + trajectory.parameters[i].name] = grads[step][i];
        }
      }
      set_gradients(trajectory.parameters, grads[step]);
      optimizer.step();
    }
    json entry = {{"name", name}, {"optimizer", optimizer.name()}, {"steps", kSteps}, {"params", names},
                  {"groups", groups}};
    if (schedule) entry["lrs"] = lrs;
    manifest["optim"].push_back(entry);
    reference.trajectories.push_back(std::move(trajectory));
  }
}

void add_all_trajectories(Reference& reference, json& manifest, std::map<std::string, Tensor>& tensors) {
  using namespace optim;
  auto add = [&](const std::string& name, const Factory& make, bool big = false) {
    add_trajectories(reference, manifest, tensors, name, make, big);
  };
  add("SGD/plain", single_group<SGD>(SGDOptions(0.1)), true);
  add("SGD/momentum", single_group<SGD>(SGDOptions(0.1).momentum(0.9)));
  add("SGD/momentum+dampening", single_group<SGD>(SGDOptions(0.1).momentum(0.9).dampening(0.9)));
  add("SGD/nesterov", single_group<SGD>(SGDOptions(0.05).momentum(0.8).nesterov(true)), true);
  add("SGD/weight_decay", single_group<SGD>(SGDOptions(0.1).weight_decay(0.05)));
  add("SGD/momentum+dampening+weight_decay",
      single_group<SGD>(SGDOptions(0.1).momentum(0.5).dampening(0.3).weight_decay(0.01)));
  add("SGD/nesterov+weight_decay", single_group<SGD>(SGDOptions(0.05).momentum(0.9).nesterov(true).weight_decay(0.1)));

  add("Adagrad/default", single_group<Adagrad>(AdagradOptions(0.1)), true);
  add("Adagrad/lr_decay", single_group<Adagrad>(AdagradOptions(0.1).lr_decay(0.05)));
  add("Adagrad/initial_accumulator", single_group<Adagrad>(AdagradOptions(0.1).initial_accumulator_value(0.5)));
  add("Adagrad/weight_decay+eps", single_group<Adagrad>(AdagradOptions(0.1).weight_decay(0.1).eps(1e-4)));
  add("Adagrad/all",
      single_group<Adagrad>(AdagradOptions(0.2).lr_decay(0.01).initial_accumulator_value(0.1).weight_decay(0.02)));

  add("RMSprop/default", single_group<RMSprop>(RMSpropOptions(0.01)), true);
  add("RMSprop/alpha+eps", single_group<RMSprop>(RMSpropOptions(0.01).alpha(0.9).eps(1e-4)));
  add("RMSprop/centered", single_group<RMSprop>(RMSpropOptions(0.01).centered(true)));
  add("RMSprop/momentum", single_group<RMSprop>(RMSpropOptions(0.01).momentum(0.9)));
  add("RMSprop/centered+momentum+weight_decay",
      single_group<RMSprop>(RMSpropOptions(0.01).centered(true).momentum(0.5).weight_decay(0.1)), true);

  add("Adam/default", single_group<Adam>(AdamOptions(0.01)), true);
  add("Adam/betas+eps", single_group<Adam>(AdamOptions(0.01).betas(0.8, 0.95).eps(1e-6)));
  add("Adam/amsgrad", single_group<Adam>(AdamOptions(0.01).amsgrad(true)));
  add("Adam/weight_decay", single_group<Adam>(AdamOptions(0.01).weight_decay(0.1)));
  add("Adam/amsgrad+weight_decay", single_group<Adam>(AdamOptions(0.01).amsgrad(true).weight_decay(0.05)), true);
  add("Adam/no_bias_correction", single_group<Adam>(AdamOptions(0.01).bias_correction(false)));

  add("AdamW/default", single_group<AdamW>(AdamWOptions(0.01)), true);
  add("AdamW/gpt", single_group<AdamW>(AdamWOptions(0.01).betas(0.9, 0.95).weight_decay(0.1)));
  add("AdamW/amsgrad", single_group<AdamW>(AdamWOptions(0.01).amsgrad(true).weight_decay(0.2)));
  add("AdamW/no_weight_decay", single_group<AdamW>(AdamWOptions(0.01).weight_decay(0.0)));
  add("AdamW/no_bias_correction+amsgrad", single_group<AdamW>(AdamWOptions(0.01).bias_correction(false).amsgrad(true)));

  // Parameter groups: the decay / no-decay split, with its own lr in the no-decay group.
  add("AdamW/groups", [](const NamedParameters& parameters) {
    auto groups = weight_decay_groups(parameters);
    groups[1].lr = 0.003;
    return std::make_unique<AdamW>(groups, AdamWOptions(0.01).weight_decay(0.1));
  });
  add("SGD/groups", [](const NamedParameters& parameters) {
    auto groups = weight_decay_groups(parameters);
    groups[1].options = std::make_shared<SGDOptions>(SGDOptions(0.02).momentum(0.5).nesterov(true));
    return std::make_unique<SGD>(groups, SGDOptions(0.1).momentum(0.9).weight_decay(0.01));
  });
  // A schedule changing the lr every step (torch is given the same per-step lrs).
  add_trajectories(reference, manifest, tensors, "Adam/cosine_schedule",
                   [](const NamedParameters& parameters) {
                     auto groups = weight_decay_groups(parameters);
                     groups[1].lr = 0.02;
                     return std::make_unique<Adam>(groups, AdamOptions(0.05));
                   },
                   false, cosine_schedule(5, kSteps, 0.1));
  add_trajectories(reference, manifest, tensors, "RMSprop/wsd_schedule",
                   single_group<RMSprop>(RMSpropOptions(0.02).momentum(0.5)), false,
                   warmup_stable_decay_schedule(3, 5, 10, 0.0, DecayShape::cosine));
}

void add_clip_cases(Reference& reference, json& manifest, std::map<std::string, Tensor>& tensors) {
  struct Spec {
    std::string name, kind;
    double limit;
  };
  std::vector<Spec> specs = {{"norm/clipped", "norm", 0.5}, {"norm/unclipped", "norm", 1e3},
                             {"value", "value", 0.3}};
  for (const Spec& spec : specs) {
    for (DType dtype : {DType::f32, DType::f64}) {
      ClipCase clip;
      clip.name = "clip/" + spec.name + (dtype == DType::f32 ? "/f32" : "/f64");
      clip.dtype = dtype;
      Generator generator(7000 + reference.clips.size());
      clip.parameters = make_parameters(dtype, true, generator);
      json names = json::array();
      for (NamedParameter& parameter : clip.parameters) {
        Tensor grad = empty(parameter.tensor.sizes(), dtype);
        double scale = grad_scale(parameter.name);
        uniform_(grad, -scale, scale, &generator);
        tensors[clip.name + "/grad/" + parameter.name] = grad;
        parameter.tensor.set_grad(grad.clone());
        names.push_back(parameter.name);
      }
      json entry = {{"name", clip.name}, {"kind", spec.kind}, {"params", names}};
      if (spec.kind == "norm") {
        entry["max_norm"] = spec.limit;
        clip.norm = optim::clip_grad_norm(clip.parameters, spec.limit);
      } else {
        entry["clip_value"] = spec.limit;
        optim::clip_grad_value(clip.parameters, spec.limit);
      }
      manifest["clip"].push_back(entry);
      reference.clips.push_back(std::move(clip));
    }
  }
}

const Reference& reference() {
  static const Reference result = [] {
    Reference built;
    json manifest = {{"optim", json::array()}, {"clip", json::array()}};
    std::map<std::string, Tensor> tensors;
    add_all_trajectories(built, manifest, tensors);
    add_clip_cases(built, manifest, tensors);
    built.torch = kiln::testing::run_torch_optim_reference(manifest, tensors);
    return built;
  }();
  return result;
}

Tensor lookup(const std::map<std::string, Tensor>& results, const std::string& key) {
  auto found = results.find(key);
  return found == results.end() ? Tensor() : found->second;
}

}  // namespace

TEST_CASE("every optimizer and option matches torch.optim over 20 steps", "[optim][parity]") {
  const Reference& ref = reference();
  REQUIRE(ref.trajectories.size() == 64);
  Agreement f32, f64;
  std::vector<std::string> problems;
  for (const Trajectory& trajectory : ref.trajectories) {
    double rtol = tolerance_for(trajectory.dtype);
    Agreement& agreement = trajectory.dtype == DType::f32 ? f32 : f64;
    auto check = [&](const std::string& what, const Tensor& kiln_value, const Tensor& torch_value) {
      std::string problem = compare(trajectory.name + " " + what, kiln_value, torch_value, rtol, agreement);
      if (!problem.empty()) problems.push_back(problem);
    };
    std::set<std::string> kiln_buffers;
    for (const NamedParameter& parameter : trajectory.parameters) {
      std::string prefix = trajectory.name + "/";
      check(parameter.name, parameter.tensor, lookup(ref.torch, prefix + "param/" + parameter.name));
      const optim::ParameterState* state = trajectory.optimizer->state(parameter.name);
      REQUIRE(state != nullptr);
      CHECK(state->step == (has_grad_at(parameter.name, 1) ? kSteps : kSteps / 2));
      Tensor torch_step = lookup(ref.torch, prefix + "step/" + parameter.name);
      if (torch_step.defined()) CHECK(static_cast<int64_t>(torch_step.item()) == state->step);
      for (const auto& [buffer, tensor] : state->buffers) {
        std::string key = prefix + "state/" + parameter.name + "/" + buffer;
        kiln_buffers.insert(key);
        check(parameter.name + " state " + buffer, tensor, lookup(ref.torch, key));
      }
    }
    // torch keeps no buffer that kiln lacks.
    std::string state_prefix = trajectory.name + "/state/";
    for (const auto& [key, tensor] : ref.torch) {
      if (key.rfind(state_prefix, 0) == 0 && !kiln_buffers.count(key)) problems.push_back("kiln lacks torch's " + key);
    }
  }
  for (const std::string& problem : problems) UNSCOPED_INFO(problem);
  CHECK(problems.empty());
  WARN("f32: " << f32.identical << " of " << f32.elements << " values bit-identical to torch, worst "
               << f32.worst << " of the allowed 1e-6 (|torch| + scale); f64: " << f64.identical << " of "
               << f64.elements << " identical, worst " << f64.worst << " of 1e-10 (|torch| + scale)");
}

TEST_CASE("clip_grad_norm and clip_grad_value match torch.nn.utils", "[optim][clip][parity]") {
  const Reference& ref = reference();
  REQUIRE(ref.clips.size() == 6);
  for (const ClipCase& clip : ref.clips) {
    INFO(clip.name);
    Agreement agreement;
    if (clip.name.find("/norm/") != std::string::npos) {
      Tensor torch_norm = lookup(ref.torch, clip.name + "/norm");
      REQUIRE(torch_norm.defined());
      // torch sums f32 gradients in f32; kiln accumulates in f64.
      CHECK(std::abs(clip.norm - torch_norm.item()) <= tolerance_for(clip.dtype) * torch_norm.item());
      CHECK(clip.norm > 1.0);
    }
    for (const NamedParameter& parameter : clip.parameters) {
      std::string problem = compare(parameter.name, parameter.tensor.grad(),
                                    lookup(ref.torch, clip.name + "/clipped/" + parameter.name),
                                    tolerance_for(clip.dtype), agreement);
      CHECK(problem == "");
    }
  }
}

TEST_CASE("clipping: the norm hook, unclipped gradients and non-finite gradients", "[optim][clip]") {
  Generator generator(5);
  NamedParameters parameters = make_parameters(DType::f32, false, generator);
  double expected_squared = 0.0;
  for (NamedParameter& parameter : parameters) {
    Tensor grad = full(parameter.tensor.sizes(), 0.5);
    expected_squared += 0.25 * static_cast<double>(grad.numel());
    parameter.tensor.set_grad(grad);
  }
  parameters[3].tensor.set_grad(Tensor());  // no gradient: skipped
  expected_squared -= 0.25;

  SECTION("grad_norm and the distributed hook") {
    CHECK(optim::grad_norm(parameters) == Approx(std::sqrt(expected_squared)).epsilon(1e-12));
    double seen = -1.0;
    optim::ClipGradNormOptions options;
    options.reduce_squared_norm = [&](double local) {
      seen = local;
      return 4.0 * local;  // as if three other ranks held the same gradients
    };
    double norm = optim::clip_grad_norm(parameters, 1.0, options);
    CHECK(seen == Approx(expected_squared).epsilon(1e-12));
    CHECK(norm == Approx(2.0 * std::sqrt(expected_squared)).epsilon(1e-12));
    CHECK(optim::grad_norm(parameters) == Approx(std::sqrt(expected_squared) / (norm + 1e-6)).epsilon(1e-6));
  }
  SECTION("a norm under max_norm leaves the gradients alone") {
    std::vector<float> before = parameters[0].tensor.grad().to_vector<float>();
    uint64_t version = parameters[0].tensor.grad().version();
    optim::clip_grad_norm(parameters, 100.0);
    CHECK(parameters[0].tensor.grad().to_vector<float>() == before);
    CHECK(parameters[0].tensor.grad().version() == version);
  }
  SECTION("non-finite gradients are found and reported by name") {
    CHECK(optim::nonfinite_gradients(parameters).empty());
    Tensor bias_grad = parameters[1].tensor.grad();
    bias_grad.data<float>()[3] = std::nanf("");
    Tensor w_grad = parameters[2].tensor.grad();
    w_grad.data<float>()[20] = -INFINITY;
    CHECK(optim::nonfinite_gradients(parameters) == std::vector<std::string>{"layer.bias", "block.0.w"});
    CHECK_THROWS_WITH(optim::clip_grad_norm(parameters, 1.0),
                      Contains("clip_grad_norm") && Contains("nan") && Contains("layer.bias") &&
                          Contains("block.0.w"));
    optim::ClipGradNormOptions lenient;
    lenient.error_if_nonfinite = false;
    std::vector<float> before = parameters[0].tensor.grad().to_vector<float>();
    CHECK(std::isnan(optim::clip_grad_norm(parameters, 1.0, lenient)));
    CHECK(parameters[0].tensor.grad().to_vector<float>() == before);
  }
  SECTION("an infinite norm from another rank is reported as such") {
    optim::ClipGradNormOptions options;
    options.reduce_squared_norm = [](double) { return INFINITY; };
    CHECK_THROWS_WITH(optim::clip_grad_norm(parameters, 1.0, options),
                      Contains("inf") && Contains("every local gradient is finite"));
  }
  SECTION("value clipping keeps NaN") {
    parameters[0].tensor.grad().data<float>()[0] = std::nanf("");
    parameters[0].tensor.grad().data<float>()[1] = 7.0f;
    optim::clip_grad_value(parameters, 0.25);
    std::vector<float> clipped = parameters[0].tensor.grad().to_vector<float>();
    CHECK(std::isnan(clipped[0]));
    CHECK(clipped[1] == 0.25f);
    CHECK(clipped[2] == 0.25f);
  }
  SECTION("bad limits") {
    CHECK_THROWS_WITH(optim::clip_grad_norm(parameters, -1.0), Contains("clip_grad_norm") && Contains("max_norm -1"));
    CHECK_THROWS_WITH(optim::clip_grad_value(parameters, 0.0), Contains("clip_grad_value") && Contains("clip_value 0"));
  }
}

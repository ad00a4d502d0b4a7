// Strict reading of kiln-compare's study config and its expansion into grid points and runs.
#include "train/study_config.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "optim/optim.h"
#include "train/config.h"

namespace kiln::train {

namespace {

std::string json_path_of(const std::string& path, size_t index) { return path + "[" + std::to_string(index) + "]"; }

StudyOptimizer read_optimizer_entry(const nlohmann::json& json, const std::string& path) {
  JsonReader reader(json, path);
  StudyOptimizer optimizer;
  reader.require("type", optimizer.type);
  optimizer.name = optimizer.type;
  reader.read("name", optimizer.name);
  KILN_CHECK(!optimizer.name.empty(), reader.where("name"), ": must not be empty");
  optimizer.options = nlohmann::json::object();
  if (reader.has("options")) optimizer.options = reader.raw("options");
  KILN_CHECK(optimizer.options.is_object(), reader.where("options"), ": expected a JSON object, got ",
             optimizer.options.dump());
  optimizer.grid = nlohmann::json::object();
  if (reader.has("grid")) optimizer.grid = reader.raw("grid");
  KILN_CHECK(optimizer.grid.is_object(), reader.where("grid"), ": expected a JSON object, got ", optimizer.grid.dump());
  for (const auto& [key, values] : optimizer.grid.items()) {
    KILN_CHECK(values.is_array() && !values.empty(), reader.where("grid") + "." + key,
               ": expected a non-empty list of values, got ", values.dump());
    KILN_CHECK(!optimizer.options.contains(key), reader.where("grid") + "." + key,
               ": also set in options (a hyperparameter is either fixed or searched)");
  }
  reader.finish();
  // Unknown types and hyperparameters fail here, at load time, not at run 17 of 40.
  auto options = default_optimizer_options(optimizer.type, reader.where("type"));
  options->update_from_json(optimizer.options, reader.where("options"));
  nlohmann::json first_point = nlohmann::json::object();
  for (const auto& [key, values] : optimizer.grid.items()) first_point[key] = values[0];
  options->update_from_json(first_point, reader.where("grid"));
  return optimizer;
}

}  // namespace

StudyConfig StudyConfig::from_json(nlohmann::json json, bool full, const std::vector<std::string>& overrides) {
  KILN_CHECK(json.is_object(), "study config: expected a JSON object, got ", json.type_name());
  if (full) {
    KILN_CHECK(json.contains("full"), "--full: this study config has no \"full\" setting");
    json.merge_patch(json["full"]);
  }
  json.erase("full");
  for (const std::string& override_text : overrides) apply_override(json, override_text);

  // Top-level typos are reported before anything else, since a misspelt "optimizers" would
  // otherwise surface as a missing key.
  const std::vector<std::string> known{"name", "out_dir", "task", "training", "eval", "seeds", "target", "optimizers"};
  for (const auto& [key, value] : json.items()) {
    if (std::find(known.begin(), known.end(), key) != known.end()) continue;
    std::string hint = closest_match(key, known);
    KILN_FAIL(key, ": unknown key", hint.empty() ? std::string() : " (did you mean " + hint + "?)");
  }
  StudyConfig config;
  JsonReader reader(json, "");
  reader.require("name", config.name);
  config.out_dir = "runs/optim/" + config.name;
  reader.read("out_dir", config.out_dir);
  config.task = reader.raw("task");
  KILN_CHECK(config.task.is_object() && config.task.contains("type"), "task: expected an object with a \"type\", got ",
             config.task.dump());

  JsonReader training = reader.child("training");
  training.read("steps", config.training.steps);
  training.read("epochs", config.training.epochs);
  training.read("batch_size", config.training.batch_size);
  training.read("grad_clip", config.training.grad_clip);
  if (training.has("schedule")) config.training.schedule = training.raw("schedule");
  training.finish();
  KILN_CHECK((config.training.steps > 0) != (config.training.epochs > 0), "training: give exactly one of steps or ",
             "epochs as a positive integer (got steps ", config.training.steps, ", epochs ", config.training.epochs, ")");
  KILN_CHECK(config.training.batch_size > 0, training.where("batch_size"), ": must be positive, got ",
             config.training.batch_size);
  KILN_CHECK(config.training.grad_clip >= 0, training.where("grad_clip"), ": must be >= 0, got ",
             config.training.grad_clip);

  JsonReader eval = reader.child("eval");
  eval.read("interval", config.eval_interval);
  eval.finish();
  KILN_CHECK(config.eval_interval > 0, eval.where("interval"), ": must be positive, got ", config.eval_interval);

  reader.read("seeds", config.seeds);
  KILN_CHECK(!config.seeds.empty(), "seeds: expected at least one seed");

  JsonReader target = reader.child("target");
  target.read("metric", config.target.metric);
  target.read("value", config.target.value);
  target.finish();
  KILN_CHECK(config.target.metric == "train_loss" || config.target.metric == "test_loss", target.where("metric"),
             ": expected \"train_loss\" or \"test_loss\", got \"", config.target.metric, "\"");

  const nlohmann::json& optimizers = reader.raw("optimizers");
  KILN_CHECK(optimizers.is_array() && !optimizers.empty(), "optimizers: expected a non-empty list, got ",
             optimizers.dump());
  for (size_t i = 0; i < optimizers.size(); ++i) {
    config.optimizers.push_back(read_optimizer_entry(optimizers[i], json_path_of("optimizers", i)));
    for (size_t j = 0; j < i; ++j) {
      KILN_CHECK(config.optimizers[j].name != config.optimizers[i].name, json_path_of("optimizers", i),
                 ".name: \"", config.optimizers[i].name, "\" is already the name of optimizers[", j, "]");
    }
  }
  reader.finish();
  // Schedules are checked now; cosine's total_steps defaults to the run length (study_runner).
  nlohmann::json schedule = config.training.schedule;
  if (schedule.is_object() && !schedule.contains("total_steps")) {
    std::string type = schedule.value("type", std::string());
    if (type == "cosine" || type == "linear_decay") schedule["total_steps"] = 1;
  }
  optim::schedule_from_json(schedule, "training.schedule");
  return config;
}

StudyConfig StudyConfig::load(const std::string& path, bool full, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  KILN_CHECK(in.good(), "kiln-compare: cannot read study config ", path);
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& error) {
    KILN_FAIL(path, ": invalid JSON: ", error.what());
  }
  return from_json(std::move(json), full, overrides);
}

std::vector<GridPoint> expand_grid(const StudyConfig& config) {
  std::vector<GridPoint> points;
  for (size_t o = 0; o < config.optimizers.size(); ++o) {
    const StudyOptimizer& optimizer = config.optimizers[o];
    std::vector<std::string> keys;
    for (const auto& [key, values] : optimizer.grid.items()) keys.push_back(key);  // sorted (std::map)
    std::vector<size_t> position(keys.size(), 0);
    while (true) {
      GridPoint point;
      point.optimizer = o;
      point.hyperparameters = nlohmann::json::object();
      for (size_t k = 0; k < keys.size(); ++k) {
        const nlohmann::json& value = optimizer.grid[keys[k]][position[k]];
        point.hyperparameters[keys[k]] = value;
        point.label += (k ? " " : "") + keys[k] + "=" + value.dump();
      }
      if (point.label.empty()) point.label = "defaults";
      auto options = default_optimizer_options(optimizer.type, "optimizers.type");
      options->update_from_json(optimizer.options, "optimizers[" + std::to_string(o) + "].options");
      options->update_from_json(point.hyperparameters, "optimizers[" + std::to_string(o) + "].grid");
      point.options = std::move(options);
      points.push_back(std::move(point));
      // Odometer increment, last key fastest.
      size_t k = keys.size();
      while (k > 0 && ++position[k - 1] == optimizer.grid[keys[k - 1]].size()) position[--k] = 0;
      if (k == 0) break;
    }
  }
  return points;
}

std::vector<RunSpec> expand_runs(const StudyConfig& config, const std::vector<GridPoint>& points) {
  std::vector<RunSpec> runs;
  for (size_t p = 0; p < points.size(); ++p) {
    for (uint64_t seed : config.seeds) runs.push_back(RunSpec{runs.size(), p, seed});
  }
  return runs;
}

std::unique_ptr<optim::Optimizer> make_optimizer(const std::string& type, const optim::OptimizerOptions& options,
                                                 const NamedParameters& parameters) {
  std::vector<optim::ParamGroup> groups = optim::weight_decay_groups(parameters);
  if (type == "sgd") return std::make_unique<optim::SGD>(groups, dynamic_cast<const optim::SGDOptions&>(options));
  if (type == "adagrad") {
    return std::make_unique<optim::Adagrad>(groups, dynamic_cast<const optim::AdagradOptions&>(options));
  }
  if (type == "rmsprop") {
    return std::make_unique<optim::RMSprop>(groups, dynamic_cast<const optim::RMSpropOptions&>(options));
  }
  if (type == "adam") return std::make_unique<optim::Adam>(groups, dynamic_cast<const optim::AdamOptions&>(options));
  if (type == "adamw") return std::make_unique<optim::AdamW>(groups, dynamic_cast<const optim::AdamWOptions&>(options));
  KILN_FAIL("make_optimizer: unknown optimizer type '", type, "'");
}

}  // namespace kiln::train

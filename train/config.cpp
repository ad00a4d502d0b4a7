// TrainConfig: strict JSON reading, --set overrides and the effective config.
#include "train/config.h"

#include <fstream>

#include "autograd/json_reader.h"
#include "optim/optim.h"
#include "parallel/pipeline_schedule.h"

namespace kiln::train {

namespace {

// "a.b.c" -> {"a", "b", "c"}; empty parts are errors naming the override.
std::vector<std::string> split_path(const std::string& path, const std::string& override_text) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    KILN_CHECK(!part.empty(), "--set ", override_text, ": empty key in the path '", path, "'");
    parts.push_back(part);
    if (dot == std::string::npos) return parts;
    start = dot + 1;
  }
}

void check_positive(const JsonReader& reader, const char* key, int64_t value) {
  KILN_CHECK(value > 0, reader.where(key), ": must be positive, got ", value);
}

void check_at_least_zero(const JsonReader& reader, const char* key, double value) {
  KILN_CHECK(value >= 0, reader.where(key), ": must be >= 0, got ", value);
}

// The schedule section, with total_steps defaulting to training.max_steps for the schedules that
// need it; validated by building it.
nlohmann::json read_schedule(const nlohmann::json& json, int64_t max_steps) {
  nlohmann::json schedule = json;
  KILN_CHECK(schedule.is_object(), "schedule: expected a JSON object, got ", schedule.dump());
  std::string type = schedule.value("type", std::string());
  if ((type == "cosine" || type == "linear_decay") && !schedule.contains("total_steps")) {
    schedule["total_steps"] = max_steps;
  }
  optim::schedule_from_json(schedule, "schedule");
  return schedule;
}

std::shared_ptr<const optim::OptimizerOptions> read_optimizer(const nlohmann::json& json, std::string& type) {
  KILN_CHECK(json.is_object(), "optimizer: expected a JSON object, got ", json.dump());
  nlohmann::json options = json;
  if (options.contains("type")) {
    KILN_CHECK(options["type"].is_string(), "optimizer.type: expected a string, got ", options["type"].dump());
    type = options["type"].get<std::string>();
    options.erase("type");
  }
  std::unique_ptr<optim::OptimizerOptions> result = default_optimizer_options(type, "optimizer.type");
  KILN_CHECK(type != "sgd" || options.contains("lr"), "optimizer.lr: required for sgd (it has no default)");
  result->update_from_json(options, "optimizer");
  return result;
}

}  // namespace

std::unique_ptr<optim::OptimizerOptions> default_optimizer_options(const std::string& type, const std::string& path) {
  if (type == "adamw") return std::make_unique<optim::AdamWOptions>();
  if (type == "adam") return std::make_unique<optim::AdamOptions>();
  if (type == "sgd") return std::make_unique<optim::SGDOptions>(0.01);
  if (type == "rmsprop") return std::make_unique<optim::RMSpropOptions>();
  if (type == "adagrad") return std::make_unique<optim::AdagradOptions>();
  std::string hint = closest_match(type, {"adamw", "adam", "sgd", "rmsprop", "adagrad"});
  KILN_FAIL(path, ": unknown optimizer '", type, "' (expected adamw, adam, sgd, rmsprop or adagrad",
            hint.empty() ? std::string() : "; did you mean " + hint + "?", ")");
}

void apply_override(nlohmann::json& json, const std::string& override_text) {
  size_t equals = override_text.find('=');
  KILN_CHECK(equals != std::string::npos, "--set ", override_text, ": expected KEY.PATH=VALUE");
  std::vector<std::string> parts = split_path(override_text.substr(0, equals), override_text);
  std::string text = override_text.substr(equals + 1);
  // Typed when it reads as JSON (numbers, booleans, arrays, quoted strings); a bare word is a string.
  nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;

  nlohmann::json* node = &json;
  std::string where;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    where += (where.empty() ? "" : ".") + parts[i];
    KILN_CHECK(node->is_object(), "--set ", override_text, ": cannot set a key inside ", where,
               " (it is not an object)");
    nlohmann::json& child = (*node)[parts[i]];
    if (child.is_null()) child = nlohmann::json::object();
    KILN_CHECK(child.is_object(), "--set ", override_text, ": ", where, " is a ", child.type_name(),
               ", not an object");
    node = &child;
  }
  KILN_CHECK(node->is_object(), "--set ", override_text, ": the config is not a JSON object");
  (*node)[parts.back()] = value;
}

TrainConfig TrainConfig::from_json(nlohmann::json json, const std::vector<std::string>& overrides) {
  for (const std::string& text : overrides) apply_override(json, text);
  try {
    TrainConfig config;
    JsonReader reader(json, "");
    reader.read("seed", config.seed);
    reader.read("out_dir", config.out_dir);

    // Validated now; a vocab_size left to the tokenizer is filled in by the trainer.
    nlohmann::json model = reader.raw("model");
    config.vocab_from_tokenizer = model.is_object() && !model.contains("vocab_size");
    if (config.vocab_from_tokenizer) model["vocab_size"] = 1;
    config.model = nn::TransformerConfig::from_json(model, "model");

    JsonReader data = reader.child("data");
    data.require("dir", config.data.dir);
    data.read("train", config.data.train);
    data.read("val", config.data.val);
    data.read("tokenizer", config.data.tokenizer);
    data.read("shuffle", config.data.shuffle);
    data.read("prefetch", config.data.prefetch);
    KILN_CHECK(!config.data.train.empty(), data.where("train"), ": needs at least one shard");
    check_at_least_zero(data, "prefetch", static_cast<double>(config.data.prefetch));
    data.finish();

    JsonReader training = reader.child("training");
    training.require("max_steps", config.training.max_steps);
    training.require("batch_size", config.training.batch_size);
    training.read("grad_accumulation", config.training.grad_accumulation);
    training.read("grad_clip", config.training.grad_clip);
    training.read("on_nonfinite", config.training.on_nonfinite);
    training.read("device", config.training.device);
    training.read("precision", config.training.precision);
    check_positive(training, "max_steps", config.training.max_steps);
    check_positive(training, "batch_size", config.training.batch_size);
    check_positive(training, "grad_accumulation", config.training.grad_accumulation);
    check_at_least_zero(training, "grad_clip", config.training.grad_clip);
    KILN_CHECK(config.training.on_nonfinite == "stop" || config.training.on_nonfinite == "skip",
               training.where("on_nonfinite"), ": expected \"stop\" or \"skip\", got \"",
               config.training.on_nonfinite, "\"");
    KILN_CHECK(config.training.device == "cpu" || config.training.device == "cuda", training.where("device"),
               ": expected \"cpu\" or \"cuda\", got \"", config.training.device, "\"");
    const std::string& precision = config.training.precision;
    KILN_CHECK(precision == "fp32" || precision == "bf16" || precision == "f16", training.where("precision"),
               ": expected \"fp32\", \"bf16\" or \"f16\", got \"", precision, "\"");
    training.finish();

    if (reader.has("optimizer")) config.optimizer = read_optimizer(reader.raw("optimizer"), config.optimizer_type);
    else config.optimizer = default_optimizer_options(config.optimizer_type, "optimizer.type");
    if (reader.has("schedule")) config.schedule = reader.raw("schedule");
    config.schedule = read_schedule(config.schedule, config.training.max_steps);

    JsonReader eval = reader.child("eval");
    eval.read("interval", config.eval.interval);
    eval.read("batches", config.eval.batches);
    eval.read("sample_interval", config.eval.sample_interval);
    eval.read("samples", config.eval.samples);
    eval.read("sample_tokens", config.eval.sample_tokens);
    eval.read("prompt", config.eval.prompt);
    eval.read("temperature", config.eval.temperature);
    eval.read("top_k", config.eval.top_k);
    check_at_least_zero(eval, "interval", static_cast<double>(config.eval.interval));
    check_positive(eval, "batches", config.eval.batches);
    check_at_least_zero(eval, "sample_interval", static_cast<double>(config.eval.sample_interval));
    check_at_least_zero(eval, "samples", static_cast<double>(config.eval.samples));
    check_at_least_zero(eval, "sample_tokens", static_cast<double>(config.eval.sample_tokens));
    KILN_CHECK(config.eval.temperature > 0, eval.where("temperature"), ": must be positive, got ",
               config.eval.temperature);
    KILN_CHECK(!config.eval.prompt.empty(), eval.where("prompt"), ": must not be empty");
    eval.finish();

    JsonReader checkpoint = reader.child("checkpoint");
    checkpoint.read("interval", config.checkpoint.interval);
    checkpoint.read("keep_last", config.checkpoint.keep_last);
    checkpoint.read("final", config.checkpoint.final);
    check_at_least_zero(checkpoint, "interval", static_cast<double>(config.checkpoint.interval));
    check_positive(checkpoint, "keep_last", config.checkpoint.keep_last);
    checkpoint.finish();

    JsonReader logging = reader.child("logging");
    logging.read("interval", config.logging.interval);
    logging.read("jsonl", config.logging.jsonl);
    logging.read("tensorboard", config.logging.tensorboard);
    logging.read("peak_flops", config.logging.peak_flops);
    logging.read("progress_bar", config.logging.progress_bar);
    check_positive(logging, "interval", config.logging.interval);
    KILN_CHECK(config.logging.peak_flops > 0, logging.where("peak_flops"), ": must be positive, got ",
               config.logging.peak_flops);
    const std::string& bar = config.logging.progress_bar;
    KILN_CHECK(bar == "auto" || bar == "on" || bar == "off", logging.where("progress_bar"),
               ": expected \"auto\", \"on\" or \"off\", got \"", bar, "\"");
    logging.finish();

    JsonReader parallel = reader.child("parallel");
    parallel.read("data_parallel", config.parallel.data_parallel);
    parallel.read("tensor_parallel", config.parallel.tensor_parallel);
    parallel.read("pipeline_parallel", config.parallel.pipeline_parallel);
    parallel.read("context_parallel", config.parallel.context_parallel);
    parallel.read("expert_parallel", config.parallel.expert_parallel);
    parallel.read("sequence_parallel", config.parallel.sequence_parallel);
    parallel.read("pipeline_schedule", config.parallel.pipeline_schedule);
    parallel.read("virtual_stages", config.parallel.virtual_stages);
    auto at_least_one = [&](const char* key, int64_t value) {
      KILN_CHECK(value >= 1, parallel.where(key), ": must be at least 1, got ", value);
    };
    at_least_one("tensor_parallel", config.parallel.tensor_parallel);
    at_least_one("pipeline_parallel", config.parallel.pipeline_parallel);
    at_least_one("context_parallel", config.parallel.context_parallel);
    at_least_one("expert_parallel", config.parallel.expert_parallel);
    at_least_one("virtual_stages", config.parallel.virtual_stages);
    try {
      parallel::parse_pipeline_schedule(config.parallel.pipeline_schedule);
    } catch (const Error& error) {
      KILN_FAIL(parallel.where("pipeline_schedule"), ": ", error.what());
    }
    KILN_CHECK(config.parallel.virtual_stages == 1 || config.parallel.pipeline_schedule == "interleaved",
               parallel.where("virtual_stages"), ": ", config.parallel.virtual_stages,
               " virtual stages need pipeline_schedule \"interleaved\", got \"", config.parallel.pipeline_schedule, "\"");
    KILN_CHECK(!config.parallel.sequence_parallel || config.parallel.tensor_parallel > 1,
               parallel.where("sequence_parallel"), ": needs tensor_parallel > 1");
    parallel.read("bucket_mb", config.parallel.bucket_mb);
    parallel.read("zero_stage", config.parallel.zero_stage);
    KILN_CHECK(config.parallel.zero_stage >= 0 && config.parallel.zero_stage <= 3, parallel.where("zero_stage"),
               ": expected 0 (DDP), 1, 2 or 3, got ", config.parallel.zero_stage);
    check_at_least_zero(parallel, "data_parallel", static_cast<double>(config.parallel.data_parallel));
    KILN_CHECK(config.parallel.bucket_mb > 0, parallel.where("bucket_mb"), ": must be positive, got ",
               config.parallel.bucket_mb);
    parallel.finish();

    reader.finish();
    return config;
  } catch (const Error& error) {
    // Point at the --set that put the offending value there, when one did.
    // Messages start with the JSON path ("training.max_steps: ..."); an unknown section's path
    // ("trainng") is a prefix of the override's key.
    std::string message = error.what();
    std::string path = message.substr(0, message.find_first_of(": "));
    for (const std::string& text : overrides) {
      std::string key = text.substr(0, text.find('='));
      if (key == path || key.rfind(path + ".", 0) == 0 || path.rfind(key + ".", 0) == 0) {
        throw Error(message + " (from --set " + text + ")");
      }
    }
    throw;
  }
}

TrainConfig TrainConfig::from_file(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path);
  KILN_CHECK(in.good(), "config ", path, ": cannot open the file");
  nlohmann::json json = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false, /*ignore_comments=*/true);
  KILN_CHECK(!json.is_discarded(), "config ", path, ": not valid JSON");
  try {
    return from_json(std::move(json), overrides);
  } catch (const Error& error) {
    throw Error("config " + path + ": " + error.what());
  }
}

nlohmann::json TrainConfig::to_json() const {
  nlohmann::json model_json = model.to_json();
  if (vocab_from_tokenizer) model_json.erase("vocab_size");
  nlohmann::json optimizer_json = optimizer->to_json();
  optimizer_json["type"] = optimizer_type;
  return {
      {"seed", seed},
      {"out_dir", out_dir},
      {"model", model_json},
      {"data",
       {{"dir", data.dir}, {"train", data.train}, {"val", data.val}, {"tokenizer", data.tokenizer},
        {"shuffle", data.shuffle}, {"prefetch", data.prefetch}}},
      {"optimizer", optimizer_json},
      {"schedule", schedule},
      {"training",
       {{"max_steps", training.max_steps}, {"batch_size", training.batch_size},
        {"grad_accumulation", training.grad_accumulation}, {"grad_clip", training.grad_clip},
        {"on_nonfinite", training.on_nonfinite}, {"device", training.device},
        {"precision", training.precision}}},
      {"eval",
       {{"interval", eval.interval}, {"batches", eval.batches}, {"sample_interval", eval.sample_interval},
        {"samples", eval.samples}, {"sample_tokens", eval.sample_tokens}, {"prompt", eval.prompt},
        {"temperature", eval.temperature}, {"top_k", eval.top_k}}},
      {"checkpoint",
       {{"interval", checkpoint.interval}, {"keep_last", checkpoint.keep_last}, {"final", checkpoint.final}}},
      {"logging",
       {{"interval", logging.interval}, {"jsonl", logging.jsonl}, {"tensorboard", logging.tensorboard},
        {"peak_flops", logging.peak_flops}, {"progress_bar", logging.progress_bar}}},
      {"parallel",
       {{"data_parallel", parallel.data_parallel},
        {"tensor_parallel", parallel.tensor_parallel},
        {"pipeline_parallel", parallel.pipeline_parallel},
        {"context_parallel", parallel.context_parallel},
        {"expert_parallel", parallel.expert_parallel},
        {"sequence_parallel", parallel.sequence_parallel},
        {"pipeline_schedule", parallel.pipeline_schedule},
        {"virtual_stages", parallel.virtual_stages},
        {"bucket_mb", parallel.bucket_mb},
        {"zero_stage", parallel.zero_stage}}},
  };
}

int64_t ParallelConfig::data_parallel_size(int64_t world_size) const {
  const int64_t model = tensor_parallel * pipeline_parallel * context_parallel * expert_parallel;
  KILN_CHECK(world_size % model == 0, "parallel: tensor ", tensor_parallel, " x pipeline ", pipeline_parallel,
             " x context ", context_parallel, " x expert ", expert_parallel, " = ", model,
             " ranks does not divide the job's ", world_size, " ranks");
  const int64_t data = world_size / model;
  KILN_CHECK(data_parallel == 0 || data_parallel == data, "parallel.data_parallel is ", data_parallel,
             " but the job's ", world_size, " ranks over ", model, " model-parallel ranks leave ", data,
             " (use 0 for 'what the others leave')");
  return data;
}

int64_t TrainConfig::micro_batch_size(int64_t world_size) const {
  const int64_t data_ranks = parallel.data_parallel_size(world_size) * parallel.expert_parallel;
  const int64_t parts = data_ranks * training.grad_accumulation;
  KILN_CHECK(training.batch_size % parts == 0, "training.batch_size ", training.batch_size, " must be divisible by ",
             data_ranks, " data-parallel ranks x training.grad_accumulation ", training.grad_accumulation,
             " (it is the global batch)");
  return training.batch_size / parts;
}

}  // namespace kiln::train

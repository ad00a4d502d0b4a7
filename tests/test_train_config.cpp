// TrainConfig: the shipped configs parse, errors name the JSON path (and the closest key), and
// --set overrides apply typed values or fail with a message that names the override.
#include <catch2/catch.hpp>
#include <filesystem>

#include "optim/adam.h"
#include "train/config.h"
#include "train/progress.h"

using namespace kiln;
using Catch::Matchers::Contains;

namespace {

nlohmann::json minimal_config() {
  return nlohmann::json::parse(R"({
    "model": {"block_size": 16, "n_layers": 2, "n_heads": 2, "d_model": 32},
    "data": {"dir": "data/x"},
    "training": {"max_steps": 10, "batch_size": 8}
  })");
}

std::string error_of(const nlohmann::json& json, const std::vector<std::string>& overrides = {}) {
  try {
    train::TrainConfig::from_json(json, overrides);
  } catch (const Error& error) {
    return error.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("every config in configs/ parses and round-trips through to_json", "[train][config]") {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(std::string(KILN_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".json") continue;
    INFO(entry.path().string());
    train::TrainConfig config = train::TrainConfig::from_file(entry.path().string());
    train::TrainConfig again = train::TrainConfig::from_json(config.to_json());
    CHECK(again.to_json() == config.to_json());
    ++count;
  }
  CHECK(count >= 5);
}

TEST_CASE("defaults, the vocabulary from the tokenizer and the schedule's total steps", "[train][config]") {
  train::TrainConfig config = train::TrainConfig::from_json(minimal_config());
  CHECK(config.vocab_from_tokenizer);
  CHECK(config.optimizer_type == "adamw");
  CHECK(config.training.grad_accumulation == 1);
  CHECK(!config.to_json()["model"].contains("vocab_size"));

  nlohmann::json json = minimal_config();
  json["schedule"] = {{"type", "cosine"}, {"warmup_steps", 2}};
  config = train::TrainConfig::from_json(json);
  CHECK(config.schedule["total_steps"] == 10);  // training.max_steps
}

TEST_CASE("unknown keys name the JSON path and the closest valid key", "[train][config][errors]") {
  nlohmann::json json = minimal_config();
  json["training"]["max_step"] = 5;
  CHECK_THAT(error_of(json), Contains("training.max_step: unknown key (did you mean max_steps?)"));

  json = minimal_config();
  json["trainng"] = nlohmann::json::object();
  CHECK_THAT(error_of(json), Contains("trainng: unknown key (did you mean training?)"));

  json = minimal_config();
  json["model"]["n_layer"] = 2;
  CHECK_THAT(error_of(json), Contains("model.n_layer: unknown key (did you mean n_layers?)"));

  json = minimal_config();
  json["optimizer"] = {{"type", "adamw"}, {"beta", {0.9, 0.95}}};
  CHECK_THAT(error_of(json), Contains("optimizer.beta: unknown key (did you mean betas?)"));

  json = minimal_config();
  json["eval"] = {{"intervall", 5}};
  CHECK_THAT(error_of(json), Contains("eval.intervall: unknown key (did you mean interval?)"));
}

TEST_CASE("wrong types, bad values and missing keys are errors naming the path", "[train][config][errors]") {
  nlohmann::json json = minimal_config();
  json["training"]["batch_size"] = "12";
  CHECK_THAT(error_of(json), Contains("training.batch_size: expected an integer, got string \"12\""));

  json = minimal_config();
  json["logging"] = {{"jsonl", 1}};
  CHECK_THAT(error_of(json), Contains("logging.jsonl: expected a boolean"));

  json = minimal_config();
  json["training"].erase("max_steps");
  CHECK_THAT(error_of(json), Contains("training.max_steps: required key is missing"));

  json = minimal_config();
  json["training"]["on_nonfinite"] = "ignore";
  CHECK_THAT(error_of(json), Contains("training.on_nonfinite: expected \"stop\" or \"skip\""));

  json = minimal_config();
  json["training"]["precision"] = "fp8";
  CHECK_THAT(error_of(json), Contains("training.precision: expected \"fp32\", \"bf16\" or \"f16\", got \"fp8\""));

  json = minimal_config();
  json["training"]["device"] = "gpu";
  CHECK_THAT(error_of(json), Contains("training.device: expected \"cpu\" or \"cuda\", got \"gpu\""));

  json = minimal_config();
  json["optimizer"] = {{"type", "adamx"}};
  CHECK_THAT(error_of(json), Contains("optimizer.type: unknown optimizer 'adamx'") && Contains("did you mean adamw?"));

  json = minimal_config();
  json["schedule"] = {{"type", "cosine"}, {"warmup", 5}};
  CHECK_THAT(error_of(json), Contains("schedule.warmup: unknown key"));

  json = minimal_config();
  json["model"]["n_heads"] = 3;
  CHECK_THAT(error_of(json), Contains("model.n_heads 3 does not divide model.d_model 32"));

  train::TrainConfig config = train::TrainConfig::from_json(minimal_config());
  CHECK(config.micro_batch_size(2) == 4);
  CHECK_THROWS_WITH(config.micro_batch_size(3), Contains("training.batch_size 8 must be divisible by 3 data-parallel ranks"));

  // The mesh: sizes, schedule names, and how they fit the world.
  json = minimal_config();
  json["parallel"] = {{"tensor_parallel", 0}};
  CHECK_THAT(error_of(json), Contains("parallel.tensor_parallel: must be at least 1, got 0"));
  json["parallel"] = {{"pipeline_schedule", "zigzag"}};
  CHECK_THAT(error_of(json), Contains("parallel.pipeline_schedule") && Contains("zigzag"));
  json["parallel"] = {{"virtual_stages", 2}};
  CHECK_THAT(error_of(json), Contains("parallel.virtual_stages: 2 virtual stages need pipeline_schedule \"interleaved\""));
  json["parallel"] = {{"sequence_parallel", true}};
  CHECK_THAT(error_of(json), Contains("parallel.sequence_parallel: needs tensor_parallel > 1"));
  json["parallel"] = {{"tensor_parallel", 2}, {"pipeline_parallel", 2}};
  train::TrainConfig layout = train::TrainConfig::from_json(json);
  CHECK(layout.parallel.model_parallel());
  CHECK(layout.parallel.data_parallel_size(8) == 2);
  CHECK(layout.micro_batch_size(8) == 4);
  CHECK_THROWS_WITH(layout.parallel.data_parallel_size(6),
                    Contains("tensor 2 x pipeline 2 x context 1 x expert 1 = 4 ranks does not divide the job's 6 ranks"));
  layout.parallel.data_parallel = 3;
  CHECK_THROWS_WITH(layout.parallel.data_parallel_size(8), Contains("parallel.data_parallel is 3 but"));
}

TEST_CASE("--set overrides apply typed values", "[train][config][set]") {
  train::TrainConfig config = train::TrainConfig::from_json(
      minimal_config(), {"training.max_steps=50", "optimizer.lr=3e-4", "optimizer.betas=[0.8, 0.9]",
                         "data.dir=other/dir", "eval.prompt=ROMEO:", "logging.tensorboard=false", "model.dropout=0.1",
                         "schedule.type=linear_warmup", "schedule.warmup_steps=4"});
  CHECK(config.training.max_steps == 50);
  CHECK(config.optimizer->get_lr() == 3e-4);
  const auto& adamw = dynamic_cast<const optim::AdamWOptions&>(*config.optimizer);
  CHECK(adamw.beta1() == 0.8);
  CHECK(adamw.beta2() == 0.9);
  CHECK(config.data.dir == "other/dir");
  CHECK(config.eval.prompt == "ROMEO:");
  CHECK(!config.logging.tensorboard);
  CHECK(config.model.dropout == 0.1);
  CHECK(config.schedule["warmup_steps"] == 4);

  // A quoted JSON string stays a string even when it looks like a number.
  config = train::TrainConfig::from_json(minimal_config(), {"out_dir=\"123\""});
  CHECK(config.out_dir == "123");
}

TEST_CASE("bad --set overrides say which override and why", "[train][config][set][errors]") {
  CHECK_THAT(error_of(minimal_config(), {"training.max_steps"}), Contains("--set training.max_steps: expected KEY.PATH=VALUE"));
  CHECK_THAT(error_of(minimal_config(), {"training..max_steps=3"}), Contains("empty key in the path"));
  CHECK_THAT(error_of(minimal_config(), {"training.max_steps.x=3"}),
             Contains("--set training.max_steps.x=3: training.max_steps is a number, not an object"));
  CHECK_THAT(error_of(minimal_config(), {"training.max_steps=abc"}),
             Contains("training.max_steps: expected an integer, got string \"abc\" (from --set training.max_steps=abc)"));
  CHECK_THAT(error_of(minimal_config(), {"training.max_stepz=5"}),
             Contains("training.max_stepz: unknown key (did you mean max_steps?) (from --set training.max_stepz=5)"));
  CHECK_THAT(error_of(minimal_config(), {"trainng.max_steps=5"}),
             Contains("trainng: unknown key (did you mean training?) (from --set trainng.max_steps=5)"));
  CHECK_THAT(error_of(minimal_config(), {"training.batch_size=0"}), Contains("training.batch_size: must be positive"));
}

TEST_CASE("progress formatting and the FLOPs estimate", "[train][progress]") {
  CHECK(train::format_duration(12.34) == "12.3s");
  CHECK(train::format_duration(245) == "4:05");
  CHECK(train::format_duration(3723) == "1:02:03");
  CHECK(train::format_count(21345) == "21.3k");

  train::StepStats stats;
  stats.step = 200;
  stats.max_steps = 2000;
  stats.loss = 2.1034;
  stats.lr = 9.94e-4;
  stats.grad_norm = 0.412;
  stats.tokens_per_second = 21300;
  stats.mfu = 0.031;
  stats.elapsed_seconds = 41;
  stats.eta_seconds = 369;
  CHECK(train::format_progress_line(stats) ==
        "step  200/2000 | loss 2.1034 | lr 9.94e-04 | grad norm 0.412 | 21.3k tok/s | MFU 3.10% | 41.0s elapsed, ETA 6:09");
  CHECK(train::format_progress_bar(stats, 10) == "[#.........] 200/2000  10% loss 2.1034 ETA 6:09");

  // nanoGPT's estimate: 6 N + 12 L d T per token.
  nn::TransformerConfig model = nn::TransformerConfig::gpt2(65, 64, 4, 4, 128);
  CHECK(train::flops_per_token(model, 1000, 64) == 6.0 * 1000 + 12.0 * 4 * 128 * 64);
}

// kiln-compare's library pieces: strict study configs, grid expansion, reproducible runs,
// the report's per-optimizer rows and best hyperparameters, and time-to-target.
#include <catch2/catch.hpp>
#include <filesystem>
#include <sstream>

#include "kernels/error.h"
#include "train/study_report.h"

using namespace kiln;
using namespace kiln::train;

namespace {

// Two optimizers on Gaussian blobs with a small MLP: a study that runs in about a second.
nlohmann::json tiny_study() {
  return nlohmann::json::parse(R"({
    "name": "tiny",
    "task": {"type": "gaussian_blobs", "model": "mlp", "hidden": 16, "layers": 2, "dropout": 0.1,
             "classes": 3, "features": 8, "train_examples": 192, "test_examples": 96, "separation": 2.0},
    "training": {"steps": 30, "batch_size": 32},
    "eval": {"interval": 10},
    "seeds": [0, 1],
    "target": {"metric": "train_loss", "value": 0.9},
    "optimizers": [
      {"name": "sgd_nesterov", "type": "sgd", "options": {"momentum": 0.9, "nesterov": true},
       "grid": {"lr": [0.001, 0.1]}},
      {"name": "adam", "type": "adam", "grid": {"lr": [0.01]}}
    ]})");
}

std::string error_of(const nlohmann::json& json) {
  try {
    StudyConfig::from_json(json);
  } catch (const Error& error) {
    return error.what();
  }
  return "(no error)";
}

StudyResult run_tiny(const std::string& directory) {
  StudyConfig config = StudyConfig::from_json(tiny_study());
  auto task = make_study_task(config.task);
  std::filesystem::path out = std::filesystem::temp_directory_path() / directory;
  std::filesystem::remove_all(out);
  return run_study(config, *task, out, [](const std::string&) {});
}

}  // namespace

TEST_CASE("study config errors name the JSON path", "[compare]") {
  nlohmann::json json = tiny_study();
  json["optimizers"][1]["grid"] = {{"lrr", {0.1}}};
  CHECK_THAT(error_of(json), Catch::Contains("optimizers[1].grid.lrr: unknown key (did you mean lr?)"));

  json = tiny_study();
  json["optimizers"][0]["options"]["nesterovv"] = true;
  CHECK_THAT(error_of(json), Catch::Contains("optimizers[0].options.nesterovv: unknown key (did you mean nesterov?)"));

  json = tiny_study();
  json["training"]["epoch"] = 2;
  CHECK_THAT(error_of(json), Catch::Contains("training.epoch: unknown key (did you mean epochs?)"));

  json = tiny_study();
  json["optimisers"] = json["optimizers"];
  json.erase("optimizers");
  CHECK_THAT(error_of(json), Catch::Contains("optimisers: unknown key (did you mean optimizers?)"));

  json = tiny_study();
  json["optimizers"][1]["type"] = "adan";
  CHECK_THAT(error_of(json), Catch::Contains("optimizers[1].type: unknown optimizer 'adan'"));

  json = tiny_study();
  json["optimizers"][0]["grid"]["lr"] = nlohmann::json::array();
  CHECK_THAT(error_of(json), Catch::Contains("optimizers[0].grid.lr: expected a non-empty list"));

  json = tiny_study();
  json["optimizers"][1]["name"] = "sgd_nesterov";
  CHECK_THAT(error_of(json), Catch::Contains("optimizers[1].name: \"sgd_nesterov\" is already the name"));

  json = tiny_study();
  json["training"]["epochs"] = 2;
  CHECK_THAT(error_of(json), Catch::Contains("give exactly one of steps or epochs"));

  json = tiny_study();
  json["seeds"] = "0";
  CHECK_THAT(error_of(json), Catch::Contains("seeds"));

  json = tiny_study();
  json["task"]["hiden"] = 8;
  StudyConfig config = StudyConfig::from_json(json);
  CHECK_THROWS_WITH(make_study_task(config.task), Catch::Contains("task.hiden: unknown key (did you mean hidden?)"));
  json["task"] = {{"type", "fashion_mnst"}};
  config = StudyConfig::from_json(json);
  CHECK_THROWS_WITH(make_study_task(config.task), Catch::Contains("did you mean fashion_mnist?"));
}

TEST_CASE("--full applies the config's merge patch", "[compare]") {
  nlohmann::json json = tiny_study();
  json["full"] = {{"training", {{"steps", 500}}}, {"seeds", {0, 1, 2, 3}}};
  StudyConfig quick = StudyConfig::from_json(json);
  StudyConfig full = StudyConfig::from_json(json, /*full=*/true);
  CHECK(quick.training.steps == 30);
  CHECK(full.training.steps == 500);
  CHECK(full.training.batch_size == 32);
  CHECK(full.seeds.size() == 4);
  CHECK_THROWS_WITH(StudyConfig::from_json(tiny_study(), true), Catch::Contains("no \"full\" setting"));
  StudyConfig overridden = StudyConfig::from_json(json, false, {"training.steps=7"});
  CHECK(overridden.training.steps == 7);
}

TEST_CASE("grids expand to the cartesian product, last key fastest", "[compare]") {
  nlohmann::json json = tiny_study();
  json["seeds"] = {0, 1, 2};
  json["optimizers"][1] = {{"name", "adamw"}, {"type", "adamw"},
                           {"grid", {{"lr", {0.1, 0.01, 0.001}}, {"weight_decay", {0.0, 0.5}}}}};
  StudyConfig config = StudyConfig::from_json(json);
  std::vector<GridPoint> points = expand_grid(config);
  REQUIRE(points.size() == 2 + 3 * 2);
  CHECK(expand_runs(config, points).size() == 8 * 3);
  CHECK(points[0].label == "lr=0.001");
  CHECK(points[2].label == "lr=0.1 weight_decay=0.0");
  CHECK(points[3].label == "lr=0.1 weight_decay=0.5");
  CHECK(points[4].label == "lr=0.01 weight_decay=0.0");
  CHECK(points[3].options->get_lr() == 0.1);
  CHECK(points[3].options->get_weight_decay() == 0.5);
  // Fixed options reach every point of the grid.
  CHECK(points[1].options->to_json()["nesterov"] == true);
  CHECK(points[1].options->to_json()["momentum"] == 0.9);
}

TEST_CASE("time to target is the first evaluation at or below it", "[compare]") {
  std::vector<CurvePoint> curve{{10, 1.0, 2.0, 0.1, 2.1, 0.1},
                                {20, 2.0, 1.2, 0.4, 1.5, 0.3},
                                {30, 3.5, 0.8, 0.7, 1.4, 0.5},
                                {40, 4.0, 0.9, 0.7, 0.7, 0.6}};
  auto train_hit = first_reaching(curve, "train_loss", 1.0);
  REQUIRE(train_hit);
  CHECK(train_hit->step == 30);
  CHECK(train_hit->seconds == 3.5);
  auto test_hit = first_reaching(curve, "test_loss", 1.4);
  REQUIRE(test_hit);
  CHECK(test_hit->step == 30);
  CHECK_FALSE(first_reaching(curve, "train_loss", 0.5));
  curve[0].train_loss = std::nan("");
  CHECK(first_reaching(curve, "train_loss", 1.0)->step == 30);

  Statistic statistic = summarize({1.0, 3.0, std::nan("")});
  CHECK(statistic.count == 2);
  CHECK(statistic.mean == 2.0);
  CHECK(statistic.std == Approx(std::sqrt(2.0)));
}

TEST_CASE("a study run twice gives the same results.csv; the report shows each optimizer's best", "[compare]") {
  StudyResult first = run_tiny("kiln_test_compare_1");
  StudyResult second = run_tiny("kiln_test_compare_2");
  REQUIRE(first.runs.size() == 3 * 2);
  std::string csv = results_csv(first);
  CHECK(csv == results_csv(second));
  // Wall-clock times live in timings.csv: one line per run.
  std::string timings = timings_csv(first);
  CHECK(timings.rfind("run,seconds,seconds_to_target\n", 0) == 0);
  CHECK(std::count(timings.begin(), timings.end(), '\n') == 1 + 6);
  CHECK(csv.rfind("run,optimizer,type,hyperparameters,seed,steps,diverged,final_train_loss", 0) == 0);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 1 + 6);
  // Evaluations at steps 10, 20, 30 (the last step always).
  for (const RunResult& run : first.runs) CHECK(run.curve.size() == 3);
  CHECK(std::filesystem::exists(std::filesystem::temp_directory_path() / "kiln_test_compare_1/runs/run_005.jsonl"));

  // The two seeds differ (different initial weights and data order).
  CHECK(first.runs[0].curve.back().train_loss != first.runs[1].curve.back().train_loss);

  std::vector<PointSummary> summaries = summarize_points(first);
  std::vector<size_t> best = best_points(first, summaries);
  REQUIRE(best.size() == 2);
  // lr 0.001 barely moves SGD in 30 steps; lr 0.1 must win.
  CHECK(first.points[best[0]].label == "lr=0.1");
  CHECK(summaries[best[0]].final_test_loss.mean < summaries[0].final_test_loss.mean);
  CHECK(best[1] == 2);

  std::string report = markdown_report(first, {"loss_vs_step.png"}, "kiln-compare tiny.json");
  CHECK_THAT(report, Catch::Contains("| sgd_nesterov | lr=0.1 |"));
  CHECK_THAT(report, Catch::Contains("| adam | lr=0.01 |"));
  CHECK_THAT(report, Catch::Contains("mean ± std over 2 seeds"));
  CHECK_THAT(report, Catch::Contains("![loss_vs_step.png](loss_vs_step.png)"));
  CHECK_THAT(report, Catch::Contains("`kiln-compare tiny.json`"));
}

TEST_CASE("a diverging run is stopped and never chosen as best", "[compare]") {
  nlohmann::json json = tiny_study();
  json["optimizers"][0]["grid"]["lr"] = {1e6, 0.1};
  json["seeds"] = {0};
  StudyConfig config = StudyConfig::from_json(json);
  auto task = make_study_task(config.task);
  StudyResult study = run_study(config, *task, std::filesystem::temp_directory_path() / "kiln_test_compare_3",
                                [](const std::string&) {});
  CHECK(study.runs[0].diverged);
  CHECK(study.runs[0].curve.back().step < 30);
  std::vector<PointSummary> summaries = summarize_points(study);
  CHECK(summaries[0].diverged == 1);
  CHECK(best_points(study, summaries)[0] == 1);
  CHECK_THAT(results_csv(study), Catch::Contains(",\"lr=1000000.0\",0,"));
}

// DataLoader: windows and targets, determinism, data-parallel slices, epochs, saving and
// restoring the position, prefetching, and errors from the prefetch thread.
//
// The shards hold token value = position + offset, so every row of a batch says which window
// it is: shard 0 holds 0..999, shard 1 holds 10000..10499. With T = 8 shard 0 has
// (1000 - 1) / 8 = 124 windows and shard 1 499 / 8 = 62: 186 in all.
#include <catch2/catch.hpp>
#include <filesystem>
#include <numeric>
#include <set>

#include "data/loader.h"
#include "kernels/error.h"

using namespace kiln;
using namespace kiln::data;
using Catch::Contains;

namespace {

constexpr int64_t T = 8;

// The two shards, removed again when the test case ends.
struct Shards : std::vector<std::string> {
  Shards() {
    const auto dir = std::filesystem::temp_directory_path();
    std::vector<TokenId> first(1000), second(500);
    std::iota(first.begin(), first.end(), 0);
    std::iota(second.begin(), second.end(), 10000);
    push_back((dir / "kiln-test-loader-0.bin").string());
    push_back((dir / "kiln-test-loader-1.bin").string());
    write_token_shard(at(0), first, 50257);
    write_token_shard(at(1), second, 50257);
  }
  ~Shards() {
    for (const std::string& path : *this) std::filesystem::remove(path);
  }
};

// The first token of each row: which window it is.
std::vector<int64_t> window_starts(const Batch& batch) {
  std::vector<int64_t> starts;
  auto values = batch.inputs.to_vector<int64_t>();
  for (int64_t b = 0; b < batch.inputs.size(0); ++b) starts.push_back(values[static_cast<size_t>(b * T)]);
  return starts;
}

std::vector<std::vector<int64_t>> take(DataLoader& loader, int steps) {
  std::vector<std::vector<int64_t>> out;
  for (int i = 0; i < steps; ++i) {
    Batch batch = loader.next();
    auto values = batch.inputs.to_vector<int64_t>();
    auto targets = batch.targets.to_vector<int64_t>();
    values.insert(values.end(), targets.begin(), targets.end());
    out.push_back(values);
  }
  return out;
}

}  // namespace

TEST_CASE("loader: sequential windows of T + 1 tokens, targets shifted by one", "[data][loader]") {
  const Shards shards;
  DataLoader loader(shards, DataLoaderOptions(4, T).prefetch(0));
  CHECK(loader.windows() == 186);
  CHECK(loader.batches_per_epoch() == 186 / 4);
  Batch first = loader.next();
  CHECK(first.inputs.sizes() == Shape{4, T});
  CHECK(first.inputs.dtype() == DType::i64);
  auto inputs = first.inputs.to_vector<int64_t>(), targets = first.targets.to_vector<int64_t>();
  for (int64_t b = 0; b < 4; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      CHECK(inputs[static_cast<size_t>(b * T + t)] == b * T + t);
      CHECK(targets[static_cast<size_t>(b * T + t)] == b * T + t + 1);
    }
  }
  // Batch 31 holds windows 124..127: the first four of shard 1 (no window crosses shards).
  for (int i = 1; i < 31; ++i) loader.next();
  CHECK(window_starts(loader.next()) == std::vector<int64_t>{10000, 10008, 10016, 10024});
  for (int i = 32; i < 46; ++i) loader.next();
  CHECK(loader.position() == LoaderPosition{1, 0, 0});
  CHECK(window_starts(loader.next()) == std::vector<int64_t>{0, 8, 16, 24});
}

TEST_CASE("loader: ranks take disjoint windows each step and cover every window once an epoch", "[data][loader]") {
  const Shards shards;
  const int64_t world = 3, B = 2;  // 186 windows = 31 steps x 3 ranks x 2
  std::vector<std::unique_ptr<DataLoader>> ranks;
  for (int64_t r = 0; r < world; ++r) {
    ranks.push_back(std::make_unique<DataLoader>(shards, DataLoaderOptions(B, T).shuffle(true).seed(7).rank(r, world)));
  }
  REQUIRE(ranks[0]->batches_per_epoch() == 31);
  std::set<int64_t> epoch;
  for (int step = 0; step < 31; ++step) {
    std::set<int64_t> this_step;
    for (auto& loader : ranks) {
      Batch batch = loader->next();
      auto inputs = batch.inputs.to_vector<int64_t>(), targets = batch.targets.to_vector<int64_t>();
      for (size_t i = 0; i < inputs.size(); ++i) {
        CHECK(targets[i] == inputs[i] + 1);  // consecutive tokens of one shard
        if (i % T) CHECK(inputs[i] == inputs[i - 1] + 1);
      }
      for (int64_t start : window_starts(batch)) {
        CHECK((start < 10000 ? start : start - 10000) % T == 0);
        CHECK(this_step.insert(start).second);
      }
    }
    epoch.insert(this_step.begin(), this_step.end());
  }
  CHECK(epoch.size() == 186);
  for (auto& loader : ranks) CHECK(loader->position() == LoaderPosition{1, 0, 7});
}

TEST_CASE("loader: the order is a function of the seed and the epoch", "[data][loader]") {
  const Shards shards;
  auto options = DataLoaderOptions(4, T).shuffle(true).seed(42);
  DataLoader a(shards, options), b(shards, options), other(shards, DataLoaderOptions(4, T).shuffle(true).seed(43));
  auto first = take(a, 92);  // two epochs of 46
  CHECK(first == take(b, 92));
  CHECK(first != take(other, 92));
  CHECK(std::vector(first.begin(), first.begin() + 46) != std::vector(first.begin() + 46, first.end()));
}

TEST_CASE("loader: prefetching gives the same batches; a restored position continues exactly", "[data][loader]") {
  const Shards shards;
  auto options = DataLoaderOptions(3, T).shuffle(true).seed(5).rank(1, 2);  // 31 batches an epoch
  DataLoader synchronous(shards, DataLoaderOptions(options).prefetch(0));
  DataLoader prefetching(shards, DataLoaderOptions(options).prefetch(4));
  auto expected = take(synchronous, 80);
  CHECK(take(prefetching, 80) == expected);

  // Save after 20 batches (mid-epoch), restore into a fresh loader, and continue across the
  // epoch boundary.
  DataLoader original(shards, options);
  take(original, 20);
  const std::string saved = original.position().to_json().dump();
  CHECK(original.position() == LoaderPosition{0, 20, 5});
  DataLoader resumed(shards, DataLoaderOptions(options).seed(999));  // the position's seed wins
  resumed.restore(LoaderPosition::from_json(nlohmann::json::parse(saved)));
  CHECK(take(resumed, 60) == std::vector(expected.begin() + 20, expected.end()));

  // Restoring while the prefetch thread is ahead discards what it made.
  prefetching.restore({0, 3, 5});
  CHECK(take(prefetching, 2) == std::vector(expected.begin() + 3, expected.begin() + 5));
  prefetching.restore({0, 31, 5});  // the end of epoch 0 is the start of epoch 1
  CHECK(prefetching.position() == LoaderPosition{1, 0, 5});
  CHECK_THROWS_WITH(prefetching.restore({0, 32, 5}), Contains("outside this loader's epochs of 31 batches"));
  CHECK_THROWS_WITH(LoaderPosition::from_json(nlohmann::json::parse(R"({"epoch": 0, "indx": 3, "seed": 1})")),
                    Contains("loader.index: required key is missing"));
  CHECK_THROWS_WITH(LoaderPosition::from_json(nlohmann::json::parse(R"({"epoch": 0, "index": 3, "seed": 1, "sed": 2})")),
                    Contains("loader.sed: unknown key (did you mean seed?)"));
}

TEST_CASE("loader: errors in the prefetch thread reach the consumer; bad options are clear", "[data][loader][errors]") {
  const Shards shards;
  for (int64_t prefetch : {0, 2}) {
    // Shard 0's tokens reach 999: with a vocabulary of 500 the batch holding token 500 fails.
    DataLoader loader(shards, DataLoaderOptions(4, T).vocab_size(500).prefetch(prefetch));
    for (int i = 0; i < 15; ++i) loader.next();  // batch 14's last window is tokens 472..480
    CHECK_THROWS_WITH(loader.next(), Contains("token 500 at index 500 of shard " + shards[0]) &&
                                         Contains("outside the vocabulary [0, 500)"));
    CHECK_THROWS_WITH(loader.next(), Contains("token 500"));
    CHECK(loader.position() == LoaderPosition{0, 15, 0});
  }
  CHECK_THROWS_WITH(DataLoader(shards, DataLoaderOptions(100, T).rank(0, 2)),
                    Contains("186 windows") && Contains("world_size x batch_size = 2 x 100 = 200"));
  CHECK_THROWS_WITH(DataLoader(shards, DataLoaderOptions(4, T).rank(2, 2)), Contains("rank 2 is not in [0, world_size 2)"));
  CHECK_THROWS_WITH(DataLoader({}, DataLoaderOptions(4, T)), Contains("no token shards"));
  CHECK_THROWS_WITH(DataLoader({shards[0] + ".missing"}, DataLoaderOptions(4, T)), Contains("cannot open"));
  // A loader whose prefetch thread waits on a full queue shuts down cleanly.
  DataLoader idle(shards, DataLoaderOptions(4, T).prefetch(2));
  idle.next();
}

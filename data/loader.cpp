// DataLoader: windows, epoch orders, batches and the prefetch thread (see loader.h).
#include "data/loader.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "autograd/json_reader.h"
#include "kernels/error.h"

namespace kiln::data {

namespace {

// SplitMix64 (Steele, Lea and Flood): a small generator with a fully specified output, so that
// window orders are the same with every compiler and standard library.
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, bound): draws below 2^64 mod bound are rejected, so there is no modulo bias.
uint64_t uniform_below(uint64_t& state, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;
  while (true) {
    uint64_t draw = splitmix64(state);
    if (draw >= threshold) return draw % bound;
  }
}

// The window order of `epoch`: 0..n-1, or a Fisher-Yates shuffle of it drawn from (seed, epoch).
void fill_order(std::vector<int64_t>& order, int64_t n, bool shuffle, uint64_t seed, int64_t epoch) {
  order.resize(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), int64_t{0});
  if (!shuffle) return;
  uint64_t state = seed;
  state = splitmix64(state) ^ static_cast<uint64_t>(epoch);
  for (int64_t i = n - 1; i > 0; --i) {
    auto j = static_cast<int64_t>(uniform_below(state, static_cast<uint64_t>(i + 1)));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
}

}  // namespace

nlohmann::json LoaderPosition::to_json() const { return {{"epoch", epoch}, {"index", index}, {"seed", seed}}; }

LoaderPosition LoaderPosition::from_json(const nlohmann::json& json, const std::string& path) {
  JsonReader reader(json, path);
  LoaderPosition position;
  reader.require("epoch", position.epoch);
  reader.require("index", position.index);
  reader.require("seed", position.seed);
  reader.finish();
  KILN_CHECK(position.epoch >= 0, reader.where("epoch"), ": must be >= 0, got ", position.epoch);
  KILN_CHECK(position.index >= 0, reader.where("index"), ": must be >= 0, got ", position.index);
  return position;
}

DataLoader::DataLoader(const std::vector<std::string>& shard_paths, const DataLoaderOptions& options) : options_(options) {
  const int64_t B = options.batch_size(), T = options.seq_len();
  KILN_CHECK(B >= 1 && T >= 1, "DataLoader: batch_size and seq_len must be >= 1, got ", B, " and ", T);
  KILN_CHECK(options.world_size() >= 1 && options.rank() >= 0 && options.rank() < options.world_size(),
             "DataLoader: rank ", options.rank(), " is not in [0, world_size ", options.world_size(), ")");
  KILN_CHECK(options.prefetch() >= 0, "DataLoader: prefetch must be >= 0, got ", options.prefetch());
  KILN_CHECK(!shard_paths.empty(), "DataLoader: no token shards given");
  window_offsets_.push_back(0);
  int64_t tokens = 0;
  for (const std::string& path : shard_paths) {
    shards_.emplace_back(path);
    const int64_t n = shards_.back().size();
    tokens += n;
    window_offsets_.push_back(window_offsets_.back() + (n > T ? (n - 1) / T : 0));
  }
  const int64_t global_batch = options.world_size() * B;
  batches_per_epoch_ = windows() / global_batch;
  KILN_CHECK(batches_per_epoch_ >= 1, "DataLoader: ", shard_paths.size(), " shard(s) (", shard_paths.front(), ", ...) hold ",
             tokens, " tokens = ", windows(), " windows of seq_len + 1 = ", T + 1, " tokens, fewer than one global batch of ",
             "world_size x batch_size = ", options.world_size(), " x ", B, " = ", global_batch, " windows");
  position_.seed = options.seed();
}

DataLoader::~DataLoader() { stop_producer(); }

LoaderPosition DataLoader::advance(LoaderPosition position) const {
  if (++position.index == batches_per_epoch_) {
    ++position.epoch;
    position.index = 0;
  }
  return position;
}

Batch DataLoader::make_batch(const LoaderPosition& position) {
  if (order_epoch_ != position.epoch || order_seed_ != position.seed) {
    fill_order(order_, windows(), options_.shuffle(), position.seed, position.epoch);
    order_epoch_ = position.epoch;
    order_seed_ = position.seed;
  }
  const int64_t B = options_.batch_size(), T = options_.seq_len();
  Batch batch{empty({B, T}, DType::i64), empty({B, T}, DType::i64)};
  int64_t* inputs = batch.inputs.data<int64_t>();
  int64_t* targets = batch.targets.data<int64_t>();
  std::vector<int64_t> window(static_cast<size_t>(T + 1));
  const int64_t first = (position.index * options_.world_size() + options_.rank()) * B;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t w = order_[static_cast<size_t>(first + b)];
    const auto shard = static_cast<size_t>(std::upper_bound(window_offsets_.begin(), window_offsets_.end(), w) -
                                           window_offsets_.begin() - 1);
    const int64_t start = (w - window_offsets_[shard]) * T;
    shards_[shard].read(start, T + 1, window.data());
    if (options_.vocab_size() > 0) {
      for (int64_t t = 0; t <= T; ++t) {
        KILN_CHECK(window[static_cast<size_t>(t)] < options_.vocab_size(), "DataLoader: token ", window[static_cast<size_t>(t)],
                   " at index ", start + t, " of shard ", shards_[shard].path(), " is outside the vocabulary [0, ",
                   options_.vocab_size(), ")");
      }
    }
    std::memcpy(inputs + b * T, window.data(), static_cast<size_t>(T) * sizeof(int64_t));
    std::memcpy(targets + b * T, window.data() + 1, static_cast<size_t>(T) * sizeof(int64_t));
  }
  return batch;
}

Batch DataLoader::next() {
  if (options_.prefetch() == 0) {
    Batch batch = make_batch(position_);
    position_ = advance(position_);
    return batch;
  }
  if (!producer_.joinable()) start_producer();
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait(lock, [&] { return !queue_.empty(); });
  // An error stays at the front: every later next() rethrows it until restore().
  if (queue_.front().error) std::rethrow_exception(queue_.front().error);
  Batch batch = std::move(queue_.front().batch);
  queue_.pop_front();
  lock.unlock();
  changed_.notify_all();
  position_ = advance(position_);
  return batch;
}

void DataLoader::restore(const LoaderPosition& position) {
  KILN_CHECK(position.epoch >= 0 && position.index >= 0 && position.index <= batches_per_epoch_, "DataLoader::restore: position ",
             position.to_json().dump(), " is outside this loader's epochs of ", batches_per_epoch_, " batches");
  stop_producer();
  position_ = position;
  if (position_.index == batches_per_epoch_) position_ = {position.epoch + 1, 0, position.seed};
}

void DataLoader::start_producer() {
  stopping_ = false;
  producer_ = std::thread(&DataLoader::produce, this, position_);
}

void DataLoader::stop_producer() {
  if (!producer_.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  producer_.join();
  queue_.clear();
}

void DataLoader::produce(LoaderPosition position) {
  const auto capacity = static_cast<size_t>(options_.prefetch());
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] { return stopping_ || queue_.size() < capacity; });
      if (stopping_) return;
    }
    Prepared prepared;
    try {
      prepared.batch = make_batch(position);
    } catch (...) {
      prepared.error = std::current_exception();
    }
    const bool failed = prepared.error != nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_) return;
      queue_.push_back(std::move(prepared));
    }
    changed_.notify_all();
    if (failed) return;
    position = advance(position);
  }
}

}  // namespace kiln::data

// DataLoader: (B, T) batches of next-token training data from memory-mapped token shards.
//
// Each shard is cut into windows of T + 1 tokens starting at multiples of T (window k holds
// tokens [kT, kT + T]; windows never cross shards). Row b of a batch is one window:
//
//   inputs  (B, T) i64 = window[0 .. T)
//   targets (B, T) i64 = window[1 .. T]      (the next token of each input)
//
// An epoch visits the windows in order, or in a permutation drawn from (seed, epoch) when
// shuffling. Step s of an epoch takes the global batch of world_size * B windows at
// [s * world_size * B, (s + 1) * world_size * B) of that order, and rank r its r-th block of B,
// so ranks never share a window in a step and together cover each window at most once per epoch
// (the last windows that do not fill a global batch are skipped). Every rank computes the same
// order from the seed; nothing is communicated.
//
// The position (epoch, index, seed) of the next batch can be saved as JSON and restored, after
// which the same batches follow. With prefetch > 0 a background thread prepares up to that many
// batches ahead in a bounded queue; its errors are rethrown by next(). The batches are the same
// with or without prefetch.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "autograd/tensor.h"
#include "data/token_shard.h"

namespace kiln::data {

struct Batch {
  Tensor inputs;   // (B, T) i64
  Tensor targets;  // (B, T) i64
};

// Where a loader is: the next batch is number `index` of epoch `epoch` (both from 0), with the
// window order drawn from `seed`.
struct LoaderPosition {
  int64_t epoch = 0;
  int64_t index = 0;
  uint64_t seed = 0;
  bool operator==(const LoaderPosition&) const = default;

  nlohmann::json to_json() const;
  // Strict: unknown keys and wrong types are errors naming the JSON path.
  static LoaderPosition from_json(const nlohmann::json& json, const std::string& path = "loader");
};

class DataLoaderOptions {
 public:
  DataLoaderOptions(int64_t batch_size, int64_t seq_len) : batch_size_(batch_size), seq_len_(seq_len) {}
  DataLoaderOptions& shuffle(bool value) { shuffle_ = value; return *this; }
  DataLoaderOptions& seed(uint64_t value) { seed_ = value; return *this; }
  // This process's data-parallel rank among world_size.
  DataLoaderOptions& rank(int64_t rank, int64_t world_size) { rank_ = rank; world_size_ = world_size; return *this; }
  // Batches prepared ahead by a background thread (0: none, batches are made inside next()).
  DataLoaderOptions& prefetch(int64_t value) { prefetch_ = value; return *this; }
  // When > 0, a token >= vocab_size is an error naming its shard (a tokenizer/model mismatch).
  DataLoaderOptions& vocab_size(int64_t value) { vocab_size_ = value; return *this; }

  int64_t batch_size() const { return batch_size_; }
  int64_t seq_len() const { return seq_len_; }
  bool shuffle() const { return shuffle_; }
  uint64_t seed() const { return seed_; }
  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  int64_t prefetch() const { return prefetch_; }
  int64_t vocab_size() const { return vocab_size_; }

 private:
  int64_t batch_size_, seq_len_;
  bool shuffle_ = false;
  uint64_t seed_ = 0;
  int64_t rank_ = 0, world_size_ = 1;
  int64_t prefetch_ = 2;
  int64_t vocab_size_ = 0;
};

class DataLoader {
 public:
  DataLoader(const std::vector<std::string>& shard_paths, const DataLoaderOptions& options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The batch at position(); then advances (to the next epoch after the last batch of one).
  Batch next();
  LoaderPosition position() const { return position_; }
  // Continues from `position` (e.g. one saved with a checkpoint); its seed replaces the options'.
  void restore(const LoaderPosition& position);

  int64_t batches_per_epoch() const { return batches_per_epoch_; }
  int64_t windows() const { return window_offsets_.back(); }

 private:
  // A queued batch, or the error that stopped the producer.
  struct Prepared {
    Batch batch;
    std::exception_ptr error;
  };
  Batch make_batch(const LoaderPosition& position);
  LoaderPosition advance(LoaderPosition position) const;
  void start_producer();
  void stop_producer();
  void produce(LoaderPosition position);

  DataLoaderOptions options_;
  std::vector<TokenShard> shards_;
  std::vector<int64_t> window_offsets_;  // shard i holds windows [offsets[i], offsets[i + 1])
  int64_t batches_per_epoch_ = 0;
  LoaderPosition position_;              // of the next batch next() returns

  // The window order of one epoch, cached; only the thread that makes batches touches it.
  std::vector<int64_t> order_;
  int64_t order_epoch_ = -1;
  uint64_t order_seed_ = 0;

  std::thread producer_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Prepared> queue_;
  bool stopping_ = false;
};

}  // namespace kiln::data

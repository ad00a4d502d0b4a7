// DDP against the single-process run (equivalence.h), plus its bucket layout, byte volume and
// errors. Run alone (world 1) and under mpirun at 2 and 4 ranks.
#include <catch2/catch.hpp>

#include <algorithm>
#include <functional>
#include <memory>

#include "equivalence.h"
#include "parallel/ddp.h"
#include "parallel_test.h"

using namespace kiln;
using namespace kiln::parallel;
using namespace kiln::parallel::testing;

namespace {

// DDP around the model and the plain optimizer: no_sync for all micro-batches but the last.
class DDPTraining : public ParallelTraining {
 public:
  DDPTraining(nn::Transformer& model, const OptimizerKind& kind, int64_t bucket_bytes)
      : ddp_(model, world().communicator, DDPOptions().bucket_bytes(bucket_bytes)),
        optimizer_(kind.make(kind.family == "llama" ? optim::weight_decay_groups(model.named_parameters())
                                                    : std::vector<optim::ParamGroup>{optim::ParamGroup(model.named_parameters())})) {}
  void backward(const std::function<void()>& run_backward, bool last) override {
    if (last) {
      run_backward();
    } else {
      auto guard = ddp_.no_sync();
      run_backward();
    }
  }
  void step() override {
    ddp_.synchronize();
    optimizer_->step();
    optimizer_->zero_grad();
  }

 private:
  DistributedDataParallel ddp_;
  std::unique_ptr<optim::Optimizer> optimizer_;
};

MakeParallel ddp_with_buckets(int64_t bucket_bytes) {
  return [bucket_bytes](nn::Transformer& model, const OptimizerKind& kind) {
    return std::make_unique<DDPTraining>(model, kind, bucket_bytes);
  };
}

}  // namespace

TEST_CASE("DDP matches the single-process run with SGD and momentum", "[ddp]") {
  check_equivalence(sgd_momentum(), 1, ddp_with_buckets(25 * 1024 * 1024));
}

TEST_CASE("DDP matches the single-process run with AdamW in small buckets", "[ddp]") {
  // 512-byte buckets: many buckets, several all-reduces in flight during backward.
  check_equivalence(adamw(), 1, ddp_with_buckets(512));
}

TEST_CASE("DDP with gradient accumulation under no_sync matches the single-process run", "[ddp]") {
  const int micro_batches = kGlobalBatch / world_group().size() >= 2 ? 2 : 1;
  check_equivalence(adamw(), micro_batches, ddp_with_buckets(1024));
  check_equivalence(sgd_momentum(), micro_batches, ddp_with_buckets(1024));
}

TEST_CASE("DDP buckets follow reverse registration order within the size limit", "[ddp]") {
  auto model = make_model("gpt2");
  const int64_t bucket_bytes = 700;
  DistributedDataParallel ddp(*model, world().communicator, DDPOptions().bucket_bytes(bucket_bytes));
  NamedParameters parameters = model->named_parameters();
  std::vector<std::string> flattened;
  for (const auto& bucket : ddp.bucket_parameter_names()) {
    int64_t bytes = 0;
    for (const std::string& name : bucket) {
      flattened.push_back(name);
      auto it = std::find_if(parameters.begin(), parameters.end(), [&](const NamedParameter& p) { return p.name == name; });
      REQUIRE(it != parameters.end());
      bytes += it->tensor.numel() * 4;
    }
    // A bucket exceeds the limit only when it holds a single parameter larger than the limit.
    CHECK((bytes <= bucket_bytes || bucket.size() == 1));
  }
  REQUIRE(flattened.size() == parameters.size());
  for (size_t i = 0; i < parameters.size(); ++i) CHECK(flattened[i] == parameters[parameters.size() - 1 - i].name);
}

TEST_CASE("DDP sends each gradient once per step: the ring all-reduce volume", "[ddp]") {
  auto model = make_model("gpt2");
  DistributedDataParallel ddp(*model, world().communicator, DDPOptions().bucket_bytes(1024));
  Communicator& group = world_group();
  int64_t expected = 0;
  for (const auto& bucket : ddp.bucket_parameter_names()) {
    int64_t elements = 0;
    for (const NamedParameter& p : model->named_parameters()) {
      if (std::find(bucket.begin(), bucket.end(), p.name) != bucket.end()) elements += p.tensor.numel();
    }
    expected += ring_bytes::all_reduce(elements * 4, group.size());
  }
  group.reset_stats();
  model->loss(batch_rows(0, group.rank(), 1, false), batch_rows(0, group.rank(), 1, true)).backward();
  ddp.synchronize();
  CommunicationStats stats = group.stats();
  CHECK(stats.bytes(Collective::all_reduce) == expected);
  if (group.size() > 1) {
    CHECK(stats.count(Collective::all_reduce) == static_cast<int64_t>(ddp.bucket_parameter_names().size()));
  }
}

// A bf16 model's gradients averaged in f32 (DDPOptions::reduce_dtype): twice the bytes of the
// bf16 reduction, and the result is the f64 mean of the ranks' gradients rounded once to bf16.
// Sums of two bf16 values are exact in f32, so at 2 ranks that holds bit for bit; at 4 the f32
// sums may round, within one bf16 unit.
TEST_CASE("DDP reduces bf16 gradients in f32 when asked", "[ddp]") {
  Communicator& group = world_group();
  for (bool in_f32 : {false, true}) {
    INFO((in_f32 ? "reduce in f32" : "reduce in bf16"));
    auto model = make_model("gpt2");
    model->to(DType::bf16);
    DDPOptions options = DDPOptions().bucket_bytes(1024);
    if (in_f32) options.reduce_dtype(DType::f32);
    DistributedDataParallel ddp(*model, world().communicator, options);
    int64_t expected_bytes = 0;
    for (const auto& bucket : ddp.bucket_parameter_names()) {
      int64_t bucket_elements = 0;
      for (const NamedParameter& p : model->named_parameters()) {
        if (std::find(bucket.begin(), bucket.end(), p.name) != bucket.end()) bucket_elements += p.tensor.numel();
      }
      expected_bytes += ring_bytes::all_reduce(bucket_elements * (in_f32 ? 4 : 2), group.size());
    }
    group.reset_stats();
    model->loss(batch_rows(0, group.rank(), 1, false), batch_rows(0, group.rank(), 1, true)).backward();
    // Before synchronize each .grad still holds this rank's own gradient (DDP's buckets, started
    // during backward, hold copies).
    std::vector<Tensor> means;
    for (const NamedParameter& p : model->named_parameters()) {
      Tensor mean = p.tensor.grad().to(DType::f64);
      group.all_reduce(mean, ReduceOp::sum);  // sums of bf16 values in f64: exact
      means.push_back(mean * (1.0 / group.size()));
      expected_bytes += ring_bytes::all_reduce(p.tensor.numel() * 8, group.size());
    }
    ddp.synchronize();
    CHECK(group.stats().bytes(Collective::all_reduce) == expected_bytes);
    if (!in_f32) continue;
    NamedParameters parameters = model->named_parameters();
    for (size_t i = 0; i < parameters.size(); ++i) {
      INFO(parameters[i].name);
      Tensor grad = parameters[i].tensor.grad();
      REQUIRE(grad.dtype() == DType::bf16);
      Tensor expected = means[i].to(DType::bf16).to(DType::f64);
      const double difference = amax(abs(grad.to(DType::f64) - expected)).item<double>();
      const double scale = amax(abs(expected)).item<double>();
      if (group.size() <= 2) CHECK(difference == 0.0);
      CHECK(difference <= scale / 256.0);
    }
  }
}

TEST_CASE("DDP names parameters that received no gradient, unless told to expect them", "[ddp]") {
  auto model = make_model("gpt2");
  Tensor tokens = batch_rows(0, 0, 1, false);
  // Only the embeddings and the first block take part: every later parameter is unused.
  auto unused_backward = [&] {
    Tensor x = model->token_embedding->forward(tokens) + model->position_embedding->forward(arange(static_cast<double>(kSeq), TensorOptions(DType::i64)));
    model->blocks->at<nn::TransformerBlock>(0)->forward(x).sum().backward();
  };
  {
    DistributedDataParallel ddp(*model, world().communicator);
    unused_backward();
    CHECK_THROWS_WITH(ddp.synchronize(), Catch::Contains("received no gradient") && Catch::Contains("blocks.1.") &&
                                             Catch::Contains("find_unused_parameters(true)"));
  }
  model->zero_grad();
  DistributedDataParallel ddp(*model, world().communicator, DDPOptions().find_unused_parameters(true));
  unused_backward();
  ddp.synchronize();
  for (const NamedParameter& p : model->named_parameters()) {
    INFO(p.name);
    REQUIRE(p.tensor.grad().defined());
    if (p.name.rfind("blocks.1.", 0) == 0) CHECK(amax(abs(p.tensor.grad())).item<double>() == 0.0);
  }
}

TEST_CASE("DDP refuses a second backward before synchronize outside no_sync", "[ddp]") {
  auto model = make_model("gpt2");
  DistributedDataParallel ddp(*model, world().communicator);
  Tensor tokens = batch_rows(0, 0, 1, false), targets = batch_rows(0, 0, 1, true);
  model->loss(tokens, targets).backward();
  CHECK_THROWS_WITH(model->loss(tokens, targets).backward(), Catch::Contains("received a second gradient before synchronize()"));
}

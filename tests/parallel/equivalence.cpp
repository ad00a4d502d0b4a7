// The single-process reference run shared by the DDP and ZeRO tests (see equivalence.h).
#include "equivalence.h"

#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "autograd/generator.h"
#include "parallel_test.h"

namespace kiln::parallel::testing {

std::unique_ptr<nn::Transformer> make_model(const std::string& family) {
  Generator generator(1234);
  nn::TransformerConfig config = family == "gpt2" ? nn::TransformerConfig::gpt2(kVocab, kSeq, 2, 2, 6)
                                                  : nn::TransformerConfig::llama(kVocab, kSeq, 2, 2, 1, 8);
  return std::make_unique<nn::Transformer>(config, &generator);
}

Tensor batch_rows(int64_t step, int64_t first, int64_t rows, bool targets) {
  std::vector<int64_t> values;
  for (int64_t b = first; b < first + rows; ++b) {
    for (int64_t t = 0; t < kSeq; ++t) values.push_back((b * 7 + (t + (targets ? 1 : 0)) * 3 + step * 5 + b * t) % kVocab);
  }
  return from_vector(values, {rows, kSeq}, TensorOptions(DType::i64));
}

double relative_difference(const Tensor& a, const Tensor& b) {
  std::vector<double> x = a.to_vector<double>(), y = b.to_vector<double>();
  double scale = 0, diff = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    scale = std::max(scale, std::abs(y[i]));
    diff = std::max(diff, std::abs(x[i] - y[i]));
  }
  return diff / std::max(scale, 1e-30);
}

OptimizerKind sgd_momentum() {
  return {"SGD with momentum",
          [](std::vector<optim::ParamGroup> groups) -> std::unique_ptr<optim::Optimizer> {
            return std::make_unique<optim::SGD>(std::move(groups), optim::SGDOptions(0.1).momentum(0.9));
          },
          "gpt2"};
}

OptimizerKind adamw() {
  return {"AdamW",
          [](std::vector<optim::ParamGroup> groups) -> std::unique_ptr<optim::Optimizer> {
            return std::make_unique<optim::AdamW>(std::move(groups), optim::AdamWOptions(1e-2).weight_decay(0.1));
          },
          "llama"};
}

namespace {

std::vector<optim::ParamGroup> groups_for(const OptimizerKind& kind, const nn::Module& model) {
  if (kind.family == "llama") return optim::weight_decay_groups(model.named_parameters());
  return {optim::ParamGroup(model.named_parameters())};
}

}  // namespace

void check_equivalence(const OptimizerKind& kind, int micro_batches, const MakeParallel& make_parallel) {
  Communicator& group = world_group();
  const int n = group.size();
  const int64_t local_batch = kGlobalBatch / n;
  REQUIRE(local_batch % micro_batches == 0);
  const int64_t micro_rows = local_batch / micro_batches;
  INFO(kind.name << ", " << micro_batches << " micro-batch(es), " << n << " rank(s)");

  auto reference = make_model(kind.family);
  auto reference_optimizer = kind.make(groups_for(kind, *reference));
  auto model = make_model(kind.family);
  auto parallel = make_parallel(*model, kind);

  for (int64_t step = 0; step < 10; ++step) {
    // The reference: the global batch in the same micro-batch split, losses scaled the same way.
    double reference_loss = 0;
    for (int m = 0; m < micro_batches * n; ++m) {
      Tensor loss = reference->loss(batch_rows(step, m * micro_rows, micro_rows, false),
                                    batch_rows(step, m * micro_rows, micro_rows, true)) /
                    static_cast<double>(micro_batches * n);
      loss.backward();
      reference_loss += loss.item<double>();
    }
    reference_optimizer->step();
    reference_optimizer->zero_grad();

    double local_loss = 0;
    for (int m = 0; m < micro_batches; ++m) {
      int64_t first = group.rank() * local_batch + m * micro_rows;
      parallel->backward(
          [&] {
            Tensor loss = model->loss(batch_rows(step, first, micro_rows, false), batch_rows(step, first, micro_rows, true)) /
                          static_cast<double>(micro_batches);
            loss.backward();
            local_loss += loss.item<double>();
          },
          m + 1 == micro_batches);
    }
    parallel->step();

    Tensor mean_loss = from_vector(std::vector<double>{local_loss}, {1}, TensorOptions(DType::f64));
    group.all_reduce(mean_loss, ReduceOp::avg);
    INFO("step " << step);
    CHECK(mean_loss.item<double>() == Approx(reference_loss).epsilon(kTolerance));
  }

  parallel->gather_parameters();
  NamedParameters expected = reference->named_parameters();
  NamedParameters actual = model->named_parameters();
  REQUIRE(expected.size() == actual.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    INFO(actual[i].name);
    CHECK(relative_difference(actual[i].tensor, expected[i].tensor) <= kTolerance);
    // Identical on every rank: rank 0's copy, broadcast, equals each rank's bit for bit.
    Tensor from_rank0 = actual[i].tensor.clone();
    group.broadcast(from_rank0, 0);
    CHECK(from_rank0.to_vector<float>() == actual[i].tensor.to_vector<float>());
  }
}

}  // namespace kiln::parallel::testing

// How much of DDP's gradient all-reduce hides under backward. Run under mpirun:
//
//   mpirun -np 2 ./build/benchmarks/bench_ddp_overlap
//
// Per step, on the same model and batch: backward alone (no communication), the all-reduce of
// every gradient alone (one bucket per DDP bucket, issued after backward), and backward with
// DDP's hooks (buckets all-reduced while backward runs) followed by synchronize(). The hidden
// share is (backward + all-reduce - DDP) / all-reduce: 1 when communication is fully overlapped,
// 0 when DDP is no better than reducing after backward.
#include <algorithm>
#include <cstdio>
#include <memory>

#include "autograd/generator.h"
#include "autograd/ops.h"
#include "bench_util.h"
#include "nn/transformer.h"
#include "parallel/ddp.h"
#include "parallel/init.h"

using namespace kiln;

int main() {
  parallel::World world = parallel::init();
  parallel::Communicator& group = *world.communicator;
  Generator generator(7);
  nn::TransformerConfig config = nn::TransformerConfig::gpt2(512, 64, 4, 4, 256);
  const int64_t batch = 4;
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < batch * config.block_size; ++i) ids.push_back((i * 31 + world.rank * 7) % config.vocab_size);
  Tensor tokens = from_vector(ids, {batch, config.block_size}, TensorOptions(DType::i64));
  Tensor targets = from_vector(ids, {batch, config.block_size}, TensorOptions(DType::i64));
  const int64_t bucket_bytes = 1 << 20;

  nn::Transformer plain(config, &generator);
  double backward = bench::median_seconds([&] {
    plain.zero_grad();
    plain.loss(tokens, targets).backward();
  }, 7, 2);
  // The same all-reduces DDP issues, but only after backward has finished.
  nn::Transformer reference(config, &generator);
  parallel::DistributedDataParallel layout(reference, world.communicator, parallel::DDPOptions().bucket_bytes(bucket_bytes));
  std::vector<Tensor> buckets;
  for (const auto& names : layout.bucket_parameter_names()) {
    int64_t elements = 0;
    for (const NamedParameter& p : reference.named_parameters()) {
      if (std::find(names.begin(), names.end(), p.name) != names.end()) elements += p.tensor.numel();
    }
    buckets.push_back(zeros({elements}));
  }
  double all_reduce = bench::median_seconds([&] {
    std::vector<parallel::WorkHandle> handles;
    for (Tensor& bucket : buckets) handles.push_back(group.all_reduce_async(bucket, parallel::ReduceOp::avg));
    for (auto& handle : handles) handle.wait();
  }, 7, 2);

  nn::Transformer model(config, &generator);
  parallel::DistributedDataParallel ddp(model, world.communicator, parallel::DDPOptions().bucket_bytes(bucket_bytes));
  double overlapped = bench::median_seconds([&] {
    model.zero_grad();
    model.loss(tokens, targets).backward();
    ddp.synchronize();
  }, 7, 2);

  if (world.rank == 0) {
    double hidden = all_reduce > 0 ? (backward + all_reduce - overlapped) / all_reduce : 0.0;
    std::printf("DDP overlap, %d ranks x %d threads, GPT d%lld L%lld (%zu buckets of <= 1 MiB)\n", world.size,
                world.threads, static_cast<long long>(config.d_model), static_cast<long long>(config.n_layers),
                buckets.size());
    bench::row({"backward alone (ms)", "all-reduce alone (ms)", "backward + DDP (ms)", "all-reduce hidden"});
    bench::row({"---", "---", "---", "---"});
    bench::row({bench::format("%.1f", backward * 1e3), bench::format("%.1f", all_reduce * 1e3),
                bench::format("%.1f", overlapped * 1e3), bench::format("%.0f%%", 100 * hidden)});
  }
  world = parallel::World();
  parallel::finalize();
  return 0;
}

// Ring attention (context parallelism) against CP = 1 fused attention at the same sequence length.
// Run alone (cp = 1) and under mpirun (cp = ranks):
//
//   ./build/benchmarks/bench_context_parallel
//   mpirun -np 2 --oversubscribe --bind-to none [--allow-run-as-root] ./build/benchmarks/bench_context_parallel
//
// B 1, H 8, D 64, causal, f32, forward + backward, T in {1024, 2048, 4096}. For each T:
// - cp 1 baseline: scaled_dot_product_attention on the whole sequence, run by rank 0 alone with
//   its own threads (the other ranks wait), so it uses what one rank of the ring has: under
//   `mpirun -np 2` on 2 cores that is 1 thread, against 2 ranks of 1 thread for the ring;
// - ring: ring_attention on every rank's two chunks (context_parallel_shard), all ranks together.
// Time is the median wall time of several calls (for the ring, the slowest rank's median), and
// the median CPU time of the process (all its threads, MPI's included) per call: on a machine
// shared with other work the wall time is noisy, while the CPU time shows the work each rank
// does (ideally 1 / cp of the baseline's, plus the merges and messages). Peak
// memory is the allocator's peak during one call minus its current bytes before it: outputs,
// gradients, log-sum-exp, kernel scratch and, for the ring, the key/value and gradient buffers in
// flight (the inputs exist before and are not counted); for the ring, the largest over ranks.
// "sent" is what one rank sends per forward + backward (point to point, counted by the group).
#include <omp.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/generator.h"
#include "autograd/ops.h"
#include "bench_util.h"
#include "kernels/allocator.h"
#include "parallel/context_parallel.h"
#include "parallel/init.h"
#include "parallel/ring_attention.h"

using namespace kiln;

namespace {

using AttentionCall = std::function<Tensor(const Tensor&, const Tensor&, const Tensor&)>;

// One forward + backward from fresh leaves over the same data, so gradients never accumulate.
void forward_backward(const AttentionCall& attention, const std::vector<Tensor>& inputs, const Tensor& grad_out) {
  std::vector<Tensor> leaves;
  for (const Tensor& input : inputs) leaves.push_back(input.detach().set_requires_grad(true));
  attention(leaves[0], leaves[1], leaves[2]).backward(grad_out);
}

struct Measurement {
  double seconds = 0;      // median wall time per call
  double cpu_seconds = 0;  // median CPU time of this process (every thread) per call
  double peak_mib = 0;
};

double process_cpu_seconds() {
  timespec now{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &now);
  return static_cast<double>(now.tv_sec) + 1e-9 * static_cast<double>(now.tv_nsec);
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

Measurement measure(const AttentionCall& attention, const std::vector<Tensor>& inputs, const Tensor& grad_out,
                    int repeats) {
  Measurement result;
  reset_peak_memory();
  const int64_t before = memory_stats().current_bytes;
  forward_backward(attention, inputs, grad_out);  // also the warm-up
  result.peak_mib = static_cast<double>(memory_stats().peak_bytes - before) / (1 << 20);
  std::vector<double> wall, cpu;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const double cpu_start = process_cpu_seconds();
    forward_backward(attention, inputs, grad_out);
    cpu.push_back(process_cpu_seconds() - cpu_start);
    wall.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  result.seconds = median(wall);
  result.cpu_seconds = median(cpu);
  return result;
}

// The largest of every rank's value.
double group_max(double value, parallel::Communicator& group) {
  Tensor cell = full({1}, value, TensorOptions(DType::f64));
  group.all_reduce(cell, parallel::ReduceOp::max);
  return cell.item();
}

// The other ranks wait here while rank 0 times the baseline. Not a barrier: MPI spins a core
// in a blocking collective, which would slow the baseline on a small machine; a posted receive
// is polled with backoff.
void release_from_rank0(parallel::Communicator& group) {
  Tensor token = zeros({1});
  if (group.rank() == 0) {
    for (int peer = 1; peer < group.size(); ++peer) group.send(token, peer);
  } else {
    group.recv(token, 0);
  }
}

}  // namespace

int main() {
  parallel::World world = parallel::init();
  std::shared_ptr<parallel::Communicator> cp = world.communicator;
  const int rank = cp->rank(), size = cp->size();
  const int64_t batch = 1, heads = 8, dim = 64;
  if (rank == 0) {
    std::printf("B %ld, H %ld, D %ld, causal, f32, forward + backward; cp %d, %d thread(s) per rank\n\n",
                static_cast<long>(batch), static_cast<long>(heads), static_cast<long>(dim), size,
                omp_get_max_threads());
    std::puts("| T | path | wall (ms) | CPU per rank (ms) | peak attention memory per rank (MiB) | sent per rank (MiB) | "
              "wall speedup vs cp 1 | CPU per rank vs cp 1 | memory vs cp 1 |");
    std::puts("|---|---|---|---|---|---|---|---|---|");
  }
  for (int64_t length : {1024, 2048, 4096}) {
    // Every rank makes the same full tensors, then keeps its chunks.
    Generator generator(42);
    Shape shape{batch, heads, length, dim};
    std::vector<Tensor> inputs = {randn(shape, {}, &generator), randn(shape, {}, &generator),
                                  randn(shape, {}, &generator)};
    Tensor grad_out = randn(shape, {}, &generator);
    const int repeats = length >= 4096 ? 3 : 5;

    Measurement baseline;
    if (rank == 0) {
      AttentionCall fused = [](const Tensor& q, const Tensor& k, const Tensor& v) {
        return scaled_dot_product_attention(q, k, v, true);
      };
      baseline = measure(fused, inputs, grad_out, repeats);
    }
    release_from_rank0(*cp);

    std::vector<Tensor> local;
    for (const Tensor& x : inputs) local.push_back(parallel::context_parallel_shard(x, 2, *cp).contiguous());
    Tensor local_grad_out = parallel::context_parallel_shard(grad_out, 2, *cp).contiguous();
    inputs.clear();
    grad_out = Tensor();
    AttentionCall ring = [&cp](const Tensor& q, const Tensor& k, const Tensor& v) {
      return parallel::ring_attention(q, k, v, cp);
    };
    cp->reset_stats();
    forward_backward(ring, local, local_grad_out);
    const double sent_mib = static_cast<double>(cp->stats().bytes(parallel::Collective::send)) / (1 << 20);
    Measurement measured = measure(ring, local, local_grad_out, repeats);
    measured.seconds = group_max(measured.seconds, *cp);
    measured.cpu_seconds = group_max(measured.cpu_seconds, *cp);
    measured.peak_mib = group_max(measured.peak_mib, *cp);

    if (rank == 0) {
      bench::row({std::to_string(length), "cp 1: scaled_dot_product_attention",
                  bench::format("%.1f", baseline.seconds * 1e3), bench::format("%.1f", baseline.cpu_seconds * 1e3),
                  bench::format("%.1f", baseline.peak_mib), "0", "", "", ""});
      bench::row({std::to_string(length), "cp " + std::to_string(size) + ": ring_attention",
                  bench::format("%.1f", measured.seconds * 1e3), bench::format("%.1f", measured.cpu_seconds * 1e3),
                  bench::format("%.1f", measured.peak_mib), bench::format("%.1f", sent_mib),
                  bench::format("%.2fx", baseline.seconds / measured.seconds),
                  bench::format("%.2fx", measured.cpu_seconds / baseline.cpu_seconds),
                  bench::format("%.2fx", measured.peak_mib / baseline.peak_mib)});
      std::fflush(stdout);
    }
  }
  parallel::finalize();
  return 0;
}

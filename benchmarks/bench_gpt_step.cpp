// One training step (forward, backward, AdamW) of a GPT (d=384, L=6, H=6, T=256, B=8,
// vocab 65) in kiln; benchmarks/gpt_step_torch.py runs the same model in PyTorch and
// benchmarks/run_gpt_step.sh runs both. Prints tokens/s (median step time over 10 steps).
#include <omp.h>

#include <cstdio>
#include <string>

#include "bench_util.h"
#include "kiln.h"

using namespace kiln;

int main(int argc, char** argv) {
  bool checkpointing = argc > 1 && std::string(argv[1]) == "--checkpointing";
  const int64_t batch = 8, steps_per_sequence = 256, vocab = 65;
  Generator generator(0);
  nn::TransformerConfig config = nn::TransformerConfig::gpt2(vocab, steps_per_sequence, 6, 6, 384);
  config.activation_checkpointing = checkpointing;
  nn::Transformer model(config, &generator);
  optim::AdamW optimizer(optim::weight_decay_groups(model.named_parameters()), optim::AdamWOptions(3e-4).weight_decay(0.1));
  auto draw = [&] {
    return clamp(rand({batch, steps_per_sequence}, DType::f64, &generator) * double(vocab), 0.0, vocab - 1.0).to(DType::i64);
  };
  Tensor tokens = draw(), targets = draw();
  reset_peak_memory();
  int64_t before = memory_stats().current_bytes;
  double seconds = bench::median_seconds([&] {
    optimizer.zero_grad();
    Tensor loss = model.loss(tokens, targets);
    loss.backward();
    optimizer.step();
  }, 10, 2);
  double peak_mib = static_cast<double>(memory_stats().peak_bytes - before) / (1 << 20);
  std::printf("kiln%s: %.0f tokens/s (%.1f ms/step), peak memory above parameters %.0f MiB, %d threads\n",
              checkpointing ? " (activation checkpointing)" : "", double(batch * steps_per_sequence) / seconds,
              seconds * 1e3, peak_mib, omp_get_max_threads());
  return 0;
}

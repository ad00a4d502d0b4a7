// GPT-2 124M training steps on the GPU: 12 layers, d 768, 12 heads, T 1024, vocabulary 50304
// (50257 padded to a multiple of 128), tied embeddings, GPT-2 initialisation; bf16 compute
// behind fp32 masters (optim::MixedPrecisionOptimizer) with AdamW and gradient clipping at 1.
// The tokens are synthetic: one batch of uniformly random tokens, reused every step (the speed
// of a step does not depend on the token values). benchmarks/gpt_torch_gpu.py trains the same
// model in PyTorch and benchmarks/run_gpt_gpu.sh runs both.
//
// Reports tokens/s and ms/step (median over the timed steps, each ending in a device
// synchronisation), the peak bytes kiln's CUDA allocator handed to tensors during the timed steps
// (parameters, masters, optimizer state, activations, gradients), and MFU: model FLOPs per token
// 6 N + 12 L d T (N = parameters, the tied embedding counted once; the second term is attention's
// score and value matmuls, not halved for the causal mask, as in PaLM's appendix and nanoGPT)
// times tokens/s over the GPU's peak, by default 989 TFLOP/s (H100 SXM, bf16 dense).
//   bench_cuda_gpt [--batch 8] [--warmup 3] [--steps 10] [--peak-tflops 989]
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>

#include "bench_util.h"
#include "kernels/backend.h"
#include "kernels/cuda/stream.h"
#include "kiln.h"

using namespace kiln;

namespace {

// --name value pairs over `defaults`; an unknown name or a missing value is an error.
std::map<std::string, double> parse_arguments(int argc, char** argv, std::map<std::string, double> defaults) {
  for (int i = 1; i < argc; i += 2) {
    std::string name = argv[i];
    KILN_CHECK(name.rfind("--", 0) == 0 && defaults.count(name.substr(2)) && i + 1 < argc,
               "bench_cuda_gpt: unknown argument or missing value: ", name,
               " (expected --batch, --warmup, --steps or --peak-tflops with a number)");
    defaults[name.substr(2)] = std::stod(argv[i + 1]);
  }
  return defaults;
}

}  // namespace

int main(int argc, char** argv) try {
  std::map<std::string, double> args =
      parse_arguments(argc, argv, {{"batch", 8}, {"warmup", 3}, {"steps", 10}, {"peak-tflops", 989}});
  if (!cuda::is_available()) {
    std::printf("bench_cuda_gpt: no GPU: %s\n", kernels::unavailable_reason(DeviceType::CUDA).c_str());
    return 1;
  }
  const int64_t batch = static_cast<int64_t>(args["batch"]), length = 1024, vocab = 50304;
  const Device gpu = Device::cuda(0);

  Generator generator(0);
  nn::TransformerConfig config = nn::TransformerConfig::gpt2(vocab, length, 12, 12, 768);
  nn::Transformer model(config, &generator);
  model.to(gpu);
  optim::OptimizerFactory adamw = [](std::vector<optim::ParamGroup> groups) -> std::unique_ptr<optim::Optimizer> {
    return std::make_unique<optim::AdamW>(std::move(groups),
                                          optim::AdamWOptions(6e-4).betas(0.9, 0.95).weight_decay(0.1));
  };
  optim::MixedPrecisionOptimizer mixed(model.named_parameters(), DType::bf16, adamw);
  auto draw = [&] {
    Tensor u = rand({batch, length}, TensorOptions(DType::f32).device(gpu), &generator) * static_cast<double>(50257);
    return clamp(u, 0.0, 50256.0).to(DType::i64);
  };
  Tensor tokens = draw(), targets = draw();

  double first_loss = 0, last_loss = 0;
  auto step = [&] {
    mixed.zero_grad();
    Tensor loss = model.loss(tokens, targets);
    mixed.scale_loss(loss).backward();
    mixed.clip_grad_norm(1.0);
    mixed.step();
    last_loss = loss.item();  // also waits for the step's work
    if (first_loss == 0) first_loss = last_loss;
    cuda::synchronize_device();
  };
  for (int i = 0; i < static_cast<int>(args["warmup"]); ++i) step();
  reset_peak_memory(gpu);
  double seconds = bench::median_seconds(step, static_cast<int>(args["steps"]), 0);
  double peak_gib = static_cast<double>(memory_stats(gpu).peak_bytes) / (1 << 30);

  const double parameters = static_cast<double>(model.count_parameters());
  const double tokens_per_step = static_cast<double>(batch * length);
  const double flop_per_token = 6 * parameters + 12.0 * 12 * 768 * static_cast<double>(length);
  const double tokens_per_second = tokens_per_step / seconds;
  const double peak_flops = args["peak-tflops"] * 1e12;
  std::printf("kiln GPT-2: %.2fM parameters, B %ld, T %ld, bf16 with fp32 masters, AdamW, %d timed steps after %d; "
              "loss %.3f at the first step, %.3f at the last; MFU against %.0f TFLOP/s\n",
              parameters / 1e6, static_cast<long>(batch), static_cast<long>(length), static_cast<int>(args["steps"]),
              static_cast<int>(args["warmup"]), first_loss, last_loss, args["peak-tflops"]);
  std::puts("| implementation | B x T | tokens/s | ms/step | peak memory (GiB) | MFU |");
  std::puts("|---|---|---|---|---|---|");
  bench::row({"kiln", std::to_string(batch) + " x " + std::to_string(length), bench::format("%.0f", tokens_per_second),
              bench::format("%.1f", seconds * 1e3), bench::format("%.2f", peak_gib),
              bench::format("%.1f%%", 100 * flop_per_token * tokens_per_second / peak_flops)});
  return 0;
} catch (const Error& error) {
  std::fprintf(stderr, "%s\n", error.what());
  return 1;
}

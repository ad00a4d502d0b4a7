// A custom training program against the library (the README's example): a small Llama-style
// model on shards made by kiln-prepare, AdamW with a cosine schedule and clipping, data
// parallel under mpirun (DDP), a checkpoint at the end and a sample.
//
//   ./build/examples/kiln-prepare --out data/cache/shakespeare_char --tokenizer char tinyshakespeare.txt
//   mpirun -np 2 ./build/examples/custom_training data/cache/shakespeare_char 200
#include <cstdio>
#include <string>

#include "kiln.h"

using namespace kiln;

int main(int argc, char** argv) try {
  if (argc < 2) {
    std::fprintf(stderr, "usage: custom_training <kiln-prepare output dir> [steps]\n");
    return 2;
  }
  const std::string data_dir = argv[1];
  const int64_t steps = argc > 2 ? std::stoll(argv[2]) : 200;
  parallel::World world = parallel::init();  // mpirun -np N, or alone

  auto tokenizer = data::load_tokenizer(data_dir + "/tokenizer.json");
  auto config = nn::TransformerConfig::llama(tokenizer->vocab_size(), /*block*/ 64, /*layers*/ 2,
                                             /*heads*/ 4, /*kv heads*/ 2, /*d_model*/ 128);
  Generator generator(1337);  // the same initial weights on every rank
  nn::Transformer model(config, &generator);
  parallel::DistributedDataParallel ddp(model, world.communicator);

  optim::AdamW optimizer(optim::weight_decay_groups(model.named_parameters()),
                         optim::AdamWOptions(2e-3).betas(0.9, 0.99).weight_decay(0.1));
  optim::LrSchedule schedule = optim::cosine_schedule(/*warmup*/ 20, steps, /*min_factor*/ 0.1);
  // A global batch of 16 sequences, each rank reading its own slice.
  data::DataLoader loader({data_dir + "/train.bin"},
                          data::DataLoaderOptions(16 / world.size, config.block_size).shuffle(true).rank(world.rank, world.size));

  for (int64_t step = 0; step < steps; ++step) {
    schedule.apply(optimizer, step);
    data::Batch batch = loader.next();                   // (B, T) inputs and targets
    Tensor loss = model.loss(batch.inputs, batch.targets);
    loss.backward();                                     // DDP all-reduces gradient buckets meanwhile
    ddp.synchronize();                                   // every rank now holds the averaged gradients
    double norm = optim::clip_grad_norm(model.named_parameters(), 1.0);
    optimizer.step();
    optimizer.zero_grad();
    if (world.rank == 0 && (step % 50 == 0 || step + 1 == steps)) {
      std::printf("step %4lld  loss %.4f  grad norm %.3f\n", static_cast<long long>(step), loss.item(), norm);
    }
  }

  if (world.rank == 0) {
    parallel::Checkpoint checkpoint;
    checkpoint.step = steps;
    checkpoint.model = model.state_dict();
    checkpoint.optimizer = optimizer.state_dict();
    checkpoint.state = {{"model", config.to_json()}};
    std::printf("saved %s\n", parallel::save_checkpoint("runs/custom_training", checkpoint, 1).c_str());

    nn::GenerationOptions sampling;
    sampling.max_new_tokens = 200;
    sampling.do_sample = true;
    sampling.temperature = 0.8;
    sampling.top_k = 40;
    std::vector<int64_t> prompt;
    for (data::TokenId id : tokenizer->encode("ROMEO:")) prompt.push_back(id);
    nn::GenerationResult result = nn::generate(model, prompt, sampling);
    std::vector<data::TokenId> ids(result.tokens.begin(), result.tokens.end());
    std::printf("%s\n", tokenizer->decode(ids).c_str());
  }
  world = parallel::World();
  parallel::finalize();
  return 0;
} catch (const std::exception& error) {
  std::fprintf(stderr, "custom_training: %s\n", error.what());
  return 1;
}

// kiln-consolidate: one safetensors file from a checkpoint, ZeRO-sharded or not.
//
//   kiln-consolidate runs/shakespeare_char consolidated.safetensors
//
// The first argument is a run directory (its latest checkpoint) or a checkpoint directory. The
// file holds the model's tensors under their names and the optimizer state, gathered from every
// rank's shard, as "optimizer.<parameter>/<buffer>"; metadata "step" and "optimizer" (JSON)
// carry the rest. Python reads it with safetensors.torch.load_file.
#include <cstdio>
#include <string>

#include "autograd/safetensors.h"
#include "kernels/error.h"
#include "parallel/checkpoint.h"

int main(int argc, char** argv) {
  if (argc != 3 || std::string(argv[1]) == "--help") {
    std::fprintf(argc == 2 ? stdout : stderr, "usage: kiln-consolidate <run or checkpoint directory> <out.safetensors>\n");
    return argc == 2 ? 0 : 2;
  }
  try {
    kiln::parallel::Checkpoint checkpoint = kiln::parallel::load_checkpoint(argv[1]);
    kiln::SafetensorsFile file = kiln::parallel::consolidate_checkpoint(checkpoint);
    kiln::save_safetensors(argv[2], file.tensors, file.metadata);
    std::printf("kiln-consolidate: step %lld, %zu tensors (%zu optimizer shard file(s)) -> %s\n",
                static_cast<long long>(checkpoint.step), file.tensors.size(), checkpoint.shards.size(), argv[2]);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "kiln-consolidate: %s\n", error.what());
    return 1;
  }
  return 0;
}

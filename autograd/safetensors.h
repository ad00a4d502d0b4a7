// Reading and writing the safetensors format (a JSON header followed by raw little-endian
// tensor data), the exchange format for checkpoints and for the PyTorch parity tests.
#pragma once

#include <map>
#include <string>

#include "autograd/tensor.h"

namespace kiln {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Writes CPU copies of `tensors` to `path` (overwriting it). Throws kiln::Error naming the path
// on I/O failure.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});
// Reads every tensor of `path` into CPU memory. A truncated file, a corrupt header, an unknown
// dtype or offsets outside the data raise kiln::Error naming the path and the problem.
SafetensorsFile load_safetensors(const std::string& path);

}  // namespace kiln

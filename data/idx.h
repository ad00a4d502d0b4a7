// Reading IDX files, the format of MNIST and Fashion-MNIST, plain or gzip-compressed (detected
// from the content, not the name).
//
//   bytes 0-1: 0, byte 2: type (0x08 = unsigned byte), byte 3: number of dims
//   then one big-endian uint32 per dim, then the data, row-major
//
// So the big-endian magic is 2051 (0x00000803) for images (N, rows, cols) and 2049
// (0x00000801) for labels (N). Errors (wrong magic, truncated data or stream) name the file.
#pragma once

#include <string>

#include "autograd/tensor.h"

namespace kiln::data {

inline constexpr const char* kFashionMnistDirectory = "/usr/share/datasets/fashion-mnist";

// An IDX image file -> f32 (N, rows * cols), pixel / 255 in [0, 1].
Tensor read_idx_images(const std::string& path);
// An IDX label file -> i64 (N).
Tensor read_idx_labels(const std::string& path);

struct ImageDataset {
  Tensor images;  // f32 (N, 784)
  Tensor labels;  // i64 (N), 0..9
};

// Fashion-MNIST's "train" (60000 images) or "test" (10000) split from `directory`, where
// Debian's dataset-fashion-mnist installs {train,t10k}-{images-idx3,labels-idx1}-ubyte.gz (an
// uncompressed file of the same name without .gz is used instead when present). Checks that
// the counts agree, that images are 28 x 28 and that labels are 0..9.
ImageDataset load_fashion_mnist(const std::string& split, const std::string& directory = kFashionMnistDirectory);

}  // namespace kiln::data

// IDX reading with transparent gzip decompression (zlib), see idx.h. A build without zlib
// (-DKILN_WITH_ZLIB=OFF) reads plain files and refuses compressed ones with a message.
#include "data/idx.h"

#ifdef KILN_HAVE_ZLIB
#include <zlib.h>
#endif

#include <filesystem>

#include "autograd/tensor.h"
#include "data/tokenizer.h"
#include "kernels/error.h"

namespace kiln::data {

namespace {

constexpr int32_t kImagesMagic = 2051, kLabelsMagic = 2049;

// Inflates every gzip member of `compressed` (gzip allows several back to back).
std::string gunzip(const std::string& compressed, const std::string& path) {
#ifndef KILN_HAVE_ZLIB
  (void)compressed;
  KILN_FAIL("idx ", path, ": gzip-compressed, and this kiln was built without zlib (-DKILN_WITH_ZLIB=OFF); "
            "decompress it first (gunzip keeps the name without .gz, which is read instead)");
#else
  z_stream stream{};
  KILN_CHECK(inflateInit2(&stream, 16 + MAX_WBITS) == Z_OK, "idx ", path, ": cannot initialise zlib");
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  stream.avail_in = static_cast<uInt>(compressed.size());
  std::string out;
  char buffer[1 << 16];
  int status = Z_OK;
  while (true) {
    stream.next_out = reinterpret_cast<Bytef*>(buffer);
    stream.avail_out = sizeof(buffer);
    status = inflate(&stream, Z_NO_FLUSH);
    out.append(buffer, sizeof(buffer) - stream.avail_out);
    if (status == Z_STREAM_END) {
      if (stream.avail_in == 0) break;
      inflateReset(&stream);
    } else if (status != Z_OK) {
      break;
    }
  }
  std::string message = stream.msg != nullptr ? stream.msg : "";
  inflateEnd(&stream);
  KILN_CHECK(status != Z_BUF_ERROR, "idx ", path, ": truncated gzip stream (", compressed.size(),
             " compressed bytes end before the data does)");
  KILN_CHECK(status == Z_STREAM_END, "idx ", path, ": corrupt gzip data: ", message.empty() ? "zlib error " + std::to_string(status) : message);
  return out;
#endif
}

uint32_t big_endian_u32(const std::string& bytes, size_t offset) {
  auto byte = [&](size_t i) { return static_cast<uint32_t>(static_cast<unsigned char>(bytes[offset + i])); };
  return (byte(0) << 24) | (byte(1) << 16) | (byte(2) << 8) | byte(3);
}

struct IdxFile {
  std::vector<int64_t> dims;
  std::string content;  // header + data
  size_t data_offset = 0;
};

// Reads, decompresses and checks an IDX file of unsigned bytes with the expected magic.
IdxFile read_idx(const std::string& path, int32_t expected_magic, const char* what) {
  IdxFile file;
  file.content = read_file(path, "idx");
  if (file.content.size() >= 2 && static_cast<unsigned char>(file.content[0]) == 0x1F &&
      static_cast<unsigned char>(file.content[1]) == 0x8B) {
    file.content = gunzip(file.content, path);
  }
  const std::string& bytes = file.content;
  KILN_CHECK(bytes.size() >= 4, "idx ", path, ": truncated: ", bytes.size(), " bytes, too short for the magic number");
  const auto magic = static_cast<int32_t>(big_endian_u32(bytes, 0));
  KILN_CHECK(magic == expected_magic, "idx ", path, ": bad magic ", magic, " (expected ", expected_magic, " for an IDX ", what,
             " file)");
  const size_t n_dims = static_cast<unsigned char>(bytes[3]);
  file.data_offset = 4 + 4 * n_dims;
  KILN_CHECK(bytes.size() >= file.data_offset, "idx ", path, ": truncated: ", bytes.size(), " bytes, too short for the ",
             n_dims, " dimension sizes");
  int64_t expected_data = 1;
  for (size_t d = 0; d < n_dims; ++d) {
    file.dims.push_back(big_endian_u32(bytes, 4 + 4 * d));
    expected_data *= file.dims.back();
  }
  const auto data_bytes = static_cast<int64_t>(bytes.size() - file.data_offset);
  KILN_CHECK(data_bytes >= expected_data, "idx ", path, ": truncated: the header declares ", expected_data,
             " bytes of data but ", data_bytes, " follow");
  KILN_CHECK(data_bytes == expected_data, "idx ", path, ": ", data_bytes - expected_data, " unexpected bytes after the ",
             expected_data, " bytes of data");
  return file;
}

std::string split_file(const std::string& directory, const std::string& name) {
  std::filesystem::path plain = std::filesystem::path(directory) / name;
  if (std::filesystem::exists(plain)) return plain.string();
  return plain.string() + ".gz";
}

}  // namespace

Tensor read_idx_images(const std::string& path) {
  IdxFile file = read_idx(path, kImagesMagic, "image");  // the magic's last byte fixes 3 dims
  const int64_t n = file.dims[0], pixels = file.dims[1] * file.dims[2];
  Tensor images = empty({n, pixels}, DType::f32);
  float* out = images.data<float>();
  const auto* in = reinterpret_cast<const unsigned char*>(file.content.data() + file.data_offset);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n * pixels; ++i) out[i] = static_cast<float>(in[i]) / 255.0f;
  return images;
}

Tensor read_idx_labels(const std::string& path) {
  IdxFile file = read_idx(path, kLabelsMagic, "label");  // 1 dim
  Tensor labels = empty({file.dims[0]}, DType::i64);
  int64_t* out = labels.data<int64_t>();
  const auto* in = reinterpret_cast<const unsigned char*>(file.content.data() + file.data_offset);
  for (int64_t i = 0; i < file.dims[0]; ++i) out[i] = in[i];
  return labels;
}

ImageDataset load_fashion_mnist(const std::string& split, const std::string& directory) {
  KILN_CHECK(split == "train" || split == "test", "load_fashion_mnist: split must be \"train\" or \"test\", got \"", split, "\"");
  const std::string prefix = split == "train" ? "train" : "t10k";
  const std::string images_path = split_file(directory, prefix + "-images-idx3-ubyte");
  const std::string labels_path = split_file(directory, prefix + "-labels-idx1-ubyte");
  KILN_CHECK(std::filesystem::exists(images_path), "load_fashion_mnist: ", images_path,
             " does not exist (install Debian's dataset-fashion-mnist, or pass the directory holding the IDX files)");
  ImageDataset dataset{read_idx_images(images_path), read_idx_labels(labels_path)};
  KILN_CHECK(dataset.images.size(1) == 784, "load_fashion_mnist: ", images_path, " holds ", dataset.images.size(1),
             "-pixel images, expected 28 x 28 = 784");
  KILN_CHECK(dataset.images.size(0) == dataset.labels.size(0), "load_fashion_mnist: ", images_path, " has ",
             dataset.images.size(0), " images but ", labels_path, " has ", dataset.labels.size(0), " labels");
  const int64_t* labels = dataset.labels.data<int64_t>();
  for (int64_t i = 0; i < dataset.labels.size(0); ++i) {
    KILN_CHECK(labels[i] >= 0 && labels[i] <= 9, "load_fashion_mnist: ", labels_path, ": label ", i, " is ", labels[i],
               ", outside 0..9");
  }
  return dataset;
}

}  // namespace kiln::data

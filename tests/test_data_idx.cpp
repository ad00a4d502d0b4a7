// IDX reading: Debian's Fashion-MNIST files (checked against Python's gzip module reading the
// same files), hand-made plain and gzip files, and corrupt files.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/idx.h"
#include "kernels/error.h"

using namespace kiln;
using namespace kiln::data;
using Catch::Contains;

namespace {

std::string scratch(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("kiln-test-data-" + name)).string();
}

void run_python(const std::string& code, const std::string& arguments) {
  const std::string script = scratch("idx-helper.py");
  std::ofstream(script) << code;
  REQUIRE(std::system((std::string(KILN_PYTHON) + " " + script + " " + arguments).c_str()) == 0);
  std::filesystem::remove(script);
}

// gzip-compresses `in` into `out`, as `members` gzip members back to back.
void gzip(const std::string& in, const std::string& out, int members = 1) {
  run_python(
      "import gzip, sys\n"
      "data = open(sys.argv[1], 'rb').read(); n = int(sys.argv[3]); cut = len(data) // n\n"
      "parts = [data[i * cut:(i + 1) * cut if i < n - 1 else len(data)] for i in range(n)]\n"
      "open(sys.argv[2], 'wb').write(b''.join(gzip.compress(p) for p in parts))\n",
      in + " " + out + " " + std::to_string(members));
}

// An IDX file of unsigned bytes: big-endian magic and dims, then the data.
void write_idx(const std::string& path, int32_t magic, const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
  std::string bytes;
  auto put = [&](uint32_t value) {
    for (int shift = 24; shift >= 0; shift -= 8) bytes += static_cast<char>((value >> shift) & 0xFF);
  };
  put(static_cast<uint32_t>(magic));
  for (uint32_t dim : dims) put(dim);
  bytes.append(data.begin(), data.end());
  std::ofstream(path, std::ios::binary) << bytes;
}

}  // namespace

TEST_CASE("Fashion-MNIST from Debian's dataset-fashion-mnist", "[data][idx]") {
  REQUIRE(std::filesystem::exists(std::string(kFashionMnistDirectory) + "/train-images-idx3-ubyte.gz"));
  ImageDataset train = load_fashion_mnist("train");
  CHECK(train.images.sizes() == Shape{60000, 784});
  CHECK(train.images.dtype() == DType::f32);
  CHECK(train.labels.sizes() == Shape{60000});
  CHECK(train.labels.dtype() == DType::i64);
  // Fashion-MNIST's training set has 6000 images of each of its 10 classes.
  std::vector<int64_t> per_class(10, 0);
  for (int64_t label : train.labels.to_vector<int64_t>()) {
    REQUIRE((label >= 0 && label <= 9));
    ++per_class[static_cast<size_t>(label)];
  }
  CHECK(per_class == std::vector<int64_t>(10, 6000));

  // Python's gzip module reads the same files: the first labels and the first image's bytes.
  const std::string out = scratch("fashion.json");
  run_python(
      "import gzip, json, sys\n"
      "d = sys.argv[1]\n"
      "labels = gzip.open(d + '/train-labels-idx1-ubyte.gz').read()[8:]\n"
      "images = gzip.open(d + '/train-images-idx3-ubyte.gz').read()[16:]\n"
      "json.dump({'labels': list(labels[:32]), 'image': list(images[:784])}, open(sys.argv[2], 'w'))\n",
      std::string(kFashionMnistDirectory) + " " + out);
  std::ifstream in(out);
  nlohmann::json expected = nlohmann::json::parse(in);
  std::vector<int64_t> labels = train.labels.to_vector<int64_t>();
  CHECK(std::vector<int64_t>(labels.begin(), labels.begin() + 32) == expected["labels"].get<std::vector<int64_t>>());
  std::vector<float> image = train.images.select(0, 0).to_vector<float>();
  std::vector<int> bytes = expected["image"].get<std::vector<int>>();
  for (size_t i = 0; i < 784; ++i) CHECK(image[i] == static_cast<float>(bytes[i]) / 255.0f);
  std::filesystem::remove(out);

  ImageDataset test = load_fashion_mnist("test");
  CHECK(test.images.sizes() == Shape{10000, 784});
  CHECK(test.labels.sizes() == Shape{10000});
  CHECK_THROWS_WITH(load_fashion_mnist("validation"), Contains("\"train\" or \"test\""));
  CHECK_THROWS_WITH(load_fashion_mnist("train", "/nonexistent"), Contains("/nonexistent/train-images-idx3-ubyte.gz does not exist"));
}

TEST_CASE("IDX files, plain and gzip; corrupt files name the file", "[data][idx][errors]") {
  const std::string images = scratch("images.idx"), labels = scratch("labels.idx"), packed = scratch("packed.idx.gz");
  write_idx(images, 2051, {2, 2, 3}, {0, 51, 255, 102, 204, 1, 2, 3, 4, 5, 6, 7});
  write_idx(labels, 2049, {3}, {1, 9, 0});
  Tensor read = read_idx_images(images);
  CHECK(read.sizes() == Shape{2, 6});
  CHECK(read.to_vector<float>() == std::vector<float>{0.0f, 0.2f, 1.0f, 0.4f, 0.8f, 1 / 255.0f, 2 / 255.0f, 3 / 255.0f,
                                                      4 / 255.0f, 5 / 255.0f, 6 / 255.0f, 7 / 255.0f});
  CHECK(read_idx_labels(labels).to_vector<int64_t>() == std::vector<int64_t>{1, 9, 0});
  gzip(images, packed);
  CHECK(read_idx_images(packed).to_vector<float>() == read.to_vector<float>());
  gzip(images, packed, 3);  // several gzip members back to back
  CHECK(read_idx_images(packed).to_vector<float>() == read.to_vector<float>());

  CHECK_THROWS_WITH(read_idx_images(labels), Contains(labels) && Contains("bad magic 2049 (expected 2051"));
  CHECK_THROWS_WITH(read_idx_labels(images), Contains(images) && Contains("bad magic 2051 (expected 2049"));
  gzip(images, packed);
  std::filesystem::resize_file(packed, std::filesystem::file_size(packed) - 12);
  CHECK_THROWS_WITH(read_idx_images(packed), Contains(packed) && Contains("truncated gzip stream"));
  std::filesystem::resize_file(images, std::filesystem::file_size(images) - 1);
  CHECK_THROWS_WITH(read_idx_images(images),
                    Contains(images) && Contains("truncated: the header declares 12 bytes of data but 11 follow"));
  write_idx(labels, 2049, {3}, {1, 9, 0, 4});
  CHECK_THROWS_WITH(read_idx_labels(labels), Contains(labels) && Contains("1 unexpected bytes after the 3 bytes"));
  std::ofstream(packed, std::ios::binary) << "\x1f\x8bnot gzip at all";
  CHECK_THROWS_WITH(read_idx_labels(packed), Contains(packed) && Contains("corrupt gzip data"));
  std::ofstream(labels, std::ios::binary) << "ab";
  CHECK_THROWS_WITH(read_idx_labels(labels), Contains("truncated: 2 bytes"));
  for (const std::string& path : {images, labels, packed}) std::filesystem::remove(path);
  CHECK_THROWS_WITH(read_idx_labels(labels), Contains("cannot read " + labels));
}

// safetensors round trips and the errors for corrupt files.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "autograd/safetensors.h"
#include "kiln.h"

using namespace kiln;
using Catch::Contains;

namespace {
std::string scratch(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("kiln-test-" + name)).string();
}
}  // namespace

TEST_CASE("safetensors round-trips every dtype and metadata", "[safetensors]") {
  std::map<std::string, Tensor> tensors = {
      {"a.f32", randn({3, 4})},
      {"b.f64", randn({2}, DType::f64)},
      {"c.bf16", randn({5}).to(DType::bf16)},
      {"d.f16", randn({5}).to(DType::f16)},
      {"e.i64", arange(6.0, DType::i64).reshape({2, 3})},
      {"f.i32", arange(4.0, DType::i32)},
      {"g.bool", gt(randn({4}), 0.0)},
      {"h.transposed", randn({3, 2}).t()},
      {"i.scalar", scalar_tensor(2.5)}};
  std::string path = scratch("roundtrip.safetensors");
  save_safetensors(path, tensors, {{"step", "12"}});
  SafetensorsFile loaded = load_safetensors(path);
  CHECK(loaded.metadata.at("step") == "12");
  REQUIRE(loaded.tensors.size() == tensors.size());
  for (const auto& [name, tensor] : tensors) {
    const Tensor& back = loaded.tensors.at(name);
    CHECK(back.dtype() == tensor.dtype());
    CHECK(back.sizes() == tensor.sizes());
    CHECK(back.to_vector<double>() == tensor.to_vector<double>());
  }
  std::filesystem::remove(path);
}

TEST_CASE("corrupt safetensors files are rejected with the path and the problem", "[safetensors][errors]") {
  std::string path = scratch("corrupt.safetensors");
  save_safetensors(path, {{"w", ones({4, 4})}});
  auto size = std::filesystem::file_size(path);

  std::filesystem::resize_file(path, size - 10);  // truncated data
  CHECK_THROWS_WITH(load_safetensors(path), Contains(path) && Contains("'w'"));

  std::ofstream(path, std::ios::binary | std::ios::trunc) << "abc";
  CHECK_THROWS_WITH(load_safetensors(path), Contains(path) && Contains("too short"));

  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    uint64_t length = 1000;
    out.write(reinterpret_cast<const char*>(&length), 8);
    out << "{}";
  }
  CHECK_THROWS_WITH(load_safetensors(path), Contains(path) && Contains("header length"));

  {
    std::string header = "{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]";  // unterminated
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    uint64_t length = header.size();
    out.write(reinterpret_cast<const char*>(&length), 8);
    out << header << "12345678";
  }
  CHECK_THROWS_WITH(load_safetensors(path), Contains(path) && Contains("corrupt JSON"));

  {
    std::string header = "{\"w\": {\"dtype\": \"Q8\", \"shape\": [2], \"data_offsets\": [0, 8]}}";
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    uint64_t length = header.size();
    out.write(reinterpret_cast<const char*>(&length), 8);
    out << header << "12345678";
  }
  CHECK_THROWS_WITH(load_safetensors(path), Contains(path) && Contains("Q8"));
  CHECK_THROWS_WITH(load_safetensors(scratch("missing.safetensors")), Contains("cannot open"));
  std::filesystem::remove(path);
}

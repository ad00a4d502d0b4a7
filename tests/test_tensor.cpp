// Tensor metadata, views sharing storage, contiguous copies, creation and printing.
#include <catch2/catch.hpp>

#include "kiln.h"

using namespace kiln;

TEST_CASE("a new tensor is contiguous with row-major strides", "[tensor]") {
  Tensor t = zeros({2, 3, 4});
  CHECK(t.sizes() == Shape{2, 3, 4});
  CHECK(t.strides() == Shape{12, 4, 1});
  CHECK(t.numel() == 24);
  CHECK(t.ndim() == 3);
  CHECK(t.dtype() == DType::f32);
  CHECK(t.device() == Device::cpu());
  CHECK(t.is_contiguous());
  CHECK(reinterpret_cast<uintptr_t>(t.raw_data()) % 64 == 0);
}

TEST_CASE("views share storage and see each other's writes", "[tensor][views]") {
  Tensor base = arange(0.0, 12.0, 1.0, DType::f32).reshape({3, 4});
  Tensor transposed = base.transpose(0, 1);
  CHECK(transposed.sizes() == Shape{4, 3});
  CHECK(transposed.strides() == Shape{1, 4});
  CHECK_FALSE(transposed.is_contiguous());
  CHECK(transposed.storage() == base.storage());

  Tensor row = base.select(0, 1);
  CHECK(row.to_vector<float>() == std::vector<float>{4, 5, 6, 7});
  Tensor column = base.select(1, 2);
  CHECK(column.to_vector<float>() == std::vector<float>{2, 6, 10});
  Tensor strided = base.slice(1, 0, 4, 2);
  CHECK(strided.to_vector<float>() == std::vector<float>{0, 2, 4, 6, 8, 10});
  Tensor narrowed = base.narrow(0, 1, 2);
  CHECK(narrowed.offset() == 4);

  row.fill_(-1.0);
  CHECK(base.to_vector<float>()[5] == -1.0f);
  CHECK(transposed.to_vector<float>()[1] == -1.0f);  // element (1, 1) of the transpose
}

TEST_CASE("expand, squeeze, unsqueeze and permute", "[tensor][views]") {
  Tensor v = arange(0.0, 3.0, 1.0, DType::f32);
  Tensor e = v.unsqueeze(0).expand({4, 3});
  CHECK(e.sizes() == Shape{4, 3});
  CHECK(e.strides() == Shape{0, 1});
  CHECK(e.to_vector<float>() == std::vector<float>{0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2});
  CHECK(v.unsqueeze(1).sizes() == Shape{3, 1});
  CHECK(zeros({1, 3, 1}).squeeze().sizes() == Shape{3});
  CHECK(zeros({1, 3, 1}).squeeze(2).sizes() == Shape{1, 3});
  CHECK(zeros({2, 3, 4}).permute({2, 0, 1}).sizes() == Shape{4, 2, 3});
  CHECK(zeros({2, 3, 4}).flatten(1).sizes() == Shape{2, 12});
  CHECK(zeros({2, 3, 4}).reshape({-1, 4}).sizes() == Shape{6, 4});
}

TEST_CASE("reshape views when strides allow and copies otherwise", "[tensor][views]") {
  Tensor base = arange(0.0, 6.0, 1.0, DType::f32).reshape({2, 3});
  Tensor same = base.reshape({3, 2});
  CHECK(same.storage() == base.storage());
  Tensor transposed = base.t();
  Tensor copied = transposed.reshape({6});
  CHECK(copied.storage() != base.storage());
  CHECK(copied.to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
  Tensor contiguous = transposed.contiguous();
  CHECK(contiguous.is_contiguous());
  CHECK(contiguous.to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
}

TEST_CASE("creation ops fill the expected values", "[tensor][creation]") {
  CHECK(ones({2, 2}).to_vector<float>() == std::vector<float>{1, 1, 1, 1});
  CHECK(full({3}, 2.5, DType::f64).to_vector<double>() == std::vector<double>{2.5, 2.5, 2.5});
  CHECK(arange(5.0, DType::i64).to_vector<int64_t>() == std::vector<int64_t>{0, 1, 2, 3, 4});
  CHECK(arange(1.0, 2.0, 0.25, DType::f64).to_vector<double>() == std::vector<double>{1.0, 1.25, 1.5, 1.75});
  Tensor s = scalar_tensor(7.0, DType::i32);
  CHECK(s.ndim() == 0);
  CHECK(s.item() == 7.0);
  Tensor v = from_vector<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(v.dtype() == DType::f64);
  CHECK(v.select(1, 2).to_vector<double>() == std::vector<double>{3, 6});
}

TEST_CASE("the allocator counts current and peak bytes", "[tensor][memory]") {
  reset_peak_memory();
  MemoryStats before = memory_stats();
  {
    Tensor a = empty({1024}, DType::f32);  // 4 KiB
    Tensor b = empty({512}, DType::f64);   // 4 KiB
    CHECK(memory_stats().current_bytes == before.current_bytes + 8192);
  }
  MemoryStats after = memory_stats();
  CHECK(after.current_bytes == before.current_bytes);
  CHECK(after.peak_bytes >= before.current_bytes + 8192);
}

TEST_CASE("tensors print like PyTorch", "[tensor][print]") {
  CHECK(from_vector<float>({1.5f, -2.0f}).str() == "tensor([ 1.5000, -2.0000], dtype=f32)");
  CHECK(from_vector<int64_t>({1, 2, 3, 4}, {2, 2}).str() == "tensor([[1, 2],\n        [3, 4]], dtype=i64)");
  CHECK(scalar_tensor(3.0, DType::f64).str() == "tensor(3.0000, dtype=f64)");
  std::string big = zeros({2000}).str();
  CHECK(big.find("...") != std::string::npos);
}

TEST_CASE("item and to_vector convert between dtypes", "[tensor]") {
  Tensor t = from_vector<float>({0.5f, 1.5f, -2.5f});
  CHECK(t.to_vector<double>() == std::vector<double>{0.5, 1.5, -2.5});
  CHECK(t.to(DType::i64).to_vector<int64_t>() == std::vector<int64_t>{0, 1, -2});
  CHECK(t.to(DType::boolean).to_vector<bool>() == std::vector<bool>{true, true, true});
  CHECK(t.select(0, 1).item() == 1.5);
}

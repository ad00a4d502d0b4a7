// Device parity for memory: transfers, dtype casts, creation ops, in-place ops, the caching
// allocator's counters and reuse, and the stream and event API.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>

#include "kernels/backend.h"
#include "kernels/cuda/caching_allocator.h"
#include "kernels/cuda/stream.h"
#include "test_cuda_parity.h"

using namespace kiln;
using namespace kiln::cuda_test;

namespace {

const std::vector<DType> kAllDtypes = {DType::f32, DType::f64, DType::bf16, DType::f16,
                                       DType::i32, DType::i64, DType::boolean};

// Values every cast handles the same way on both backends: fractions of both signs (truncated
// toward zero by integer casts), zeros and integers within i32 range. Floating-to-floating casts
// also see infinities, NaN, -0 and values that overflow f16 and bf16.
Tensor cast_source(DType dtype, bool specials) {
  std::vector<double> values = {0.0, 1.0, -1.0, 2.5, -2.5, 0.3, -0.7, 7.0, 123.456, -9876.5, 65504.0, 1e-3};
  if (specials) {
    double inf = std::numeric_limits<double>::infinity();
    values.insert(values.end(), {inf, -inf, std::nan(""), -0.0, 1e5, 3.3e38, 1e-40, 5.96e-8});
  }
  Tensor wide = from_vector<double>(values);
  Tensor noise = random({static_cast<int64_t>(values.size())}, DType::f64, -50.0, 50.0, false);
  return cat({wide, noise}).to(dtype);
}

}  // namespace

TEST_CASE("cuda: the backend is registered", "[cuda][memory]") {
  REQUIRE(cuda::is_available());
  CHECK(cuda::device_count() >= 1);
  CHECK(kernels::backend_for(kCuda).name() == "cuda");
}

TEST_CASE("cuda: to(device) round trips every dtype bit for bit", "[cuda][memory]") {
  for (DType dtype : kAllDtypes) {
    INFO("dtype " << dtype_name(dtype));
    Tensor host = cast_source(DType::f64, is_floating(dtype)).to(dtype).reshape({4, -1});
    Tensor device = host.to(kCuda);
    CHECK(device.device() == kCuda);
    CHECK_BITS(host, device);
    CHECK_BITS(host, device.to(Device::cpu()).to(kCuda));
    // Non-contiguous on either side: a transposed host view, a transposed device view.
    CHECK_BITS(host.t().contiguous(), host.t().to(kCuda));
    Tensor back = device.t().to(Device::cpu());
    CHECK(bit_mismatch(host.t().contiguous(), back.to(kCuda)).empty());
  }
  // Larger than the pinned staging buffers (4 MiB), and empty.
  Tensor big = random({3, 1 << 20}, DType::f32, -1.0, 1.0, false);
  CHECK_BITS(big, big.to(kCuda));
  Tensor empty_tensor = zeros({0, 3});
  CHECK(empty_tensor.to(kCuda).to(Device::cpu()).sizes() == Shape{0, 3});
}

TEST_CASE("cuda: copy_ converts and broadcasts across devices", "[cuda][memory]") {
  Tensor source = random({4, 1}, DType::f32, -2.0, 2.0, false);
  Tensor expected = zeros({4, 5}, DType::bf16);
  expected.copy_(source);
  Tensor device = zeros({4, 5}, TensorOptions(DType::bf16).device(kCuda));
  device.copy_(source);
  CHECK_BITS(expected, device);
  // Into a strided host view from a device tensor of another dtype.
  Tensor host = zeros({5, 4}, DType::f64);
  host.t().copy_(device);
  CHECK(bit_mismatch(expected.to(DType::f64), host.t().to(kCuda)).empty());
  // Within the device: strided source, converting destination.
  Tensor within = zeros({5, 4}, TensorOptions(DType::f16).device(kCuda));
  within.copy_(device.t());
  CHECK_BITS(expected.t().to(DType::f16), within);
}

TEST_CASE("cuda: the backend copies strided views across devices, converting", "[cuda][memory]") {
  // Tensor::to and copy_ hand over contiguous blocks; the backend itself takes any views.
  kernels::Backend& gpu = kernels::backend_for(kCuda);
  Tensor host = random({6, 5}, DType::f32, -3, 3, false);
  Tensor device = empty({5, 6}, TensorOptions(DType::bf16).device(kCuda));
  gpu.copy(host.t().view_for_kernels(), device.view_for_kernels());
  CHECK_BITS(host.t().to(DType::bf16), device);
  Tensor wide = zeros({5, 12}, TensorOptions(DType::f64).device(kCuda));
  Tensor every_other = wide.slice(1, 0, 12, 2);
  gpu.copy(host.t().view_for_kernels(), every_other.view_for_kernels());
  CHECK_BITS(host.t().to(DType::f64), every_other.contiguous());
  Tensor back = zeros({6, 10});
  Tensor back_view = back.slice(1, 0, 10, 2);
  gpu.copy(device.t().view_for_kernels(), back_view.view_for_kernels());
  CHECK_BITS(host.to(DType::bf16).to(DType::f32), back_view.to(kCuda));
  Tensor row = random({1, 5}, DType::f32, -3, 3, false);
  Tensor spread = empty({4, 5}, TensorOptions(DType::f32).device(kCuda));
  gpu.copy(row.expand({4, 5}).view_for_kernels(), spread.view_for_kernels());
  CHECK_BITS(row.expand({4, 5}).contiguous(), spread);
}

TEST_CASE("cuda: dtype casts give the CPU's bits for every pair of dtypes", "[cuda][memory]") {
  for (DType from : kAllDtypes) {
    for (DType to : kAllDtypes) {
      INFO("cast " << dtype_name(from) << " -> " << dtype_name(to));
      // Infinities and NaN have no integer value (the C++ cast is undefined), so they only meet
      // floating and bool destinations.
      bool specials = is_floating(from) && (is_floating(to) || to == DType::boolean);
      Tensor host = cast_source(DType::f64, specials).to(from).reshape({4, -1});
      Tensor device = host.to(kCuda);
      CHECK_BITS(host.to(to), device.to(to));
      CHECK_BITS(host.t().to(to), device.t().to(to));
    }
  }
}

TEST_CASE("cuda: creation ops match the CPU", "[cuda][memory]") {
  for (DType dtype : kAllDtypes) {
    INFO("dtype " << dtype_name(dtype));
    TensorOptions on_gpu = TensorOptions(dtype).device(kCuda);
    CHECK_BITS(zeros({3, 7}, dtype), zeros({3, 7}, on_gpu));
    CHECK_BITS(ones({3, 7}, dtype), ones({3, 7}, on_gpu));
    CHECK_BITS(full({2, 5}, 2.75, dtype), full({2, 5}, 2.75, on_gpu));
    CHECK_BITS(scalar_tensor(-3.0, dtype), scalar_tensor(-3.0, on_gpu));
    if (dtype != DType::boolean) {
      CHECK_BITS(arange(-3.0, 40.0, 1.0, dtype), arange(-3.0, 40.0, 1.0, on_gpu));
      CHECK_BITS(arange(0.0, 1.0, 0.013, dtype), arange(0.0, 1.0, 0.013, on_gpu));
    }
  }
  // fill_ through a strided view touches exactly the viewed elements.
  Tensor host = zeros({6, 4});
  Tensor device = zeros({6, 4}, kCuda);
  host.slice(0, 1, 6, 2).t().fill_(5.5);
  device.slice(0, 1, 6, 2).t().fill_(5.5);
  CHECK_BITS(host, device);
  CHECK_BITS(zeros_like(host), zeros_like(device));
  CHECK_BITS(full_like(host, -1.0), full_like(device, -1.0));
}

TEST_CASE("cuda: in-place ops match the CPU", "[cuda][memory]") {
  Tensor host = random({5, 6}, DType::f32, -2.0, 2.0, false);
  Tensor other = random({6}, DType::f32, 0.5, 2.0, false);
  Tensor device = host.to(kCuda), device_other = other.to(kCuda);
  host.add_(other, 0.5);
  device.add_(device_other, 0.5);
  host.sub_(other);
  device.sub_(device_other);
  host.mul_(other);
  device.mul_(device_other);
  host.div_(other);
  device.div_(device_other);
  host.add_(1.25).mul_(0.75).div_(3.0);
  device.add_(1.25).mul_(0.75).div_(3.0);
  host.t().clamp_(-0.5, 0.25);
  device.t().clamp_(-0.5, 0.25);
  CHECK_MATCH(host, device, kF32);
  host.zero_();
  device.zero_();
  CHECK_BITS(host, device);
}

TEST_CASE("cuda: allocator counters return to their start when tensors die", "[cuda][memory]") {
  MemoryStats before = memory_stats(kCuda);
  {
    Tensor x = random({64, 48}).to(kCuda).detach().set_requires_grad(true);
    Tensor w = random({32, 48}).to(kCuda).detach().set_requires_grad(true);
    Tensor y = sum(softmax(linear(x, w), 1) * 2.0);
    y.backward();
    Tensor sorted = sort(x, 1).first;
    CHECK(memory_stats(kCuda).current_bytes > before.current_bytes);
    CHECK(memory_stats(kCuda).peak_bytes >= memory_stats(kCuda).current_bytes);
  }
  MemoryStats after = memory_stats(kCuda);
  CHECK(after.current_bytes == before.current_bytes);
  CHECK(after.allocations > before.allocations);
  // Counted in requested bytes, like the CPU allocator.
  {
    Tensor odd = empty({3}, TensorOptions(DType::f32).device(kCuda));
    CHECK(memory_stats(kCuda).current_bytes == before.current_bytes + 12);
  }
  CHECK(memory_stats(kCuda).current_bytes == before.current_bytes);
}

TEST_CASE("cuda: the caching allocator reuses blocks per stream and empties its cache", "[cuda][memory]") {
  cuda::CachingAllocator& allocator = cuda::caching_allocator();
  CHECK(cuda::CachingAllocator::round_size(1) == 512);
  CHECK(cuda::CachingAllocator::round_size(513) == 1024);
  CHECK(cuda::CachingAllocator::round_size(size_t{1} << 20) == size_t{1} << 20);
  CHECK(cuda::CachingAllocator::round_size((size_t{1} << 20) + 1) == (size_t{1} << 20) + (size_t{1} << 17));
  CHECK(cuda::CachingAllocator::round_size(size_t{100} << 20) == size_t{104} << 20);

  void* first = allocator.allocate(100000);
  allocator.deallocate(first, 100000);
  CHECK(memory_stats(kCuda).cached_bytes >= static_cast<int64_t>(cuda::CachingAllocator::round_size(100000)));
  void* again = allocator.allocate(99900);  // the same size class (512-byte steps)
  CHECK(again == first);
  allocator.deallocate(again, 99900);
  {
    // Another stream never receives a block freed on the default stream.
    cuda::StreamGuard guard(cuda::stream_from_pool(0));
    void* other = allocator.allocate(100000);
    CHECK(other != first);
    allocator.deallocate(other, 100000);
  }
  int64_t reserved = allocator.reserved_bytes();
  empty_cache(kCuda);
  CHECK(memory_stats(kCuda).cached_bytes == 0);
  CHECK(allocator.reserved_bytes() < reserved);
}

TEST_CASE("cuda: streams, stream guards and events", "[cuda][memory]") {
  cuda::Stream original = cuda::current_stream();
  CHECK(original == cuda::default_stream(0));
  CHECK(original.handle() != nullptr);  // kiln's own stream, not the legacy default stream
  cuda::Stream side = cuda::stream_from_pool(0);
  // Positive entries: the sums have no cancellation, so f32 rounding stays within kF32.
  Tensor host = random({256, 256}, DType::f32, 0.5, 1.5, false);
  Tensor input = host.to(kCuda);
  cuda::Event ready;
  ready.record();
  Tensor product;
  {
    cuda::StreamGuard guard(side);
    CHECK(cuda::current_stream() == side);
    ready.block(side);
    cuda::Event start(true), stop(true);
    start.record();
    product = matmul(input, input);
    stop.record();
    stop.synchronize();
    CHECK(stop.query());
    CHECK(start.elapsed_ms(stop) >= 0.0f);
    side.synchronize();
    CHECK(side.query());
  }
  CHECK(cuda::current_stream() == original);
  CHECK_MATCH(matmul(host, host), product, kF32);
  CHECK(error_of([] { cuda::set_device(cuda::device_count()); }).find("does not exist") != std::string::npos);
}

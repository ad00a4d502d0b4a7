// Copies between devices: host -> GPU, GPU -> host and GPU -> GPU.
//
// DMA moves contiguous bytes of one dtype, so a transfer has up to three steps: the sending
// side packs its view into a contiguous buffer of the right dtype if it is not one already, the
// bytes move, and the receiving side scatters them into the destination's strides (converting
// or packing on the GPU side whenever possible, where it is fast).
//
// Uploads of up to 4 MiB go through a small ring of pinned buffers: from pageable memory the
// driver may block until the stream has drained, while from pinned memory cudaMemcpyAsync
// returns at once, so a training loop's batch upload overlaps the previous step's kernels.
// Downloads synchronise the stream before returning, because the caller reads the host memory
// as soon as copy returns.
#include <array>
#include <cstring>
#include <mutex>
#include <vector>

#include "kernels/cuda/caching_allocator.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/stream.h"
#include "kernels/error.h"
#include "kernels/view.h"
#include "kernels/backend.h"

namespace kiln::kernels {
namespace {

constexpr size_t kStagingBytes = size_t{4} << 20;
constexpr int kStagingSlots = 4;
constexpr int kMaxDevices = 64;

// Pinned upload buffers of one device, reused in turn once the copy out of a slot has finished.
class UploadRing {
 public:
  void upload(void* device_pointer, const void* host_pointer, size_t bytes, cudaStream_t stream, int device) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!slots_[0].buffer) create(device);
    Slot& slot = slots_[next_++ % kStagingSlots];
    KILN_CUDA_CHECK(cudaEventSynchronize(slot.done));
    std::memcpy(slot.buffer, host_pointer, bytes);
    KILN_CUDA_CHECK(cudaMemcpyAsync(device_pointer, slot.buffer, bytes, cudaMemcpyHostToDevice, stream));
    KILN_CUDA_CHECK(cudaEventRecord(slot.done, stream));
  }

 private:
  struct Slot {
    void* buffer = nullptr;
    cudaEvent_t done = nullptr;
  };

  // Buffers and events live as long as the process, like the streams they serve.
  void create(int device) {
    cuda::DeviceGuard guard(device);
    for (Slot& slot : slots_) {
      KILN_CUDA_CHECK(cudaHostAlloc(&slot.buffer, kStagingBytes, cudaHostAllocDefault));
      KILN_CUDA_CHECK(cudaEventCreateWithFlags(&slot.done, cudaEventDisableTiming));
    }
  }

  std::mutex mutex_;
  std::array<Slot, kStagingSlots> slots_{};
  unsigned next_ = 0;
};

void upload(void* device_pointer, const void* host_pointer, size_t bytes, cudaStream_t stream, int device) {
  static std::array<UploadRing, kMaxDevices>* rings = new std::array<UploadRing, kMaxDevices>();
  if (bytes <= kStagingBytes) return (*rings)[static_cast<size_t>(device)].upload(device_pointer, host_pointer, bytes, stream, device);
  KILN_CUDA_CHECK(cudaMemcpyAsync(device_pointer, host_pointer, bytes, cudaMemcpyHostToDevice, stream));
}

// A contiguous view with `like`'s sizes over `data`.
View packed(const View& like, void* data, DType dtype, Device device) {
  View view = like;
  view.data = data;
  view.dtype = dtype;
  view.device = device;
  int64_t stride = 1;
  for (int d = like.ndim - 1; d >= 0; --d) {
    view.strides[d] = stride;
    stride *= like.sizes[d];
  }
  return view;
}

// Host src (any strides, any dtype) -> device dst. The host side is packed in src's dtype
// (cheap, and it expands broadcasts); conversion and scattering happen on the GPU.
void host_to_device(const View& src, const View& dst) {
  cudaStream_t stream = cuda::stream_for("copy", dst.device).handle();
  size_t bytes = static_cast<size_t>(dst.numel()) * dtype_size(src.dtype);
  if (bytes == 0) return;
  if (src.dtype == dst.dtype && src.is_contiguous() && dst.is_contiguous()) {
    return upload(dst.data, src.data, bytes, stream, dst.device.index);
  }
  std::vector<unsigned char> host;
  const void* source = src.data;
  if (!src.is_contiguous()) {
    host.resize(bytes);
    backend_for(Device::cpu()).copy(src, packed(src, host.data(), src.dtype, Device::cpu()));
    source = host.data();
  }
  cuda::DeviceBuffer staging(bytes);
  upload(staging.data(), source, bytes, stream, dst.device.index);
  backend_for(dst.device).copy(packed(src, staging.data(), src.dtype, dst.device), dst);
}

// Device src (any strides, any dtype) -> host dst. The device side is converted and packed in
// dst's dtype on the GPU; the host side scatters only when dst is not contiguous.
void device_to_host(const View& src, const View& dst) {
  cudaStream_t stream = cuda::stream_for("copy", src.device).handle();
  size_t bytes = static_cast<size_t>(dst.numel()) * dtype_size(dst.dtype);
  if (bytes == 0) return;
  bool pack = src.dtype != dst.dtype || !src.is_contiguous();
  cuda::DeviceBuffer staging(pack ? bytes : 0);
  const void* source = src.data;
  if (pack) {
    backend_for(src.device).copy(src, packed(src, staging.data(), dst.dtype, src.device));
    source = staging.data();
  }
  std::vector<unsigned char> host;
  void* target = dst.data;
  if (!dst.is_contiguous()) {
    host.resize(bytes);
    target = host.data();
  }
  KILN_CUDA_CHECK(cudaMemcpyAsync(target, source, bytes, cudaMemcpyDeviceToHost, stream));
  KILN_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (!dst.is_contiguous()) backend_for(Device::cpu()).copy(packed(dst, host.data(), dst.dtype, Device::cpu()), dst);
}

// Device src -> another device's dst, both contiguous and of one dtype (Tensor::to and copy_
// arrange that). The copy runs on dst's stream behind src's pending work, and src's stream
// waits for it, so neither buffer is reused by its allocator pool while the copy reads or
// writes it.
void device_to_device(const View& src, const View& dst) {
  KILN_CHECK(src.dtype == dst.dtype && src.is_contiguous() && dst.is_contiguous(), "copy: a copy from ",
             src.device.str(), " to ", dst.device.str(), " needs contiguous views of one dtype (got ",
             dtype_name(src.dtype), " -> ", dtype_name(dst.dtype), ")");
  size_t bytes = static_cast<size_t>(dst.numel()) * dtype_size(dst.dtype);
  if (bytes == 0) return;
  cuda::Stream src_stream = cuda::current_stream(src.device.index);
  cuda::Stream dst_stream = cuda::current_stream(dst.device.index);
  cuda::DeviceGuard on_source(src.device.index);
  cuda::Event source_ready;
  source_ready.record(src_stream);
  {
    cuda::DeviceGuard on_destination(dst.device.index);
    cuda::Event copied;
    source_ready.block(dst_stream);
    KILN_CUDA_CHECK(cudaMemcpyPeerAsync(dst.data, dst.device.index, src.data, src.device.index, bytes, dst_stream.handle()));
    copied.record(dst_stream);
    copied.block(src_stream);
  }
}

}  // namespace

void copy_across_devices(const View& src, const View& dst) {
  if (src.device.is_cpu()) return host_to_device(src, dst);
  if (dst.device.is_cpu()) return device_to_host(src, dst);
  device_to_device(src, dst);
}

}  // namespace kiln::kernels

// Device selection, kiln's per-device streams, the per-thread current stream, and events.
#include "kernels/cuda/stream.h"

#include <array>
#include <atomic>
#include <mutex>

#include "kernels/cuda/check.h"

namespace kiln::cuda {
namespace {

constexpr int kMaxDevices = 64;
constexpr int kPoolSize = 8;

void check_device(int device) {
  KILN_CHECK(device >= 0 && device < device_count(), "cuda: device ", device, " does not exist (",
             device_count(), " CUDA devices)");
}

cudaStream_t create_stream(int device) {
  DeviceGuard guard(device);
  cudaStream_t stream;
  KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  return stream;
}

// Streams created on first use and kept for the life of the process: destroying them at exit
// would race the CUDA runtime's own teardown.
struct DeviceStreams {
  std::once_flag created;
  cudaStream_t default_stream = nullptr;
  std::array<cudaStream_t, kPoolSize> pool{};
  std::atomic<unsigned> next_pooled{0};
};

DeviceStreams& streams_of(int device) {
  check_device(device);
  static std::array<DeviceStreams, kMaxDevices> all;
  DeviceStreams& streams = all[static_cast<size_t>(device)];
  std::call_once(streams.created, [&] {
    streams.default_stream = create_stream(device);
    for (cudaStream_t& stream : streams.pool) stream = create_stream(device);
  });
  return streams;
}

// The thread's choice of stream per device; unset means the device's default stream.
struct CurrentStreams {
  std::array<cudaStream_t, kMaxDevices> stream{};
  std::array<bool, kMaxDevices> set{};
};
thread_local CurrentStreams current;

}  // namespace

int device_count() {
  // Cached: the count cannot change while the process runs, and kernels ask on every call.
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return n < kMaxDevices ? n : kMaxDevices;
  }();
  return count;
}

int current_device() {
  int device = 0;
  KILN_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

void set_device(int device) {
  check_device(device);
  KILN_CUDA_CHECK(cudaSetDevice(device));
}

void synchronize_device() { KILN_CUDA_CHECK(cudaDeviceSynchronize()); }

void Stream::synchronize() const { KILN_CUDA_CHECK(cudaStreamSynchronize(handle_)); }

bool Stream::query() const {
  cudaError_t status = cudaStreamQuery(handle_);
  if (status == cudaErrorNotReady) return false;
  KILN_CUDA_CHECK(status);
  return true;
}

Stream default_stream(int device) { return Stream(streams_of(device).default_stream, device); }

Stream current_stream(int device) {
  if (device >= 0 && device < kMaxDevices && current.set[static_cast<size_t>(device)]) {
    return Stream(current.stream[static_cast<size_t>(device)], device);
  }
  return default_stream(device);
}

Stream current_stream() { return current_stream(current_device()); }

Stream stream_for(const char* op, Device device) {
  int now = current_device();
  KILN_CHECK(device.is_cuda() && device.index == now, op, ": operand on ", device.str(),
             " but the current CUDA device is cuda:", now, " (call kiln::cuda::set_device(", device.index,
             ") on this thread)");
  return current_stream(now);
}

Stream stream_from_pool(int device) {
  DeviceStreams& streams = streams_of(device);
  unsigned turn = streams.next_pooled.fetch_add(1, std::memory_order_relaxed);
  return Stream(streams.pool[turn % kPoolSize], device);
}

StreamGuard::StreamGuard(Stream stream)
    : previous_(current_stream(stream.device())), previous_was_set_(current.set[static_cast<size_t>(stream.device())]) {
  current.stream[static_cast<size_t>(stream.device())] = stream.handle();
  current.set[static_cast<size_t>(stream.device())] = true;
}

StreamGuard::~StreamGuard() {
  current.stream[static_cast<size_t>(previous_.device())] = previous_.handle();
  current.set[static_cast<size_t>(previous_.device())] = previous_was_set_;
}

DeviceGuard::DeviceGuard(int device) : previous_(current_device()) {
  if (device != previous_) set_device(device);
}

DeviceGuard::~DeviceGuard() {
  int now = 0;
  if (cudaGetDevice(&now) == cudaSuccess && now != previous_) cudaSetDevice(previous_);
}

Event::Event(bool timing) : device_(current_device()) {
  KILN_CUDA_CHECK(cudaEventCreateWithFlags(&event_, timing ? cudaEventDefault : cudaEventDisableTiming));
}

Event::~Event() {
  if (event_) cudaEventDestroy(event_);
}

Event::Event(Event&& other) noexcept : event_(other.event_), device_(other.device_) { other.event_ = nullptr; }

Event& Event::operator=(Event&& other) noexcept {
  if (this != &other) {
    if (event_) cudaEventDestroy(event_);
    event_ = other.event_;
    device_ = other.device_;
    other.event_ = nullptr;
  }
  return *this;
}

void Event::record() { record(current_stream(device_)); }

void Event::record(Stream stream) {
  KILN_CHECK(stream.device() == device_, "cuda event: an event of cuda:", device_,
             " cannot be recorded on a stream of cuda:", stream.device());
  KILN_CUDA_CHECK(cudaEventRecord(event_, stream.handle()));
}

void Event::block(Stream stream) const { KILN_CUDA_CHECK(cudaStreamWaitEvent(stream.handle(), event_, 0)); }

void Event::synchronize() const { KILN_CUDA_CHECK(cudaEventSynchronize(event_)); }

bool Event::query() const {
  cudaError_t status = cudaEventQuery(event_);
  if (status == cudaErrorNotReady) return false;
  KILN_CUDA_CHECK(status);
  return true;
}

float Event::elapsed_ms(const Event& end) const {
  float milliseconds = 0;
  KILN_CUDA_CHECK(cudaEventElapsedTime(&milliseconds, event_, end.event_));
  return milliseconds;
}

}  // namespace kiln::cuda

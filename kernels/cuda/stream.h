// CUDA devices, streams and events: where and in which order kiln's GPU work runs.
//
// Every kernel, cuBLAS call and copy kiln issues goes to the calling thread's current stream on
// the current device. By default that is one non-blocking stream per device that kiln creates
// (not the legacy default stream, which would serialise with every other library in the
// process); a StreamGuard switches it for a scope, e.g. to overlap communication with compute,
// and Events order work across streams and time it. Copies to the host synchronise the current
// stream before they return, so host code never sees a tensor half written.
//
// Memory is allocated on the current device: one process per GPU (set_device(local_rank)) is
// the supported arrangement, and a kernel refuses operands that live on another device.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/device.h"

namespace kiln::cuda {

// Whether kiln registered its CUDA backend (a GPU was found when the library loaded); when not,
// kernels::unavailable_reason(DeviceType::CUDA) says why.
bool is_available();
// Number of usable CUDA devices: 0 when there is no driver or no GPU.
int device_count();
// The calling thread's current device, and the way to change it.
int current_device();
void set_device(int device);
// Blocks until all work on the current device has finished.
void synchronize_device();

// A non-owning handle to a stream of one device.
class Stream {
 public:
  Stream(cudaStream_t handle, int device) : handle_(handle), device_(device) {}
  cudaStream_t handle() const { return handle_; }
  int device() const { return device_; }
  // Blocks the host until all work queued on the stream has finished.
  void synchronize() const;
  // True when all work queued on the stream has finished.
  bool query() const;
  bool operator==(const Stream& other) const = default;

 private:
  cudaStream_t handle_;
  int device_;
};

// The stream kiln creates for `device`, every thread's current stream until changed.
Stream default_stream(int device);
// The calling thread's current stream on the current device (or on `device`).
Stream current_stream();
Stream current_stream(int device);
// The current stream for work on `device`, which must be the current device (kiln allocates
// there and launches there); otherwise a kiln::Error naming `op` says how to switch.
Stream stream_for(const char* op, Device device);
// A stream from a small per-device pool of kiln-created non-blocking streams, handed out in
// turn; like the default streams they live as long as the process.
Stream stream_from_pool(int device);

// Makes `stream` the calling thread's current stream on its device for the guard's lifetime.
class StreamGuard {
 public:
  explicit StreamGuard(Stream stream);
  ~StreamGuard();
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  Stream previous_;
  bool previous_was_set_;
};

// Makes `device` the calling thread's current device for the guard's lifetime.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_;
};

// A CUDA event of the current device: a marker in a stream's work that other streams and the
// host can wait for. Timing is off unless asked for, which makes waiting on it cheaper.
class Event {
 public:
  explicit Event(bool timing = false);
  ~Event();
  Event(Event&& other) noexcept;
  Event& operator=(Event&& other) noexcept;
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;

  // Marks the current point of `stream` (the current stream by default).
  void record();
  void record(Stream stream);
  // Makes `stream` wait, on the device and without blocking the host, for the recorded point.
  void block(Stream stream) const;
  // Blocks the host until the recorded point is reached.
  void synchronize() const;
  bool query() const;
  // Milliseconds from this event to `end`; both must be timing events that have completed.
  float elapsed_ms(const Event& end) const;
  cudaEvent_t handle() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
  int device_ = 0;
};

}  // namespace kiln::cuda

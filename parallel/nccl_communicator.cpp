// NcclCommunicator: collectives on CUDA tensors through NCCL, on the communicator's own stream.
//
// Ordering without blocking the host: an operation first makes the communication stream wait
// for an event recorded on the caller's current stream (so NCCL reads inputs only after the
// kernels that wrote them), then queues the NCCL call and records a completion event; wait()
// makes the waiter's current stream wait for that event. Tensors stay referenced by the
// communicator until their completion event has fired, because the caching allocator would
// otherwise hand their memory to new tensors while NCCL still reads or writes it.
//
// The watchdog cannot be told by the host when GPU work ends, so each operation is registered
// with a `finished` check (its completion event); operations seen complete at the next issue
// are taken off early. A hung one aborts the job through the bootstrap communicator (MPI_Abort).
#include <nccl.h>

#include <cstdio>
#include <cstring>
#include <deque>

#include "autograd/ops/creation.h"
#include "autograd/shape.h"
#include "kernels/backend.h"
#include "kernels/cuda/check.h"
#include "kernels/cuda/stream.h"
#include "parallel/nccl_backend.h"
#include "parallel/watchdog.h"

namespace kiln::parallel {
namespace {

void check_nccl(ncclResult_t result, ncclComm_t comm, const std::string& context) {
  if (result == ncclSuccess || result == ncclInProgress) return;
  const char* detail = comm ? ncclGetLastError(comm) : "";
  KILN_FAIL(context, ": NCCL error: ", ncclGetErrorString(result), detail && *detail ? " (" : "",
            detail ? detail : "", detail && *detail ? ")" : "");
}

ncclDataType_t nccl_type(DType dtype) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::boolean: return ncclUint8;
  }
  KILN_FAIL("nccl: unknown dtype");
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return ncclSum;
    case ReduceOp::avg: return ncclAvg;
    case ReduceOp::max: return ncclMax;
  }
  KILN_FAIL("nccl: unknown reduction");
}

std::string elements(const Tensor& tensor) {
  return detail::concat(tensor.numel(), " x ", dtype_name(tensor.dtype()));
}

char* bytes_at(const Tensor& tensor, int64_t element) {
  return static_cast<char*>(tensor.raw_data()) + element * static_cast<int64_t>(dtype_size(tensor.dtype()));
}

// A copy of `input` made on the caller's stream, for an input that overlaps its output.
Tensor device_copy(const Tensor& input) {
  Tensor copy = empty(input.sizes(), TensorOptions(input.dtype()).device(input.device()));
  kernels::backend_for(input.device()).copy(input.view_for_kernels(), copy.view_for_kernels());
  return copy;
}

struct NcclWork final : Work {
  NcclWork(std::vector<Tensor> held, int device_index) : tensors(std::move(held)), device(device_index) {}
  bool is_completed() override { return done.query(); }
  void wait() override { done.block(cuda::current_stream(device)); }

  std::vector<Tensor> tensors;  // kept alive until `done` has fired
  int device;
  cuda::Event done;  // created on the current device, which launch() has set to `device`
  uint64_t token = 0;
};

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, int device, std::shared_ptr<Communicator> bootstrap, int rank, int size,
                   const std::string& name, std::chrono::milliseconds timeout)
      : Communicator(rank, size, bootstrap->world_rank(), name, timeout),
        comm_(comm),
        device_(device),
        bootstrap_(std::move(bootstrap)),
        stream_(create_stream(device), device) {}

  ~NcclCommunicator() override {
    cuda::DeviceGuard guard(device_);
    cudaStreamSynchronize(stream_.handle());
    for (const auto& work : in_flight_) process_watchdog().end(work->token);
    in_flight_.clear();
    ncclCommDestroy(comm_);
    cudaStreamDestroy(stream_.handle());
  }

  std::string backend() const override { return "nccl"; }
  [[noreturn]] void abort_job() override {
    bootstrap_->abort_job();
    std::abort();  // the bootstrap's abort_job does not return; this satisfies [[noreturn]]
  }

 protected:
  bool accepts(Device device) const override { return device == Device::cuda(device_); }
  std::string accepted_devices() const override { return Device::cuda(device_).str(); }

  WorkHandle run_all_reduce(const Tensor& tensor, ReduceOp op) override {
    return launch(Collective::all_reduce, detail::concat(reduce_op_name(op), ", ", elements(tensor)), {tensor},
                  [&](cudaStream_t stream) {
                    return ncclAllReduce(tensor.raw_data(), tensor.raw_data(), static_cast<size_t>(tensor.numel()),
                                         nccl_type(tensor.dtype()), nccl_op(op), comm_, stream);
                  });
  }

  WorkHandle run_reduce_scatter(const Tensor& input, const Tensor& output, ReduceOp op) override {
    // NCCL is in place when output is this rank's chunk of input; any other overlap is copied.
    bool in_place = output.raw_data() == bytes_at(input, rank() * output.numel());
    Tensor send = in_place || !memory_overlaps(input, output) ? input : device_copy(input);
    return launch(Collective::reduce_scatter, detail::concat(reduce_op_name(op), ", ", elements(input)),
                  {send, output}, [&](cudaStream_t stream) {
                    return ncclReduceScatter(send.raw_data(), output.raw_data(), static_cast<size_t>(output.numel()),
                                             nccl_type(send.dtype()), nccl_op(op), comm_, stream);
                  });
  }

  WorkHandle run_all_gather(const Tensor& input, const Tensor& output) override {
    bool in_place = input.raw_data() == bytes_at(output, rank() * input.numel());
    Tensor send = in_place || !memory_overlaps(input, output) ? input : device_copy(input);
    return launch(Collective::all_gather, elements(input), {send, output}, [&](cudaStream_t stream) {
      return ncclAllGather(send.raw_data(), output.raw_data(), static_cast<size_t>(send.numel()),
                           nccl_type(send.dtype()), comm_, stream);
    });
  }

  WorkHandle run_broadcast(const Tensor& tensor, int root) override {
    return launch(Collective::broadcast, detail::concat("root ", root, ", ", elements(tensor)), {tensor},
                  [&](cudaStream_t stream) {
                    return ncclBroadcast(tensor.raw_data(), tensor.raw_data(), static_cast<size_t>(tensor.numel()),
                                         nccl_type(tensor.dtype()), root, comm_, stream);
                  });
  }

  WorkHandle run_send(const Tensor& tensor, int destination) override {
    return launch(Collective::send, detail::concat("to rank ", destination, ", ", elements(tensor)), {tensor},
                  [&](cudaStream_t stream) {
                    return ncclSend(tensor.raw_data(), static_cast<size_t>(tensor.numel()), nccl_type(tensor.dtype()),
                                    destination, comm_, stream);
                  });
  }

  WorkHandle run_recv(const Tensor& tensor, int source) override {
    return launch(Collective::recv, detail::concat("from rank ", source, ", ", elements(tensor)), {tensor},
                  [&](cudaStream_t stream) {
                    return ncclRecv(tensor.raw_data(), static_cast<size_t>(tensor.numel()), nccl_type(tensor.dtype()),
                                    source, comm_, stream);
                  });
  }

  WorkHandle run_all_to_all(const Tensor& input, const Tensor& output) override {
    int64_t chunk = input.numel() / size();
    std::vector<int64_t> counts(static_cast<size_t>(size()), chunk);
    return exchange(Collective::all_to_all, elements(input), input, counts, output, counts);
  }

  WorkHandle run_all_to_all_v(const Tensor& input, const std::vector<int64_t>& send_rows, const Tensor& output,
                              const std::vector<int64_t>& recv_rows) override {
    int64_t row = shape_numel(Shape(input.sizes().begin() + 1, input.sizes().end()));
    std::vector<int64_t> send_counts, recv_counts;
    for (int64_t rows : send_rows) send_counts.push_back(rows * row);
    for (int64_t rows : recv_rows) recv_counts.push_back(rows * row);
    return exchange(Collective::all_to_all_v,
                    detail::concat(input.size(0), " rows out, ", output.size(0), " rows in, ", dtype_name(input.dtype())),
                    input, send_counts, output, recv_counts);
  }

  WorkHandle run_barrier() override {
    // A one-element all-reduce: NCCL has no barrier, and this orders the streams the same way.
    Tensor token = zeros({1}, TensorOptions(DType::f32).device(Device::cuda(device_)));
    return launch(Collective::barrier, "no data", {token}, [&](cudaStream_t stream) {
      return ncclAllReduce(token.raw_data(), token.raw_data(), 1, ncclFloat32, ncclSum, comm_, stream);
    });
  }

  std::shared_ptr<Communicator> run_split(int color, int key, const std::string& name) override {
    cuda::DeviceGuard guard(device_);
    ncclComm_t group = nullptr;
    std::string label = detail::concat("split (color ", color, ", key ", key, ") on ", describe());
    uint64_t token = process_watchdog().begin(world_rank(), label, timeout(), expiry());
    check_nccl(ncclCommSplit(comm_, color, key, &group, nullptr), comm_, label);
    process_watchdog().end(token);
    int rank = 0;
    int size = 0;
    check_nccl(ncclCommUserRank(group, &rank), group, label);
    check_nccl(ncclCommCount(group, &size), group, label);
    return std::make_shared<NcclCommunicator>(group, device_, bootstrap_, rank, size, name, timeout());
  }

 private:
  static cudaStream_t create_stream(int device) {
    cuda::DeviceGuard guard(device);
    cudaStream_t stream;
    KILN_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    return stream;
  }

  Watchdog::Expiry expiry() const {
    return [comm = comm_, bootstrap = bootstrap_](const std::string& message) {
      std::fprintf(stderr, "%s\n", message.c_str());
      std::fflush(stderr);
      ncclCommAbort(comm);  // frees the GPU from the hung kernels before the job ends
      bootstrap->abort_job();
    };
  }

  // Queues `body` (the NCCL calls) on the communication stream behind the caller's work.
  template <typename Body>
  WorkHandle launch(Collective collective, const std::string& detail, std::vector<Tensor> tensors, Body&& body) {
    cuda::DeviceGuard guard(device_);
    std::string label = operation_label(collective, detail);
    release_finished();
    cuda::Event inputs_ready;
    inputs_ready.record(cuda::current_stream(device_));
    inputs_ready.block(stream_);
    check_nccl(body(stream_.handle()), comm_, label);
    auto work = std::make_shared<NcclWork>(std::move(tensors), device_);
    work->done.record(stream_);
    work->token = process_watchdog().begin(world_rank(), label, timeout(), expiry(),
                                           [work] { return work->done.query(); });
    in_flight_.push_back(work);
    return WorkHandle(work);
  }

  // all_to_all(_v): count[j] elements to and from rank j, as grouped sends and receives.
  WorkHandle exchange(Collective collective, const std::string& detail, const Tensor& input,
                      const std::vector<int64_t>& send_counts, const Tensor& output,
                      const std::vector<int64_t>& recv_counts) {
    Tensor send = memory_overlaps(input, output) ? device_copy(input) : input;
    return launch(collective, detail, {send, output}, [&](cudaStream_t stream) {
      ncclDataType_t type = nccl_type(send.dtype());
      ncclGroupStart();
      int64_t send_offset = 0;
      int64_t recv_offset = 0;
      for (int peer = 0; peer < size(); ++peer) {
        size_t out = static_cast<size_t>(send_counts[static_cast<size_t>(peer)]);
        size_t in = static_cast<size_t>(recv_counts[static_cast<size_t>(peer)]);
        if (out > 0) ncclSend(bytes_at(send, send_offset), out, type, peer, comm_, stream);
        if (in > 0) ncclRecv(bytes_at(output, recv_offset), in, type, peer, comm_, stream);
        send_offset += static_cast<int64_t>(out);
        recv_offset += static_cast<int64_t>(in);
      }
      return ncclGroupEnd();  // reports the errors of the calls it groups
    });
  }

  // Drops the operations whose completion event has fired (and their tensors).
  void release_finished() {
    while (!in_flight_.empty() && in_flight_.front()->done.query()) {
      process_watchdog().end(in_flight_.front()->token);
      in_flight_.pop_front();
    }
  }

  ncclComm_t comm_;
  int device_;
  std::shared_ptr<Communicator> bootstrap_;
  cuda::Stream stream_;
  std::deque<std::shared_ptr<NcclWork>> in_flight_;  // in issue order, so they finish in order
};

}  // namespace

bool nccl_available() { return true; }

std::shared_ptr<Communicator> make_nccl_communicator(const std::shared_ptr<Communicator>& bootstrap, int device) {
  KILN_CHECK(bootstrap != nullptr, "make_nccl_communicator: the bootstrap communicator is null");
  KILN_CHECK(cuda::is_available(), "make_nccl_communicator: ", kernels::unavailable_reason(DeviceType::CUDA));
  // For good, not for the scope: this rank's tensors must be allocated on its GPU from now on.
  cuda::set_device(device);
  // Rank 0 makes the id; the others receive it over the bootstrap group (128 bytes as i64s).
  ncclUniqueId id;
  static_assert(sizeof(id) % sizeof(int64_t) == 0);
  Tensor buffer = zeros({static_cast<int64_t>(sizeof(id) / sizeof(int64_t))}, DType::i64);
  if (bootstrap->rank() == 0) {
    check_nccl(ncclGetUniqueId(&id), nullptr, "make_nccl_communicator: ncclGetUniqueId");
    std::memcpy(buffer.raw_data(), &id, sizeof(id));
  }
  bootstrap->broadcast(buffer, 0);
  std::memcpy(&id, buffer.raw_data(), sizeof(id));
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, bootstrap->size(), id, bootstrap->rank()), nullptr,
             detail::concat("make_nccl_communicator on ", bootstrap->describe(), ": ncclCommInitRank"));
  return std::make_shared<NcclCommunicator>(comm, device, bootstrap, bootstrap->rank(), bootstrap->size(),
                                            bootstrap->name(), bootstrap->timeout());
}

}  // namespace kiln::parallel

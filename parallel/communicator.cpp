// Communicator's shared half: argument checks, byte counting and the group-size-1 shortcuts.
//
// Checking here, before a backend sees anything, means every backend reports a wrong tensor
// with the same message and no rank enters a collective that another rank has refused.
#include "parallel/communicator.h"

#include <algorithm>
#include <numeric>

#include "autograd/shape.h"
#include "kernels/backend.h"

namespace kiln::parallel {
namespace {

int64_t bytes_of(const Tensor& tensor) {
  return tensor.numel() * static_cast<int64_t>(dtype_size(tensor.dtype()));
}

// dst = src on their (shared) device; nothing to do when they are the same memory.
void copy_local(const Tensor& src, const Tensor& dst) {
  if (src.raw_data() == dst.raw_data()) return;
  kernels::backend_for(dst.device()).copy(src.view_for_kernels(), dst.view_for_kernels());
}

std::string rows_str(const std::vector<int64_t>& rows) {
  std::string text = "[";
  for (size_t i = 0; i < rows.size(); ++i) text += (i ? ", " : "") + std::to_string(rows[i]);
  return text + "]";
}

}  // namespace

Communicator::Communicator(int rank, int size, int world_rank, std::string name, std::chrono::milliseconds timeout)
    : rank_(rank), size_(size), world_rank_(world_rank), name_(std::move(name)), timeout_(timeout) {}

std::string Communicator::describe() const {
  return detail::concat("group '", name_, "' (rank ", rank_, " of ", size_, ", ", backend(), ")");
}

std::string Communicator::error_prefix(Collective collective) const {
  return detail::concat(collective_name(collective), " on ", describe(), ": ");
}

std::string Communicator::operation_label(Collective collective, const std::string& detail) {
  return detail::concat(collective_name(collective), " #", ++sequence_, " (", detail, ") on ", describe());
}

bool memory_overlaps(const Tensor& a, const Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  auto begin_a = static_cast<const char*>(a.raw_data());
  auto begin_b = static_cast<const char*>(b.raw_data());
  return begin_a < begin_b + bytes_of(b) && begin_b < begin_a + bytes_of(a);
}

void Communicator::set_timeout(std::chrono::milliseconds timeout) {
  KILN_CHECK(timeout.count() > 0, "set_timeout on ", describe(), ": the timeout must be positive, got ",
             timeout.count(), " ms");
  timeout_ = timeout;
}

// ---- checks --------------------------------------------------------------------------------

void Communicator::check_tensor(Collective collective, const char* role, const Tensor& tensor) const {
  KILN_CHECK(tensor.defined(), error_prefix(collective), role, " is an undefined tensor");
  KILN_CHECK(tensor.is_contiguous(), error_prefix(collective), role, " must be contiguous (sizes ",
             shape_str(tensor.sizes()), ", strides ", shape_str(tensor.strides()), "); call .contiguous() first");
  KILN_CHECK(accepts(tensor.device()), error_prefix(collective), role, " is on ", tensor.device().str(),
             "; this communicator takes tensors on ", accepted_devices());
}

void Communicator::check_pair(Collective collective, const Tensor& input, const Tensor& output) const {
  check_tensor(collective, "input", input);
  check_tensor(collective, "output", output);
  KILN_CHECK(input.dtype() == output.dtype(), error_prefix(collective), "input has dtype ",
             dtype_name(input.dtype()), " but output has dtype ", dtype_name(output.dtype()));
  KILN_CHECK(input.device() == output.device(), error_prefix(collective), "input is on ", input.device().str(),
             " but output is on ", output.device().str());
}

void Communicator::check_reduction(Collective collective, const Tensor& tensor, ReduceOp op) const {
  KILN_CHECK(tensor.dtype() != DType::boolean, error_prefix(collective), "cannot reduce (", reduce_op_name(op),
             ") bool tensors");
  KILN_CHECK(op != ReduceOp::avg || is_floating(tensor.dtype()), error_prefix(collective),
             "avg needs a floating dtype, got ", dtype_name(tensor.dtype()));
}

void Communicator::check_peer(Collective collective, const char* role, int peer) const {
  KILN_CHECK(peer >= 0 && peer < size_, error_prefix(collective), role, " ", peer, " is not a rank of the group (0..",
             size_ - 1, ")");
  KILN_CHECK(peer != rank_, error_prefix(collective), role, " ", peer, " is this rank itself");
}

void Communicator::count(Collective collective, int64_t bytes) {
  std::lock_guard lock(stats_mutex_);
  stats_.bytes_sent[static_cast<size_t>(collective)] += bytes;
  stats_.calls[static_cast<size_t>(collective)] += 1;
}

CommunicationStats Communicator::stats() const {
  std::lock_guard lock(stats_mutex_);
  return stats_;
}

void Communicator::reset_stats() {
  std::lock_guard lock(stats_mutex_);
  stats_ = CommunicationStats();
}

// ---- collectives ---------------------------------------------------------------------------

WorkHandle Communicator::all_reduce_async(const Tensor& tensor, ReduceOp op) {
  check_tensor(Collective::all_reduce, "tensor", tensor);
  check_reduction(Collective::all_reduce, tensor, op);
  count(Collective::all_reduce, ring_bytes::all_reduce(bytes_of(tensor), size_));
  tensor.bump_version();
  // One contribution: its sum, average and maximum are itself.
  if (size_ == 1) return WorkHandle();
  return run_all_reduce(tensor, op);
}

WorkHandle Communicator::reduce_scatter_async(const Tensor& input, const Tensor& output, ReduceOp op) {
  check_pair(Collective::reduce_scatter, input, output);
  check_reduction(Collective::reduce_scatter, input, op);
  KILN_CHECK(input.numel() == size_ * output.numel(), error_prefix(Collective::reduce_scatter), "input has ",
             input.numel(), " elements; expected group size x output elements = ", size_, " x ", output.numel(),
             " = ", size_ * output.numel());
  count(Collective::reduce_scatter, ring_bytes::reduce_scatter(bytes_of(input), size_));
  output.bump_version();
  if (size_ == 1) {
    copy_local(input, output);
    return WorkHandle();
  }
  return run_reduce_scatter(input, output, op);
}

WorkHandle Communicator::all_gather_async(const Tensor& input, const Tensor& output) {
  check_pair(Collective::all_gather, input, output);
  KILN_CHECK(output.numel() == size_ * input.numel(), error_prefix(Collective::all_gather), "output has ",
             output.numel(), " elements; expected group size x input elements = ", size_, " x ", input.numel(),
             " = ", size_ * input.numel());
  count(Collective::all_gather, ring_bytes::all_gather(bytes_of(input), size_));
  output.bump_version();
  if (size_ == 1) {
    copy_local(input, output);
    return WorkHandle();
  }
  return run_all_gather(input, output);
}

WorkHandle Communicator::broadcast_async(const Tensor& tensor, int root) {
  check_tensor(Collective::broadcast, "tensor", tensor);
  KILN_CHECK(root >= 0 && root < size_, error_prefix(Collective::broadcast), "root ", root,
             " is not a rank of the group (0..", size_ - 1, ")");
  count(Collective::broadcast, ring_bytes::broadcast(bytes_of(tensor), size_, rank_, root));
  if (rank_ != root) tensor.bump_version();
  if (size_ == 1) return WorkHandle();
  return run_broadcast(tensor, root);
}

WorkHandle Communicator::send_async(const Tensor& tensor, int destination) {
  check_tensor(Collective::send, "tensor", tensor);
  check_peer(Collective::send, "destination", destination);
  count(Collective::send, bytes_of(tensor));
  return run_send(tensor, destination);
}

WorkHandle Communicator::recv_async(const Tensor& tensor, int source) {
  check_tensor(Collective::recv, "tensor", tensor);
  check_peer(Collective::recv, "source", source);
  count(Collective::recv, 0);
  tensor.bump_version();
  return run_recv(tensor, source);
}

WorkHandle Communicator::all_to_all_async(const Tensor& input, const Tensor& output) {
  check_pair(Collective::all_to_all, input, output);
  KILN_CHECK(input.numel() == output.numel() && input.numel() % size_ == 0, error_prefix(Collective::all_to_all),
             "input and output must have the same number of elements, divisible by the group size ", size_,
             "; got ", input.numel(), " and ", output.numel());
  count(Collective::all_to_all, ring_bytes::all_to_all(bytes_of(input), size_));
  output.bump_version();
  if (size_ == 1) {
    copy_local(input, output);
    return WorkHandle();
  }
  return run_all_to_all(input, output);
}

WorkHandle Communicator::all_to_all_v_async(const Tensor& input, const std::vector<int64_t>& send_rows,
                                            const Tensor& output, const std::vector<int64_t>& recv_rows) {
  const Collective kind = Collective::all_to_all_v;
  check_pair(kind, input, output);
  KILN_CHECK(input.ndim() >= 1 && output.ndim() >= 1, error_prefix(kind), "input and output need a row dim 0");
  Shape input_row(input.sizes().begin() + 1, input.sizes().end());
  Shape output_row(output.sizes().begin() + 1, output.sizes().end());
  KILN_CHECK(input_row == output_row, error_prefix(kind), "input rows ", shape_str(input_row),
             " and output rows ", shape_str(output_row), " differ");
  auto check_rows = [&](const std::vector<int64_t>& rows, const char* what, const Tensor& tensor) {
    bool valid = rows.size() == static_cast<size_t>(size_) &&
                 std::all_of(rows.begin(), rows.end(), [](int64_t r) { return r >= 0; });
    KILN_CHECK(valid, error_prefix(kind), what, " ", rows_str(rows), " must hold ", size_,
               " non-negative row counts (one per rank)");
    int64_t total = std::accumulate(rows.begin(), rows.end(), int64_t{0});
    KILN_CHECK(total == tensor.size(0), error_prefix(kind), what, " ", rows_str(rows), " sum to ", total,
               " rows but the tensor has ", tensor.size(0));
  };
  check_rows(send_rows, "send_rows", input);
  check_rows(recv_rows, "recv_rows", output);
  int64_t row_bytes = shape_numel(input_row) * static_cast<int64_t>(dtype_size(input.dtype()));
  count(kind, (input.size(0) - send_rows[static_cast<size_t>(rank_)]) * row_bytes);
  output.bump_version();
  if (size_ == 1) {
    copy_local(input, output);
    return WorkHandle();
  }
  return run_all_to_all_v(input, send_rows, output, recv_rows);
}

WorkHandle Communicator::barrier_async() {
  count(Collective::barrier, 0);
  if (size_ == 1) return WorkHandle();
  return run_barrier();
}

std::shared_ptr<Communicator> Communicator::split(int color, int key, const std::string& name) {
  KILN_CHECK(color >= 0, "split on ", describe(), ": color must be >= 0, got ", color);
  std::string child = name.empty() ? detail::concat(name_, ".split(", color, ")") : name;
  std::shared_ptr<Communicator> group = run_split(color, key, child);
  group->timeout_ = timeout_.load();
  return group;
}

}  // namespace kiln::parallel

// Names of the reduction ops and collectives (for messages) and the ring byte volumes.
#include "parallel/collective.h"

#include <numeric>

namespace kiln::parallel {

const char* reduce_op_name(ReduceOp op) {
  switch (op) {
    case ReduceOp::sum: return "sum";
    case ReduceOp::avg: return "avg";
    case ReduceOp::max: return "max";
  }
  return "?";
}

const char* collective_name(Collective collective) {
  switch (collective) {
    case Collective::all_reduce: return "all_reduce";
    case Collective::reduce_scatter: return "reduce_scatter";
    case Collective::all_gather: return "all_gather";
    case Collective::broadcast: return "broadcast";
    case Collective::send: return "send";
    case Collective::recv: return "recv";
    case Collective::all_to_all: return "all_to_all";
    case Collective::all_to_all_v: return "all_to_all_v";
    case Collective::barrier: return "barrier";
  }
  return "?";
}

namespace ring_bytes {

// Ring all-reduce = reduce-scatter then all-gather: each phase passes n-1 of the n chunks on.
int64_t all_reduce(int64_t tensor_bytes, int group_size) {
  return 2 * (group_size - 1) * tensor_bytes / group_size;
}

int64_t reduce_scatter(int64_t input_bytes, int group_size) {
  return (group_size - 1) * input_bytes / group_size;
}

int64_t all_gather(int64_t input_bytes, int group_size) { return (group_size - 1) * input_bytes; }

// A ring pipeline from the root: root -> root+1 -> ... -> root-1, which forwards to nobody.
int64_t broadcast(int64_t tensor_bytes, int group_size, int rank, int root) {
  if (group_size == 1) return 0;
  int last = (root - 1 + group_size) % group_size;
  return rank == last ? 0 : tensor_bytes;
}

int64_t all_to_all(int64_t input_bytes, int group_size) { return input_bytes - input_bytes / group_size; }

}  // namespace ring_bytes

int64_t CommunicationStats::total_bytes() const {
  return std::accumulate(bytes_sent.begin(), bytes_sent.end(), int64_t{0});
}

}  // namespace kiln::parallel

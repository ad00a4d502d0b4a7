// The vocabulary of communication: reduction ops, the collective kinds, and the byte counters.
//
// Byte counters exist so that tests and benchmarks can check how much a parallel scheme really
// communicates (ZeRO-3 sends 1.5x DDP's volume, sequence parallelism swaps one all-reduce for an
// all-gather plus a reduce-scatter of the same total). They count, per collective kind, the
// bytes this rank sends under the bandwidth-optimal ring algorithm, whatever algorithm the
// backend really runs, so that the numbers are the same on MPI, NCCL and any group layout:
//
//   S = the bytes of the tensor named below, n = the group size (every count is 0 when n == 1)
//   all_reduce      2 (n-1) S / n      S = the tensor; rounded down to whole bytes
//   reduce_scatter  (n-1) S / n        S = the input (n output chunks; the own chunk stays)
//   all_gather      (n-1) S            S = the input (sent to each of the n-1 others)
//   broadcast       S, except 0 on the rank just before the root in ring order
//                   ((root - 1) mod n), the last link of the ring pipeline
//   all_to_all      S - S / n          S = the input (the own chunk stays)
//   all_to_all_v    the rows sent to other ranks times the bytes of a row
//   send            S; recv and barrier count 0 bytes (the peer's send counts them)
//
// Summed over a group these are the minimum traffic each collective needs ((n-1) S for a
// broadcast, 2 (n-1) S for an all-reduce), which is what makes them algorithm-agnostic.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace kiln::parallel {

// How all_reduce and reduce_scatter combine contributions. avg is the sum divided by the
// group size and needs a floating dtype.
enum class ReduceOp : uint8_t { sum, avg, max };

enum class Collective : uint8_t {
  all_reduce, reduce_scatter, all_gather, broadcast, send, recv, all_to_all, all_to_all_v, barrier
};
inline constexpr int kCollectiveCount = 9;

const char* reduce_op_name(ReduceOp op);
const char* collective_name(Collective collective);

// The ring volumes above, for a group of `group_size` ranks.
namespace ring_bytes {
int64_t all_reduce(int64_t tensor_bytes, int group_size);
int64_t reduce_scatter(int64_t input_bytes, int group_size);
int64_t all_gather(int64_t input_bytes, int group_size);
int64_t broadcast(int64_t tensor_bytes, int group_size, int rank, int root);
int64_t all_to_all(int64_t input_bytes, int group_size);
}  // namespace ring_bytes

// What one communicator has sent since it was created or last reset: bytes and calls per
// collective kind (a call counts when it is issued, async or not).
struct CommunicationStats {
  std::array<int64_t, kCollectiveCount> bytes_sent{};
  std::array<int64_t, kCollectiveCount> calls{};

  int64_t bytes(Collective collective) const { return bytes_sent[static_cast<size_t>(collective)]; }
  int64_t count(Collective collective) const { return calls[static_cast<size_t>(collective)]; }
  int64_t total_bytes() const;
};

}  // namespace kiln::parallel

// The NCCL backend: collectives on CUDA tensors, run by NCCL on a stream of their own.
//
// Each operation waits (on the GPU, not the host) for the work the caller has queued on its
// current stream, runs on the communicator's stream, and its handle's wait() makes the
// caller's current stream wait for it: compute and communication overlap on the device and
// the host never blocks (barrier() too: it orders streams; a host barrier is the bootstrap's).
// A split() is ncclCommSplit. The NCCL unique id travels over the bootstrap communicator (MPI
// under mpirun), which is also how the watchdog ends the job.
//
// Built only when kiln is built with CUDA and NCCL; otherwise nccl_available() is false and
// make_nccl_communicator throws.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace kiln::parallel {

bool nccl_available();

// A group of the same ranks as `bootstrap` (collective over it), driving CUDA device `device`
// (normally World::gpu()); it takes only tensors on that device, and makes it the calling
// thread's current device (one rank per GPU). NCCL refuses two ranks on one GPU.
std::shared_ptr<Communicator> make_nccl_communicator(const std::shared_ptr<Communicator>& bootstrap, int device);

}  // namespace kiln::parallel

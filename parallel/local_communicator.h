// The single-process backend: a group of one, for runs without mpirun and for tests.
//
// A world of one process is a real configuration (a laptop run, a debugging session), so it is
// a Communicator like any other rather than a special case in every parallel scheme: all of
// its collectives take the group-size-1 path of communicator.cpp (no-op or local copy).
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"

namespace kiln::parallel {

// A group holding only this process; it takes tensors on any device.
std::shared_ptr<Communicator> make_local_communicator(const std::string& name = "world",
                                                      std::chrono::milliseconds timeout = kDefaultTimeout);

}  // namespace kiln::parallel

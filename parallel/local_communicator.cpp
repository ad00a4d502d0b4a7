// LocalCommunicator: every collective is handled by the group-size-1 path of Communicator, so
// the only work left here is splitting (into another group of one) and ending the process.
#include "parallel/local_communicator.h"

#include <cstdlib>

namespace kiln::parallel {
namespace {

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(const std::string& name, std::chrono::milliseconds timeout)
      : Communicator(0, 1, 0, name, timeout) {}

  std::string backend() const override { return "single-process"; }
  [[noreturn]] void abort_job() override { std::abort(); }

 protected:
  // Communicator never calls these at group size 1; reaching one is a bug in Communicator.
  WorkHandle run_all_reduce(const Tensor&, ReduceOp) override { unreachable("all_reduce"); }
  WorkHandle run_reduce_scatter(const Tensor&, const Tensor&, ReduceOp) override { unreachable("reduce_scatter"); }
  WorkHandle run_all_gather(const Tensor&, const Tensor&) override { unreachable("all_gather"); }
  WorkHandle run_broadcast(const Tensor&, int) override { unreachable("broadcast"); }
  WorkHandle run_send(const Tensor&, int) override { unreachable("send"); }
  WorkHandle run_recv(const Tensor&, int) override { unreachable("recv"); }
  WorkHandle run_all_to_all(const Tensor&, const Tensor&) override { unreachable("all_to_all"); }
  WorkHandle run_all_to_all_v(const Tensor&, const std::vector<int64_t>&, const Tensor&,
                              const std::vector<int64_t>&) override {
    unreachable("all_to_all_v");
  }
  WorkHandle run_barrier() override { unreachable("barrier"); }

  std::shared_ptr<Communicator> run_split(int, int, const std::string& name) override {
    return std::make_shared<LocalCommunicator>(name, timeout());
  }
  bool accepts(Device) const override { return true; }
  std::string accepted_devices() const override { return "any device"; }

 private:
  [[noreturn]] void unreachable(const char* collective) const {
    KILN_FAIL(collective, " on ", describe(), ": internal error, the single-process backend was asked to communicate");
  }
};

}  // namespace

std::shared_ptr<Communicator> make_local_communicator(const std::string& name, std::chrono::milliseconds timeout) {
  return std::make_shared<LocalCommunicator>(name, timeout);
}

}  // namespace kiln::parallel

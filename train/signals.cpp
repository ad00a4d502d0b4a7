// SIGINT/SIGTERM handlers that only set a flag (async-signal-safe).
#include "train/signals.h"

#include <csignal>

namespace kiln::train {

namespace {

volatile std::sig_atomic_t received_signal = 0;

extern "C" void record_stop_signal(int signal) {
  received_signal = signal;
  // The next one of this kind is not caught: the user can still force an exit.
  std::signal(signal, SIG_DFL);
}

}  // namespace

void install_stop_handlers() {
  std::signal(SIGINT, record_stop_signal);
  std::signal(SIGTERM, record_stop_signal);
}

int stop_signal() { return received_signal; }

void reset_stop_signal() {
  received_signal = 0;
  install_stop_handlers();
}

}  // namespace kiln::train

// Graceful stop on SIGINT/SIGTERM: the handler only records the signal; the trainer polls it once
// per step, agrees on it with every rank (it rides in the gradient all-reduce), finishes the step,
// saves a final checkpoint and returns. A second signal of the same kind while the first is being
// handled gets the default action (a second Ctrl-C kills at once).
#pragma once

namespace kiln::train {

// Installs the handlers for SIGINT and SIGTERM (idempotent). Programs call it; the library
// never installs handlers on its own.
void install_stop_handlers();
// The signal number received since the handlers were installed, or 0.
int stop_signal();
// Forgets a received signal and re-arms the handlers (tests; a program that keeps running).
void reset_stop_signal();

}  // namespace kiln::train

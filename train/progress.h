// Training progress: the FLOPs estimate behind MFU, the per-step statistics, and the console
// output (one line per log interval, plus a \r progress bar when stdout is a terminal).
//
//   step   200/2000 | loss 2.1034 | lr 9.94e-04 | grad norm 0.412 | 21.3k tok/s | MFU 3.1% | 0:41 elapsed, ETA 6:09
//   [#######.........................] 200/2000 10% loss 2.1034 ETA 6:09
//
// MFU follows nanoGPT's estimate (PaLM appendix B): a token costs 6 N FLOPs for the matmuls of
// forward and backward over the N non-position-embedding parameters, plus 12 L d T for attention
// scores and values (L layers, d = heads x head dim, T the sequence length); MFU is the achieved
// FLOP/s over world_size x the configured per-rank peak.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "nn/transformer_config.h"

namespace kiln::train {

// Training FLOPs per token (forward + backward) of a transformer with `parameters` parameters
// (position embeddings excluded) on sequences of `seq_len` tokens.
double flops_per_token(const nn::TransformerConfig& config, int64_t parameters, int64_t seq_len);

// What one optimizer step did.
struct StepStats {
  int64_t step = 0;          // steps completed, this one included (1 = the first)
  int64_t max_steps = 0;
  double loss = 0.0;         // mean over the global batch
  double lr = 0.0;           // of group 0
  double grad_norm = 0.0;    // before clipping
  double step_seconds = 0.0;       // wall time of this step on this rank
  double tokens_per_second = 0.0;  // all ranks together
  double mfu = 0.0;                // fraction of peak
  double elapsed_seconds = 0.0;    // since the run (or this resumed part of it) started
  double eta_seconds = 0.0;
  bool skipped = false;            // a non-finite step that was not applied
};

// "12.3s", "4:05", "1:02:03".
std::string format_duration(double seconds);
// "21.3k" style: value with a k/M/G suffix.
std::string format_count(double value);
// The one-line log of a step (no newline).
std::string format_progress_line(const StepStats& stats);
// "step 2000 | val loss 1.8823".
std::string format_eval_line(int64_t step, double val_loss);
// "[####....] 200/2000 10% loss 2.1034 ETA 6:09" with a bar of `width` cells (no \r, no newline).
std::string format_progress_bar(const StepStats& stats, int width);

// Writes progress to a stream: log lines always, the bar only when enabled. A log line first
// clears the bar, so the two never interleave.
class ProgressPrinter {
 public:
  // `bar`: "on", "off" or "auto" (on when `out` is a terminal and the process was not started by
  // an MPI launcher, which gives ranks a terminal even when its own output is redirected).
  ProgressPrinter(std::FILE* out, const std::string& bar);
  void update_bar(const StepStats& stats);
  // A whole line (a log line, an eval result, a sample); clears the bar first.
  void print_line(const std::string& line);
  // Ends the bar's line, if one is shown.
  void finish();
  bool bar_enabled() const { return bar_; }

 private:
  std::FILE* out_;
  bool bar_ = false;
  bool bar_shown_ = false;
};

}  // namespace kiln::train

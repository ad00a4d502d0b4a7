// Progress lines, the terminal progress bar and the MFU estimate.
#include "train/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "kernels/error.h"

namespace kiln::train {

double flops_per_token(const nn::TransformerConfig& config, int64_t parameters, int64_t seq_len) {
  double attention = 12.0 * static_cast<double>(config.n_layers) * static_cast<double>(config.d_model) *
                     static_cast<double>(seq_len);
  return 6.0 * static_cast<double>(parameters) + attention;
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  char text[32];
  if (seconds < 60) {
    std::snprintf(text, sizeof(text), "%.1fs", seconds);
    return text;
  }
  auto total = static_cast<int64_t>(seconds + 0.5);
  int64_t hours = total / 3600, minutes = total / 60 % 60, rest = total % 60;
  if (hours > 0) {
    std::snprintf(text, sizeof(text), "%lld:%02lld:%02lld", static_cast<long long>(hours),
                  static_cast<long long>(minutes), static_cast<long long>(rest));
  } else {
    std::snprintf(text, sizeof(text), "%lld:%02lld", static_cast<long long>(minutes), static_cast<long long>(rest));
  }
  return text;
}

std::string format_count(double value) {
  char text[32];
  if (value >= 1e9) std::snprintf(text, sizeof(text), "%.2fG", value / 1e9);
  else if (value >= 1e6) std::snprintf(text, sizeof(text), "%.2fM", value / 1e6);
  else if (value >= 1e3) std::snprintf(text, sizeof(text), "%.1fk", value / 1e3);
  else std::snprintf(text, sizeof(text), "%.0f", value);
  return text;
}

std::string format_progress_line(const StepStats& stats) {
  char text[320];
  std::snprintf(text, sizeof(text),
                "step %*lld/%lld | loss %.4f | lr %.2e | grad norm %.3f | %s tok/s | MFU %.2f%% | %s elapsed, ETA %s%s",
                static_cast<int>(std::to_string(stats.max_steps).size()), static_cast<long long>(stats.step),
                static_cast<long long>(stats.max_steps), stats.loss, stats.lr, stats.grad_norm,
                format_count(stats.tokens_per_second).c_str(), 100.0 * stats.mfu,
                format_duration(stats.elapsed_seconds).c_str(), format_duration(stats.eta_seconds).c_str(),
                stats.skipped ? " | SKIPPED (non-finite)" : "");
  return text;
}

std::string format_eval_line(int64_t step, double val_loss) {
  char text[96];
  std::snprintf(text, sizeof(text), "step %lld | val loss %.4f", static_cast<long long>(step), val_loss);
  return text;
}

std::string format_progress_bar(const StepStats& stats, int width) {
  double fraction = stats.max_steps > 0 ? static_cast<double>(stats.step) / static_cast<double>(stats.max_steps) : 0;
  fraction = std::clamp(fraction, 0.0, 1.0);
  int filled = static_cast<int>(fraction * width);
  std::string bar(static_cast<size_t>(width) + 2, '.');
  bar.front() = '[';
  bar.back() = ']';
  std::fill_n(bar.begin() + 1, filled, '#');
  char text[160];
  std::snprintf(text, sizeof(text), " %lld/%lld %3.0f%% loss %.4f ETA %s", static_cast<long long>(stats.step),
                static_cast<long long>(stats.max_steps), 100.0 * fraction, stats.loss,
                format_duration(stats.eta_seconds).c_str());
  bar.append(text);
  return bar;
}

ProgressPrinter::ProgressPrinter(std::FILE* out, const std::string& bar) : out_(out) {
  KILN_CHECK(bar == "on" || bar == "off" || bar == "auto", "ProgressPrinter: bar must be on, off or auto, got ", bar);
  // Open MPI hands every rank a pseudo-terminal as stdout, so under a launcher isatty() says
  // nothing about where mpirun's own output goes (often a log file): "auto" stays off there.
  bool launched = std::getenv("OMPI_COMM_WORLD_SIZE") != nullptr || std::getenv("PMI_SIZE") != nullptr ||
                  std::getenv("PMIX_RANK") != nullptr;
  bar_ = bar == "on" || (bar == "auto" && !launched && isatty(fileno(out)) == 1);
}

void ProgressPrinter::update_bar(const StepStats& stats) {
  if (!bar_) return;
  // \33[K clears what a longer previous bar left on the line.
  std::fprintf(out_, "\r%s\33[K", format_progress_bar(stats, 30).c_str());
  std::fflush(out_);
  bar_shown_ = true;
}

void ProgressPrinter::print_line(const std::string& line) {
  if (bar_shown_) std::fprintf(out_, "\r\33[K");
  bar_shown_ = false;
  std::fprintf(out_, "%s\n", line.c_str());
  std::fflush(out_);
}

void ProgressPrinter::finish() {
  if (bar_shown_) std::fprintf(out_, "\n");
  bar_shown_ = false;
  std::fflush(out_);
}

}  // namespace kiln::train

// A one-line progress bar on stderr for long prefills and calibration runs.
#pragma once

#include <chrono>
#include <cstddef>
#include <string>

namespace redknot::decoder {

class ProgressBar {
 public:
  explicit ProgressBar(std::string label, bool enabled = true);
  // Redraws at most every 100 ms (and always at the end).
  void update(std::size_t done, std::size_t total);
  void finish();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace redknot::decoder

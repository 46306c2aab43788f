// Logging to stderr (stdout carries only results), with a global verbosity switch.
#pragma once

#include <chrono>
#include <string>

namespace vadapt {

enum class LogLevel { kQuiet = 0, kInfo = 1, kDebug = 2 };

void set_log_level(LogLevel level);
LogLevel log_level();
void log_info(const std::string& msg);
void log_debug(const std::string& msg);
void log_warn(const std::string& msg);

// Wall-clock stopwatch in seconds.
class Stopwatch {
 public:
  Stopwatch() : start_(std::chrono::steady_clock::now()) {}
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  void reset() { start_ = std::chrono::steady_clock::now(); }

 private:
  std::chrono::steady_clock::time_point start_;
};

// "1.23 M", "4.20 K", "17" — for parameter counts and sizes in tables.
std::string human_count(double n);
std::string human_bytes(double n);

}  // namespace vadapt

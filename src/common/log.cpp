// Logging and human-readable number formatting.
#include "common/log.h"

#include <cstdio>
#include <iostream>
#include <mutex>

namespace vadapt {
namespace {
LogLevel g_level = LogLevel::kInfo;
std::mutex g_mutex;
void emit(const char* tag, const std::string& msg) {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::cerr << tag << msg << std::endl;
}
}  // namespace

void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }
void log_info(const std::string& msg) {
  if (g_level >= LogLevel::kInfo) emit("[vadapt] ", msg);
}
void log_debug(const std::string& msg) {
  if (g_level >= LogLevel::kDebug) emit("[vadapt:debug] ", msg);
}
void log_warn(const std::string& msg) { emit("[vadapt:warn] ", msg); }

std::string human_count(double n) {
  char buf[64];
  if (n >= 1e9) std::snprintf(buf, sizeof buf, "%.2f B", n / 1e9);
  else if (n >= 1e6) std::snprintf(buf, sizeof buf, "%.2f M", n / 1e6);
  else if (n >= 1e3) std::snprintf(buf, sizeof buf, "%.2f K", n / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", n);
  return buf;
}

std::string human_bytes(double n) {
  char buf[64];
  if (n >= 1024.0 * 1024 * 1024) std::snprintf(buf, sizeof buf, "%.2f GiB", n / (1024.0 * 1024 * 1024));
  else if (n >= 1024.0 * 1024) std::snprintf(buf, sizeof buf, "%.2f MiB", n / (1024.0 * 1024));
  else if (n >= 1024.0) std::snprintf(buf, sizeof buf, "%.2f KiB", n / 1024.0);
  else std::snprintf(buf, sizeof buf, "%.0f B", n);
  return buf;
}

}  // namespace vadapt

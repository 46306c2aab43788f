// Shared helpers of the libFuzzer targets: a private scratch folder (in /dev/shm when present)
// that loaders read their input from, since the parsers under test take file paths as users give
// them.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include "common/log.h"

// Loaders log (to std::cerr) what they skip; at thousands of inputs a second that would be the
// bottleneck. libFuzzer and the sanitizers write to file descriptor 2 directly and still report.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  vadapt::set_log_level(vadapt::LogLevel::kQuiet);
  std::cerr.setstate(std::ios::badbit);
  return 0;
}

namespace vadapt::fuzz {

inline const std::string& scratch_dir() {
  // Never destroyed: the exit handler that removes the folder runs after static destructors.
  static const std::string* dir = [] {
    std::string tmpl = (std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : "/tmp") + std::string("/vadapt-fuzz-XXXXXX");
    if (!mkdtemp(tmpl.data())) std::abort();
    std::atexit([] { std::error_code ec; std::filesystem::remove_all(*dir, ec); });
    return new std::string(tmpl);
  }();
  return *dir;
}

// Writes `size` bytes to scratch_dir()/name and returns the path.
inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  std::string path = scratch_dir() + "/" + name;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!f) std::abort();
  return path;
}

inline std::string write_text(const std::string& name, const std::string& text) {
  return write_input(name, reinterpret_cast<const uint8_t*>(text.data()), text.size());
}

}  // namespace vadapt::fuzz

// Project error type: every failure caused by a user's file, config or argument is reported
// through VadaptError, carrying the file, the key/field and what was expected. The library
// never exits; main() and the server catch and report.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace vadapt {

class VadaptError : public std::runtime_error {
 public:
  VadaptError(std::string file, std::string key, const std::string& what)
      : std::runtime_error(format(file, key, what)), file_(std::move(file)), key_(std::move(key)) {}
  explicit VadaptError(const std::string& what) : std::runtime_error(what) {}

  const std::string& file() const { return file_; }
  const std::string& key() const { return key_; }

 private:
  static std::string format(const std::string& file, const std::string& key, const std::string& what) {
    std::string s;
    if (!file.empty()) s += file;
    if (!key.empty()) s += (s.empty() ? "" : ": ") + std::string("'") + key + "'";
    if (!s.empty()) s += ": ";
    return s + what;
  }
  std::string file_;
  std::string key_;
};

// Builds a message from streamable parts: fail_if(cond, file, key, "expected ", n, " got ", m).
template <typename... Parts>
std::string cat(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  return os.str();
}

template <typename... Parts>
[[noreturn]] void raise(const std::string& file, const std::string& key, const Parts&... parts) {
  throw VadaptError(file, key, cat(parts...));
}

}  // namespace vadapt

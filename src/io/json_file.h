// JSON config reading with errors that name the file and the key, and typed getters.
#pragma once

#include <nlohmann/json.hpp>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/error.h"

namespace vadapt::io {

nlohmann::json read_json(const std::string& path);

// A value as it appears in an error message: JSON text (bytes that are not UTF-8, which a YAML
// recipe may hold, as U+FFFD), cut after 200 characters.
inline std::string show(const nlohmann::json& v) {
  std::string s = v.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  return s.size() > 200 ? s.substr(0, 200) + "..." : s;
}

// v.get<T>(), except that a number with a fraction or out of T's range is refused for an integer
// T (nlohmann converts a float with a bare cast: undefined behaviour out of range).
template <typename T>
T get_exact(const nlohmann::json& v) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    if (v.is_number_float()) {
      const double d = v.get<double>(), lo = static_cast<double>(std::numeric_limits<T>::min()),
                   hi = static_cast<double>(std::numeric_limits<T>::max());
      if (!(d >= lo && d < hi) || d != std::trunc(d)) throw std::out_of_range("not an integer of the expected range");
      return static_cast<T>(d);
    }
  }
  return v.get<T>();
}

// Typed access: `file` and `key` name the place in errors.
template <typename T>
T json_get(const nlohmann::json& j, const std::string& key, const std::string& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) raise(file, key, "missing required key");
  try {
    return get_exact<T>(*it);
  } catch (const std::exception&) {
    raise(file, key, "has the wrong type (", it->type_name(), ": ", show(*it), ")");
  }
}

template <typename T>
T json_get_or(const nlohmann::json& j, const std::string& key, const T& fallback, const std::string& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return get_exact<T>(*it);
  } catch (const std::exception&) {
    raise(file, key, "has the wrong type (", it->type_name(), ": ", show(*it), ")");
  }
}

}  // namespace vadapt::io

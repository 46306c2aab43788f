// JSON config reading with errors that name the file and the key, and typed getters.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "common/error.h"

namespace vadapt::io {

nlohmann::json read_json(const std::string& path);

// Typed access: `file` and `key` name the place in errors.
template <typename T>
T json_get(const nlohmann::json& j, const std::string& key, const std::string& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) raise(file, key, "missing required key");
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    raise(file, key, "has the wrong type (", it->type_name(), ": ", it->dump(), ")");
  }
}

template <typename T>
T json_get_or(const nlohmann::json& j, const std::string& key, const T& fallback, const std::string& file) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    raise(file, key, "has the wrong type (", it->type_name(), ": ", it->dump(), ")");
  }
}

}  // namespace vadapt::io

// JSON file reading with file-naming errors.
#include "io/json_file.h"

#include "io/atomic_file.h"

namespace vadapt::io {

nlohmann::json read_json(const std::string& path) {
  std::string text = read_text_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    raise(path, "", "invalid JSON at byte ", e.byte, ": ", e.what());
  } catch (const nlohmann::json::exception& e) {  // e.g. a number too large for a double (found by the fuzzers)
    raise(path, "", "invalid JSON: ", e.what());
  }
}

}  // namespace vadapt::io

// "${name}" expansion in recipe paths.
#include "io/path_vars.h"

#include <cctype>
#include <cstdlib>
#include <filesystem>

#include "common/error.h"

namespace vadapt::io {

std::string expand_vars(const std::string& s) {
  std::string out = s;
  for (size_t at = out.find("${"); at != std::string::npos; at = out.find("${", at)) {
    size_t end = out.find('}', at);
    if (end == std::string::npos) raise(s, "", "unterminated ${ in a recipe path");
    std::string name = out.substr(at + 2, end - at - 2), env_name = "VADAPT_";
    for (char c : name) env_name += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    env_name += "_DIR";
    const char* env = std::getenv(env_name.c_str());
    std::string value;
    if (env) value = env;
    else if (name == "shared") value = (std::filesystem::current_path() / ".." / "shared").lexically_normal().string();
    else if (name == "synth") value = "runs/synth-data";
    else raise(s, "", "unknown variable ${", name, "} (set ", env_name, ")");
    out = out.substr(0, at) + value + out.substr(end + 1);
    at += value.size();
  }
  return out;
}

}  // namespace vadapt::io

// VlmSpec <-> adapter_config.json: the generic keys, then the method's own.
#include "vlm/vlm_spec.h"

#include "common/error.h"
#include "io/json_file.h"
#include "methods/registry.h"

namespace vadapt::vlm {
namespace {
const char* kGeneric[] = {"method", "base_model_name_or_path", "vision_tower", "preprocess", "template", "system_prompt", "dtype", "seed", "task_type"};
}

nlohmann::json VlmSpec::to_json() const {
  nlohmann::json j = {{"method", method},   {"base_model_name_or_path", llm}, {"vision_tower", vision}, {"preprocess", preprocess},
                      {"template", template_name}, {"dtype", dtype}, {"seed", seed}, {"task_type", "CAUSAL_LM"}};
  if (system_prompt) j["system_prompt"] = *system_prompt;
  for (const auto& [k, v] : options.items()) j[k] = v;
  return j;
}

VlmSpec VlmSpec::from_json(const nlohmann::json& j, const std::string& src) {
  VlmSpec s;
  s.method = io::json_get_or<std::string>(j, "method", "llava", src);
  auto method = methods::create(s.method, cat(src, ": method"));
  s.llm = io::json_get<std::string>(j, "base_model_name_or_path", src);
  s.vision = io::json_get_or<std::string>(j, "vision_tower", "", src);
  s.preprocess = io::json_get_or<std::string>(j, "preprocess", "", src);
  s.template_name = io::json_get_or<std::string>(j, "template", s.template_name, src);
  if (j.contains("system_prompt") && !j["system_prompt"].is_null())
    s.system_prompt = io::json_get<std::string>(j, "system_prompt", src);
  s.dtype = io::json_get_or<std::string>(j, "dtype", s.dtype, src);
  s.seed = io::json_get_or<uint64_t>(j, "seed", 0, src);
  s.options = nlohmann::json::object();
  for (const auto& [k, v] : j.items())
    if (std::find(std::begin(kGeneric), std::end(kGeneric), k) == std::end(kGeneric)) s.options[k] = v;
  method->configure(s.options, src);  // validates the method's fields now, naming the file
  s.options = method->config();
  return s;
}

}  // namespace vadapt::vlm

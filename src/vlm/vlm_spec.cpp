// VlmSpec <-> adapter_config.json.
#include "vlm/vlm_spec.h"

#include "common/error.h"
#include "io/json_file.h"

namespace vadapt::vlm {

nlohmann::json VlmSpec::to_json() const {
  nlohmann::json j = {{"method", method},
                      {"base_model_name_or_path", llm},
                      {"vision_tower", vision},
                      {"mm_projector_type", connector},
                      {"mm_vision_select_layer", feature_layer},
                      {"mm_pool", pool},
                      {"mm_feature_norm", feature_norm},
                      {"preprocess", preprocess},
                      {"template", template_name},
                      {"tune", tune},
                      {"dtype", dtype},
                      {"seed", seed},
                      {"task_type", "CAUSAL_LM"}};
  if (tune == "lora" || tune == "qlora") {
    if (tune == "qlora") j["quantization"] = {{"bits", 4}, {"type", "nf4"}, {"double_quant", true}, {"block", 64}};
    j["peft_type"] = "LORA";
    j["r"] = lora.lora.r;
    j["lora_alpha"] = lora.lora.alpha;
    j["lora_dropout"] = lora.lora.dropout;
    j["target_modules"] = lora.target_modules;
    j["bias"] = "none";
  }
  return j;
}

VlmSpec VlmSpec::from_json(const nlohmann::json& j, const std::string& src) {
  VlmSpec s;
  s.method = io::json_get_or<std::string>(j, "method", "llava", src);
  if (s.method != "llava") raise(src, "method", "unsupported method '", s.method, "' (implemented: llava)");
  s.llm = io::json_get<std::string>(j, "base_model_name_or_path", src);
  s.vision = io::json_get<std::string>(j, "vision_tower", src);
  s.connector = io::json_get_or<std::string>(j, "mm_projector_type", s.connector, src);
  s.feature_layer = io::json_get_or<int64_t>(j, "mm_vision_select_layer", s.feature_layer, src);
  s.pool = io::json_get_or<int64_t>(j, "mm_pool", 0, src);
  s.feature_norm = io::json_get_or<std::string>(j, "mm_feature_norm", "", src);
  if (!s.feature_norm.empty() && s.feature_norm != "standardize")
    raise(src, "mm_feature_norm", "expected \"\" or \"standardize\", got '", s.feature_norm, "'");
  if (s.pool < 0) raise(src, "mm_pool", "expected 0 (no pooling) or a positive grid side, got ", s.pool);
  s.preprocess = io::json_get_or<std::string>(j, "preprocess", "", src);
  s.template_name = io::json_get_or<std::string>(j, "template", s.template_name, src);
  s.tune = io::json_get_or<std::string>(j, "tune", s.tune, src);
  if (s.tune != "projector" && s.tune != "lora" && s.tune != "qlora" && s.tune != "full")
    raise(src, "tune", "expected projector, lora, qlora or full, got '", s.tune, "'");
  s.dtype = io::json_get_or<std::string>(j, "dtype", s.dtype, src);
  s.seed = io::json_get_or<uint64_t>(j, "seed", 0, src);
  if (s.tune == "lora" || s.tune == "qlora") {
    s.lora.lora.r = io::json_get<int64_t>(j, "r", src);
    s.lora.lora.alpha = io::json_get<double>(j, "lora_alpha", src);
    s.lora.lora.dropout = io::json_get_or<double>(j, "lora_dropout", 0.0, src);
    s.lora.target_modules = io::json_get_or<std::vector<std::string>>(j, "target_modules", s.lora.target_modules, src);
  }
  return s;
}

}  // namespace vadapt::vlm

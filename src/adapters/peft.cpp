// PEFT LoRA folders: config reading and strict weight loading.
#include "adapters/peft.h"

#include <filesystem>

#include "common/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/load.h"

namespace vadapt::adapters {

PeftLoraConfig read_peft_lora_config(const std::string& dir) {
  const std::string file = dir + "/adapter_config.json";
  auto j = io::read_json(file);
  PeftLoraConfig c;
  const auto type = io::json_get<std::string>(j, "peft_type", file);
  if (type != "LORA") raise(file, "peft_type", "expected LORA, got '", type, "' (only LoRA adapters are supported)");
  c.targets.lora.r = io::json_get<int64_t>(j, "r", file);
  if (c.targets.lora.r <= 0) raise(file, "r", "must be positive, got ", c.targets.lora.r);
  c.targets.lora.alpha = io::json_get_or<double>(j, "lora_alpha", 8.0, file);  // PEFT's default
  c.targets.lora.dropout = io::json_get_or<double>(j, "lora_dropout", 0.0, file);
  c.targets.lora.rslora = io::json_get_or<bool>(j, "use_rslora", false, file);
  c.base_model = j.contains("base_model_name_or_path") && j["base_model_name_or_path"].is_string() ? j["base_model_name_or_path"].get<std::string>() : "";
  if (!j.contains("target_modules") || j["target_modules"].is_null())
    raise(file, "target_modules", "missing (PEFT fills it from the architecture; write the module names)");
  const auto& tm = j["target_modules"];
  if (tm.is_string()) {
    c.targets.target_regex = tm.get<std::string>();
    c.targets.target_modules.clear();
  } else if (tm.is_array()) {
    c.targets.target_modules.clear();
    for (const auto& t : tm) {
      if (!t.is_string()) raise(file, "target_modules", "expected module names (strings)");
      c.targets.target_modules.push_back(t.get<std::string>());
    }
    if (c.targets.target_modules.empty()) raise(file, "target_modules", "is empty");
  } else {
    raise(file, "target_modules", "expected a list of module names or a regular expression");
  }
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const auto& l = j["layers_to_transform"];
    if (l.is_number_integer()) c.targets.layers.push_back(l.get<int64_t>());
    else if (l.is_array())
      for (const auto& x : l) {
        if (!x.is_number_integer()) raise(file, "layers_to_transform", "expected layer indices");
        c.targets.layers.push_back(x.get<int64_t>());
      }
    else raise(file, "layers_to_transform", "expected an index or a list of indices");
  }
  // What would change the math and is not implemented: refused, never ignored.
  if (io::json_get_or<bool>(j, "use_dora", false, file)) raise(file, "use_dora", "DoRA adapters are not supported");
  if (io::json_get_or<bool>(j, "fan_in_fan_out", false, file)) raise(file, "fan_in_fan_out", "only Linear layers (fan_in_fan_out: false) are supported");
  const auto bias = io::json_get_or<std::string>(j, "bias", "none", file);
  if (bias != "none") raise(file, "bias", "only bias: none is supported, got '", bias, "'");
  for (const char* k : {"rank_pattern", "alpha_pattern"})
    if (j.contains(k) && !j[k].is_null() && !j[k].empty()) raise(file, k, "per-module ranks / alphas are not supported");
  if (j.contains("modules_to_save") && !j["modules_to_save"].is_null() && !j["modules_to_save"].empty())
    raise(file, "modules_to_save", "fully trained extra modules are not supported");
  // Newer PEFT options (0.14 - 0.21) that change which weights exist or what they compute.
  for (const char* k : {"exclude_modules", "target_parameters", "trainable_token_indices", "layer_replication", "alora_invocation_tokens"})
    if (j.contains(k) && !j[k].is_null() && !j[k].empty()) raise(file, k, "is set; this PEFT option is not supported");
  for (const char* k : {"lora_bias", "use_qalora", "use_bdlora"})
    if (j.contains(k) && j[k].is_boolean() && j[k].get<bool>()) raise(file, k, "is true; this PEFT option is not supported");
  return c;
}

int64_t load_peft_lora(model::LlamaForCausalLMImpl& lm, AdapterSetImpl& set, const std::string& dir) {
  auto cfg = read_peft_lora_config(dir);
  std::string weights = dir + "/adapter_model.safetensors";
  if (!std::filesystem::exists(weights) && std::filesystem::exists(dir + "/adapter_model.bin"))
    weights = dir + "/adapter_model.bin";  // torch.save format, read without running pickle code
  if (!std::filesystem::exists(weights)) raise(dir + "/adapter_model.safetensors", "", "missing (and no adapter_model.bin)");
  const int64_t n = set.attach_lora(lm, cfg.targets);
  model::load_strict(set, io::TensorSource::open(weights), {}, "base_model.model.");  // PEFT's names; every tensor, nothing else
  set.eval();  // inference: no LoRA dropout
  return n;
}

}  // namespace vadapt::adapters

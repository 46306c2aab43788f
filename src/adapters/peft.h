// LoRA adapters made by Hugging Face PEFT (adapter_config.json + adapter_model.safetensors),
// applied to a Llama-family model: PEFT's target_modules (a list of name suffixes, or one
// regular expression over the whole module name), layers_to_transform, use_rslora, and its key
// names (base_model.model.<module>.lora_A.weight). Options that change the math and are not
// implemented (DoRA, bias training, rank / alpha patterns, modules_to_save, fan_in_fan_out) are
// refused with the field named, never ignored.
#pragma once

#include <string>

#include "adapters/adapter_set.h"
#include "model/llama.h"

namespace vadapt::adapters {

struct PeftLoraConfig {
  LoraTargetOptions targets;
  std::string base_model;  // base_model_name_or_path, informational
};

// Reads DIR/adapter_config.json as PEFT writes it; errors name the file and field.
PeftLoraConfig read_peft_lora_config(const std::string& dir);

// Attaches LoRA to `lm` per DIR's config and loads DIR/adapter_model.safetensors strictly (every
// expected tensor present with its shape, nothing unexpected); returns the number of adapted
// modules, in eval mode (no dropout). The weights are converted to the LoRA parameters' dtype.
int64_t load_peft_lora(model::LlamaForCausalLMImpl& lm, AdapterSetImpl& set, const std::string& dir);

}  // namespace vadapt::adapters

// AdapterSet: owns every adapter of a model, registered under the name of the module it
// attaches to (PEFT's target_modules idea), beside — not inside — the frozen base modules.
// Its named_parameters() are exactly the adapter checkpoint; the base keeps exactly the HF keys.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "adapters/lora.h"
#include "model/llama.h"

namespace vadapt::adapters {

struct LoraTargetOptions {
  LoraOptions lora;
  // Module-name suffixes to adapt (LLaVA: every linear of the LLM except lm_head).
  std::vector<std::string> target_modules{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
  // PEFT's other forms: a regular expression the whole module name must match (instead of the
  // list), and the decoder layer indices to adapt (empty: all).
  std::string target_regex;
  std::vector<int64_t> layers;
};

class AdapterSetImpl : public torch::nn::Module {
 public:
  AdapterSetImpl() = default;
  // Adds LoRA to every Projection of `lm` whose name ends with a target; returns how many.
  int64_t attach_lora(model::LlamaForCausalLMImpl& lm, const LoraTargetOptions& o);
  // Folds every LoRA delta into its base weight and detaches the adapters.
  void merge_into(model::LlamaForCausalLMImpl& lm);
  const std::vector<std::pair<std::string, Lora>>& loras() const { return loras_; }

 private:
  std::vector<std::pair<std::string, Lora>> loras_;
};
TORCH_MODULE(AdapterSet);

}  // namespace vadapt::adapters

// What a recipe stage says about the model: the method, the frozen parts, the template and
// preprocessing (generic), plus the method's own fields (`options`, exactly as they appear in
// adapter_config.json; LLaVA's include PEFT's keys for LoRA). Saved as adapter_config.json
// beside every adapter checkpoint, so a checkpoint alone says how to rebuild the model.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "io/hf_config.h"

namespace vadapt::vlm {

struct VlmSpec {
  std::string method = "llava";
  std::string llm;         // Hugging Face Llama folder
  std::string vision;      // ViT / CLIP folder; empty for a text-only method
  std::string preprocess;  // clipN | llava_padN | imagenetN | vitN; empty: vision folder's config
  std::string template_name = "vicuna_v1";
  std::optional<std::string> system_prompt;  // replaces the template's default ("" = none)
  std::string dtype = "float32";
  uint64_t seed = 0;
  nlohmann::json options = nlohmann::json::object();  // the method's adapter_config.json fields
  // Not saved: where the LLM and the vision tower sit in their folders when a folder holds more
  // than one model (a merged LLaVA folder: the projector beside the LLM; llava-hf: all three).
  io::FolderPart llm_part, vision_part;

  nlohmann::json to_json() const;
  static VlmSpec from_json(const nlohmann::json& j, const std::string& source);
};

}  // namespace vadapt::vlm

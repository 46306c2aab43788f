// What a recipe says about the model: the frozen parts, the connector, what trains, the
// template and preprocessing. Saved as adapter_config.json beside every adapter checkpoint
// (PEFT-compatible keys for LoRA: peft_type, r, lora_alpha, lora_dropout, target_modules,
// base_model_name_or_path), so a checkpoint alone says how to rebuild the model.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "adapters/adapter_set.h"

namespace vadapt::vlm {

struct VlmSpec {
  std::string method = "llava";
  std::string llm;                     // Hugging Face Llama folder
  std::string vision;                  // ViT / CLIP folder
  std::string connector = "mlp2x_gelu";  // linear | mlp2x_gelu | identity
  int64_t feature_layer = -2;          // mm_vision_select_layer
  std::string feature_norm;            // mm_feature_norm: "" | "standardize" (per-channel z-score, statistics from the training images)
  int64_t pool = 0;                    // mm_pool: > 0 average-pools the patch grid to pool x pool tokens before the projector
  std::string preprocess;              // clipN | llava_padN | imagenetN | vitN; empty: vision folder's config
  std::string template_name = "vicuna_v1";
  std::string tune = "projector";      // projector | lora | qlora | full (the LLM; the projector always trains)
  adapters::LoraTargetOptions lora;
  std::string dtype = "float32";
  uint64_t seed = 0;

  nlohmann::json to_json() const;
  static VlmSpec from_json(const nlohmann::json& j, const std::string& source);
};

}  // namespace vadapt::vlm

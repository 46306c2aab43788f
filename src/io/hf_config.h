// Hugging Face config.json readers for the frozen models vadapt runs: LlamaForCausalLM,
// ViTModel / ViTForImageClassification, CLIPVisionModel(WithProjection) and the vision_config
// of a full CLIPModel. Field names are spelled exactly as the HF keys.
#pragma once

#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace vadapt::io {

struct RopeScaling {
  std::string rope_type;  // "linear" or "llama3"
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct LlamaConfig {
  std::string source;  // the config.json path (for messages)
  std::string model_type = "llama";
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;
  int64_t num_key_value_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  std::optional<RopeScaling> rope_scaling;
  bool attention_bias = false;
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::string torch_dtype = "float32";
  int64_t bos_token_id = 1;
  std::vector<int64_t> eos_token_ids{2};

  static LlamaConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
  int64_t parameter_count() const;
};

struct ViTConfig {
  std::string source;
  std::string architecture = "ViTModel";  // or ViTForImageClassification
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";
  double layer_norm_eps = 1e-12;
  int64_t image_size = 224;
  int64_t patch_size = 16;
  int64_t num_channels = 3;
  bool qkv_bias = true;
  int64_t num_labels = 0;  // classifier rows when ViTForImageClassification

  static ViTConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
};

struct ClipVisionConfig {
  std::string source;
  std::string architecture = "CLIPVisionModel";  // CLIPVisionModelWithProjection, CLIPModel
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t image_size = 224;
  int64_t patch_size = 32;
  int64_t num_channels = 3;
  int64_t projection_dim = 0;  // 0: no visual_projection
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;

  static ClipVisionConfig from_json(const nlohmann::json& j, const std::string& source);
  nlohmann::json to_json() const;
};

enum class ModelKind { kLlama, kViT, kClipVision };

// Where one model sits in a folder that holds several (a llava-hf LlavaForConditionalGeneration
// folder): its config is config.json's `config_key` object (fields left out take the Hugging
// Face class defaults, as transformers fills them), its tensors are under `prefix`, and `ignore`
// names the folder's other tensors (load_strict rules). Empty: the folder is the model.
struct FolderPart {
  std::string config_key;
  std::string prefix;
  std::vector<std::string> ignore;
};
// config.json of `dir`, or its part's object over `defaults`; `label` names it in errors.
nlohmann::json part_config(const std::string& dir, const FolderPart& part, const nlohmann::json& defaults, std::string& label);
// LlamaConfig's Hugging Face defaults (LLaMA-7B shape), for partial text_config objects.
const nlohmann::json& llama_config_defaults();

// Reads DIR/config.json (or a config.json path) and says which family it is; unknown
// model_type values get an error that lists the supported ones.
ModelKind detect_model_kind(const nlohmann::json& j, const std::string& source);
std::string config_path_of(const std::string& dir_or_file);
torch::ScalarType dtype_from_name(const std::string& name, const std::string& where);

}  // namespace vadapt::io

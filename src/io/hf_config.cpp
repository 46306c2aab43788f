// Hugging Face config.json parsing with defaults taken from transformers' config classes.
#include "io/hf_config.h"

#include <filesystem>

#include "common/error.h"
#include "io/json_file.h"

namespace vadapt::io {
namespace {

constexpr const char* kSupported = "llama (LlamaForCausalLM; llava_llama: LLaVA checkpoints), vit (ViTModel, ViTForImageClassification), "
                                   "clip_vision_model (CLIPVisionModel[WithProjection]), clip (CLIPModel vision tower)";

void require_positive(int64_t v, const char* key, const std::string& src) {
  if (v <= 0) raise(src, key, "must be a positive integer, got ", v);
}

std::string first_architecture(const nlohmann::json& j, const std::string& fallback) {
  auto it = j.find("architectures");
  if (it != j.end() && it->is_array() && !it->empty() && (*it)[0].is_string()) return (*it)[0].get<std::string>();
  return fallback;
}

}  // namespace

std::string config_path_of(const std::string& dir_or_file) {
  namespace fs = std::filesystem;
  if (fs::is_directory(dir_or_file)) return (fs::path(dir_or_file) / "config.json").string();
  return dir_or_file;
}

nlohmann::json part_config(const std::string& dir, const FolderPart& part, const nlohmann::json& defaults, std::string& label) {
  label = config_path_of(dir);
  auto j = read_json(label);
  if (part.config_key.empty()) return j;
  if (!j.contains(part.config_key) || !j[part.config_key].is_object()) raise(label, part.config_key, "missing object");
  nlohmann::json out = defaults.is_object() ? defaults : nlohmann::json::object();
  for (const auto& [k, v] : j[part.config_key].items()) out[k] = v;
  label += " " + part.config_key;
  return out;
}

const nlohmann::json& llama_config_defaults() {
  static const nlohmann::json d = {{"model_type", "llama"}, {"vocab_size", 32000}, {"hidden_size", 4096}, {"intermediate_size", 11008},
                                   {"num_hidden_layers", 32}, {"num_attention_heads", 32}, {"hidden_act", "silu"},
                                   {"max_position_embeddings", 2048}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000.0},
                                   {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2}};
  return d;
}

torch::ScalarType dtype_from_name(const std::string& name, const std::string& where) {
  if (name == "float32" || name == "f32" || name == "fp32") return torch::kFloat32;
  if (name == "bfloat16" || name == "bf16") return torch::kBFloat16;
  if (name == "float16" || name == "f16" || name == "fp16" || name == "half") return torch::kFloat16;
  raise(where, "dtype", "unknown dtype '", name, "' (expected float32, bfloat16 or float16)");
}

ModelKind detect_model_kind(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) raise(source, "", "config must be a JSON object");
  auto it = j.find("model_type");
  if (it == j.end() || !it->is_string())
    raise(source, "model_type", "missing; supported model types: ", kSupported);
  std::string mt = it->get<std::string>();
  if (mt == "llama" || mt == "llava_llama") return ModelKind::kLlama;  // llava_llama: LLaVA's LlavaLlamaForCausalLM (the LLM + mm_*)
  if (mt == "vit") return ModelKind::kViT;
  if (mt == "clip_vision_model" || mt == "clip") return ModelKind::kClipVision;
  raise(source, "model_type", "unsupported model_type '", mt, "'; supported: ", kSupported);
}

LlamaConfig LlamaConfig::from_json(const nlohmann::json& j, const std::string& src) {
  LlamaConfig c;
  c.source = src;
  c.model_type = json_get<std::string>(j, "model_type", src);
  if (c.model_type != "llama" && c.model_type != "llava_llama")
    raise(src, "model_type", "expected 'llama' (or LLaVA's 'llava_llama'), got '", c.model_type, "'");
  c.hidden_size = json_get<int64_t>(j, "hidden_size", src);
  c.intermediate_size = json_get<int64_t>(j, "intermediate_size", src);
  c.num_hidden_layers = json_get<int64_t>(j, "num_hidden_layers", src);
  c.num_attention_heads = json_get<int64_t>(j, "num_attention_heads", src);
  c.vocab_size = json_get<int64_t>(j, "vocab_size", src);
  require_positive(c.hidden_size, "hidden_size", src);
  require_positive(c.intermediate_size, "intermediate_size", src);
  require_positive(c.num_hidden_layers, "num_hidden_layers", src);
  require_positive(c.num_attention_heads, "num_attention_heads", src);
  require_positive(c.vocab_size, "vocab_size", src);
  c.num_key_value_heads = json_get_or<int64_t>(j, "num_key_value_heads", c.num_attention_heads, src);
  require_positive(c.num_key_value_heads, "num_key_value_heads", src);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    raise(src, "num_key_value_heads", c.num_key_value_heads, " does not divide num_attention_heads ",
          c.num_attention_heads);
  if (c.hidden_size % c.num_attention_heads != 0 && !j.contains("head_dim"))
    raise(src, "num_attention_heads", c.num_attention_heads, " does not divide hidden_size ", c.hidden_size,
          " and no head_dim is given");
  c.head_dim = json_get_or<int64_t>(j, "head_dim", c.hidden_size / c.num_attention_heads, src);
  require_positive(c.head_dim, "head_dim", src);
  if (c.head_dim % 2 != 0) raise(src, "head_dim", "must be even for rotary embeddings, got ", c.head_dim);
  c.max_position_embeddings = json_get_or<int64_t>(j, "max_position_embeddings", 2048, src);
  require_positive(c.max_position_embeddings, "max_position_embeddings", src);
  c.rms_norm_eps = json_get_or<double>(j, "rms_norm_eps", 1e-6, src);
  c.rope_theta = json_get_or<double>(j, "rope_theta", 10000.0, src);
  c.attention_bias = json_get_or<bool>(j, "attention_bias", false, src);
  c.mlp_bias = json_get_or<bool>(j, "mlp_bias", false, src);
  c.tie_word_embeddings = json_get_or<bool>(j, "tie_word_embeddings", false, src);
  c.torch_dtype = json_get_or<std::string>(j, "torch_dtype", "float32", src);
  std::string act = json_get_or<std::string>(j, "hidden_act", "silu", src);
  if (act != "silu") raise(src, "hidden_act", "expected 'silu' for Llama, got '", act, "'");
  c.bos_token_id = json_get_or<int64_t>(j, "bos_token_id", 1, src);
  auto eos = j.find("eos_token_id");
  if (eos != j.end() && !eos->is_null()) {
    c.eos_token_ids.clear();
    if (eos->is_array()) {
      for (const auto& e : *eos) {
        if (!e.is_number_integer()) raise(src, "eos_token_id", "entries must be integers");
        c.eos_token_ids.push_back(e.get<int64_t>());
      }
    } else if (eos->is_number_integer()) {
      c.eos_token_ids.push_back(eos->get<int64_t>());
    } else {
      raise(src, "eos_token_id", "must be an integer or a list of integers");
    }
  }
  auto rs = j.find("rope_scaling");
  if (rs != j.end() && !rs->is_null()) {
    if (!rs->is_object()) raise(src, "rope_scaling", "must be an object or null");
    RopeScaling r;
    r.rope_type = json_get_or<std::string>(*rs, "rope_type", json_get_or<std::string>(*rs, "type", "", src), src);
    r.factor = json_get_or<double>(*rs, "factor", 1.0, src);
    if (r.rope_type == "llama3") {
      r.low_freq_factor = json_get<double>(*rs, "low_freq_factor", src + " rope_scaling");
      r.high_freq_factor = json_get<double>(*rs, "high_freq_factor", src + " rope_scaling");
      r.original_max_position_embeddings =
          json_get<int64_t>(*rs, "original_max_position_embeddings", src + " rope_scaling");
      if (r.high_freq_factor <= r.low_freq_factor)
        raise(src, "rope_scaling.high_freq_factor", "must exceed low_freq_factor");
    } else if (r.rope_type == "default") {
      r.factor = 1.0;
    } else if (r.rope_type != "linear") {
      raise(src, "rope_scaling.rope_type", "unsupported '", r.rope_type, "' (supported: linear, llama3, default)");
    }
    if (r.factor <= 0) raise(src, "rope_scaling.factor", "must be positive");
    if (r.rope_type != "default") c.rope_scaling = r;
  }
  return c;
}

nlohmann::json LlamaConfig::to_json() const {
  nlohmann::json j = {{"architectures", {"LlamaForCausalLM"}},
                      {"model_type", "llama"},
                      {"hidden_size", hidden_size},
                      {"intermediate_size", intermediate_size},
                      {"num_hidden_layers", num_hidden_layers},
                      {"num_attention_heads", num_attention_heads},
                      {"num_key_value_heads", num_key_value_heads},
                      {"head_dim", head_dim},
                      {"vocab_size", vocab_size},
                      {"max_position_embeddings", max_position_embeddings},
                      {"hidden_act", "silu"},
                      {"rms_norm_eps", rms_norm_eps},
                      {"rope_theta", rope_theta},
                      {"attention_bias", attention_bias},
                      {"mlp_bias", mlp_bias},
                      {"tie_word_embeddings", tie_word_embeddings},
                      {"torch_dtype", torch_dtype},
                      {"bos_token_id", bos_token_id}};
  j["eos_token_id"] = eos_token_ids.size() == 1 ? nlohmann::json(eos_token_ids[0]) : nlohmann::json(eos_token_ids);
  if (rope_scaling) {
    j["rope_scaling"] = {{"rope_type", rope_scaling->rope_type}, {"factor", rope_scaling->factor}};
    if (rope_scaling->rope_type == "llama3") {
      j["rope_scaling"]["low_freq_factor"] = rope_scaling->low_freq_factor;
      j["rope_scaling"]["high_freq_factor"] = rope_scaling->high_freq_factor;
      j["rope_scaling"]["original_max_position_embeddings"] = rope_scaling->original_max_position_embeddings;
    }
  } else {
    j["rope_scaling"] = nullptr;
  }
  return j;
}

int64_t LlamaConfig::parameter_count() const {
  const int64_t d = hidden_size, q = num_attention_heads * head_dim, kv = num_key_value_heads * head_dim;
  int64_t attn = d * q + 2 * d * kv + q * d + (attention_bias ? q + 2 * kv + d : 0);
  int64_t mlp = 3 * d * intermediate_size + (mlp_bias ? 2 * intermediate_size + d : 0);
  int64_t layer = attn + mlp + 2 * d;
  int64_t total = vocab_size * d + num_hidden_layers * layer + d;
  if (!tie_word_embeddings) total += vocab_size * d;
  return total;
}

ViTConfig ViTConfig::from_json(const nlohmann::json& j, const std::string& src) {
  ViTConfig c;
  c.source = src;
  c.architecture = first_architecture(j, "ViTModel");
  if (c.architecture != "ViTModel" && c.architecture != "ViTForImageClassification")
    raise(src, "architectures", "unsupported ViT architecture '", c.architecture,
          "' (supported: ViTModel, ViTForImageClassification)");
  c.hidden_size = json_get_or<int64_t>(j, "hidden_size", 768, src);
  c.num_hidden_layers = json_get_or<int64_t>(j, "num_hidden_layers", 12, src);
  c.num_attention_heads = json_get_or<int64_t>(j, "num_attention_heads", 12, src);
  c.intermediate_size = json_get_or<int64_t>(j, "intermediate_size", 3072, src);
  c.hidden_act = json_get_or<std::string>(j, "hidden_act", "gelu", src);
  c.layer_norm_eps = json_get_or<double>(j, "layer_norm_eps", 1e-12, src);
  c.image_size = json_get_or<int64_t>(j, "image_size", 224, src);
  c.patch_size = json_get_or<int64_t>(j, "patch_size", 16, src);
  c.num_channels = json_get_or<int64_t>(j, "num_channels", 3, src);
  c.qkv_bias = json_get_or<bool>(j, "qkv_bias", true, src);
  for (auto [v, k] : {std::pair{c.hidden_size, "hidden_size"}, {c.num_hidden_layers, "num_hidden_layers"},
                      {c.num_attention_heads, "num_attention_heads"}, {c.intermediate_size, "intermediate_size"},
                      {c.image_size, "image_size"}, {c.patch_size, "patch_size"}, {c.num_channels, "num_channels"}})
    require_positive(v, k, src);
  if (c.hidden_size % c.num_attention_heads) raise(src, "num_attention_heads", "must divide hidden_size");
  if (c.image_size % c.patch_size) raise(src, "patch_size", "must divide image_size");
  if (c.hidden_act != "gelu" && c.hidden_act != "gelu_new" && c.hidden_act != "quick_gelu")
    raise(src, "hidden_act", "unsupported '", c.hidden_act, "' (gelu, gelu_new, quick_gelu)");
  if (c.architecture == "ViTForImageClassification") {
    auto it = j.find("id2label");
    c.num_labels = (it != j.end() && it->is_object()) ? static_cast<int64_t>(it->size())
                                                      : json_get_or<int64_t>(j, "num_labels", 2, src);
  }
  return c;
}

nlohmann::json ViTConfig::to_json() const {
  nlohmann::json j = {{"architectures", {architecture}}, {"model_type", "vit"},
                      {"hidden_size", hidden_size},     {"num_hidden_layers", num_hidden_layers},
                      {"num_attention_heads", num_attention_heads}, {"intermediate_size", intermediate_size},
                      {"hidden_act", hidden_act},       {"layer_norm_eps", layer_norm_eps},
                      {"image_size", image_size},       {"patch_size", patch_size},
                      {"num_channels", num_channels},   {"qkv_bias", qkv_bias}};
  if (architecture == "ViTForImageClassification") {
    nlohmann::json id2label = nlohmann::json::object();
    for (int64_t i = 0; i < num_labels; ++i) id2label[std::to_string(i)] = "LABEL_" + std::to_string(i);
    j["id2label"] = id2label;
  }
  return j;
}

ClipVisionConfig ClipVisionConfig::from_json(const nlohmann::json& j_in, const std::string& src) {
  ClipVisionConfig c;
  c.source = src;
  std::string mt = json_get<std::string>(j_in, "model_type", src);
  const nlohmann::json* jp = &j_in;
  if (mt == "clip") {
    auto it = j_in.find("vision_config");
    if (it == j_in.end() || !it->is_object()) raise(src, "vision_config", "missing object in a CLIPModel config");
    jp = &*it;
    c.architecture = "CLIPModel";
    c.projection_dim = json_get_or<int64_t>(j_in, "projection_dim", 512, src);
  } else if (mt == "clip_vision_model") {
    c.architecture = first_architecture(j_in, "CLIPVisionModel");
    if (c.architecture != "CLIPVisionModel" && c.architecture != "CLIPVisionModelWithProjection")
      raise(src, "architectures", "unsupported '", c.architecture,
            "' (supported: CLIPVisionModel, CLIPVisionModelWithProjection)");
    if (c.architecture == "CLIPVisionModelWithProjection")
      c.projection_dim = json_get_or<int64_t>(j_in, "projection_dim", 512, src);
  } else {
    raise(src, "model_type", "expected 'clip' or 'clip_vision_model', got '", mt, "'");
  }
  const nlohmann::json& j = *jp;
  c.hidden_size = json_get_or<int64_t>(j, "hidden_size", 768, src);
  c.intermediate_size = json_get_or<int64_t>(j, "intermediate_size", 3072, src);
  c.num_hidden_layers = json_get_or<int64_t>(j, "num_hidden_layers", 12, src);
  c.num_attention_heads = json_get_or<int64_t>(j, "num_attention_heads", 12, src);
  c.image_size = json_get_or<int64_t>(j, "image_size", 224, src);
  c.patch_size = json_get_or<int64_t>(j, "patch_size", 32, src);
  c.num_channels = json_get_or<int64_t>(j, "num_channels", 3, src);
  c.hidden_act = json_get_or<std::string>(j, "hidden_act", "quick_gelu", src);
  c.layer_norm_eps = json_get_or<double>(j, "layer_norm_eps", 1e-5, src);
  for (auto [v, k] : {std::pair{c.hidden_size, "hidden_size"}, {c.num_hidden_layers, "num_hidden_layers"},
                      {c.num_attention_heads, "num_attention_heads"}, {c.intermediate_size, "intermediate_size"},
                      {c.image_size, "image_size"}, {c.patch_size, "patch_size"}, {c.num_channels, "num_channels"}})
    require_positive(v, k, src);
  if (c.hidden_size % c.num_attention_heads) raise(src, "num_attention_heads", "must divide hidden_size");
  if (c.image_size % c.patch_size) raise(src, "patch_size", "must divide image_size");
  if (c.hidden_act != "gelu" && c.hidden_act != "quick_gelu")
    raise(src, "hidden_act", "unsupported '", c.hidden_act, "' (gelu, quick_gelu)");
  return c;
}

nlohmann::json ClipVisionConfig::to_json() const {
  nlohmann::json j = {{"architectures", {architecture == "CLIPModel" ? "CLIPVisionModelWithProjection" : architecture}},
                      {"model_type", "clip_vision_model"},
                      {"hidden_size", hidden_size},
                      {"intermediate_size", intermediate_size},
                      {"num_hidden_layers", num_hidden_layers},
                      {"num_attention_heads", num_attention_heads},
                      {"image_size", image_size},
                      {"patch_size", patch_size},
                      {"num_channels", num_channels},
                      {"hidden_act", hidden_act},
                      {"layer_norm_eps", layer_norm_eps}};
  if (projection_dim > 0) j["projection_dim"] = projection_dim;
  return j;
}

}  // namespace vadapt::io

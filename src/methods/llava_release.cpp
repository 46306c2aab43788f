// LLaVA's own checkpoint layouts (haotian-liu/LLaVA train.py / builder.py), read and written
// without a conversion step:
//  merged     LlavaLlamaForCausalLM folder: the LLM's weights + model.mm_projector.*, config.json
//             = the LLM config + mm_* fields (mm_vision_tower, mm_projector_type, ...)
//  lora       the LoRA run's output: adapter_config.json + adapter_model.{safetensors,bin} (PEFT)
//             + non_lora_trainables.bin (base_model.model.model.mm_projector.*) + config.json
//  projector  the stage-1 output: mm_projector.bin (model.mm_projector.*) + config.json
// and Hugging Face's own layout of it:
//  llava-hf   LlavaForConditionalGeneration (transformers' convert_llava_weights_to_hf.py):
//             config.json {text_config, vision_config, image_token_index, ...}, tensors
//             language_model.*, vision_tower.*, multi_modal_projector.linear_1 / linear_2,
//             the tokenizer with <image> and <pad> added and the embeddings padded to 64.
// The base LLM of lora / projector folders and the vision tower are named in them by hub id or
// by a path of the machine that trained; FolderOverrides replace them.
#include <filesystem>

#include "adapters/peft.h"
#include "common/error.h"
#include "common/log.h"
#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "io/torch_bin.h"
#include "methods/llava.h"
#include "vlm/vision_language_model.h"

namespace vadapt::methods {
namespace fs = std::filesystem;
namespace {

const std::string kProjector = "mm_projector.";
const std::string kMergedProjector = "model.mm_projector.";
const std::string kLoraProjector = "base_model.model.model.mm_projector.";

std::vector<std::pair<std::string, torch::Tensor>> read_all(const std::string& path) {
  auto src = io::TensorSource::open(path);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& n : src.names()) out.emplace_back(n, src.tensor(n));
  return out;
}

// Tensors under `from` renamed to `to` (the rest is kept as is, so strict loading names it).
std::vector<std::pair<std::string, torch::Tensor>> renamed(std::vector<std::pair<std::string, torch::Tensor>> t,
                                                           const std::string& from, const std::string& to) {
  for (auto& [n, v] : t)
    if (n.rfind(from, 0) == 0) n = to + n.substr(from.size());
  return t;
}

bool has_llm_weights(const fs::path& d) {
  for (const char* f : {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"})
    if (fs::exists(d / f)) return true;
  return false;
}

enum class Kind { kNone, kMerged, kLora, kProjector, kHf };

const std::string kHfProjector = "multi_modal_projector.";

Kind kind_of(const fs::path& d) {
  if (!fs::is_directory(d)) return Kind::kNone;
  nlohmann::json j;  // config.json of a folder with model weights (merged / llava-hf), read once
  if (fs::exists(d / "config.json") && has_llm_weights(d)) j = io::read_json((d / "config.json").string());
  if (j.is_object() && j.value("model_type", "") == "llava") return Kind::kHf;
  if (fs::exists(d / "non_lora_trainables.bin") && fs::exists(d / "adapter_config.json")) return Kind::kLora;
  if (fs::exists(d / "mm_projector.bin")) return Kind::kProjector;
  if (j.is_object() && (j.contains("mm_projector_type") || j.contains("mm_vision_tower"))) return Kind::kMerged;
  return Kind::kNone;
}

// A path named by the folder: as written, or relative to the folder; else the override.
std::string local_path(const std::string& named, const fs::path& dir, const std::string& override_path, const std::string& file,
                       const char* key, const char* flag) {
  if (!override_path.empty()) return override_path;
  if (!named.empty() && fs::is_directory(named)) return named;
  if (!named.empty() && fs::is_directory(dir / named)) return (dir / named).string();
  raise(file, key, "'", named, "' is not a folder on this machine (a hub id or another machine's path): pass ", flag, " DIR");
}

int64_t vision_image_size(const std::string& vision) {
  const auto path = io::config_path_of(vision);
  auto j = io::read_json(path);
  const auto& v = j.contains("vision_config") ? j["vision_config"] : j;
  return io::json_get<int64_t>(v, "image_size", path);
}

}  // namespace

namespace {

std::optional<ReleaseFolder> read_llava_hf(const fs::path& dir, const FolderOverrides& o) {
  const std::string cfg_path = (dir / "config.json").string();
  const auto c = io::read_json(cfg_path);
  const auto strategy = io::json_get_or<std::string>(c, "vision_feature_select_strategy", "default", cfg_path);
  if (strategy != "default") raise(cfg_path, "vision_feature_select_strategy", "only 'default' (patch tokens, no CLS) is supported, got '", strategy, "'");
  if (c.contains("vision_feature_layer") && !c["vision_feature_layer"].is_number_integer())
    raise(cfg_path, "vision_feature_layer", "expected one layer index (lists of layers are not supported)");
  const auto act = io::json_get_or<std::string>(c, "projector_hidden_act", "gelu", cfg_path);
  if (act != "gelu") raise(cfg_path, "projector_hidden_act", "only gelu (mlp2x_gelu) is supported, got '", act, "'");
  if (!io::json_get_or<bool>(c, "multimodal_projector_bias", true, cfg_path)) raise(cfg_path, "multimodal_projector_bias", "false is not supported");
  if (c.contains("text_config") && c["text_config"].value("model_type", "llama") != "llama")
    raise(cfg_path, "text_config.model_type", "only Llama language models are supported");
  auto src = io::TensorSource::open(dir.string());
  if (!src.contains("language_model.model.embed_tokens.weight"))
    raise(src.description(), "language_model.model.embed_tokens.weight",
          "missing: expected the layout of transformers' conversion script (language_model.*, vision_tower.*, multi_modal_projector.*)");
  ReleaseFolder r;
  nlohmann::json& j = r.config;
  j["method"] = "llava";
  j["base_model_name_or_path"] = o.llm.empty() ? dir.string() : o.llm;
  j["vision_tower"] = o.vision.empty() ? dir.string() : o.vision;
  j["mm_projector_type"] = "mlp2x_gelu";
  j["mm_vision_select_layer"] = io::json_get_or<int64_t>(c, "vision_feature_layer", -2, cfg_path);
  j["tune"] = "projector";
  j["template"] = o.template_name.empty() ? "vicuna_v1" : o.template_name;
  if (o.llm.empty()) r.llm_part = {"text_config", "language_model.", {"vision_tower.", kHfProjector}};
  if (o.vision.empty()) {
    r.vision_part = {"vision_config", "vision_tower.", {"language_model.", kHfProjector}};
    const auto& vc = c.contains("vision_config") ? c["vision_config"] : nlohmann::json::object();
    j["preprocess"] = fs::exists(dir / "preprocessor_config.json") ? "" : cat("clip", vc.value("image_size", int64_t{336}));
  }
  for (const auto& n : src.names())
    if (n.rfind(kHfProjector, 0) == 0) {
      std::string rest = n.substr(kHfProjector.size());
      if (rest.rfind("linear_1.", 0) == 0) rest = "0." + rest.substr(9);
      else if (rest.rfind("linear_2.", 0) == 0) rest = "2." + rest.substr(9);
      r.tensors.emplace_back(kProjector + rest, src.tensor(n));
    }
  if (r.tensors.empty()) raise(src.description(), kHfProjector, "no projector tensors");
  return r;
}

}  // namespace

std::optional<ReleaseFolder> Llava::read_release(const std::string& dir_in, const FolderOverrides& o) const {
  const fs::path dir(dir_in);
  const Kind kind = kind_of(dir);
  if (kind == Kind::kNone) return std::nullopt;
  if (kind == Kind::kHf) {
    auto r = read_llava_hf(dir, o);
    if (o.template_name.empty()) log_info(cat(dir_in, ": using the vicuna_v1 template (LLaVA-1.5's; --template to change)"));
    return r;
  }
  const std::string cfg_path = (dir / "config.json").string();
  if (!fs::exists(cfg_path)) raise(cfg_path, "", "missing: a LLaVA checkpoint folder keeps its LlavaConfig (mm_* fields) there");
  const auto c = io::read_json(cfg_path);
  // What vadapt's LLaVA cannot reproduce is refused, never ignored.
  const auto feature = io::json_get_or<std::string>(c, "mm_vision_select_feature", "patch", cfg_path);
  if (feature != "patch") raise(cfg_path, "mm_vision_select_feature", "only 'patch' is supported, got '", feature, "'");
  if (io::json_get_or<bool>(c, "mm_use_im_start_end", false, cfg_path)) raise(cfg_path, "mm_use_im_start_end", "true is not supported");
  if (io::json_get_or<bool>(c, "mm_use_im_patch_token", false, cfg_path))
    raise(cfg_path, "mm_use_im_patch_token", "true is not supported");
  const auto merge = io::json_get_or<std::string>(c, "mm_patch_merge_type", "flat", cfg_path);
  if (merge != "flat") raise(cfg_path, "mm_patch_merge_type", "only 'flat' is supported (LLaVA-NeXT's are not), got '", merge, "'");
  const auto aspect = io::json_get_or<std::string>(c, "image_aspect_ratio", "square", cfg_path);
  if (aspect != "pad" && aspect != "square")
    raise(cfg_path, "image_aspect_ratio", "expected 'pad' or 'square' (LLaVA-1.5), got '", aspect, "'");

  ReleaseFolder r;
  nlohmann::json& j = r.config;
  j["method"] = "llava";
  j["mm_projector_type"] = io::json_get_or<std::string>(c, "mm_projector_type", "linear", cfg_path);
  j["mm_vision_select_layer"] = io::json_get_or<int64_t>(c, "mm_vision_select_layer", -1, cfg_path);
  const std::string vision = local_path(io::json_get_or<std::string>(c, "mm_vision_tower", "", cfg_path), dir, o.vision, cfg_path,
                                        "mm_vision_tower", "--vision");
  j["vision_tower"] = vision;
  // square: CLIPImageProcessor's resize of the shortest edge + centre crop at the tower's size.
  j["preprocess"] = cat(aspect == "pad" ? "llava_pad" : "clip", vision_image_size(vision));
  j["template"] = o.template_name.empty() ? "vicuna_v1" : o.template_name;
  if (o.template_name.empty()) log_info(cat(dir_in, ": LLaVA folders do not record their conversation template; using vicuna_v1 (LLaVA-1.5's; --template to change)"));
  if (kind == Kind::kMerged) {
    j["base_model_name_or_path"] = o.llm.empty() ? dir_in : o.llm;
    j["tune"] = "projector";
    r.llm_part.ignore = {kMergedProjector, "model.vision_tower."};
    for (auto& [n, v] : renamed(read_all(o.llm.empty() ? dir_in : o.llm), kMergedProjector, kProjector))
      if (n.rfind(kProjector, 0) == 0) r.tensors.emplace_back(n, v);
    if (r.tensors.empty()) raise(dir_in, kMergedProjector, "no projector tensors in the checkpoint");
    return r;
  }
  std::string base = io::json_get_or<std::string>(c, "_name_or_path", "", cfg_path);
  if (kind == Kind::kProjector) {
    j["base_model_name_or_path"] = local_path(base, dir, o.llm, cfg_path, "_name_or_path", "--model");
    j["tune"] = "projector";
    r.tensors = renamed(read_all((dir / "mm_projector.bin").string()), kMergedProjector, kProjector);
    return r;
  }
  // LoRA: PEFT config and weights beside non_lora_trainables.bin.
  const std::string peft_cfg = (dir / "adapter_config.json").string();
  const auto peft = adapters::read_peft_lora_config(dir_in);  // refuses the PEFT options we do not implement
  const auto pj = io::read_json(peft_cfg);
  if (!peft.targets.target_regex.empty() || !peft.targets.layers.empty() || peft.targets.lora.rslora)
    raise(peft_cfg, "target_modules", "LLaVA folders with regex targets, layers_to_transform or rsLoRA are not supported");
  base = peft.base_model.empty() ? base : peft.base_model;
  j["base_model_name_or_path"] = local_path(base, dir, o.llm, peft_cfg, "base_model_name_or_path", "--model");
  Llava lora;  // the adapter_config fields of the same options
  lora.o_.connector = j["mm_projector_type"].get<std::string>();
  lora.o_.feature_layer = j["mm_vision_select_layer"].get<int64_t>();
  lora.o_.tune = "lora";
  lora.o_.lora.lora = peft.targets.lora;
  lora.o_.lora.target_modules = peft.targets.target_modules;
  const nlohmann::json lc = lora.config();  // (a named copy: items() of a temporary dangles)
  for (const auto& [k, v] : lc.items()) j[k] = v;
  r.tensors = renamed(read_all((dir / "non_lora_trainables.bin").string()), kLoraProjector, kProjector);
  const fs::path weights = fs::exists(dir / "adapter_model.safetensors") ? dir / "adapter_model.safetensors" : dir / "adapter_model.bin";
  for (auto& t : read_all(weights.string())) r.tensors.push_back(std::move(t));
  return r;
}

void Llava::load_official(const std::string& path) {
  // A stage-1 mm_projector.bin (or a LLaVA folder): the projector, plus LoRA when it is there; the
  // recipe says the frozen models, only the tensors are taken.
  std::vector<std::pair<std::string, torch::Tensor>> have;
  if (fs::is_directory(path)) {
    const Kind kind = kind_of(path);
    if (kind == Kind::kNone) raise(path, "", "not a LLaVA checkpoint folder (merged, LoRA with non_lora_trainables.bin, or mm_projector.bin)");
    if (kind == Kind::kProjector) have = renamed(read_all((fs::path(path) / "mm_projector.bin").string()), kMergedProjector, kProjector);
    else if (kind == Kind::kLora) {
      have = renamed(read_all((fs::path(path) / "non_lora_trainables.bin").string()), kLoraProjector, kProjector);
      const fs::path d(path);
      for (auto& t : read_all((fs::exists(d / "adapter_model.safetensors") ? d / "adapter_model.safetensors" : d / "adapter_model.bin").string()))
        have.push_back(std::move(t));
    } else {
      raise(path, "", "a merged LLaVA folder is a model, not an adapter: use it directly (vadapt generate / eval --adapter ", path, ")");
    }
  } else {
    have = renamed(read_all(path), kMergedProjector, kProjector);
    have = renamed(have, kLoraProjector, kProjector);
  }
  auto want = state();
  const bool only_projector = std::none_of(have.begin(), have.end(), [](const auto& t) { return t.first.rfind(kProjector, 0) != 0; });
  if (only_projector && o_.tune != "projector") {
    // A stage-1 projector to start LoRA / full tuning from, as LLaVA's pretrain_mm_mlp_adapter.
    std::vector<std::pair<std::string, torch::Tensor>> proj;
    for (const auto& t : want)
      if (t.first.rfind(kProjector, 0) == 0) proj.push_back(t);
    copy_tensors_strict(path, have, proj);
    log_info(cat(path, ": projector only; the ", o_.tune, " weights keep their initialisation"));
    return;
  }
  copy_tensors_strict(path, have, want);
}

nlohmann::json Llava::release_config(const vlm::VisionLanguageModel& m) const {
  const auto& spec = m.spec();
  if (o_.pool > 0 || !o_.feature_norm.empty())
    throw VadaptError("LLaVA's layout has no place for pool / feature_norm: this adapter cannot be written as a LLaVA checkpoint");
  std::string aspect = "square";
  if (spec.preprocess.rfind("llava_pad", 0) == 0) aspect = "pad";
  else if (!spec.preprocess.empty() && spec.preprocess.rfind("clip", 0) != 0)
    throw VadaptError(cat("preprocess ", spec.preprocess, ": LLaVA knows only CLIP's resize + crop ('square') and 'pad'"));
  auto j = io::read_json(io::config_path_of(spec.llm));
  j["architectures"] = {"LlavaLlamaForCausalLM"};
  j["model_type"] = "llava_llama";
  j["mm_vision_tower"] = fs::absolute(spec.vision).string();
  j["mm_hidden_size"] = f_.tower->hidden_size();
  j["mm_projector_type"] = o_.connector;
  j["mm_vision_select_layer"] = o_.feature_layer;
  j["mm_vision_select_feature"] = "patch";
  j["mm_use_im_start_end"] = false;
  j["mm_use_im_patch_token"] = false;
  j["mm_patch_merge_type"] = "flat";
  j["image_aspect_ratio"] = aspect;
  j["tune_mm_mlp_adapter"] = o_.tune == "projector";
  j["freeze_mm_mlp_adapter"] = false;
  j["use_mm_proj"] = true;
  j["tokenizer_padding_side"] = "right";
  j["tokenizer_model_max_length"] = f_.lm->config().max_position_embeddings;
  j["_name_or_path"] = fs::absolute(spec.llm).string();
  return j;
}

void Llava::export_release(vlm::VisionLanguageModel& m, const std::string& format, const std::string& out) {
  if (format == "llava-hf") return export_llava_hf(m, out);
  if (format != "llava") return Method::export_release(m, format, out);
  auto cfg = release_config(m);
  fs::create_directories(out);
  std::vector<std::pair<std::string, torch::Tensor>> proj, lora;
  for (const auto& [n, t] : state()) {
    if (n.rfind(kProjector, 0) == 0) proj.emplace_back(n.substr(kProjector.size()), t);
    else if (o_.tune != "full") lora.emplace_back(n, t);
  }
  auto prefixed = [&](const std::string& p) {
    std::vector<std::pair<std::string, torch::Tensor>> v;
    for (const auto& [n, t] : proj) v.emplace_back(p + n, t);
    return v;
  };
  if (o_.tune == "projector") {
    io::write_torch_bin(out + "/mm_projector.bin", prefixed(kMergedProjector));
  } else if (o_.tune == "lora" || o_.tune == "qlora") {
    io::write_torch_bin(out + "/non_lora_trainables.bin", prefixed(kLoraProjector));
    io::write_safetensors(out + "/adapter_model.safetensors", lora, {{"format", "pt"}});
    nlohmann::json peft = {{"peft_type", "LORA"}, {"task_type", "CAUSAL_LM"}, {"r", o_.lora.lora.r}, {"lora_alpha", o_.lora.lora.alpha},
                           {"lora_dropout", o_.lora.lora.dropout}, {"target_modules", o_.lora.target_modules}, {"bias", "none"},
                           {"inference_mode", true}, {"base_model_name_or_path", fs::absolute(m.spec().llm).string()}};
    io::write_text_atomic(out + "/adapter_config.json", peft.dump(2) + "\n");
  } else {  // full: a merged checkpoint
    std::vector<std::pair<std::string, torch::Tensor>> all;
    for (const auto& p : f_.lm->named_parameters()) all.emplace_back(p.key(), p.value());
    for (auto& t : prefixed(kMergedProjector)) all.push_back(std::move(t));
    model::save_hf_llama(*f_.lm, m.spec().llm, out, all, cfg);
    return;
  }
  io::write_text_atomic(out + "/config.json", cfg.dump(2) + "\n");
}

void Llava::export_llava_hf(vlm::VisionLanguageModel& m, const std::string& out) {
  if (o_.connector != "mlp2x_gelu" || o_.pool > 0 || !o_.feature_norm.empty())
    throw VadaptError(cat("llava-hf's projector is the 2-layer GELU MLP: connector ", o_.connector, " / pool / feature_norm cannot be written"));
  const auto& spec = m.spec();
  auto vj = io::read_json(io::config_path_of(spec.vision));
  nlohmann::json vision_config;
  const auto vmt = vj.value("model_type", "");
  if (vmt == "clip") vision_config = vj["vision_config"];
  else if (vmt == "clip_vision_model") vision_config = vj;
  else throw VadaptError(cat(spec.vision, ": llava-hf takes a CLIP vision tower, this one is '", vmt, "'"));
  vision_config["model_type"] = "clip_vision_model";
  vision_config.erase("architectures");
  if (o_.tune == "lora" || o_.tune == "qlora") {
    adapters_->merge_into(*f_.lm);  // llava-hf has no place for LoRA: folded into the LLM
    log_info("llava-hf: LoRA folded into the language model's weights");
  }
  if (spec.preprocess.rfind("llava_pad", 0) == 0)
    log_warn("llava-hf's image processor resizes and centre-crops; this model was trained with pad-to-square (as llava-hf's own LLaVA-1.5 conversions are)");
  fs::create_directories(out);
  // The tokenizer with <image> and <pad> after the vocabulary, embeddings padded to a multiple of 64.
  auto& lm = *f_.lm;
  const auto& lc = lm.config();
  const int64_t image_id = lc.vocab_size, pad_id = lc.vocab_size + 1;
  const int64_t vocab = (lc.vocab_size + 2 + 63) / 64 * 64;
  auto pad_rows = [&](const torch::Tensor& w) {
    auto mean = w.mean(0, true).expand({vocab - w.size(0), w.size(1)});  // new rows: the mean row
    return torch::cat({w, mean}, 0);
  };
  std::vector<std::pair<std::string, torch::Tensor>> t;
  for (const auto& p : lm.named_parameters()) {
    if (lc.tie_word_embeddings && p.key() == "lm_head.weight") continue;
    const bool rows = p.key() == "model.embed_tokens.weight" || p.key() == "lm_head.weight";
    t.emplace_back("language_model." + p.key(), rows ? pad_rows(p.value()) : p.value());
  }
  for (const auto& p : m.tower().module().named_parameters())
    if (p.key().rfind("visual_projection.", 0) != 0) t.emplace_back("vision_tower." + p.key(), p.value());
  for (const auto& [n, v] : state())
    if (n.rfind(kProjector, 0) == 0) {
      const std::string rest = n.substr(kProjector.size());
      t.emplace_back(kHfProjector + (rest[0] == '0' ? "linear_1" : "linear_2") + rest.substr(1), v);
    }
  io::write_safetensors(out + "/model.safetensors", t, {{"format", "pt"}});
  auto text_config = io::read_json(io::config_path_of(spec.llm));
  text_config["vocab_size"] = vocab;
  text_config["model_type"] = "llama";
  text_config.erase("architectures");
  nlohmann::json cfg = {{"architectures", {"LlavaForConditionalGeneration"}},
                        {"model_type", "llava"},
                        {"text_config", text_config},
                        {"vision_config", vision_config},
                        {"image_token_index", image_id},
                        {"pad_token_id", pad_id},
                        {"ignore_index", -100},
                        {"projector_hidden_act", "gelu"},
                        {"multimodal_projector_bias", true},
                        {"vision_feature_layer", o_.feature_layer},
                        {"vision_feature_select_strategy", "default"},
                        {"image_seq_length", patches_},
                        {"tie_word_embeddings", lc.tie_word_embeddings},
                        {"torch_dtype", spec.dtype}};
  io::write_text_atomic(out + "/config.json", cfg.dump(2) + "\n");
  // Tokenizer files: <image> and <pad> added (tokenizer_config added_tokens_decoder, and
  // tokenizer.json's added_tokens when the model has one).
  const fs::path tdir(spec.llm);
  nlohmann::json tc = fs::exists(tdir / "tokenizer_config.json") ? io::read_json((tdir / "tokenizer_config.json").string()) : nlohmann::json::object();
  auto added = [](const std::string& s) {
    return nlohmann::json{{"content", s}, {"lstrip", false}, {"normalized", false}, {"rstrip", false}, {"single_word", false}, {"special", true}};
  };
  if (!tc.contains("added_tokens_decoder") || !tc["added_tokens_decoder"].is_object()) tc["added_tokens_decoder"] = nlohmann::json::object();
  tc["added_tokens_decoder"][std::to_string(image_id)] = added("<image>");
  tc["added_tokens_decoder"][std::to_string(pad_id)] = added("<pad>");
  tc["pad_token"] = "<pad>";
  tc["processor_class"] = "LlavaProcessor";
  io::write_text_atomic(out + "/tokenizer_config.json", tc.dump(2) + "\n");
  if (fs::exists(tdir / "tokenizer.model")) fs::copy_file(tdir / "tokenizer.model", fs::path(out) / "tokenizer.model", fs::copy_options::overwrite_existing);
  if (fs::exists(tdir / "tokenizer.json")) {
    auto tj = io::read_json((tdir / "tokenizer.json").string());
    if (!tj.contains("added_tokens") || !tj["added_tokens"].is_array()) tj["added_tokens"] = nlohmann::json::array();
    for (auto [id, s] : {std::pair<int64_t, const char*>{image_id, "<image>"}, {pad_id, "<pad>"}}) {
      auto a = added(s);
      a["id"] = id;
      tj["added_tokens"].push_back(a);
    }
    io::write_text_atomic(out + "/tokenizer.json", tj.dump() + "\n");
  }
  if (fs::exists(tdir / "special_tokens_map.json")) {
    auto sm = io::read_json((tdir / "special_tokens_map.json").string());
    sm["pad_token"] = "<pad>";
    io::write_text_atomic(out + "/special_tokens_map.json", sm.dump(2) + "\n");
  }
  // The image processor (CLIPImageProcessor) and the processor.
  const auto& pre = m.preprocess();
  nlohmann::json pc = {{"image_processor_type", "CLIPImageProcessor"},
                       {"processor_class", "LlavaProcessor"},
                       {"do_resize", true},
                       {"size", {{"shortest_edge", pre.crop}}},
                       {"do_center_crop", true},
                       {"crop_size", {{"height", pre.crop}, {"width", pre.crop}}},
                       {"resample", pre.resample == vision::Filter::kBicubic ? 3 : 2},
                       {"do_rescale", true},
                       {"rescale_factor", 1.0 / 255.0},
                       {"do_normalize", true},
                       {"image_mean", pre.mean},
                       {"image_std", pre.std},
                       {"do_convert_rgb", true}};
  io::write_text_atomic(out + "/preprocessor_config.json", pc.dump(2) + "\n");
  nlohmann::json proc = {{"processor_class", "LlavaProcessor"}, {"image_token", "<image>"}, {"patch_size", vision_config.value("patch_size", 14)},
                         {"vision_feature_select_strategy", "default"}, {"num_additional_image_tokens", 1}};
  io::write_text_atomic(out + "/processor_config.json", proc.dump(2) + "\n");
}

Method::Rest Llava::merge_into(const vlm::VisionLanguageModel& m) {
  if (!(o_.tune == "lora" || o_.tune == "qlora")) throw VadaptError(cat("merge needs a LoRA adapter (tune: lora), got '", o_.tune, "'"));
  Rest r;
  r.config = release_config(m);
  r.config["tune_mm_mlp_adapter"] = false;
  adapters_->merge_into(*f_.lm);
  for (const auto& [k, v] : state())
    if (k.rfind(kProjector, 0) == 0) r.tensors.emplace_back("model." + k, v);
  return r;
}

}  // namespace vadapt::methods

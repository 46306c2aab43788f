// LLaVA's own checkpoint layouts (haotian-liu/LLaVA train.py / builder.py), read and written
// without a conversion step:
//  merged     LlavaLlamaForCausalLM folder: the LLM's weights + model.mm_projector.*, config.json
//             = the LLM config + mm_* fields (mm_vision_tower, mm_projector_type, ...)
//  lora       the LoRA run's output: adapter_config.json + adapter_model.{safetensors,bin} (PEFT)
//             + non_lora_trainables.bin (base_model.model.model.mm_projector.*) + config.json
//  projector  the stage-1 output: mm_projector.bin (model.mm_projector.*) + config.json
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

enum class Kind { kNone, kMerged, kLora, kProjector };

Kind kind_of(const fs::path& d) {
  if (!fs::is_directory(d)) return Kind::kNone;
  if (fs::exists(d / "non_lora_trainables.bin") && fs::exists(d / "adapter_config.json")) return Kind::kLora;
  if (fs::exists(d / "mm_projector.bin")) return Kind::kProjector;
  if (fs::exists(d / "config.json") && has_llm_weights(d)) {
    auto j = io::read_json((d / "config.json").string());
    if (j.is_object() && (j.contains("mm_projector_type") || j.contains("mm_vision_tower"))) return Kind::kMerged;
  }
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

std::optional<ReleaseFolder> Llava::read_release(const std::string& dir_in, const FolderOverrides& o) const {
  const fs::path dir(dir_in);
  const Kind kind = kind_of(dir);
  if (kind == Kind::kNone) return std::nullopt;
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
    r.llm_ignore = {kMergedProjector, "model.vision_tower."};
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
  j["tune"] = "lora";
  j["peft_type"] = "LORA";
  j["r"] = peft.targets.lora.r;
  j["lora_alpha"] = peft.targets.lora.alpha;
  j["lora_dropout"] = peft.targets.lora.dropout;
  j["target_modules"] = peft.targets.target_modules;
  j["bias"] = "none";
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

void Llava::export_release(const vlm::VisionLanguageModel& m, const std::string& format, const std::string& out) const {
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

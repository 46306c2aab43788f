// Recipe loading (yaml-cpp), overrides and validation with file/key errors.
#include "train/recipe.h"

#include "train/precision.h"
#include "methods/method.h"
#include "methods/registry.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>

#include "common/error.h"
#include "text/prompt.h"
#include "io/json_file.h"
#include "io/path_vars.h"

namespace vadapt::train {
namespace {

nlohmann::json scalar_to_json(const std::string& v, bool quoted) {
  if (quoted) return v;
  if (v == "true" || v == "True") return true;
  if (v == "false" || v == "False") return false;
  if (v == "null" || v == "~" || v.empty()) return nullptr;
  try {
    size_t used = 0;
    long long i = std::stoll(v, &used);
    if (used == v.size()) return i;
  } catch (...) {
  }
  try {
    size_t used = 0;
    double d = std::stod(v, &used);
    if (used == v.size()) return d;
  } catch (...) {
  }
  return v;
}

nlohmann::json to_json(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::json j = nlohmann::json::object();
      for (const auto& kv : n) j[kv.first.as<std::string>()] = to_json(kv.second);
      return j;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& v : n) j.push_back(to_json(v));
      return j;
    }
    case YAML::NodeType::Scalar: return scalar_to_json(n.Scalar(), n.Tag() == "!");
    default: return nullptr;
  }
}

void apply_override(nlohmann::json& root, const std::string& kv, const std::string& src) {
  auto eq = kv.find('=');
  if (eq == std::string::npos || eq == 0) raise(src, kv, "override must look like key.path=value");
  std::string path = kv.substr(0, eq), value = kv.substr(eq + 1);
  nlohmann::json* cur = &root;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string key = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (cur->is_array()) {
      size_t idx = 0;
      try {
        idx = std::stoul(key);
      } catch (...) {
        raise(src, path, "'", key, "' must be a list index");
      }
      if (idx >= cur->size()) raise(src, path, "index ", idx, " out of range (", cur->size(), " entries)");
      cur = &(*cur)[idx];
    } else {
      if (!cur->is_object()) *cur = nlohmann::json::object();
      cur = &(*cur)[key];
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  *cur = scalar_to_json(value, false);
}

// Per-stage value: the stage's own key, else the recipe's top-level section.
const nlohmann::json* pick(const nlohmann::json& stage, const nlohmann::json& top, const char* section) {
  if (stage.contains(section)) return &stage[section];
  if (top.contains(section)) return &top[section];
  return nullptr;
}

template <typename T>
void get_into(const nlohmann::json* j, const char* key, T& out, const std::string& where) {
  if (j && j->contains(key) && !(*j)[key].is_null()) out = io::json_get<T>(*j, key, where);
}

}  // namespace

std::string default_feature_cache_dir() {
  if (const char* d = std::getenv("VADAPT_CACHE_DIR")) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME")) return std::string(x) + "/vadapt/features";
  if (const char* h = std::getenv("HOME")) return std::string(h) + "/.cache/vadapt/features";
  return ".vadapt-cache/features";
}

namespace {
// YAML takes any bytes; a recipe's text must be UTF-8 (it is written to adapter_config.json and
// into prompts), so a file in another encoding is refused here, at the key, not when saving.
void check_utf8(const nlohmann::json& j, const std::string& path, const std::string& key) {
  auto bad = [&](const std::string& s) {
    try {
      (void)nlohmann::json(s).dump();
      return false;
    } catch (const nlohmann::json::exception&) {
      return true;
    }
  };
  if (j.is_string() && bad(j.get<std::string>())) raise(path, key, "is not UTF-8 text (save the recipe as UTF-8)");
  if (j.is_array())
    for (size_t i = 0; i < j.size(); ++i) check_utf8(j[i], path, cat(key, "[", i, "]"));
  if (j.is_object())
    for (const auto& [k, v] : j.items()) {
      const std::string sub = key.empty() ? k : key + "." + k;
      if (bad(k)) raise(path, io::show(sub), "is a key that is not UTF-8 text (save the recipe as UTF-8)");
      check_utf8(v, path, sub);
    }
}
}  // namespace

nlohmann::json yaml_file_to_json(const std::string& path) {
  if (!std::filesystem::exists(path)) raise(path, "", "recipe file does not exist");
  nlohmann::json j;
  try {
    j = to_json(YAML::LoadFile(path));
  } catch (const YAML::Exception& e) {
    raise(path, "", "invalid YAML at line ", e.mark.line + 1, ": ", e.msg);
  }
  check_utf8(j, path, "");
  return j;
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  Recipe r;
  r.source = path;
  r.raw = yaml_file_to_json(path);
  for (const auto& o : overrides) apply_override(r.raw, o, "--set");
  if (!overrides.empty()) check_utf8(r.raw, path, "");
  const auto& top = r.raw;
  if (!top.is_object()) raise(path, "", "a recipe must be a mapping");
  if (!top.contains("stages") || !top["stages"].is_array() || top["stages"].empty())
    raise(path, "stages", "a recipe needs a non-empty list of stages");
  const std::string method_name = io::json_get_or<std::string>(top, "method", "llava", path);
  auto method = methods::create(method_name, path + ": method");
  // The generic keys; everything else at the top level, in the model section and in a stage is
  // the method's own section (its parser rejects what it does not know).
  const std::vector<std::string> top_keys = {"method", "model", "stages", "train", "data", "description", "feature_cache"};
  const std::vector<std::string> model_keys = {"llm", "vision", "preprocess", "template", "system_prompt", "dtype", "seed"};
  const std::vector<std::string> stage_keys = {"name", "template", "preprocess", "data", "train", "model", "init_from", "feature_cache", "system_prompt"};
  auto is_in = [](const std::vector<std::string>& keys, const std::string& k) { return std::find(keys.begin(), keys.end(), k) != keys.end(); };
  for (size_t i = 0; i < top["stages"].size(); ++i) {
    const auto& sj = top["stages"][i];
    std::string where = cat(path, " stages[", i, "]");
    if (!sj.is_object()) raise(where, "", "must be a mapping");
    Stage st;
    st.name = io::json_get_or<std::string>(sj, "name", cat("stage", i + 1), where);
    vlm::VlmSpec& s = st.spec;
    s.method = method_name;
    const nlohmann::json* model = pick(sj, top, "model");
    if (!model) raise(path, "model", "missing section with llm and vision folders");
    if (!model->is_object()) raise(path, "model", "must be a mapping");
    nlohmann::json section = nlohmann::json::object();
    for (const auto& [k, v] : top.items())
      if (!is_in(top_keys, k)) section[k] = v;
    for (const auto& [k, v] : model->items())
      if (!is_in(model_keys, k)) section[k] = v;
    for (const auto& [k, v] : sj.items())
      if (!is_in(stage_keys, k)) section[k] = v;
    s.llm = expand_vars(io::json_get<std::string>(*model, "llm", path + " model"));
    s.vision = expand_vars(io::json_get_or<std::string>(*model, "vision", "", path + " model"));
    get_into(model, "preprocess", s.preprocess, path + " model");
    get_into(model, "template", s.template_name, path + " model");
    get_into(model, "dtype", s.dtype, path + " model");
    get_into(model, "seed", s.seed, path + " model");
    get_into(&sj, "template", s.template_name, where);
    get_into(&sj, "preprocess", s.preprocess, where);  // LLaVA-1.5: square crop in stage 1, pad in stage 2
    // The system prompt: the model section's applies to each stage whose template has one (not
    // to LLaVA's stage-1 `plain`); a stage's own must suit its template.
    auto system_prompt = [&](const nlohmann::json* j, const std::string& at) -> std::optional<std::string> {
      if (!j->contains("system_prompt") || (*j)["system_prompt"].is_null()) return std::nullopt;
      return io::json_get<std::string>(*j, "system_prompt", at);
    };
    if (auto sp = system_prompt(&sj, where)) {
      if (!text::ChatTemplate::takes_system(s.template_name))
        raise(where, "system_prompt", "template '", s.template_name, "' has no system prompt");
      s.system_prompt = sp;
    } else if (auto sp = system_prompt(model, path + " model"); sp && text::ChatTemplate::takes_system(s.template_name)) {
      s.system_prompt = sp;
    }
    s.options = method->parse_recipe(section, cat(where, " (", method_name, ")"));
    const nlohmann::json* d = pick(sj, top, "data");
    if (!d) raise(where, "data", "missing section (train, val, format, image_root, limit)");
    methods::check_keys(*d, {"train", "val", "format", "image_root", "limit", "val_limit", "skip_bad", "split_every", "image_placement",
                                "scienceqa_format", "expert", "expert_model"}, where + " data");
    get_into(d, "split_every", st.data.split_every, where + " data");
    // One file or a list (mixed data in one run: e.g. image instructions + text-only Alpaca).
    auto files = [&](const char* key) {
      std::vector<std::string> out;
      if (!d->contains(key) || (*d)[key].is_null()) return out;
      if ((*d)[key].is_array()) out = io::json_get<std::vector<std::string>>(*d, key, where + " data");
      else out.push_back(io::json_get<std::string>(*d, key, where + " data"));
      if (out.empty()) raise(where + " data", key, "an empty list of files");
      for (auto& f : out) f = expand_vars(f);
      return out;
    };
    if (!d->contains("train")) raise(where + " data", "train", "missing: the training file (or a list of files)");
    st.data.train = files("train");
    st.data.val = files("val");
    get_into(d, "format", st.data.format, where + " data");
    if (d->contains("image_root")) st.data.image_root = expand_vars(io::json_get<std::string>(*d, "image_root", where + " data"));
    get_into(d, "limit", st.data.limit, where + " data");
    get_into(d, "val_limit", st.data.val_limit, where + " data");
    get_into(d, "skip_bad", st.data.skip_bad, where + " data");
    get_into(d, "image_placement", st.data.image_placement, where + " data");
    get_into(d, "scienceqa_format", st.data.scienceqa_format, where + " data");
    get_into(d, "expert", st.data.expert, where + " data");
    if (d->contains("expert_model")) st.data.expert_model = expand_vars(io::json_get<std::string>(*d, "expert_model", where + " data"));
    if (st.data.expert != "none" && st.data.expert != "ocr" && st.data.expert != "caption")
      raise(where + " data", "expert", "expected none, ocr or caption, got '", st.data.expert, "'");
    if ((st.data.expert == "caption") != !st.data.expert_model.empty())
      raise(where + " data", "expert_model", "the caption expert needs expert_model (a caption adapter folder), and only it");
    TrainConfig& t = st.train;
    for (const nlohmann::json* tj : {top.contains("train") ? &top["train"] : nullptr, sj.contains("train") ? &sj["train"] : nullptr}) {
      if (!tj) continue;
      std::string w = where + " train";
      methods::check_keys(*tj, {"epochs", "max_steps", "batch_size", "grad_accum", "lr", "blr", "lr_projector", "weight_decay", "beta1",
                       "beta2", "eps", "max_grad_norm", "warmup_ratio", "warmup_epochs", "schedule", "max_seq_len", "seed", "log_every",
                       "save_every", "keep_last", "eval_every", "eval_batches", "precision", "plot", "group_by_modality_length",
                       "lr_groups", "long_samples"}, w);
      get_into(tj, "epochs", t.epochs, w);
      get_into(tj, "max_steps", t.max_steps, w);
      get_into(tj, "batch_size", t.batch_size, w);
      get_into(tj, "grad_accum", t.grad_accum, w);
      get_into(tj, "lr", t.lr, w);
      get_into(tj, "blr", t.blr, w);
      get_into(tj, "lr_projector", t.lr_projector, w);
      get_into(tj, "weight_decay", t.weight_decay, w);
      get_into(tj, "beta1", t.beta1, w);
      get_into(tj, "beta2", t.beta2, w);
      get_into(tj, "eps", t.eps, w);
      get_into(tj, "max_grad_norm", t.max_grad_norm, w);
      get_into(tj, "warmup_ratio", t.warmup_ratio, w);
      get_into(tj, "warmup_epochs", t.warmup_epochs, w);
      get_into(tj, "group_by_modality_length", t.group_by_modality_length, w);
      get_into(tj, "schedule", t.schedule, w);
      get_into(tj, "max_seq_len", t.max_seq_len, w);
      get_into(tj, "seed", t.seed, w);
      get_into(tj, "log_every", t.log_every, w);
      get_into(tj, "save_every", t.save_every, w);
      get_into(tj, "keep_last", t.keep_last, w);
      get_into(tj, "eval_every", t.eval_every, w);
      get_into(tj, "eval_batches", t.eval_batches, w);
      get_into(tj, "precision", t.precision, w);
      get_into(tj, "plot", t.plot, w);
      get_into(tj, "long_samples", t.long_samples, w);
      if (t.long_samples != "truncate" && t.long_samples != "skip" && t.long_samples != "error")
        raise(w, "long_samples", "expected truncate, skip or error, got '", t.long_samples, "'");
      if (tj->contains("lr_groups")) {
        const auto& g = (*tj)["lr_groups"];
        if (!g.is_object()) raise(w, "lr_groups", "must be a mapping of parameter group name to lr (e.g. {visual: 1e-3, prompts: 5e-4})");
        for (const auto& [k, v] : g.items()) {
          if (!v.is_number()) raise(w, "lr_groups." + k, "must be a number, got ", io::show(v));
          t.lr_groups[k] = v.get<double>();
        }
      }
    }
    parse_precision(t.precision, where + " train.precision");
    if (t.epochs <= 0 && t.max_steps <= 0) raise(where, "train.epochs", "needs epochs > 0 or max_steps > 0");
    if (t.lr <= 0 && t.blr <= 0) raise(where, "train.lr", "must be positive");
    st.init_from = io::json_get_or<std::string>(sj, "init_from", "", where);
    st.feature_cache = expand_vars(io::json_get_or<std::string>(sj, "feature_cache",
                                                                io::json_get_or<std::string>(top, "feature_cache", "default", path), where));
    if (!st.init_from.empty()) {
      bool found = false;
      for (const auto& prev : r.stages) found = found || prev.name == st.init_from;
      if (!found) raise(where, "init_from", "no earlier stage named '", st.init_from, "'");
    }
    r.stages.push_back(std::move(st));
  }
  return r;
}

}  // namespace vadapt::train

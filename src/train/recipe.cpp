// Recipe loading (yaml-cpp), overrides and validation with file/key errors.
#include "train/recipe.h"

#include "train/precision.h"

#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>

#include "common/error.h"
#include "io/json_file.h"

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

void check_keys(const nlohmann::json& j, const std::vector<std::string>& allowed, const std::string& where) {
  if (!j.is_object()) raise(where, "", "must be a mapping");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      raise(where, it.key(), "unknown key (expected one of: ", list, ")");
    }
}

}  // namespace

std::string default_feature_cache_dir() {
  if (const char* d = std::getenv("VADAPT_CACHE_DIR")) return d;
  if (const char* x = std::getenv("XDG_CACHE_HOME")) return std::string(x) + "/vadapt/features";
  if (const char* h = std::getenv("HOME")) return std::string(h) + "/.cache/vadapt/features";
  return ".vadapt-cache/features";
}

std::string expand_vars(const std::string& s) {
  std::string out = s;
  for (size_t at = out.find("${"); at != std::string::npos; at = out.find("${", at)) {
    size_t end = out.find('}', at);
    if (end == std::string::npos) raise(s, "", "unterminated ${ in a recipe path");
    std::string name = out.substr(at + 2, end - at - 2), env_name = "VADAPT_";
    for (char c : name) env_name += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    env_name += "_DIR";
    const char* env = std::getenv(env_name.c_str());
    std::string value;
    if (env) value = env;
    else if (name == "shared") value = (std::filesystem::current_path() / ".." / "shared").lexically_normal().string();
    else if (name == "synth") value = "runs/synth-data";
    else raise(s, "", "unknown variable ${", name, "} (set ", env_name, ")");
    out = out.substr(0, at) + value + out.substr(end + 1);
    at += value.size();
  }
  return out;
}

nlohmann::json yaml_file_to_json(const std::string& path) {
  if (!std::filesystem::exists(path)) raise(path, "", "recipe file does not exist");
  try {
    return to_json(YAML::LoadFile(path));
  } catch (const YAML::Exception& e) {
    raise(path, "", "invalid YAML at line ", e.mark.line + 1, ": ", e.msg);
  }
}

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  Recipe r;
  r.source = path;
  r.raw = yaml_file_to_json(path);
  for (const auto& o : overrides) apply_override(r.raw, o, "--set");
  const auto& top = r.raw;
  check_keys(top, {"method", "model", "stages", "train", "data", "lora", "description", "feature_cache"}, path);
  if (!top.contains("stages") || !top["stages"].is_array() || top["stages"].empty())
    raise(path, "stages", "a recipe needs a non-empty list of stages");
  std::string method = io::json_get_or<std::string>(top, "method", "llava", path);
  for (size_t i = 0; i < top["stages"].size(); ++i) {
    const auto& sj = top["stages"][i];
    std::string where = cat(path, " stages[", i, "]");
    check_keys(sj, {"name", "tune", "template", "data", "train", "lora", "model", "init_from", "feature_cache"}, where);
    Stage st;
    st.name = io::json_get_or<std::string>(sj, "name", cat("stage", i + 1), where);
    vlm::VlmSpec& s = st.spec;
    s.method = method;
    const nlohmann::json* model = pick(sj, top, "model");
    if (!model) raise(path, "model", "missing section with llm and vision folders");
    check_keys(*model, {"llm", "vision", "connector", "feature_layer", "pool", "feature_norm", "preprocess", "template", "dtype", "seed"}, path + " model");
    s.llm = expand_vars(io::json_get<std::string>(*model, "llm", path + " model"));
    s.vision = expand_vars(io::json_get<std::string>(*model, "vision", path + " model"));
    get_into(model, "connector", s.connector, path + " model");
    get_into(model, "feature_layer", s.feature_layer, path + " model");
    get_into(model, "pool", s.pool, path + " model");
    get_into(model, "feature_norm", s.feature_norm, path + " model");
    if (!s.feature_norm.empty() && s.feature_norm != "standardize")
      raise(path + " model", "feature_norm", "expected standardize (or leave it out), got '", s.feature_norm, "'");
    get_into(model, "preprocess", s.preprocess, path + " model");
    get_into(model, "template", s.template_name, path + " model");
    get_into(model, "dtype", s.dtype, path + " model");
    get_into(model, "seed", s.seed, path + " model");
    get_into(&sj, "template", s.template_name, where);
    s.tune = io::json_get_or<std::string>(sj, "tune", "projector", where);
    if (s.tune != "projector" && s.tune != "lora" && s.tune != "qlora" && s.tune != "full")
      raise(where, "tune", "expected projector, lora, qlora or full, got '", s.tune, "'");
    if (const auto* l = pick(sj, top, "lora")) {
      check_keys(*l, {"r", "alpha", "dropout", "target_modules"}, where + " lora");
      get_into(l, "r", s.lora.lora.r, where + " lora");
      get_into(l, "alpha", s.lora.lora.alpha, where + " lora");
      get_into(l, "dropout", s.lora.lora.dropout, where + " lora");
      get_into(l, "target_modules", s.lora.target_modules, where + " lora");
    }
    const nlohmann::json* d = pick(sj, top, "data");
    if (!d) raise(where, "data", "missing section (train, val, format, image_root, limit)");
    check_keys(*d, {"train", "val", "format", "image_root", "limit", "val_limit", "skip_bad", "split_every"}, where + " data");
    get_into(d, "split_every", st.data.split_every, where + " data");
    st.data.train = expand_vars(io::json_get<std::string>(*d, "train", where + " data"));
    if (d->contains("val")) st.data.val = expand_vars(io::json_get<std::string>(*d, "val", where + " data"));
    get_into(d, "format", st.data.format, where + " data");
    if (d->contains("image_root")) st.data.image_root = expand_vars(io::json_get<std::string>(*d, "image_root", where + " data"));
    get_into(d, "limit", st.data.limit, where + " data");
    get_into(d, "val_limit", st.data.val_limit, where + " data");
    get_into(d, "skip_bad", st.data.skip_bad, where + " data");
    TrainConfig& t = st.train;
    for (const nlohmann::json* tj : {top.contains("train") ? &top["train"] : nullptr, sj.contains("train") ? &sj["train"] : nullptr}) {
      if (!tj) continue;
      std::string w = where + " train";
      check_keys(*tj, {"epochs", "max_steps", "batch_size", "grad_accum", "lr", "blr", "lr_projector", "weight_decay", "beta1",
                       "beta2", "eps", "max_grad_norm", "warmup_ratio", "schedule", "max_seq_len", "seed", "log_every",
                       "save_every", "keep_last", "eval_every", "eval_batches", "precision", "plot"}, w);
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

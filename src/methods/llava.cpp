// LLaVA method: options, projector + LoRA / QLoRA / full tuning, splice, counts, merge.
#include "methods/llava.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "common/error.h"
#include "common/log.h"
#include "data/dataset.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/load.h"
#include "vlm/vision_language_model.h"

namespace vadapt::methods {
namespace {
// Side of the square patch grid of n tokens (0 when n is not a square).
int64_t square_side(int64_t n) {
  const auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n))));
  return side * side == n ? side : 0;
}

void check_tune(const std::string& tune, const std::string& where) {
  if (tune != "projector" && tune != "lora" && tune != "qlora" && tune != "full")
    raise(where, "tune", "expected projector, lora, qlora or full, got '", tune, "'");
}

bool uses_lora(const std::string& tune) { return tune == "lora" || tune == "qlora"; }

void check_double_quant(const std::string& dq, const std::string& where) {
  if (dq != "linear8" && dq != "bitsandbytes")
    raise(where, "nf4_double_quant", "expected linear8 (ours, more accurate block scales) or bitsandbytes (its dynamic 8-bit code), got '", dq, "'");
}

}  // namespace

nlohmann::json Llava::parse_recipe(const nlohmann::json& sec, const std::string& where) const {
  check_keys(sec, {"connector", "feature_layer", "pool", "feature_norm", "tune", "lora", "nf4_double_quant"}, where);
  Llava m;
  Options& o = m.o_;
  read_option(sec, "connector", o.connector, where);
  read_option(sec, "feature_layer", o.feature_layer, where);
  read_option(sec, "pool", o.pool, where);
  read_option(sec, "feature_norm", o.feature_norm, where);
  if (!o.feature_norm.empty() && o.feature_norm != "standardize")
    raise(where, "feature_norm", "expected standardize (or leave it out), got '", o.feature_norm, "'");
  read_option(sec, "tune", o.tune, where);
  check_tune(o.tune, where);
  read_option(sec, "nf4_double_quant", o.nf4_double_quant, where);
  check_double_quant(o.nf4_double_quant, where);
  if (sec.contains("nf4_double_quant") && o.tune != "qlora") raise(where, "nf4_double_quant", "applies only with tune: qlora");
  if (sec.contains("lora")) {
    const auto& l = sec["lora"];
    check_keys(l, {"r", "alpha", "dropout", "target_modules"}, where + " lora");
    read_option(l, "r", o.lora.lora.r, where + " lora");
    read_option(l, "alpha", o.lora.lora.alpha, where + " lora");
    read_option(l, "dropout", o.lora.lora.dropout, where + " lora");
    read_option(l, "target_modules", o.lora.target_modules, where + " lora");
  }
  return m.config();
}

nlohmann::json Llava::config() const {
  nlohmann::json j = {{"mm_projector_type", o_.connector}, {"mm_vision_select_layer", o_.feature_layer}, {"mm_pool", o_.pool},
                      {"mm_feature_norm", o_.feature_norm}, {"tune", o_.tune}};
  if (uses_lora(o_.tune)) {
    if (o_.tune == "qlora") {
      j["quantization"] = {{"bits", 4}, {"type", "nf4"}, {"double_quant", true}, {"block", 64}};
      j["nf4_double_quant"] = o_.nf4_double_quant;
    }
    j["peft_type"] = "LORA";
    j["r"] = o_.lora.lora.r;
    j["lora_alpha"] = o_.lora.lora.alpha;
    j["lora_dropout"] = o_.lora.lora.dropout;
    j["target_modules"] = o_.lora.target_modules;
    j["bias"] = "none";
  }
  return j;
}

void Llava::configure(const nlohmann::json& j, const std::string& src) {
  o_.connector = io::json_get_or<std::string>(j, "mm_projector_type", o_.connector, src);
  o_.feature_layer = io::json_get_or<int64_t>(j, "mm_vision_select_layer", o_.feature_layer, src);
  o_.pool = io::json_get_or<int64_t>(j, "mm_pool", 0, src);
  o_.feature_norm = io::json_get_or<std::string>(j, "mm_feature_norm", "", src);
  if (!o_.feature_norm.empty() && o_.feature_norm != "standardize")
    raise(src, "mm_feature_norm", "expected \"\" or \"standardize\", got '", o_.feature_norm, "'");
  if (o_.pool < 0) raise(src, "mm_pool", "expected 0 (no pooling) or a positive grid side, got ", o_.pool);
  o_.tune = io::json_get_or<std::string>(j, "tune", o_.tune, src);
  check_tune(o_.tune, src);
  o_.nf4_double_quant = io::json_get_or<std::string>(j, "nf4_double_quant", "linear8", src);
  check_double_quant(o_.nf4_double_quant, src);
  if (uses_lora(o_.tune)) {
    o_.lora.lora.r = io::json_get<int64_t>(j, "r", src);
    o_.lora.lora.alpha = io::json_get<double>(j, "lora_alpha", src);
    o_.lora.lora.dropout = io::json_get_or<double>(j, "lora_dropout", 0.0, src);
    o_.lora.target_modules = io::json_get_or<std::vector<std::string>>(j, "target_modules", o_.lora.target_modules, src);
  }
}

std::string Llava::describe() const {
  std::string s = cat("tune ", o_.tune, " | connector ", o_.connector, " | feature layer ", o_.feature_layer);
  if (uses_lora(o_.tune)) s += cat(" | LoRA r ", o_.lora.lora.r, " alpha ", o_.lora.lora.alpha);
  if (o_.pool > 0) s += cat(" | pool ", o_.pool, "x", o_.pool);
  return s;
}

void Llava::build(const Frozen& f, uint64_t seed) {
  f_ = f;
  patches_ = f.tower->num_patches();
  if (o_.pool > 0 && o_.pool > square_side(patches_))
    throw VadaptError(cat("mm_pool ", o_.pool, ": needs a square patch grid of at least that side (the tower has ", patches_, " patches)"));
  const int64_t nh = f.tower->num_layers() + 1;
  if (o_.feature_layer >= nh || o_.feature_layer < -nh)
    throw VadaptError(cat("mm_vision_select_layer ", o_.feature_layer, " out of range for ", nh, " hidden states"));
  auto& lm = *f_.lm;
  projector_ = connectors::Projector(o_.connector, f.tower->hidden_size(), lm.config().hidden_size, seed, o_.feature_norm == "standardize");
  projector_->to(f.device);
  if (o_.tune == "qlora") {
    // The frozen LLM linears (not lm_head, not the embeddings) are stored in NF4.
    for (const auto& item : lm.named_modules("", false))
      if (auto* p = item.value()->as<model::ProjectionImpl>(); p && item.key() != "lm_head")
        p->quantize_nf4(o_.nf4_double_quant == "bitsandbytes" ? model::Nf4DoubleQuant::kDynamic8 : model::Nf4DoubleQuant::kLinear8);
  }
  if (uses_lora(o_.tune)) {
    torch::manual_seed(seed + 1);  // LoRA A init
    adapters_->attach_lora(lm, o_.lora);
    adapters_->to(f.device);
  } else if (o_.tune == "full") {
    for (auto& p : lm.parameters()) p.set_requires_grad(true);
  }
}

torch::Tensor Llava::project(const torch::Tensor& features_in) {
  auto features = features_in.to(f_.device);  // cached features live on the CPU
  if (o_.pool <= 0) return projector_(features);
  const int64_t m = features.size(0), n = features.size(1), c = features.size(2);
  const int64_t side = square_side(n);
  auto grid = features.reshape({m, side, side, c}).permute({0, 3, 1, 2});    // (M, C, s, s)
  auto pooled = torch::adaptive_avg_pool2d(grid, {o_.pool, o_.pool});         // (M, C, g, g)
  return projector_(pooled.flatten(2).transpose(1, 2));                      // (M, g*g, d)
}

Inputs Llava::prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor&) {
  torch::Tensor img;
  if (features.defined() && features.size(0) > 0) img = project(features);  // (M, N, d)
  return {splice_image_embeds(*f_.lm, ids, img, image_tokens()), {}};
}

std::vector<ParamGroup> Llava::groups() const {
  std::vector<ParamGroup> g;
  g.push_back({"projector", projector_->parameters(), true});
  if (uses_lora(o_.tune)) g.push_back({"lora", adapters_->parameters(), false});
  if (o_.tune == "full") g.push_back({"llm", f_.lm->parameters(), false});
  for (auto& grp : g)
    grp.params.erase(std::remove_if(grp.params.begin(), grp.params.end(), [](const torch::Tensor& p) { return !p.requires_grad(); }),
                     grp.params.end());
  return g;
}

std::vector<std::pair<std::string, torch::Tensor>> Llava::state() const {
  std::vector<std::pair<std::string, torch::Tensor>> s;
  for (const auto& p : projector_->named_parameters()) s.emplace_back("mm_projector." + p.key(), p.value());
  for (const auto& p : adapters_->named_parameters()) s.emplace_back("base_model.model." + p.key(), p.value());
  if (o_.tune == "full")
    for (const auto& p : f_.lm->named_parameters()) s.emplace_back(p.key(), p.value());
  return s;
}

void Llava::train_mode(bool on) {
  projector_->train(on);
  adapters_->train(on);
  f_.lm->train(on && o_.tune == "full");
}

int64_t Llava::trained_base_parameters() const { return o_.tune == "full" ? model::count_parameters(*f_.lm).total : 0; }

void Llava::init_from(const std::string& dir) {
  auto src = io::TensorSource::open(dir + "/adapter_model.safetensors");
  torch::NoGradGuard ng;
  for (auto& p : projector_->named_parameters()) {
    std::string name = "mm_projector." + p.key();
    if (!src.contains(name)) raise(src.description(), name, "missing: the earlier stage has no projector of type ", o_.connector);
    auto v = src.tensor(name);
    if (v.sizes() != p.value().sizes()) raise(src.description(), name, "shape ", v.sizes(), " in file, expected ", p.value().sizes());
    p.value().copy_(v);
  }
}

void Llava::prepare_training(vlm::VisionLanguageModel& m, const std::vector<data::Sample>& train) {
  if (o_.feature_norm != "standardize") return;
  std::vector<std::string> imgs;  // statistics from up to 512 distinct training images
  std::set<std::string> seen;
  for (const auto& s : train)
    if (!s.image.empty() && seen.insert(s.image).second && imgs.size() < 512) imgs.push_back(s.image);
  init_feature_stats(m, imgs);
  log_info(cat("feature_norm: per-channel statistics from ", imgs.size(), " training images"));
}

void Llava::init_feature_stats(vlm::VisionLanguageModel& m, const std::vector<std::string>& images) {
  if (images.empty()) throw VadaptError("feature_norm standardize: no training images to take statistics from");
  torch::NoGradGuard ng;
  torch::Tensor sum, sq;
  double n = 0;
  for (size_t i = 0; i < images.size(); i += 32) {
    std::vector<std::string> chunk(images.begin() + static_cast<long>(i), images.begin() + static_cast<long>(std::min(images.size(), i + 32)));
    auto f = m.image_features(chunk).to(torch::kFloat64);  // (K, N, C)
    auto flat = f.reshape({-1, f.size(-1)});
    sum = sum.defined() ? sum + flat.sum(0) : flat.sum(0);
    sq = sq.defined() ? sq + flat.pow(2).sum(0) : flat.pow(2).sum(0);
    n += static_cast<double>(flat.size(0));
  }
  auto mean = sum / n;
  auto var = (sq / n - mean.pow(2)).clamp_min(0);
  projector_->set_feature_stats(mean.to(torch::kFloat32).to(f_.device), var.sqrt().to(torch::kFloat32).to(f_.device));
}

nlohmann::json Llava::count(const io::LlamaConfig& lc, const VisionDims& v) const {
  nlohmann::json j;
  j["connector_parameters"] = connectors::ProjectorImpl::parameter_count(o_.connector, v.hidden_size, lc.hidden_size);
  int64_t lora = 0;
  if (uses_lora(o_.tune)) {
    const int64_t d = lc.hidden_size, q = lc.num_attention_heads * lc.head_dim, kv = lc.num_key_value_heads * lc.head_dim,
                  f = lc.intermediate_size, r = o_.lora.lora.r;
    std::map<std::string, std::pair<int64_t, int64_t>> shapes = {{"q_proj", {d, q}}, {"k_proj", {d, kv}}, {"v_proj", {d, kv}},
                                                                 {"o_proj", {q, d}}, {"gate_proj", {d, f}}, {"up_proj", {d, f}},
                                                                 {"down_proj", {f, d}}};
    for (const auto& t : o_.lora.target_modules)
      if (shapes.count(t)) lora += lc.num_hidden_layers * r * (shapes[t].first + shapes[t].second);
  }
  j["lora_parameters"] = lora;
  j["trainable_parameters"] = j["connector_parameters"].get<int64_t>() + lora + (o_.tune == "full" ? lc.parameter_count() : 0);
  j["tune"] = o_.tune;
  j["connector"] = o_.connector;
  return j;
}

}  // namespace vadapt::methods

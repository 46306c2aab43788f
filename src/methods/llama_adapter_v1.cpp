// LLaMA-Adapter V1 method: options, prompts + gates, visual token, counts, official loader.
#include "methods/llama_adapter_v1.h"

#include <set>

#include "common/error.h"
#include "common/log.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "text/prompt.h"

namespace vadapt::methods {
nlohmann::json LlamaAdapterV1::parse_recipe(const nlohmann::json& sec, const std::string& where) const {
  check_keys(sec, {"adapter", "visual"}, where);
  if (!sec.contains("adapter")) raise(where, "adapter", "missing: give adapter {prompt_len, layers, gate} (layers = how many top decoder layers carry prompts)");
  LlamaAdapterV1 m;
  Options& o = m.o_;
  const auto& a = sec["adapter"];
  const std::string aw = where + " adapter";
  check_keys(a, {"prompt_len", "layers", "gate"}, aw);
  read_option(a, "prompt_len", o.prefix.prompt_len, aw);
  if (!a.contains("layers")) raise(aw, "layers", "missing: how many top decoder layers carry prompts (LLaMA-7B recipe: 30)");
  read_option(a, "layers", o.prefix.layers, aw);
  read_option(a, "gate", o.prefix.gate, aw);
  if (sec.contains("visual")) {
    const auto& v = sec["visual"];
    const std::string vw = where + " visual";
    check_keys(v, {"taps", "hidden"}, vw);
    if (!v.contains("taps")) raise(vw, "taps", "missing: the vision layers whose CLS tokens form the global feature");
    read_option(v, "taps", o.visual_taps, vw);
    if (o.visual_taps.empty()) raise(vw, "taps", "give at least one layer (or drop the visual section for text-only)");
    read_option(v, "hidden", o.visual_hidden, vw);
  }
  m.configure(m.config(), where);  // validates the values
  return m.config();
}

void LlamaAdapterV1::configure(const nlohmann::json& j, const std::string& src) {
  o_.prefix.prompt_len = io::json_get<int64_t>(j, "adapter_len", src);
  o_.prefix.layers = io::json_get<int64_t>(j, "adapter_layer", src);
  o_.prefix.gate = io::json_get_or<std::string>(j, "gate_form", "tanh", src);
  o_.visual_taps = io::json_get_or<std::vector<int64_t>>(j, "visual_taps", {}, src);
  o_.visual_hidden = io::json_get_or<int64_t>(j, "visual_hidden", 128, src);
  if (o_.prefix.prompt_len < 0) raise(src, "adapter_len", "must be >= 0, got ", o_.prefix.prompt_len);
  if (o_.prefix.layers < 0) raise(src, "adapter_layer", "must be >= 0 (the top L layers carry prompts), got ", o_.prefix.layers);
  if (o_.prefix.gate != "tanh" && o_.prefix.gate != "raw") raise(src, "gate_form", "expected tanh or raw, got '", o_.prefix.gate, "'");
  if (o_.visual_hidden <= 0) raise(src, "visual_hidden", "must be positive, got ", o_.visual_hidden);
}

nlohmann::json LlamaAdapterV1::config() const {
  return {{"adapter_len", o_.prefix.prompt_len}, {"adapter_layer", o_.prefix.layers}, {"gate_form", o_.prefix.gate},
          {"visual_taps", o_.visual_taps}, {"visual_hidden", o_.visual_hidden}};
}

std::string LlamaAdapterV1::describe() const {
  std::string s = cat("prompts K ", o_.prefix.prompt_len, " in the top ", o_.prefix.layers, " layers | gate ", o_.prefix.gate);
  if (multimodal()) {
    std::string taps;
    for (auto t : o_.visual_taps) taps += cat(taps.empty() ? "" : ",", t);
    s += cat(" | visual token from CLS of layers ", taps, " (MLP hidden ", o_.visual_hidden, ")");
  } else {
    s += " | text-only";
  }
  return s;
}

void LlamaAdapterV1::build(const Frozen& f, uint64_t seed) {
  f_ = f;
  const auto& cfg = f.lm->config();
  prefix_ = adapters::GatedPrefix(cfg, o_.prefix, seed, f.device);
  prefix_->attach(*f_.lm);
  if (multimodal()) {
    if (!f.tower) throw VadaptError("llama_adapter_v1: visual taps need a vision tower");
    const int64_t in = static_cast<int64_t>(o_.visual_taps.size()) * f.tower->hidden_size();
    visual_proj_ = connectors::BottleneckMlp(in, o_.visual_hidden, cfg.hidden_size, "gelu", "default", seed + 2);
    visual_proj_->to(f.device);
  }
}

vision::FeatureSelect LlamaAdapterV1::feature_select() const {
  return multimodal() ? vision::FeatureSelect::cls_taps(o_.visual_taps) : vision::FeatureSelect::patch(-1);
}

Inputs LlamaAdapterV1::prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) {
  Inputs in;
  in.embeds = splice_image_embeds(*f_.lm, ids, {}, 0);  // (B, T, d); no image tokens in the sequence
  if (!features.defined() || features.size(0) == 0) return in;
  if (!multimodal())
    throw VadaptError("llama_adapter_v1: this adapter is text-only (no visual taps); a sample has an image");
  auto vis = visual_proj_(features.to(f_.device).flatten(1));                     // (M, d)
  auto cond = torch::zeros({ids.size(0), vis.size(1)}, vis.options());            // (B, d): zero for text-only rows
  in.state.condition = cond.index_copy(0, image_rows.to(f_.device), vis);        // (B, d)
  return in;
}

std::vector<ParamGroup> LlamaAdapterV1::groups() const {
  std::vector<ParamGroup> g{{"prompts", prefix_->parameters(), false}};
  if (multimodal()) g.push_back({"visual_proj", visual_proj_->parameters(), true});
  return g;
}

std::vector<std::pair<std::string, torch::Tensor>> LlamaAdapterV1::state() const {
  std::vector<std::pair<std::string, torch::Tensor>> s;
  for (const auto& p : prefix_->named_parameters()) s.emplace_back(p.key(), p.value());
  if (multimodal())
    for (const auto& p : visual_proj_->named_parameters()) s.emplace_back("visual_proj." + p.key(), p.value());
  return s;
}

void LlamaAdapterV1::train_mode(bool on) {
  prefix_->train(on);
  if (multimodal()) visual_proj_->train(on);
}

nlohmann::json LlamaAdapterV1::count(const io::LlamaConfig& lc, const VisionDims& v) const {
  if (o_.prefix.layers > lc.num_hidden_layers)
    throw VadaptError(cat("adapter layers ", o_.prefix.layers, " exceeds the LLM's ", lc.num_hidden_layers, " layers"));
  const int64_t prompts = adapters::gated_prefix_parameter_count(lc, o_.prefix);
  const int64_t visual = multimodal() ? connectors::BottleneckMlpImpl::parameter_count(
                                            static_cast<int64_t>(o_.visual_taps.size()) * v.hidden_size, o_.visual_hidden, lc.hidden_size)
                                      : 0;
  return {{"prompt_parameters", prompts}, {"connector_parameters", visual}, {"trainable_parameters", prompts + visual}};
}

void LlamaAdapterV1::load_official(const std::string& file) {
  auto src = io::TensorSource::open(file);
  torch::NoGradGuard ng;
  auto want = state();
  std::set<std::string> used;
  for (auto& [name, t] : want) {
    if (!src.contains(name)) raise(src.description(), name, "missing from the official adapter file");
    auto v = src.tensor(name);
    if (v.sizes() != t.sizes())
      raise(src.description(), name, "shape ", v.sizes(), " in file, expected ", t.sizes(), " (adapter_len ", o_.prefix.prompt_len,
            " x adapter_layer ", o_.prefix.layers, ")");
    t.copy_(v);
    used.insert(name);
  }
  const int64_t heads = f_.lm->config().num_attention_heads;
  int64_t ignored = 0;
  for (const auto& n : src.names()) {
    if (used.count(n)) continue;
    // Gates of the layers below the top L: the official state dict has them, its forward never reads them.
    const bool gate = n.rfind("layers.", 0) == 0 && n.size() > 15 && n.compare(n.size() - 15, 15, ".attention.gate") == 0;
    if (!gate) raise(src.description(), n, "unexpected tensor for llama_adapter_v1 (expected adapter_query.weight and layers.N.attention.gate)");
    if (src.tensor(n).sizes() != torch::IntArrayRef({1, heads, 1, 1})) raise(src.description(), n, "expected shape (1, ", heads, ", 1, 1)");
    ++ignored;
  }
  log_info(cat("loaded the official llama_adapter_v1 adapter ", file, " (", used.size(), " tensors; ", ignored,
               " gates of layers without prompts ignored, as in the official code)"));
}

}  // namespace vadapt::methods

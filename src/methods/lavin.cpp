// LaVIN method: options, routers in the LLM and the vision tower, the visual neck, the modality
// token's routing weights, counts and the official checkpoint loader.
#include "methods/lavin.h"

#include <filesystem>
#include <set>

#include "common/error.h"
#include "common/log.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "io/torch_bin.h"

namespace vadapt::methods {
namespace {
constexpr const char* kLlmKey = "lavin.llm";
constexpr const char* kVisionPrefix = "backbone.visual.transformer.resblocks.";
}  // namespace

nlohmann::json Lavin::parse_recipe(const nlohmann::json& sec, const std::string& where) const {
  check_keys(sec, {"adapter", "visual", "compat"}, where);
  Lavin m;
  Options& o = m.o_;
  if (sec.contains("adapter")) {
    const auto& a = sec["adapter"];
    const std::string aw = where + " adapter";
    check_keys(a, {"dim", "groups", "scale", "temperature", "dropout", "llm", "vision"}, aw);
    read_option(a, "dim", o.router.hidden, aw);
    read_option(a, "groups", o.router.groups, aw);
    read_option(a, "scale", o.router.scale, aw);
    read_option(a, "temperature", o.router.temperature, aw);
    read_option(a, "dropout", o.router.dropout, aw);
    read_option(a, "llm", o.llm_adapter, aw);
    read_option(a, "vision", o.vision_adapter, aw);
  }
  if (sec.contains("visual")) {
    const auto& v = sec["visual"];
    const std::string vw = where + " visual";
    check_keys(v, {"tap_every", "hidden"}, vw);
    read_option(v, "tap_every", o.tap_every, vw);
    read_option(v, "hidden", o.hidden_proj, vw);
  }
  if (sec.contains("compat")) {
    const auto& c = sec["compat"];
    const std::string cw = where + " compat";
    check_keys(c, {"vision_routing", "decode_positions"}, cw);
    read_option(c, "vision_routing", o.vision_routing, cw);
    read_option(c, "decode_positions", o.decode_positions, cw);
  }
  m.configure(m.config(), where);  // validates the values
  return m.config();
}

void Lavin::configure(const nlohmann::json& j, const std::string& src) {
  o_.router.hidden = io::json_get_or<int64_t>(j, "adapter_dim", 8, src);
  o_.router.groups = io::json_get_or<int64_t>(j, "adapter_groups", 2, src);
  o_.router.scale = io::json_get_or<double>(j, "adapter_scale", 1.0, src);
  o_.router.temperature = io::json_get_or<double>(j, "temperature", 10.0, src);
  o_.router.dropout = io::json_get_or<double>(j, "adapter_dropout", 0.1, src);
  o_.llm_adapter = io::json_get_or<std::string>(j, "adapter_type", "attn", src);
  o_.vision_adapter = io::json_get_or<std::string>(j, "visual_adapter_type", "router", src);
  o_.tap_every = io::json_get_or<int64_t>(j, "tap_every", 4, src);
  o_.hidden_proj = io::json_get_or<int64_t>(j, "hidden_proj", 128, src);
  o_.vision_routing = io::json_get_or<std::string>(j, "vision_routing", "per_image", src);
  o_.decode_positions = io::json_get_or<std::string>(j, "decode_positions", "recompute", src);
  if (o_.router.hidden <= 0 || o_.router.groups <= 0 || o_.router.hidden % o_.router.groups != 0)
    raise(src, "adapter_dim", "must be a positive multiple of adapter_groups (", o_.router.groups, "), got ", o_.router.hidden);
  if (!(o_.router.temperature > 0)) raise(src, "temperature", "must be > 0, got ", o_.router.temperature);
  if (o_.router.dropout < 0 || o_.router.dropout >= 1) raise(src, "adapter_dropout", "must be in [0, 1), got ", o_.router.dropout);
  if (o_.llm_adapter != "attn" && o_.llm_adapter != "block") raise(src, "adapter_type", "expected attn or block, got '", o_.llm_adapter, "'");
  if (o_.vision_adapter != "router" && o_.vision_adapter != "router_block" && o_.vision_adapter != "none")
    raise(src, "visual_adapter_type", "expected router, router_block or none, got '", o_.vision_adapter, "'");
  if (o_.tap_every <= 0) raise(src, "tap_every", "must be positive, got ", o_.tap_every);
  if (o_.hidden_proj <= 0) raise(src, "hidden_proj", "must be positive, got ", o_.hidden_proj);
  if (o_.vision_routing != "per_image" && o_.vision_routing != "per_token" && o_.vision_routing != "official")
    raise(src, "vision_routing", "expected per_image, per_token or official, got '", o_.vision_routing, "'");
  if (o_.decode_positions != "recompute" && o_.decode_positions != "official")
    raise(src, "decode_positions", "expected recompute or official, got '", o_.decode_positions, "'");
}

nlohmann::json Lavin::config() const {
  return {{"adapter_dim", o_.router.hidden},      {"adapter_groups", o_.router.groups},   {"adapter_scale", o_.router.scale},
          {"temperature", o_.router.temperature}, {"adapter_dropout", o_.router.dropout}, {"adapter_type", o_.llm_adapter},
          {"visual_adapter_type", o_.vision_adapter}, {"tap_every", o_.tap_every},       {"hidden_proj", o_.hidden_proj},
          {"vision_routing", o_.vision_routing},  {"decode_positions", o_.decode_positions}};
}

std::string Lavin::describe() const {
  std::string s = cat("router adapters (dim ", o_.router.hidden, ", groups ", o_.router.groups, ", scale ", o_.router.scale, ", t ",
                      o_.router.temperature, ") on the LLM's ", o_.llm_adapter == "block" ? "attention and MLP inputs" : "attention inputs");
  if (o_.vision_adapter == "none") s += " | vision tower frozen";
  else s += cat(" and in every vision block (", o_.vision_adapter, ", routed ", o_.vision_routing == "official" ? "by the batch's first image (official)"
                                                     : o_.vision_routing == "per_token" ? "token by token"
                                                                                        : "by each image's CLS", ")");
  s += cat(" | CLS after every ", o_.tap_every, " vision block(s) -> MLP (hidden ", o_.hidden_proj, ") | modality token");
  if (o_.decode_positions == "official") s += " | official decode positions";
  return s;
}

std::vector<int64_t> Lavin::taps() const {
  if (!f_.tower) throw VadaptError("lavin: needs a vision tower (model.vision)");
  std::vector<int64_t> t;
  for (int64_t k = o_.tap_every; k <= f_.tower->num_layers(); k += o_.tap_every) t.push_back(k);
  if (t.empty())
    throw VadaptError(cat("lavin: tap_every ", o_.tap_every, " exceeds the vision tower's ", f_.tower->num_layers(), " blocks"));
  return t;
}

void Lavin::build(const Frozen& f, uint64_t seed) {
  f_ = f;
  if (!f.tower) throw VadaptError("lavin: needs a vision tower (model.vision)");
  const auto& cfg = f.lm->config();
  const int64_t d = cfg.hidden_size, width = f.tower->hidden_size();
  llm_ = adapters::RouterSet(d, cfg.num_hidden_layers, o_.llm_adapter == "block", o_.router, adapters::RouterSetImpl::Routing::kKept,
                             kLlmKey, seed, f.device);
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) f_.lm->layer(l).hooks.adapters.push_back(llm_.ptr());
  if (o_.vision_adapter != "none") {
    using R = adapters::RouterSetImpl::Routing;
    const R routing = o_.vision_routing == "official" ? R::kOfficialBatch0 : o_.vision_routing == "per_token" ? R::kPerToken : R::kPerImage;
    vis_ = adapters::RouterSet(width, f.tower->num_layers(), o_.vision_adapter == "router_block", o_.router, routing, "lavin.vision",
                               seed + 1, f.device);
    for (int64_t l = 0; l < f.tower->num_layers(); ++l) f.tower->hooks(l).adapters.push_back(vis_.ptr());
  }
  neck_ = connectors::BottleneckMlp(width, o_.hidden_proj, d, "silu", "xavier", seed + 2);
  neck_->to(f.device);
  auto gen = at::detail::createCPUGenerator(seed + 3);
  modality_ = torch::randn({2, d}, gen).to(f.device).set_requires_grad(true);  // nn.Embedding's N(0, 1)
  train_mode(false);  // router dropout only while the trainer trains
}

vision::FeatureSelect Lavin::feature_select() const { return vision::FeatureSelect::cls_taps(taps()); }

int64_t Lavin::image_tokens() const { return static_cast<int64_t>(taps().size()); }

torch::Tensor Lavin::visual_tokens(const torch::Tensor& t) { return neck_(t.to(f_.device)); }

std::map<std::string, torch::Tensor> Lavin::modality_routes() {
  model::AdapterState rs;  // the routers store what they compute from position 0
  model::ForwardContext c;
  c.adapter_state = &rs;
  auto x = modality_.unsqueeze(1).to(f_.lm->dtype());  // (2, 1, d) at position 0, alone
  f_.lm->forward_embeds(x, c);
  return rs.kept;
}

Inputs Lavin::prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) {
  Inputs in;
  const int64_t b = ids.size(0);
  auto modality = torch::zeros({b}, torch::TensorOptions().dtype(torch::kInt64).device(f_.device));  // (B,): 0 text-only
  torch::Tensor img;
  if (features.defined() && features.size(0) > 0) {
    modality.index_fill_(0, image_rows.to(f_.device), 1);
    img = visual_tokens(features);  // (M, n_taps, d)
  }
  in.embeds = splice_image_embeds(*f_.lm, ids, img, image_tokens());  // (B, T, d)
  for (auto& [k, w] : modality_routes()) in.state.kept[k] = w.index_select(0, modality);  // (B, 2) per layer
  in.state.modality = modality;
  in.state.position_offset = 1;  // the modality token holds position 0
  in.state.decode_position_offset = o_.decode_positions == "official" ? 0 : 1;
  return in;
}

std::vector<ParamGroup> Lavin::groups() const {
  std::vector<ParamGroup> g{{"llm_adapters", llm_->parameters(), false}};
  if (vis_) g.push_back({"vision_adapters", vis_->parameters(), false});
  g.push_back({"neck", neck_->parameters(), true});
  g.push_back({"modality", {modality_}, false});
  return g;
}

std::vector<std::pair<std::string, torch::Tensor>> Lavin::state() const {
  std::vector<std::pair<std::string, torch::Tensor>> s;
  for (const auto& p : llm_->named_parameters()) s.emplace_back("layers." + p.key(), p.value());
  if (vis_)
    for (const auto& p : vis_->named_parameters()) s.emplace_back(kVisionPrefix + p.key(), p.value());
  for (const auto& p : neck_->named_parameters()) {
    const std::string k = p.key();  // "0.weight" / "2.bias" (nn.Sequential names) -> conv_A / conv_B
    s.emplace_back(cat("adapter_proj.", k[0] == '0' ? "conv_A" : "conv_B", k.substr(1)), p.value());
  }
  s.emplace_back("adapter_modality_embedding.weight", modality_);
  return s;
}

void Lavin::train_mode(bool on) {
  llm_->train(on);
  if (vis_) vis_->train(on);
  neck_->train(on);
}

nlohmann::json Lavin::count(const io::LlamaConfig& lc, const VisionDims& v) const {
  if (v.num_layers <= 0) throw VadaptError("lavin: needs a vision tower config (model.vision)");
  const int64_t per_llm = adapters::RouterAdapterImpl::parameter_count(lc.hidden_size, o_.router);
  const int64_t per_vis = adapters::RouterAdapterImpl::parameter_count(v.hidden_size, o_.router);
  const int64_t llm = lc.num_hidden_layers * per_llm * (o_.llm_adapter == "block" ? 2 : 1);
  const int64_t vis = o_.vision_adapter == "none" ? 0 : v.num_layers * per_vis * (o_.vision_adapter == "router_block" ? 2 : 1);
  const int64_t neck = connectors::BottleneckMlpImpl::parameter_count(v.hidden_size, o_.hidden_proj, lc.hidden_size);
  const int64_t mod = 2 * lc.hidden_size;
  return {{"llm_adapter_parameters", llm},   {"vision_adapter_parameters", vis}, {"connector_parameters", neck},
          {"modality_parameters", mod},      {"visual_tokens", v.num_layers / o_.tap_every},
          {"trainable_parameters", llm + vis + neck + mod}};
}

void Lavin::load_official(const std::string& path) {
  std::vector<std::pair<std::string, torch::Tensor>> have;
  const auto ext = std::filesystem::path(path).extension().string();
  if (ext == ".pth" || ext == ".pt" || ext == ".bin") {
    have = io::read_torch_bin(path);
  } else {
    auto src = io::TensorSource::open(path);
    for (const auto& n : src.names()) have.emplace_back(n, src.tensor(n));
  }
  std::map<std::string, torch::Tensor> by_name;
  for (auto& [n, t] : have) {
    if (n.find("adapter") == std::string::npos) continue;  // a golden / full file may hold other tensors
    by_name[n.rfind("module.", 0) == 0 ? n.substr(7) : n] = t;
  }
  torch::NoGradGuard ng;
  size_t used = 0;
  for (auto& [name, t] : state()) {
    auto it = by_name.find(name);
    if (it == by_name.end()) raise(path, name, "missing from the official LaVIN checkpoint (", describe(), ")");
    auto v = it->second;
    if (v.dim() == t.dim() + 1 && v.size(-1) == 1) v = v.squeeze(-1);  // Conv1d kernel 1
    if (v.sizes() != t.sizes()) raise(path, name, "shape ", v.sizes(), " in file, expected ", t.sizes());
    t.copy_(v.to(t.dtype()));
    by_name.erase(it);
    ++used;
  }
  if (!by_name.empty())
    raise(path, by_name.begin()->first, "unexpected adapter tensor for this LaVIN configuration (", describe(), "); ", by_name.size(),
          " such tensors");
  log_info(cat("loaded the official LaVIN adapters ", path, " (", used, " tensors)"));
}

}  // namespace vadapt::methods

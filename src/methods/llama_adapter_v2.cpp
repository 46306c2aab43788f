// LLaMA-Adapter V2 method: options, the parts it attaches, phases / groups, counts, merge and the
// official-release loader.
#include "methods/llama_adapter_v2.h"

#include <map>
#include <set>

#include "common/error.h"
#include "common/log.h"
#include "io/safetensors.h"
#include "model/load.h"
#include "model/module_path.h"
#include "vlm/vision_language_model.h"

namespace vadapt::methods {
namespace {
const std::vector<std::string> kAll7 = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
const std::vector<std::string> kReleased = {"q_proj", "o_proj", "gate_proj", "up_proj", "down_proj"};
const std::vector<std::string> kPhases = {"all", "pretrain", "finetune", "joint"};

bool ends_with_module(const std::string& s, const std::string& suffix) {
  return s.size() > suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0 && s[s.size() - suffix.size() - 1] == '.';
}
std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}
// Meta (interleaved pairs) -> HF (rotate-half) order of the rows of a q / k output: (heads * hd, ...).
torch::Tensor meta_to_hf_rows(const torch::Tensor& t, int64_t heads) {
  const int64_t hd = t.size(0) / heads;
  std::vector<int64_t> shape{heads, hd / 2, 2};
  for (int64_t i = 1; i < t.dim(); ++i) shape.push_back(t.size(i));
  return t.reshape(shape).transpose(1, 2).reshape(t.sizes()).contiguous();
}
}  // namespace

nlohmann::json LlamaAdapterV2::parse_recipe(const nlohmann::json& sec, const std::string& where) const {
  check_keys(sec, {"adapter", "fusion", "early_layers", "visual", "bias", "norms", "lora", "phase", "compat"}, where);
  LlamaAdapterV2 m;
  Options& o = m.o_;
  if (sec.contains("adapter")) {
    const auto& a = sec["adapter"];
    const std::string aw = where + " adapter";
    check_keys(a, {"prompt_len", "layers"}, aw);
    read_option(a, "prompt_len", o.prefix.prompt_len, aw);
    read_option(a, "layers", o.prefix.layers, aw);
  } else {
    raise(where, "adapter", "missing: give adapter {prompt_len, layers} (released 7B: 10 prompts in the top 31 layers)");
  }
  read_option(sec, "fusion", o.fusion, where);
  read_option(sec, "early_layers", o.early_layers, where);
  if (sec.contains("visual") && !sec["visual"].is_null()) {
    const auto& v = sec["visual"];
    const std::string vw = where + " visual";
    check_keys(v, {"queries", "blocks", "width", "heads", "mlp_ratio", "in"}, vw);
    o.visual = true;
    read_option(v, "queries", o.branch.queries, vw);
    read_option(v, "blocks", o.branch.depth, vw);
    read_option(v, "width", o.branch.width, vw);
    read_option(v, "heads", o.branch.heads, vw);
    read_option(v, "mlp_ratio", o.branch.mlp_ratio, vw);
    o.branch.in = 0;
    read_option(v, "in", o.branch.in, vw);
  }
  if (sec.contains("bias")) {
    const auto& b = sec["bias"];
    const std::string bw = where + " bias";
    check_keys(b, {"form", "targets"}, bw);
    read_option(b, "form", o.bias_form, bw);
    read_option(b, "targets", o.bias_targets, bw);
  }
  read_option(sec, "norms", o.norms, where);
  if (sec.contains("lora") && !sec["lora"].is_null()) {
    const auto& l = sec["lora"];
    check_keys(l, {"r"}, where + " lora");
    if (!l.contains("r")) raise(where + " lora", "r", "missing: the LoRA rank (LORA-BIAS-7B: 16)");
    read_option(l, "r", o.lora_r, where + " lora");
  }
  read_option(sec, "phase", o.phase, where);
  if (sec.contains("compat")) {
    const auto& c = sec["compat"];
    check_keys(c, {"k1_ignores_new_gate"}, where + " compat");
    read_option(c, "k1_ignores_new_gate", o.prefix.k1_ignores_new_gate, where + " compat");
  }
  m.configure(m.config(), where);  // validates
  return m.config();
}

void LlamaAdapterV2::configure(const nlohmann::json& j, const std::string& src) {
  Options o;
  o.prefix.prompt_len = io::json_get<int64_t>(j, "adapter_len", src);
  o.prefix.layers = io::json_get<int64_t>(j, "adapter_layer", src);
  o.prefix.gate = "tanh";
  o.fusion = io::json_get_or<std::string>(j, "fusion", "late", src);
  o.early_layers = io::json_get_or<int64_t>(j, "early_layers", 1, src);
  o.visual = io::json_get_or<bool>(j, "visual", false, src);
  o.branch.in = io::json_get_or<int64_t>(j, "visual_in", 0, src);
  o.branch.width = io::json_get_or<int64_t>(j, "visual_width", 768, src);
  o.branch.queries = io::json_get_or<int64_t>(j, "visual_queries", 10, src);
  o.branch.depth = io::json_get_or<int64_t>(j, "visual_blocks", 8, src);
  o.branch.heads = io::json_get_or<int64_t>(j, "visual_heads", 16, src);
  o.branch.mlp_ratio = io::json_get_or<double>(j, "visual_mlp_ratio", 4.0, src);
  o.bias_form = io::json_get_or<std::string>(j, "bias_form", "bias", src);
  o.bias_targets = io::json_get_or<std::vector<std::string>>(j, "bias_targets", {}, src);
  o.norms = io::json_get_or<bool>(j, "norms", true, src);
  o.lora_r = io::json_get_or<int64_t>(j, "lora_r", 0, src);
  o.phase = io::json_get_or<std::string>(j, "phase", "all", src);
  o.prefix.k1_ignores_new_gate = io::json_get_or<bool>(j, "k1_ignores_new_gate", false, src);
  o.prefix.new_gate = o.lora_r > 0;
  if (o.prefix.prompt_len < 0) raise(src, "adapter_len", "must be >= 0, got ", o.prefix.prompt_len);
  if (o.prefix.layers < 0) raise(src, "adapter_layer", "must be >= 0 (the top L layers carry prompts), got ", o.prefix.layers);
  if (o.fusion != "late" && o.fusion != "early") raise(src, "fusion", "expected late (released code: visual tokens added to every prompt) or early (paper: own prompts in the first layers), got '", o.fusion, "'");
  if (o.early_layers <= 0) raise(src, "early_layers", "must be positive, got ", o.early_layers);
  if (o.visual && o.fusion == "late" && o.branch.queries != o.prefix.prompt_len)
    raise(src, "visual_queries", "late fusion adds the visual tokens to the prompts position by position: queries (", o.branch.queries,
          ") must equal prompt_len (", o.prefix.prompt_len, ")");
  if (o.visual && (o.branch.queries <= 0 || o.branch.depth < 0 || o.branch.width <= 0 || o.branch.heads <= 0 || o.branch.width % o.branch.heads != 0 ||
                   o.branch.mlp_ratio <= 0 || o.branch.in < 0))
    raise(src, "visual_*", "visual branch sizes must be positive and width divisible by heads (queries ", o.branch.queries, ", blocks ",
          o.branch.depth, ", width ", o.branch.width, ", heads ", o.branch.heads, ")");
  if (o.bias_form != "none") adapters::parse_bias_scale_form(o.bias_form, src + " bias_form");
  for (const auto& t : o.bias_targets)
    if (std::find(kAll7.begin(), kAll7.end(), t) == kAll7.end())
      raise(src, "bias_targets", "unknown linear '", t, "' (expected some of ", join(kAll7), ")");
  if (o.lora_r < 0) raise(src, "lora_r", "must be >= 0, got ", o.lora_r);
  if (std::find(kPhases.begin(), kPhases.end(), o.phase) == kPhases.end())
    raise(src, "phase", "expected all, pretrain (visual branch + prompts), finetune (bias/scale, norms, LoRA) or joint (paper: disjoint groups per data kind), got '", o.phase, "'");
  if (o.fusion == "early" && !o.visual) raise(src, "fusion", "early fusion needs a visual section");
  o_ = o;
}

nlohmann::json LlamaAdapterV2::config() const {
  return {{"adapter_len", o_.prefix.prompt_len}, {"adapter_layer", o_.prefix.layers}, {"fusion", o_.fusion}, {"early_layers", o_.early_layers},
          {"visual", o_.visual}, {"visual_in", o_.branch.in}, {"visual_width", o_.branch.width}, {"visual_queries", o_.branch.queries},
          {"visual_blocks", o_.branch.depth}, {"visual_heads", o_.branch.heads}, {"visual_mlp_ratio", o_.branch.mlp_ratio},
          {"bias_form", o_.bias_form}, {"bias_targets", bias_targets()}, {"norms", o_.norms}, {"lora_r", o_.lora_r}, {"phase", o_.phase},
          {"k1_ignores_new_gate", o_.prefix.k1_ignores_new_gate}};
}

std::vector<std::string> LlamaAdapterV2::bias_targets() const {
  if (o_.bias_form == "none") return {};
  if (!o_.bias_targets.empty()) return o_.bias_targets;
  return o_.bias_form == "bias" ? kReleased : kAll7;
}

std::string LlamaAdapterV2::describe() const {
  std::string s = cat("prompts K ", o_.prefix.prompt_len, " in the top ", o_.prefix.layers, " layers (tanh gates)");
  if (o_.visual)
    s += cat(" | ", o_.fusion, " fusion of ", o_.branch.queries, " visual tokens (", o_.branch.depth, " blocks, width ", o_.branch.width, ")",
             o_.fusion == "early" ? cat(" in the first ", o_.early_layers, " layer(s)") : std::string());
  else
    s += " | text-only";
  s += cat(" | bias ", o_.bias_form, o_.bias_form == "none" ? std::string() : cat(" on ", join(bias_targets())), o_.norms ? " | norms trained" : "");
  if (o_.lora_r > 0) s += cat(" | LoRA r", o_.lora_r, " + new_gate");
  return s + " | phase " + o_.phase;
}

bool LlamaAdapterV2::trains(const std::string& group) const {
  if (o_.phase == "all" || o_.phase == "joint") return true;
  const bool visual_side = group == "visual" || group == "prompts";
  return o_.phase == "pretrain" ? visual_side : !visual_side;
}

void LlamaAdapterV2::build(const Frozen& f, uint64_t seed) {
  f_ = f;
  auto& lm = *f_.lm;
  const auto& cfg = lm.config();
  if (o_.prefix.layers > cfg.num_hidden_layers)
    throw VadaptError(cat("llama_adapter_v2: adapter layers ", o_.prefix.layers, " exceeds the LLM's ", cfg.num_hidden_layers, " layers"));
  if (o_.fusion == "early" && o_.early_layers + o_.prefix.layers > cfg.num_hidden_layers)
    throw VadaptError(cat("llama_adapter_v2: early fusion in the first ", o_.early_layers, " layer(s) and prompts in the top ", o_.prefix.layers,
                          " would share a layer of the LLM's ", cfg.num_hidden_layers, " (the paper keeps them apart)"));
  auto late = o_.prefix;
  late.use_condition = o_.visual && o_.fusion == "late";
  late.tag = "v2_prompt";
  prefix_ = adapters::GatedPrefix(cfg, late, seed, f.device);
  prefix_->attach(lm);
  if (o_.visual) {
    if (o_.branch.in == 0 && !f.tower) throw VadaptError("llama_adapter_v2: the visual branch needs a vision tower (or visual_in)");
    auto bo = o_.branch;
    if (bo.in == 0) bo.in = f.tower->output_size();
    else if (f.tower && f.tower->output_size() != bo.in)
      throw VadaptError(cat("llama_adapter_v2: visual_in ", bo.in, " but the vision tower gives ", f.tower->output_size(), "-wide tokens"));
    bo.out = cfg.hidden_size;
    visual_ = connectors::VisualBranch(bo, seed + 3);
    visual_->to(f.device);
    if (o_.fusion == "early") {
      adapters::GatedPrefixOptions e;
      e.prompt_len = bo.queries, e.layers = o_.early_layers, e.start = 0, e.learned_query = false, e.use_condition = true, e.tag = "v2_early";
      early_ = adapters::GatedPrefix(cfg, e, seed + 5, f.device);
      early_->attach(lm);
    }
  }
  // Bias / scale first, LoRA after: y = s*(Wx+b) + BAx (the official y = Wx + b + BAx in the bias form).
  if (o_.bias_form != "none") {
    const auto form = adapters::parse_bias_scale_form(o_.bias_form, "bias_form");
    const auto targets = bias_targets();
    for (const auto& item : lm.named_modules("", false)) {
      auto* proj = item.value()->as<model::ProjectionImpl>();
      if (!proj || item.key() == "lm_head") continue;
      bool hit = false;
      for (const auto& t : targets) hit = hit || ends_with_module(item.key(), t);
      if (!hit) continue;
      adapters::BiasScale b(*proj, form);
      proj->add_adapter(b.ptr());
      biases_.emplace_back(item.key(), b);
    }
  }
  if (o_.lora_r > 0) {
    loras_ = adapters::AdapterSet();
    adapters::LoraTargetOptions lo;
    lo.lora.r = o_.lora_r, lo.lora.alpha = static_cast<double>(o_.lora_r);  // no alpha / r scaling, as the released code
    loras_->attach_lora(lm, lo);
    loras_->to(f.device);
  }
  if (o_.norms) {
    torch::NoGradGuard ng;
    for (const auto& p : lm.named_parameters()) {
      const auto& k = p.key();
      if (k.find("layernorm.weight") == std::string::npos && k != "model.norm.weight") continue;
      auto t = p.value();
      t.set_data(t.to(torch::kFloat32));  // trained in fp32; RMSNorm casts to the activations' dtype
      norms_.emplace_back(k, t);
    }
  }
  // What trains in this phase (the rest of the adapter stays as loaded).
  for (auto& [k, t] : state()) t.set_requires_grad(false);
  for (const auto& g : groups())
    for (auto p : g.params) p.set_requires_grad(true);
}

Inputs LlamaAdapterV2::prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) {
  Inputs in;
  in.embeds = splice_image_embeds(*f_.lm, ids, {}, 0);  // (B, T, d)
  if (!features.defined() || features.size(0) == 0) return in;
  if (!o_.visual) throw VadaptError("llama_adapter_v2: this adapter is text-only (no visual branch); a sample has an image");
  auto vis = visual_tokens(features);                                                          // (M, Q, d)
  auto cond = torch::zeros({ids.size(0), vis.size(1), vis.size(2)}, vis.options());            // (B, Q, d): zero for text-only rows
  in.state.condition = cond.index_copy(0, image_rows.to(f_.device), vis);                     // (B, Q, d)
  return in;
}

torch::Tensor LlamaAdapterV2::visual_tokens(const torch::Tensor& features) { return visual_(features.to(f_.device)); }

std::vector<ParamGroup> LlamaAdapterV2::groups() const {
  const bool joint = o_.phase == "joint";
  std::vector<ParamGroup> g;
  auto add = [&](const std::string& name, std::vector<torch::Tensor> params, bool connector, DataKind kind) {
    if (params.empty() || !trains(name)) return;
    g.push_back({name, std::move(params), connector, joint ? kind : DataKind::kAny});
  };
  if (o_.visual) {
    auto v = visual_->parameters();
    if (early_) for (auto& p : early_->parameters()) v.push_back(p);  // the early prompts' gates
    add("visual", v, true, DataKind::kImage);
  }
  // The released finetune phase trains the biases and norms but not the gates; new_gate trains with LoRA.
  std::vector<torch::Tensor> prompts, lora;
  for (const auto& p : prefix_->named_parameters()) {
    const bool ng = p.key().size() > 9 && p.key().compare(p.key().size() - 9, 9, ".new_gate") == 0;
    (ng ? lora : prompts).push_back(p.value());
  }
  add("prompts", prompts, false, DataKind::kText);
  std::vector<torch::Tensor> bias;
  for (const auto& [k, b] : biases_)
    for (auto& p : b->parameters()) bias.push_back(p);
  add("bias_scale", bias, false, DataKind::kText);
  std::vector<torch::Tensor> norms;
  for (const auto& [k, t] : norms_) norms.push_back(t);
  add("norms", norms, false, DataKind::kText);
  if (loras_)
    for (auto& p : loras_->parameters()) lora.push_back(p);
  add("lora", lora, false, DataKind::kText);
  return g;
}

std::vector<std::pair<std::string, torch::Tensor>> LlamaAdapterV2::state() const {
  std::vector<std::pair<std::string, torch::Tensor>> s;
  for (const auto& p : prefix_->named_parameters()) s.emplace_back(p.key(), p.value());
  if (o_.visual) {
    for (const auto& p : visual_->named_parameters()) s.emplace_back(p.key(), p.value());
    if (early_)
      for (const auto& p : early_->named_parameters()) s.emplace_back("early." + p.key(), p.value());
  }
  for (const auto& [k, b] : biases_)
    for (const auto& p : b->named_parameters()) s.emplace_back(k + "." + p.key(), p.value());
  if (loras_)
    for (const auto& p : loras_->named_parameters()) s.emplace_back(p.key(), p.value());
  for (const auto& n : norms_) s.push_back(n);
  return s;
}

void LlamaAdapterV2::train_mode(bool on) {
  prefix_->train(on);
  if (visual_) visual_->train(on);
  if (early_) early_->train(on);
  if (loras_) loras_->train(on);
}

int64_t LlamaAdapterV2::trained_base_parameters() const {
  int64_t n = 0;
  for (const auto& [k, t] : norms_) n += t.numel();
  return n;
}

nlohmann::json LlamaAdapterV2::count(const io::LlamaConfig& lc, const VisionDims& v) const {
  if (o_.prefix.layers > lc.num_hidden_layers)
    throw VadaptError(cat("adapter layers ", o_.prefix.layers, " exceeds the LLM's ", lc.num_hidden_layers, " layers"));
  const int64_t d = lc.hidden_size, hd = d / lc.num_attention_heads, q = lc.num_attention_heads * hd, kv = lc.num_key_value_heads * hd,
                ffn = lc.intermediate_size, n = lc.num_hidden_layers;
  const std::map<std::string, std::pair<int64_t, int64_t>> dims = {{"q_proj", {d, q}},      {"k_proj", {d, kv}},     {"v_proj", {d, kv}},
                                                                   {"o_proj", {q, d}},      {"gate_proj", {d, ffn}}, {"up_proj", {d, ffn}},
                                                                   {"down_proj", {ffn, d}}};
  auto late = o_.prefix;
  late.new_gate = false;
  const int64_t prompts = adapters::gated_prefix_parameter_count(lc, late);
  const int64_t new_gates = o_.lora_r > 0 ? o_.prefix.layers : 0;
  int64_t visual = 0;
  if (o_.visual) {
    auto bo = o_.branch;
    if (bo.in == 0) bo.in = v.output_size;
    bo.out = d;
    visual = connectors::VisualBranchImpl::parameter_count(bo) + (o_.fusion == "early" ? o_.early_layers * lc.num_attention_heads : 0);
  }
  int64_t bias = 0, lora = 0;
  if (o_.bias_form != "none") {
    const auto form = adapters::parse_bias_scale_form(o_.bias_form, "bias_form");
    for (const auto& t : bias_targets()) bias += n * adapters::BiasScaleImpl::parameter_count(dims.at(t).first, dims.at(t).second, form);
  }
  if (o_.lora_r > 0)
    for (const auto& [t, io] : dims) lora += n * o_.lora_r * (io.first + io.second);
  const int64_t norms = o_.norms ? (2 * n + 1) * d : 0;
  const int64_t pretrain = visual + prompts, finetune = bias + norms + lora + new_gates;
  const int64_t trainable = o_.phase == "pretrain" ? pretrain : o_.phase == "finetune" ? finetune : pretrain + finetune;
  return {{"visual_parameters", visual},
          {"prompt_parameters", prompts},
          {"bias_scale_parameters", bias},
          {"norm_parameters", norms},
          {"lora_parameters", lora},
          {"new_gate_parameters", new_gates},
          {"connector_parameters", visual},
          {"pretrain_phase_parameters", pretrain},
          {"finetune_phase_parameters", finetune},
          // The released code also keeps (untrainable in effect) gates in the layers without prompts.
          {"official_pretrain_phase_parameters", pretrain + (n - o_.prefix.layers) * lc.num_attention_heads},
          {"adapter_file_parameters", pretrain + finetune},
          {"trainable_parameters", trainable}};
}

Method::Rest LlamaAdapterV2::merge_into(const vlm::VisionLanguageModel& m) {
  if (o_.prefix.prompt_len > 0 && o_.prefix.layers > 0 && !prefix_->gates_zero())
    throw VadaptError("merge: the adaption prompts are live (a gate is nonzero) and cannot be folded into weights; only bias/scale, norms and LoRA fold");
  if (early_ && !early_->gates_zero()) throw VadaptError("merge: the early visual prompts are live (a gate is nonzero)");
  auto& lm = *f_.lm;
  bool attn_bias = false, mlp_bias = false;
  for (auto& [k, b] : biases_) {
    b->fold();
    (k.find(".mlp.") != std::string::npos ? mlp_bias : attn_bias) = true;
  }
  for (const auto& item : lm.named_modules("", false)) {
    auto* proj = item.value()->as<model::ProjectionImpl>();
    if (!proj) continue;
    proj->clear_adapters();
  }
  if (loras_) {
    loras_->merge_into(lm);
  }
  biases_.clear();
  // Hugging Face's attention_bias / mlp_bias give every linear of the block a bias: the linears
  // without one gain a zero bias.
  torch::NoGradGuard ng;
  for (const auto& item : lm.named_modules("", false)) {
    auto* proj = item.value()->as<model::ProjectionImpl>();
    if (!proj || item.key() == "lm_head" || proj->bias.defined()) continue;
    const bool mlp = item.key().find(".mlp.") != std::string::npos;
    if ((mlp && mlp_bias) || (!mlp && attn_bias))
      proj->bias = proj->register_parameter("bias", torch::zeros({proj->out_features}, proj->weight.options()), false);
  }
  for (auto& [k, t] : norms_) t.set_data(t.to(lm.dtype()));
  Rest r;
  r.config = lm.config().to_json();
  r.config["attention_bias"] = lm.config().attention_bias || attn_bias;
  r.config["mlp_bias"] = lm.config().mlp_bias || mlp_bias;
  (void)m;
  return r;
}

void LlamaAdapterV2::load_official(const std::string& path) {
  auto src = io::TensorSource::open(path);
  const auto& cfg = f_.lm->config();
  const int64_t heads = cfg.num_attention_heads, kv_heads = cfg.num_key_value_heads;
  // Official name -> (our state name, rows to permute: 0 none, else the head count).
  std::map<std::string, std::pair<std::string, int64_t>> map;
  map["adapter_query.weight"] = {"adapter_query.weight", 0};
  const std::map<std::string, std::string> lin = {{"attention.wq", "self_attn.q_proj"}, {"attention.wk", "self_attn.k_proj"},
                                                  {"attention.wv", "self_attn.v_proj"}, {"attention.wo", "self_attn.o_proj"},
                                                  {"feed_forward.w1", "mlp.gate_proj"}, {"feed_forward.w3", "mlp.up_proj"},
                                                  {"feed_forward.w2", "mlp.down_proj"}};
  for (int64_t l = 0; l < cfg.num_hidden_layers; ++l) {
    const std::string o = cat("llama.layers.", l, "."), h = cat("model.layers.", l, ".");
    map[o + "attention.gate"] = {cat("layers.", l, ".attention.gate"), 0};
    map[o + "attention.new_gate"] = {cat("layers.", l, ".attention.new_gate"), 0};
    map[o + "attention_norm.weight"] = {h + "input_layernorm.weight", 0};
    map[o + "ffn_norm.weight"] = {h + "post_attention_layernorm.weight", 0};
    for (const auto& [off, ours] : lin) {
      const int64_t perm = off == "attention.wq" ? heads : off == "attention.wk" ? kv_heads : 0;
      map[o + off + ".bias"] = {h + ours + ".adapter_bias", perm};
      const auto dot = off.find('.');
      const std::string lora = o + off.substr(0, dot) + ".lora_" + off.substr(dot + 1);
      map[lora + "_l1.weight"] = {h + ours + ".lora_A.weight", 0};
      map[lora + "_l2.weight"] = {h + ours + ".lora_B.weight", perm};
    }
  }
  map["llama.norm.weight"] = {"model.norm.weight", 0};
  auto want = state();
  std::map<std::string, torch::Tensor> ours(want.begin(), want.end());
  std::set<std::string> filled;
  int64_t ignored = 0;
  torch::NoGradGuard ng;
  for (const auto& name : src.names()) {
    std::string target = name;
    int64_t perm = 0;
    if (auto it = map.find(name); it != map.end()) target = it->second.first, perm = it->second.second;
    auto dst = ours.find(target);
    if (dst == ours.end()) {
      // Gates / new_gates of layers without prompts: the official state dict has them, its forward never reads them.
      const bool unused_gate = (name.find(".attention.gate") != std::string::npos || name.find(".attention.new_gate") != std::string::npos) &&
                               map.count(name);
      if (!unused_gate)
        raise(src.description(), name, "unexpected for this llama_adapter_v2 (", describe(), "): no such part; check bias_form, lora_r, visual and the adapter sizes");
      ++ignored;
      continue;
    }
    auto v = src.tensor(name);
    if (v.sizes() != dst->second.sizes())
      raise(src.description(), name, "shape ", v.sizes(), " in file, expected ", dst->second.sizes(), " (", describe(), ")");
    if (perm) v = meta_to_hf_rows(v, perm);
    dst->second.copy_(v.to(dst->second.scalar_type()));
    filled.insert(target);
  }
  std::vector<std::string> missing;
  for (const auto& [k, t] : want)
    if (!filled.count(k)) missing.push_back(k);
  if (!missing.empty())
    raise(src.description(), missing.front(), "missing from the official adapter file (", missing.size(), " tensors of this configuration missing)");
  log_info(cat("loaded the official llama_adapter_v2 adapter ", path, " (", filled.size(), " tensors, q/k rows permuted to the Hugging Face layout; ",
               ignored, " gates of layers without prompts ignored, as in the official code)"));
}

}  // namespace vadapt::methods

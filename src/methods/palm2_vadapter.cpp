// PaLM2-VAdapter method: options, connector + tiny LM + FC layers, stages, counts.
#include "methods/palm2_vadapter.h"

#include <filesystem>
#include <map>
#include <set>

#include "common/error.h"
#include "common/log.h"
#include "connectors/linear_init.h"
#include "io/json_file.h"
#include "io/path_vars.h"
#include "io/safetensors.h"
#include "model/load.h"

namespace vadapt::methods {
namespace {
const char* kPrefix = "tiny_lm.";

nlohmann::json resampler_json(const connectors::PerceiverOptions& r) {
  return {{"queries", r.queries}, {"layers", r.layers},       {"width", r.width},
          {"heads", r.heads},     {"ffn_mult", r.ffn_mult},   {"norms", r.norms},
          {"final_norm", r.final_norm}, {"ffn", r.ffn},       {"time_embedding", r.time_embedding},
          {"max_frames", r.max_frames}};
}

void read_resampler(const nlohmann::json& j, connectors::PerceiverOptions& r, const std::string& where) {
  check_keys(j, {"queries", "layers", "width", "heads", "ffn_mult", "norms", "final_norm", "ffn", "time_embedding", "max_frames"}, where);
  read_option(j, "queries", r.queries, where);
  read_option(j, "layers", r.layers, where);
  read_option(j, "width", r.width, where);
  read_option(j, "heads", r.heads, where);
  read_option(j, "ffn_mult", r.ffn_mult, where);
  read_option(j, "norms", r.norms, where);
  read_option(j, "final_norm", r.final_norm, where);
  read_option(j, "ffn", r.ffn, where);
  read_option(j, "time_embedding", r.time_embedding, where);
  read_option(j, "max_frames", r.max_frames, where);
}

// Width / heads 0 = auto: the tiny LM's width (or the LLM's); width / 64 heads when 64 divides it.
connectors::PerceiverOptions resolved(connectors::PerceiverOptions r, int64_t in, int64_t auto_width) {
  r.in = in;
  if (r.width == 0) r.width = auto_width;
  if (r.heads == 0) r.heads = r.width % 64 == 0 ? r.width / 64 : 1;
  return r;
}

// Parameters of a Llama without its token embeddings and LM head (what the adapter role trains).
int64_t body_parameters(const io::LlamaConfig& c) {
  return c.parameter_count() - c.vocab_size * c.hidden_size * (c.tie_word_embeddings ? 1 : 2);
}

bool adapter_part(const std::string& hf_name) {  // model.layers.* and model.norm.*: the encoder body
  return hf_name.rfind("model.layers.", 0) == 0 || hf_name.rfind("model.norm.", 0) == 0;
}

// Random init (the paper's "random init" ablation): HF's initializer_range 0.02 for matrices,
// norm weights 1, biases 0.
void random_init(torch::nn::Module& lm, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  torch::NoGradGuard ng;
  for (auto& p : lm.named_parameters()) {
    auto& t = p.value();
    if (t.dim() >= 2) t.copy_(torch::empty(t.sizes()).normal_(0, 0.02, gen));
    else if (p.key().find("norm") != std::string::npos) t.fill_(1);
    else t.zero_();
  }
}
}  // namespace

nlohmann::json Palm2VAdapter::parse_recipe(const nlohmann::json& sec, const std::string& where) const {
  check_keys(sec, {"role", "connector", "resampler", "tiny_lm", "feature_layer"}, where);
  Palm2VAdapter m;
  Options& o = m.o_;
  read_option(sec, "role", o.role, where);
  if (o.role != "adapter" && o.role != "decoder")
    raise(where, "role", "expected adapter (stage 2: the tiny LM between the vision encoder and the large LLM) or decoder (stage 1: the "
                         "tiny LM, as model.llm, learns to caption), got '", o.role, "'");
  o.connector = o.role == "decoder" ? "pooler" : "perceiver";
  read_option(sec, "connector", o.connector, where);
  o.resampler.width = 0, o.resampler.heads = 0;
  if (sec.contains("tiny_lm") && !sec["tiny_lm"].is_null()) {  // null: none (the perceiver baseline)
    const auto& t = sec["tiny_lm"];
    const std::string tw = where + " tiny_lm";
    check_keys(t, {"path", "init", "config"}, tw);
    read_option(t, "init", o.tiny_lm_init, tw);
    if (o.role == "decoder") {
      if (t.contains("path") || t.contains("config"))
        raise(tw, t.contains("path") ? "path" : "config", "role decoder trains model.llm as the tiny LM; give its folder there");
    } else {
      if (!t.contains("path")) raise(tw, "path", "missing: the tiny LM's Hugging Face Llama folder");
      o.tiny_lm_path = io::expand_vars(io::json_get<std::string>(t, "path", tw));
      if (t.contains("config")) {
        o.tiny_lm_config = t["config"];
      } else {
        const std::string cfg = o.tiny_lm_path + "/config.json";
        if (!std::filesystem::exists(cfg))
          raise(tw, "path", "no config.json in '", o.tiny_lm_path, "' (give the folder, or its config inline as tiny_lm.config)");
        o.tiny_lm_config = io::read_json(cfg);
      }
    }
  }
  // The paper's layer counts: 1 in front of a tiny LM (Table 4), 6 for the perceiver baseline.
  o.resampler.layers = m.has_tiny_lm() ? 1 : 6;
  if (sec.contains("resampler")) read_resampler(sec["resampler"], o.resampler, where + " resampler");
  read_option(sec, "feature_layer", o.feature_layer, where);
  m.configure(m.config(), where);  // validates
  return m.config();
}

nlohmann::json Palm2VAdapter::config() const {
  return {{"palm2_role", o_.role},          {"connector", o_.connector},           {"resampler", resampler_json(o_.resampler)},
          {"tiny_lm_path", o_.tiny_lm_path}, {"tiny_lm_init", o_.tiny_lm_init},   {"tiny_lm_config", o_.tiny_lm_config},
          {"feature_layer", o_.feature_layer}};
}

void Palm2VAdapter::configure(const nlohmann::json& j, const std::string& src) {
  o_.role = io::json_get<std::string>(j, "palm2_role", src);
  o_.connector = io::json_get<std::string>(j, "connector", src);
  if (!j.contains("resampler")) raise(src, "resampler", "missing");
  o_.resampler = connectors::PerceiverOptions{};
  read_resampler(j["resampler"], o_.resampler, src + " resampler");
  o_.tiny_lm_path = io::json_get_or<std::string>(j, "tiny_lm_path", "", src);
  o_.tiny_lm_init = io::json_get_or<std::string>(j, "tiny_lm_init", "pretrained", src);
  o_.tiny_lm_config = j.contains("tiny_lm_config") ? j["tiny_lm_config"] : nlohmann::json();
  o_.feature_layer = io::json_get_or<int64_t>(j, "feature_layer", -1, src);
  if (o_.role != "adapter" && o_.role != "decoder") raise(src, "palm2_role", "expected adapter or decoder, got '", o_.role, "'");
  if (o_.connector != "perceiver" && o_.connector != "pooler")
    raise(src, "connector", "expected perceiver (resampler) or pooler (CoCa's attentional pooler), got '", o_.connector, "'");
  if (o_.tiny_lm_init != "pretrained" && o_.tiny_lm_init != "random")
    raise(src, "tiny_lm_init", "expected pretrained or random, got '", o_.tiny_lm_init, "'");
  if (o_.role == "decoder" && !o_.tiny_lm_config.is_null())
    raise(src, "tiny_lm_config", "role decoder uses model.llm as the tiny LM (no separate tiny LM)");
  if (!o_.tiny_lm_config.is_null()) {
    if (!o_.tiny_lm_config.is_object()) raise(src, "tiny_lm_config", "must be the tiny LM's config.json object");
    io::LlamaConfig::from_json(o_.tiny_lm_config, src + " tiny_lm_config");  // validates
  }
  if (o_.role == "adapter" && !o_.tiny_lm_path.empty() && o_.tiny_lm_config.is_null())
    raise(src, "tiny_lm_config", "missing: the tiny LM's config.json (written from tiny_lm.path by the recipe)");
  // Width / heads checked here where given (an automatic width is known at build).
  auto r = resolved(o_.resampler, 1, 64 * std::max<int64_t>(1, o_.resampler.heads));
  r.validate(src + " resampler");
  if (o_.resampler.width < 0 || o_.resampler.heads < 0) raise(src, "resampler", "width and heads must be >= 0 (0 = automatic)");
}

std::string Palm2VAdapter::describe() const {
  const auto& r = o_.resampler;
  std::string conn = o_.connector == "pooler" ? cat("attentional pooler (", r.queries, " queries)")
                                              : cat(r.layers, "-layer perceiver resampler (", r.queries, " queries)");
  if (o_.role == "decoder") return cat("stage 1: model.llm as the tiny LM decoder (trained, init ", o_.tiny_lm_init, ") <- ", conn, " + fc_in");
  if (!has_tiny_lm()) return cat("perceiver baseline: ", conn, " -> fc_out -> frozen LLM");
  return cat(conn, " -> fc_in -> tiny LM (", o_.tiny_lm_path.empty() ? "from its config" : o_.tiny_lm_path, ", init ", o_.tiny_lm_init,
             ") -> fc_out -> frozen LLM");
}

model::LlamaForCausalLMImpl& Palm2VAdapter::tiny_lm() {
  if (o_.role == "decoder") return *f_.lm;
  if (!tiny_) throw VadaptError("palm2_vadapter: this configuration has no tiny LM (perceiver baseline)");
  return *tiny_;
}

void Palm2VAdapter::build(const Frozen& f, uint64_t seed) {
  f_ = f;
  if (!f.tower) throw VadaptError("palm2_vadapter: needs a vision tower (model.vision)");
  const int64_t llm_d = f.lm->config().hidden_size;
  int64_t tiny_d = llm_d;
  if (o_.role == "adapter" && has_tiny_lm()) {
    auto cfg = io::LlamaConfig::from_json(o_.tiny_lm_config, "tiny_lm_config");
    tiny_ = model::LlamaForCausalLM(cfg, torch::TensorOptions().dtype(torch::kFloat32).device(f.device));
    random_init(*tiny_, seed + 3);  // replaced by the folder's weights (prepare_training), stage 1 (init_from) or a checkpoint
    for (auto& p : tiny_->named_parameters()) p.value().set_requires_grad(adapter_part(p.key()));
    tiny_d = cfg.hidden_size;
  }
  if (o_.role == "decoder")
    for (auto& p : f_.lm->parameters()) p.set_requires_grad(true);
  const auto r = resolved(o_.resampler, f.tower->hidden_size(), has_tiny_lm() ? tiny_d : llm_d);
  r.validate("palm2_vadapter resampler");
  if (o_.connector == "perceiver") {
    resampler_ = connectors::PerceiverResampler(r, seed);
    resampler_->to(f.device);
  } else {
    pooler_ = connectors::AttentionalPooler(connectors::PoolerOptions{r.in, r.width, r.queries, r.heads}, seed);
    pooler_->to(f.device);
  }
  auto gen = at::detail::createCPUGenerator(seed + 1);
  if (has_tiny_lm()) {
    fc_in_ = connectors::trainable_linear(r.width, tiny_d, "default", gen);
    fc_in_->to(f.device);
  }
  if (o_.role == "adapter") {
    fc_out_ = connectors::trainable_linear(has_tiny_lm() ? tiny_d : r.width, llm_d, "default", gen);
    fc_out_->to(f.device);
  }
}

torch::Tensor Palm2VAdapter::connect(const torch::Tensor& frames) {
  auto x = o_.connector == "perceiver" ? resampler_(frames) : pooler_(frames);  // (R, Q, w)
  if (fc_in_) x = fc_in_(x);                                                     // (R, Q, d_tiny)
  if (o_.role == "decoder") return x;  // the prefix of the tiny LM itself
  if (tiny_) {
    model::ForwardContext ctx;  // causal self-attention over the visual tokens only
    x = tiny_->forward_embeds(x, ctx);  // (R, Q, d_tiny), final-normed
  }
  return fc_out_(x);  // (R, Q, d_llm)
}

torch::Tensor Palm2VAdapter::visual_tokens(const torch::Tensor& features_in, const torch::Tensor& image_rows) {
  auto features = features_in.to(f_.device);  // (M, N, C); cached features live on the CPU
  const int64_t m = features.size(0);
  auto rows = image_rows.to(torch::kCPU).contiguous();
  if (rows.dim() != 1 || rows.size(0) != m) throw VadaptError(cat("palm2_vadapter: ", m, " images but image_rows ", rows.sizes()));
  const auto* r = rows.data_ptr<int64_t>();
  bool one_each = true;
  for (int64_t i = 1; i < m; ++i) {
    if (r[i] < r[i - 1]) throw VadaptError("palm2_vadapter: the images of a batch must come in row order");
    one_each = one_each && r[i] != r[i - 1];
  }
  if (one_each) return connect(features.unsqueeze(1));  // (M, 1, N, C): one frame per row
  // Rows with several images: each row's images are its frames, resampled together.
  std::vector<torch::Tensor> out;
  for (int64_t i = 0; i < m;) {
    int64_t j = i;
    while (j < m && r[j] == r[i]) ++j;
    out.push_back(connect(features.narrow(0, i, j - i).unsqueeze(0)));  // (1, F, N, C) -> (1, Q, d)
    i = j;
  }
  return torch::cat(out, 0);
}

Inputs Palm2VAdapter::prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) {
  torch::Tensor img;
  if (features.defined() && features.size(0) > 0) img = visual_tokens(features, image_rows);
  return {splice_image_embeds(*f_.lm, ids, img, image_tokens()), {}};
}

std::vector<ParamGroup> Palm2VAdapter::groups() const {
  ParamGroup conn{"connector", {}, true};
  for (const auto& p : o_.connector == "perceiver" ? resampler_->parameters() : pooler_->parameters()) conn.params.push_back(p);
  for (const auto& fc : {fc_in_, fc_out_})
    if (fc) conn.params.push_back(fc->weight), conn.params.push_back(fc->bias);
  std::vector<ParamGroup> g{conn};
  if (has_tiny_lm()) {
    ParamGroup t{"tiny_lm", {}, false};
    for (const auto& p : (o_.role == "decoder" ? f_.lm : tiny_)->parameters())
      if (p.requires_grad()) t.params.push_back(p);
    g.push_back(t);
  }
  return g;
}

std::vector<std::pair<std::string, torch::Tensor>> Palm2VAdapter::state() const {
  std::vector<std::pair<std::string, torch::Tensor>> s;
  if (o_.connector == "perceiver")
    for (const auto& p : resampler_->named_parameters()) s.emplace_back("resampler." + p.key(), p.value());
  else
    for (const auto& p : pooler_->named_parameters()) s.emplace_back("pooler." + p.key(), p.value());
  if (fc_in_) s.emplace_back("fc_in.weight", fc_in_->weight), s.emplace_back("fc_in.bias", fc_in_->bias);
  if (fc_out_) s.emplace_back("fc_out.weight", fc_out_->weight), s.emplace_back("fc_out.bias", fc_out_->bias);
  if (has_tiny_lm())
    for (const auto& p : (o_.role == "decoder" ? f_.lm : tiny_)->named_parameters())
      if (o_.role == "decoder" || adapter_part(p.key())) s.emplace_back(kPrefix + p.key(), p.value());
  return s;
}

void Palm2VAdapter::train_mode(bool on) {
  if (resampler_) resampler_->train(on);
  if (pooler_) pooler_->train(on);
  if (tiny_) tiny_->train(on);
  if (o_.role == "decoder") f_.lm->train(on);
}

int64_t Palm2VAdapter::trained_base_parameters() const {
  return o_.role == "decoder" ? model::count_parameters(*f_.lm).total : 0;
}

void Palm2VAdapter::init_from(const std::string& dir) {
  const std::string file = dir + "/adapter_model.safetensors";
  auto src = io::TensorSource::open(file);
  torch::NoGradGuard ng;
  std::map<std::string, int64_t> carried;
  std::set<std::string> fresh;
  for (const auto& [name, t] : state()) {
    const std::string part = name.substr(0, name.find('.'));
    if (!src.contains(name)) {
      fresh.insert(part);
      continue;
    }
    auto v = src.tensor(name);
    if (v.sizes() != t.sizes())
      raise(src.description(), name, "shape ", v.sizes(), " in file, expected ", t.sizes(), " (a different tiny LM or width?)");
    t.copy_(v);
    ++carried[part];
  }
  if (carried.empty()) raise(file, "", "init_from: the earlier stage has none of this stage's palm2_vadapter tensors");
  if (has_tiny_lm() && !carried.count("tiny_lm"))
    raise(file, "tiny_lm.*", "init_from: the earlier stage has no tiny LM to carry (train it with role decoder first)");
  std::string c, fr;
  for (const auto& [part, n] : carried) c += cat(c.empty() ? "" : ", ", part, " (", n, ")");
  for (const auto& part : fresh) fr += cat(fr.empty() ? "" : ", ", part);
  log_info(cat("init_from ", dir, ": carried ", c, fr.empty() ? "" : "; fresh: " + fr));
}

void Palm2VAdapter::prepare_training(vlm::VisionLanguageModel&, const std::vector<data::Sample>&) {
  if (!has_tiny_lm()) return;
  auto& lm = tiny_lm();
  if (o_.tiny_lm_init == "random") {
    random_init(lm, 7);
    log_info("tiny LM: random initialisation (N(0, 0.02), norms 1)");
    return;
  }
  if (o_.role == "decoder") return;  // model.llm was loaded with its weights
  if (o_.tiny_lm_path.empty()) throw VadaptError("palm2_vadapter: init pretrained needs tiny_lm.path (the folder with its weights)");
  auto loaded = model::load_llama(o_.tiny_lm_path, torch::kFloat32, f_.device);
  std::map<std::string, torch::Tensor> by_name;
  for (const auto& p : loaded->named_parameters()) by_name[p.key()] = p.value();
  torch::NoGradGuard ng;
  for (auto& p : tiny_->named_parameters()) {
    auto it = by_name.find(p.key());
    if (it == by_name.end() || it->second.sizes() != p.value().sizes())
      raise(o_.tiny_lm_path, p.key(), "does not match the tiny LM config stored in the recipe");
    p.value().copy_(it->second);
  }
  log_info(cat("tiny LM: weights from ", o_.tiny_lm_path));
}

nlohmann::json Palm2VAdapter::count(const io::LlamaConfig& lc, const VisionDims& v) const {
  int64_t tiny_d = lc.hidden_size, tiny_params = 0;
  if (o_.role == "decoder") {
    tiny_params = lc.parameter_count();
  } else if (has_tiny_lm()) {
    auto tc = io::LlamaConfig::from_json(o_.tiny_lm_config, "tiny_lm_config");
    tiny_d = tc.hidden_size;
    tiny_params = body_parameters(tc);
  }
  const auto r = resolved(o_.resampler, v.hidden_size, tiny_d);
  const int64_t conn = o_.connector == "perceiver"
                           ? connectors::PerceiverResamplerImpl::parameter_count(r)
                           : connectors::AttentionalPoolerImpl::parameter_count({r.in, r.width, r.queries, r.heads});
  const int64_t fc_in = has_tiny_lm() ? r.width * tiny_d + tiny_d : 0;
  const int64_t fc_out = o_.role == "adapter" ? (has_tiny_lm() ? tiny_d : r.width) * lc.hidden_size + lc.hidden_size : 0;
  return {{"connector_parameters", conn},  {"fc_in_parameters", fc_in}, {"tiny_lm_parameters", tiny_params},
          {"fc_out_parameters", fc_out},   {"trainable_parameters", conn + fc_in + tiny_params + fc_out},
          {"role", o_.role},               {"connector", o_.connector}};
}

}  // namespace vadapt::methods

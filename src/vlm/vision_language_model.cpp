// VisionLanguageModel: composition, embedding splice, loss, trainable set and checkpoints.
#include "vlm/vision_language_model.h"

#include <cmath>
#include <filesystem>

#include "common/error.h"
#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/load.h"
#include "vision/image.h"

namespace vadapt::vlm {
namespace fs = std::filesystem;

namespace {
// Side of the square patch grid of n tokens (0 when n is not a square).
int64_t square_side(int64_t n) {
  const auto side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n))));
  return side * side == n ? side : 0;
}
}  // namespace

VisionLanguageModel::VisionLanguageModel(const VlmSpec& spec, torch::Device device)
    : spec_(spec), device_(device), template_(text::ChatTemplate::by_name(spec.template_name)) {
  auto dtype = io::dtype_from_name(spec.dtype, "dtype");
  lm_ = model::load_llama(spec.llm, dtype, device);
  tok_ = text::load_tokenizer(spec.llm);
  tower_ = vision::load_vision_tower(spec.vision, dtype, device);
  pre_ = spec.preprocess.empty() ? vision::PreprocessConfig::from_hf(spec.vision) : vision::PreprocessConfig::named(spec.preprocess);
  if (pre_.crop != tower_->image_size())
    throw VadaptError(cat("preprocess ", pre_.describe(), " makes ", pre_.crop, " px images; the vision tower expects ",
                          tower_->image_size()));
  if (spec.pool > 0) {
    if (spec.pool > square_side(tower_->num_patches()))
      throw VadaptError(cat("mm_pool ", spec.pool, ": needs a square patch grid of at least that side (the tower has ", tower_->num_patches(),
                            " patches)"));
  }
  const int64_t nh = static_cast<int64_t>(tower_->num_layers()) + 1;
  if (spec.feature_layer >= nh || spec.feature_layer < -nh)
    throw VadaptError(cat("mm_vision_select_layer ", spec.feature_layer, " out of range for ", nh, " hidden states"));
  projector_ = connectors::Projector(spec.connector, tower_->hidden_size(), lm_->config().hidden_size, spec.seed,
                                     spec.feature_norm == "standardize");
  projector_->to(device);
  if (spec.tune == "qlora") {
    // The frozen LLM linears (not lm_head, not the embeddings) are stored in NF4.
    for (const auto& item : lm_->named_modules("", false))
      if (auto* p = item.value()->as<model::ProjectionImpl>(); p && item.key() != "lm_head") p->quantize_nf4();
  }
  if (spec.tune == "lora" || spec.tune == "qlora") {
    torch::manual_seed(spec.seed + 1);  // LoRA A init
    adapters_->attach_lora(*lm_, spec.lora);
    adapters_->to(device);
  } else if (spec.tune == "full") {
    for (auto& p : lm_->parameters()) p.set_requires_grad(true);
  } else if (spec.tune != "projector") {
    throw VadaptError(cat("tune: expected projector, lora, qlora or full, got '", spec.tune, "'"));
  }
}

torch::Tensor VisionLanguageModel::vision_features(const torch::Tensor& pixels) {
  torch::NoGradGuard ng;  // the tower is frozen: no graph, no activations kept
  auto out = tower_->encode(pixels.to(device_));
  return vision::select_patch_features(out, spec_.feature_layer).to(torch::kFloat32);  // (M, N, C)
}

torch::Tensor VisionLanguageModel::project(const torch::Tensor& features_in) {
  auto features = features_in.to(device_);  // cached features live on the CPU
  if (spec_.pool <= 0) return projector_(features);
  const int64_t m = features.size(0), n = features.size(1), c = features.size(2);
  const int64_t side = square_side(n);
  auto grid = features.reshape({m, side, side, c}).permute({0, 3, 1, 2});                        // (M, C, s, s)
  auto pooled = torch::adaptive_avg_pool2d(grid, {spec_.pool, spec_.pool});                      // (M, C, g, g)
  return projector_(pooled.flatten(2).transpose(1, 2));                                          // (M, g*g, d)
}

torch::Tensor VisionLanguageModel::embed(const torch::Tensor& ids, const torch::Tensor& image_embeds) {
  auto is_img = ids.eq(text::kImageToken);                          // (B, T)
  auto x = lm_->embed(ids.masked_fill(is_img, 0));                  // (B, T, d)
  const int64_t n_img = is_img.sum().item<int64_t>();
  if (n_img == 0) return x;
  if (!image_embeds.defined() || image_embeds.size(0) * image_embeds.size(1) != n_img)
    throw VadaptError(cat("prompt has ", n_img, " image positions but ", image_embeds.defined() ? image_embeds.size(0) : 0,
                          " image(s) of ", image_tokens(), " tokens were given"));
  auto flat = image_embeds.reshape({-1, image_embeds.size(-1)}).to(x.scalar_type());  // (M*N, d)
  auto pos = is_img.to(device_).view({-1}).nonzero().squeeze(1);                      // (M*N,)
  return x.view({-1, x.size(-1)}).index_put({pos}, flat).view(x.sizes());             // (B, T, d)
}

LossResult VisionLanguageModel::loss(const Batch& b) {
  torch::Tensor img;
  if (b.features.defined()) img = project(b.features.to(device_));                              // (M, N, d)
  else if (b.pixels.defined() && b.pixels.size(0) > 0) img = project(vision_features(b.pixels));  // (M, N, d)
  auto x = embed(b.ids.to(device_), img);                    // (B, T, d)
  model::ForwardContext ctx;
  if (b.mask.defined() && b.mask.min().item<int64_t>() == 0) ctx.attention_mask = b.mask.to(device_);
  auto logits = lm_->logits(lm_->forward_embeds(x, ctx));    // (B, T, V)
  auto shift_logits = logits.narrow(1, 0, logits.size(1) - 1).to(torch::kFloat32);  // (B, T-1, V)
  auto shift_labels = b.labels.to(device_).narrow(1, 1, b.labels.size(1) - 1);      // (B, T-1)
  auto flat_logits = shift_logits.reshape({-1, shift_logits.size(-1)});
  auto flat_labels = shift_labels.reshape({-1});
  LossResult r;
  r.target_tokens = flat_labels.ne(text::kIgnore).sum().item<int64_t>();
  auto sum = torch::nn::functional::cross_entropy(
      flat_logits, flat_labels,
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(text::kIgnore).reduction(torch::kSum));
  r.loss_sum = sum.item<double>();
  r.sum = sum;
  r.loss = sum / std::max<int64_t>(r.target_tokens, 1);
  return r;
}

torch::Tensor VisionLanguageModel::load_pixels(const std::string& path) const {
  return vision::preprocess(vision::decode_image_file(path), pre_);  // (3, H, W)
}

void VisionLanguageModel::enable_feature_cache(const std::string& dir) {
  auto cfg = io::read_text_file(io::config_path_of(spec_.vision));
  std::string key = cat(fs::weakly_canonical(spec_.vision).string(), "|", vision::sha256_hex(cfg), "|", pre_.describe(), "|",
                        spec_.feature_layer, "|", spec_.dtype);
  for (const char* w : {"model.safetensors", "model.safetensors.index.json"}) {
    auto p = fs::path(spec_.vision) / w;
    if (fs::exists(p)) key += cat("|", w, ":", fs::file_size(p), ":", fs::last_write_time(p).time_since_epoch().count());
  }
  cache_ = std::make_unique<vision::FeatureCache>(dir, key);
}

torch::Tensor VisionLanguageModel::image_features(const std::vector<std::string>& paths) {
  auto compute = [&](const std::vector<std::string>& ps) {
    std::vector<torch::Tensor> px;
    for (const auto& p : ps) px.push_back(load_pixels(p));
    return vision_features(torch::stack(px));  // (K, N, C)
  };
  if (!cache_) return compute(paths);
  return cache_->get(paths, compute);
}

Batch VisionLanguageModel::collate(const std::vector<text::EncodedPrompt>& prompts,
                                   const std::vector<std::string>& images) {
  Batch b;
  size_t t = 0;
  for (const auto& p : prompts) t = std::max(t, p.ids.size());
  const int64_t bs = static_cast<int64_t>(prompts.size()), tt = static_cast<int64_t>(t);
  b.ids = torch::full({bs, tt}, tok_->pad_id(), torch::kInt64);
  b.labels = torch::full({bs, tt}, text::kIgnore, torch::kInt64);
  b.mask = torch::zeros({bs, tt}, torch::kInt64);
  for (int64_t i = 0; i < bs; ++i) {
    const auto& p = prompts[i];
    const int64_t n = static_cast<int64_t>(p.ids.size());
    b.ids[i].narrow(0, 0, n).copy_(torch::tensor(p.ids, torch::kInt64));
    b.labels[i].narrow(0, 0, n).copy_(torch::tensor(p.labels, torch::kInt64));
    b.mask[i].narrow(0, 0, n).fill_(1);
    b.tokens += n;
  }
  std::vector<std::string> paths;
  for (const auto& im : images)
    if (!im.empty()) paths.push_back(im);
  if (paths.empty()) return b;
  if (cache_) {
    b.features = image_features(paths);  // (M, N, C)
  } else {
    std::vector<torch::Tensor> px;
    for (const auto& p : paths) px.push_back(load_pixels(p));
    b.pixels = torch::stack(px);  // (M, 3, H, W)
  }
  return b;
}

std::vector<std::pair<std::string, std::vector<torch::Tensor>>> VisionLanguageModel::trainable_groups() const {
  std::vector<std::pair<std::string, std::vector<torch::Tensor>>> g;
  g.push_back({"projector", projector_->parameters()});
  if (spec_.tune == "lora" || spec_.tune == "qlora") g.push_back({"lora", adapters_->parameters()});
  if (spec_.tune == "full") g.push_back({"llm", lm_->parameters()});
  for (auto& [name, ps] : g) ps.erase(std::remove_if(ps.begin(), ps.end(), [](const torch::Tensor& p) { return !p.requires_grad(); }), ps.end());
  return g;
}

std::vector<std::pair<std::string, torch::Tensor>> VisionLanguageModel::trainable_state() const {
  std::vector<std::pair<std::string, torch::Tensor>> s;
  for (const auto& p : projector_->named_parameters()) s.emplace_back("mm_projector." + p.key(), p.value());
  for (const auto& p : adapters_->named_parameters()) s.emplace_back("base_model.model." + p.key(), p.value());
  if (spec_.tune == "full")
    for (const auto& p : lm_->named_parameters()) s.emplace_back(p.key(), p.value());
  return s;
}

void VisionLanguageModel::save_adapter(const std::string& dir) const {
  fs::create_directories(dir);
  io::write_safetensors(dir + "/adapter_model.safetensors", trainable_state(), {{"format", "pt"}, {"method", spec_.method}});
  io::write_text_atomic(dir + "/adapter_config.json", spec_.to_json().dump(2) + "\n");
}

void VisionLanguageModel::load_adapter_weights(const std::string& dir) {
  auto src = io::TensorSource::open(dir + "/adapter_model.safetensors");
  torch::NoGradGuard ng;
  std::vector<std::string> missing;
  auto state = trainable_state();
  std::set<std::string> want;
  for (auto& [name, t] : state) {
    want.insert(name);
    if (!src.contains(name)) {
      missing.push_back(name);
      continue;
    }
    auto v = src.tensor(name);
    if (v.sizes() != t.sizes()) raise(src.description(), name, "shape ", v.sizes(), " in file, expected ", t.sizes());
    t.copy_(v);
  }
  std::vector<std::string> unexpected;
  for (const auto& n : src.names())
    if (!want.count(n)) unexpected.push_back(n);
  if (!missing.empty() || !unexpected.empty())
    raise(src.description(), missing.empty() ? unexpected[0] : missing[0], "adapter checkpoint does not match the recipe: ",
          missing.size(), " missing and ", unexpected.size(), " unexpected tensors");
}

void VisionLanguageModel::init_projector_from(const std::string& dir) {
  auto src = io::TensorSource::open(dir + "/adapter_model.safetensors");
  torch::NoGradGuard ng;
  for (auto& p : projector_->named_parameters()) {
    std::string name = "mm_projector." + p.key();
    if (!src.contains(name)) raise(src.description(), name, "missing: the earlier stage has no projector of type ", spec_.connector);
    auto v = src.tensor(name);
    if (v.sizes() != p.value().sizes()) raise(src.description(), name, "shape ", v.sizes(), " in file, expected ", p.value().sizes());
    p.value().copy_(v);
  }
}

void VisionLanguageModel::init_feature_stats(const std::vector<std::string>& images) {
  if (images.empty()) throw VadaptError("feature_norm standardize: no training images to take statistics from");
  torch::NoGradGuard ng;
  torch::Tensor sum, sq;
  double n = 0;
  for (size_t i = 0; i < images.size(); i += 32) {
    std::vector<std::string> chunk(images.begin() + static_cast<long>(i), images.begin() + static_cast<long>(std::min(images.size(), i + 32)));
    auto f = image_features(chunk).to(torch::kFloat64);  // (K, N, C)
    auto flat = f.reshape({-1, f.size(-1)});
    sum = sum.defined() ? sum + flat.sum(0) : flat.sum(0);
    sq = sq.defined() ? sq + flat.pow(2).sum(0) : flat.pow(2).sum(0);
    n += static_cast<double>(flat.size(0));
  }
  auto mean = sum / n;
  auto var = (sq / n - mean.pow(2)).clamp_min(0);
  projector_->set_feature_stats(mean.to(torch::kFloat32).to(device_), var.sqrt().to(torch::kFloat32).to(device_));
}

void VisionLanguageModel::train_mode(bool on) {
  projector_->train(on);
  adapters_->train(on);
  lm_->train(on && spec_.tune == "full");
}

nlohmann::json VisionLanguageModel::count_from_configs(const VlmSpec& spec) {
  auto lj = io::read_json(io::config_path_of(spec.llm));
  auto lc = io::LlamaConfig::from_json(lj, io::config_path_of(spec.llm));
  auto vj = io::read_json(io::config_path_of(spec.vision));
  int64_t vision_hidden = 0;
  if (io::detect_model_kind(vj, spec.vision) == io::ModelKind::kViT) vision_hidden = io::ViTConfig::from_json(vj, spec.vision).hidden_size;
  else vision_hidden = io::ClipVisionConfig::from_json(vj, spec.vision).hidden_size;
  nlohmann::json j;
  j["llm_parameters"] = lc.parameter_count();
  j["connector_parameters"] = connectors::ProjectorImpl::parameter_count(spec.connector, vision_hidden, lc.hidden_size);
  int64_t lora = 0;
  if (spec.tune == "lora" || spec.tune == "qlora") {
    const int64_t d = lc.hidden_size, q = lc.num_attention_heads * lc.head_dim, kv = lc.num_key_value_heads * lc.head_dim,
                  f = lc.intermediate_size, r = spec.lora.lora.r;
    std::map<std::string, std::pair<int64_t, int64_t>> shapes = {{"q_proj", {d, q}}, {"k_proj", {d, kv}}, {"v_proj", {d, kv}},
                                                                 {"o_proj", {q, d}}, {"gate_proj", {d, f}}, {"up_proj", {d, f}},
                                                                 {"down_proj", {f, d}}};
    for (const auto& t : spec.lora.target_modules)
      if (shapes.count(t)) lora += lc.num_hidden_layers * r * (shapes[t].first + shapes[t].second);
  }
  j["lora_parameters"] = lora;
  j["trainable_parameters"] = j["connector_parameters"].get<int64_t>() + lora + (spec.tune == "full" ? lc.parameter_count() : 0);
  return j;
}

std::unique_ptr<VisionLanguageModel> load_vlm_checkpoint(const std::string& dir, torch::Device device) {
  std::string cfg = dir + "/adapter_config.json";
  auto spec = VlmSpec::from_json(io::read_json(cfg), cfg);
  auto m = std::make_unique<VisionLanguageModel>(spec, device);
  m->load_adapter_weights(dir);
  m->train_mode(false);
  return m;
}

}  // namespace vadapt::vlm

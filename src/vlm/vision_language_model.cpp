// VisionLanguageModel: composition, batches, loss, checkpoints; everything method-specific is
// delegated to the method.
#include "vlm/vision_language_model.h"

#include <filesystem>
#include <optional>

#include "common/error.h"
#include "common/log.h"
#include "io/atomic_file.h"
#include "io/hf_config.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "methods/registry.h"
#include "model/load.h"
#include "model/weight_share.h"
#include "vision/image.h"

namespace vadapt::vlm {
namespace fs = std::filesystem;

VisionLanguageModel::VisionLanguageModel(const VlmSpec& spec, torch::Device device)
    : spec_(spec), device_(device), template_(text::ChatTemplate::by_name(spec.template_name, spec.system_prompt)) {
  method_ = methods::create(spec.method);
  method_->configure(spec.options, "method options");
  spec_.options = method_->config();  // complete and normalised: what adapter_config.json records
  auto dtype = io::dtype_from_name(spec.dtype, "dtype");
  lm_ = model::load_llama(spec.llm, dtype, device, spec.llm_part);
  tok_ = text::load_tokenizer(spec.llm);
  if (spec.vision.empty()) {
    if (method_->needs_vision())
      throw VadaptError(cat("model.vision: method ", spec.method, " (", method_->describe(), ") needs a vision tower folder"));
  } else {
    tower_ = vision::load_vision_tower(spec.vision, dtype, device, spec.vision_part);
    pre_ = spec.preprocess.empty() ? vision::PreprocessConfig::from_hf(spec.vision) : vision::PreprocessConfig::named(spec.preprocess);
    if (pre_.crop != tower_->image_size())
      throw VadaptError(cat("preprocess ", pre_.describe(), " makes ", pre_.crop, " px images; the vision tower expects ",
                            tower_->image_size()));
  }
  method_->build(methods::Frozen{lm_, tower_, device}, spec.seed);
  // What the method trains or overwrites is its own, never shared base weights.
  if (model::WeightShare::enabled())
    for (auto& [name, t] : method_->state()) model::WeightShare::unshare(t);
  if (tower_) method_->feature_select().validate(tower_->num_layers() + 1);
}

VisionLanguageModel::~VisionLanguageModel() = default;

vision::VisionTower& VisionLanguageModel::tower() {
  if (!tower_) throw VadaptError(cat("method ", spec_.method, ": this model has no vision tower (model.vision is not set); images cannot be used"));
  return *tower_;
}

torch::Tensor VisionLanguageModel::vision_features(const torch::Tensor& pixels) {
  // A frozen tower runs without a graph; one with trained adapters inside (LaVIN) keeps it
  // where the caller records gradients (training).
  std::optional<torch::NoGradGuard> ng;
  if (!method_->adapts_vision()) ng.emplace();
  auto out = tower().encode(pixels.to(device_));
  return method_->feature_select().select(out).to(torch::kFloat32);  // (M, N, C)
}

methods::Inputs VisionLanguageModel::prepare(const Batch& b) {
  torch::Tensor feats;
  if (b.features.defined()) feats = b.features.to(device_);                                    // (M, N, C)
  else if (b.pixels.defined() && b.pixels.size(0) > 0) feats = vision_features(b.pixels);     // (M, N, C)
  torch::Tensor rows = b.image_rows;
  if (feats.defined() && !rows.defined()) rows = torch::arange(feats.size(0), torch::kInt64);  // one image per row
  return method_->prepare(b.ids.to(device_), feats, rows.defined() ? rows.to(device_) : rows);
}

LossResult VisionLanguageModel::loss(const Batch& b) {
  auto in = prepare(b);
  model::ForwardContext ctx;
  if (!in.state.empty()) ctx.adapter_state = &in.state;
  if (b.mask.defined() && b.mask.min().item<int64_t>() == 0) ctx.attention_mask = b.mask.to(device_);
  auto h = lm_->forward_embeds(in.embeds, ctx);                                     // (B, T, d)
  // Logits only where a label is: with image tokens and prompts most positions have none, and
  // the output head over them (B x T x vocab) would cost more than the rest of the step.
  auto shift_h = h.narrow(1, 0, h.size(1) - 1).reshape({-1, h.size(2)});            // (B*(T-1), d)
  auto flat_labels = b.labels.to(device_).narrow(1, 1, b.labels.size(1) - 1).reshape({-1});  // (B*(T-1))
  auto at = flat_labels.ne(text::kIgnore).nonzero().view({-1});                    // (N,)
  LossResult r;
  r.target_tokens = at.size(0);
  auto logits = lm_->logits(shift_h.index_select(0, at)).to(torch::kFloat32);      // (N, V)
  auto sum = r.target_tokens == 0 ? h.sum() * 0.0
                                  : torch::nn::functional::cross_entropy(logits, flat_labels.index_select(0, at),
                                                                         torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  r.loss_sum = sum.item<double>();
  r.sum = sum;
  r.loss = sum / std::max<int64_t>(r.target_tokens, 1);
  return r;
}

torch::Tensor VisionLanguageModel::load_pixels(const std::string& path) const {
  if (!tower_) throw VadaptError(cat(path, ": method ", spec_.method, " has no vision tower here (model.vision is not set); images cannot be used"));
  return vision::preprocess(vision::decode_image_file(path), pre_);  // (3, H, W)
}

void VisionLanguageModel::enable_feature_cache(const std::string& dir) {
  if (!tower_) return;  // nothing to cache without a vision tower
  if (method_->adapts_vision()) {
    log_info(cat("vision features: not cached (", spec_.method, " trains adapters inside the vision tower; it runs on every batch)"));
    return;
  }
  auto cfg = io::read_text_file(io::config_path_of(spec_.vision));
  std::string key = cat(fs::weakly_canonical(spec_.vision).string(), "|", vision::sha256_hex(cfg), "|", pre_.describe(), "|",
                        method_->feature_select().describe(), "|", spec_.dtype);
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

Batch VisionLanguageModel::collate(const std::vector<text::EncodedPrompt>& prompts, const std::vector<std::string>& images) {
  std::vector<std::vector<std::string>> per_row;
  for (const auto& i : images) per_row.push_back(i.empty() ? std::vector<std::string>{} : std::vector<std::string>{i});
  return collate(prompts, per_row);
}

Batch VisionLanguageModel::collate(const std::vector<text::EncodedPrompt>& prompts, const std::vector<std::vector<std::string>>& images) {
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
  std::vector<int64_t> rows;
  for (size_t i = 0; i < images.size(); ++i) {
    methods::check_images_per_input(*method_, images[i].size(), cat("batch row ", i), "sample");
    for (const auto& p : images[i]) paths.push_back(p), rows.push_back(static_cast<int64_t>(i));
  }
  if (paths.empty()) return b;
  b.image_rows = torch::tensor(rows, torch::kInt64);
  if (cache_) {
    b.features = image_features(paths);  // (M, N, C)
  } else {
    std::vector<torch::Tensor> px;
    for (const auto& p : paths) px.push_back(load_pixels(p));
    b.pixels = torch::stack(px);  // (M, 3, H, W)
  }
  return b;
}

void VisionLanguageModel::save_adapter(const std::string& dir) const {
  fs::create_directories(dir);
  auto j = spec_.to_json();
  io::write_safetensors(dir + "/adapter_model.safetensors", trainable_state(), {{"format", "pt"}, {"method", spec_.method}});
  io::write_text_atomic(dir + "/adapter_config.json", j.dump(2) + "\n");
}

void VisionLanguageModel::load_adapter_weights(const std::string& dir) {
  methods::load_tensors_strict(dir + "/adapter_model.safetensors", trainable_state());
}

nlohmann::json VisionLanguageModel::count_from_configs(const VlmSpec& spec) {
  auto lc = io::LlamaConfig::from_json(io::read_json(io::config_path_of(spec.llm)), io::config_path_of(spec.llm));
  auto method = methods::create(spec.method);
  method->configure(spec.options, "method options");
  nlohmann::json j = method->count(lc, spec.vision.empty() ? methods::VisionDims{} : methods::VisionDims::from_config_dir(spec.vision));
  j["llm_parameters"] = lc.parameter_count();
  j["method"] = spec.method;
  return j;
}

std::unique_ptr<VisionLanguageModel> load_vlm_checkpoint(const std::string& dir, torch::Device device,
                                                         const methods::FolderOverrides& o) {
  const std::string cfg = dir + "/adapter_config.json";
  auto apply = [&](VlmSpec& spec) {
    if (!o.llm.empty()) spec.llm = o.llm;
    if (!o.vision.empty()) spec.vision = o.vision;
    if (!o.template_name.empty()) spec.template_name = o.template_name;
    if (!text::ChatTemplate::takes_system(spec.template_name)) spec.system_prompt.reset();  // e.g. --template plain
  };
  if (fs::exists(cfg)) {
    auto j = io::read_json(cfg);
    if (j.is_object() && j.contains("method")) {  // a vadapt adapter folder
      auto spec = VlmSpec::from_json(j, cfg);
      apply(spec);
      auto m = std::make_unique<VisionLanguageModel>(spec, device);
      m->load_adapter_weights(dir);
      m->train_mode(false);
      return m;
    }
  }
  auto rel = methods::read_release(dir, o);
  if (!rel) {
    if (!fs::is_directory(dir)) raise(dir, "", "no such adapter folder");
    raise(dir, "", "neither a vadapt adapter folder (adapter_config.json with a 'method') nor a release folder a method reads "
                   "(LLaVA: a merged checkpoint, a LoRA folder with non_lora_trainables.bin, or mm_projector.bin + config.json)");
  }
  auto spec = VlmSpec::from_json(rel->config, dir + " (release folder)");
  apply(spec);
  spec.llm_part = rel->llm_part;
  spec.vision_part = rel->vision_part;
  auto m = std::make_unique<VisionLanguageModel>(spec, device);
  methods::copy_tensors_strict(dir, rel->tensors, m->trainable_state());
  m->train_mode(false);
  return m;
}

}  // namespace vadapt::vlm

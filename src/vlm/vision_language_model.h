// VisionLanguageModel: frozen vision tower + frozen LLM + one method (methods/), composed per a
// VlmSpec. The method decides which vision features it reads, what it attaches to the models
// and how a batch becomes input embeddings + adapter state; the LLM knows nothing of images.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "methods/method.h"
#include "model/llama.h"
#include "text/prompt.h"
#include "text/tokenizer.h"
#include "vision/feature_cache.h"
#include "vision/preprocess.h"
#include "vision/vision_tower.h"
#include "vlm/vlm_spec.h"

namespace vadapt::vlm {

struct Batch {
  torch::Tensor ids;         // (B, T) with kImageToken at image positions
  torch::Tensor labels;      // (B, T) kIgnore where no loss
  torch::Tensor mask;        // (B, T) 1 = real token
  torch::Tensor pixels;      // (M, 3, H, W) images in order of appearance, or undefined
  torch::Tensor features;    // (M, N, C) cached frozen vision features instead of pixels, or undefined
  torch::Tensor image_rows;  // (M,) int64: the batch row of each image
  int64_t tokens = 0;        // real tokens
};

struct LossResult {
  torch::Tensor loss;      // mean over target tokens (differentiable)
  torch::Tensor sum;       // sum over target tokens (differentiable)
  int64_t target_tokens = 0;
  double loss_sum = 0;     // sum over target tokens (for exact eval averages)
};

class VisionLanguageModel {
 public:
  explicit VisionLanguageModel(const VlmSpec& spec, torch::Device device = torch::kCPU);
  ~VisionLanguageModel();

  const VlmSpec& spec() const { return spec_; }
  torch::Device device() const { return device_; }
  // Tokens per image in the LLM sequence (0 when images enter through adapters only).
  int64_t image_tokens() const { return method_->image_tokens(); }
  const vision::PreprocessConfig& preprocess() const { return pre_; }
  const text::Tokenizer& tokenizer() const { return *tok_; }
  const text::ChatTemplate& chat_template() const { return template_; }
  model::LlamaForCausalLM& lm() { return lm_; }
  bool has_vision() const { return tower_ != nullptr; }
  vision::VisionTower& tower();  // throws when the model has no vision tower
  methods::Method& method() { return *method_; }
  const methods::Method& method() const { return *method_; }
  template <typename M>
  M& method_as() {
    auto* m = dynamic_cast<M*>(method_.get());
    if (!m) throw std::runtime_error("method is not of the requested type");
    return *m;
  }

  // (M, 3, H, W) -> (M, N, C) the frozen vision features the method reads.
  torch::Tensor vision_features(const torch::Tensor& pixels);
  // Batch -> method inputs (embeddings + adapter state): features from the batch (cached) or
  // its pixels.
  methods::Inputs prepare(const Batch& b);
  LossResult loss(const Batch& b);

  // Builds a batch from encoded prompts and their images (right padding, for training); with the
  // feature cache on, the batch carries cached features instead of pixels.
  Batch collate(const std::vector<text::EncodedPrompt>& prompts, const std::vector<std::string>& images);
  // Same with any number of images per row (a multi-image sample's frames, in order); more than
  // one per row only for methods with multi_image().
  Batch collate(const std::vector<text::EncodedPrompt>& prompts, const std::vector<std::vector<std::string>>& images);
  torch::Tensor load_pixels(const std::string& image_path) const;  // (3, H, W)
  // Frozen features (M, N, C) of image files through the feature cache (enabled with
  // enable_feature_cache; without it they are computed every time).
  torch::Tensor image_features(const std::vector<std::string>& paths);
  void enable_feature_cache(const std::string& dir);
  const vision::FeatureCache* feature_cache() const { return cache_.get(); }

  std::vector<methods::ParamGroup> trainable_groups() const { return method_->groups(); }
  // Everything that trains, under checkpoint names.
  std::vector<std::pair<std::string, torch::Tensor>> trainable_state() const { return method_->state(); }
  void save_adapter(const std::string& dir) const;   // adapter_model.safetensors + adapter_config.json
  void load_adapter_weights(const std::string& dir);  // strict: exactly the trainable set
  void train_mode(bool on) { method_->train_mode(on); }

  // Parameter counts from configs alone (no weights): frozen LLM, frozen vision, the method's.
  static nlohmann::json count_from_configs(const VlmSpec& spec);

 private:
  VlmSpec spec_;
  torch::Device device_;
  model::LlamaForCausalLM lm_{nullptr};
  std::shared_ptr<vision::VisionTower> tower_;
  std::unique_ptr<methods::Method> method_;
  vision::PreprocessConfig pre_;
  std::unique_ptr<text::Tokenizer> tok_;
  std::unique_ptr<vision::FeatureCache> cache_;
  text::ChatTemplate template_;
};

// Loads a VLM from an adapter checkpoint folder (adapter_config.json + adapter_model.safetensors).
// A vadapt adapter folder, or a method's release folder (methods::read_release: e.g. a LLaVA
// checkpoint); `o` replaces the base model, vision tower or template the folder names.
std::unique_ptr<VisionLanguageModel> load_vlm_checkpoint(const std::string& dir, torch::Device device = torch::kCPU,
                                                         const methods::FolderOverrides& o = {});

}  // namespace vadapt::vlm

// VisionLanguageModel: frozen vision tower -> connector -> input embeddings -> frozen LLM (+
// adapters), composed per a VlmSpec. Image placeholders (kImageToken) in the ids are replaced
// by the projected patch features in the input embeddings; the LLM knows nothing of images.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "adapters/adapter_set.h"
#include "connectors/projector.h"
#include "model/llama.h"
#include "text/prompt.h"
#include "text/tokenizer.h"
#include "vision/feature_cache.h"
#include "vision/preprocess.h"
#include "vision/vision_tower.h"
#include "vlm/vlm_spec.h"

namespace vadapt::vlm {

struct Batch {
  torch::Tensor ids;     // (B, T) with kImageToken at image positions
  torch::Tensor labels;  // (B, T) kIgnore where no loss
  torch::Tensor mask;    // (B, T) 1 = real token
  torch::Tensor pixels;    // (M, 3, H, W) images in order of appearance, or undefined
  torch::Tensor features;  // (M, N, C) cached frozen vision features instead of pixels, or undefined
  int64_t tokens = 0;    // real tokens
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

  const VlmSpec& spec() const { return spec_; }
  torch::Device device() const { return device_; }
  // Tokens per image in the LLM sequence: the patch grid, or pool x pool after pooling.
  int64_t image_tokens() const { return spec_.pool > 0 ? spec_.pool * spec_.pool : tower_->num_patches(); }
  const vision::PreprocessConfig& preprocess() const { return pre_; }
  const text::Tokenizer& tokenizer() const { return *tok_; }
  const text::ChatTemplate& chat_template() const { return template_; }
  model::LlamaForCausalLM& lm() { return lm_; }
  vision::VisionTower& tower() { return *tower_; }

  // (M, 3, H, W) -> (M, N, C) frozen vision features of the configured layer (patch tokens).
  torch::Tensor vision_features(const torch::Tensor& pixels);
  // (M, N, C) -> (M, image_tokens, d): optional average pooling of the patch grid, then the projector.
  torch::Tensor project(const torch::Tensor& features);
  // ids (B, T) with placeholders + projected features (M, N, d) -> (B, T, d)
  torch::Tensor embed(const torch::Tensor& ids, const torch::Tensor& image_embeds);
  LossResult loss(const Batch& b);

  // Builds a batch from encoded prompts and their images (right padding, for training); with the
  // feature cache on, the batch carries cached features instead of pixels.
  Batch collate(const std::vector<text::EncodedPrompt>& prompts, const std::vector<std::string>& images);
  torch::Tensor load_pixels(const std::string& image_path) const;  // (3, H, W)
  // Frozen features (M, N, C) of image files through the feature cache (enabled with
  // enable_feature_cache; without it they are computed every time).
  torch::Tensor image_features(const std::vector<std::string>& paths);
  void enable_feature_cache(const std::string& dir);
  const vision::FeatureCache* feature_cache() const { return cache_.get(); }

  // Trainable parameters by optimizer group: "projector", "lora", "llm".
  std::vector<std::pair<std::string, std::vector<torch::Tensor>>> trainable_groups() const;
  // Everything that trains, under checkpoint names (PEFT names for LoRA).
  std::vector<std::pair<std::string, torch::Tensor>> trainable_state() const;
  void save_adapter(const std::string& dir) const;   // adapter_model.safetensors + adapter_config.json
  void load_adapter_weights(const std::string& dir);  // strict: exactly the trainable set
  void init_projector_from(const std::string& dir);   // mm_projector.* of another stage's adapter
  // feature_norm standardize: per-channel mean / std of the frozen features of these images
  // (all their patch tokens), stored in the projector.
  void init_feature_stats(const std::vector<std::string>& images);
  void train_mode(bool on);
  adapters::AdapterSet& adapters() { return adapters_; }

  // Parameter counts from configs alone (no weights): frozen LLM, frozen vision, connector,
  // trainable total.
  static nlohmann::json count_from_configs(const VlmSpec& spec);

 private:
  VlmSpec spec_;
  torch::Device device_;
  model::LlamaForCausalLM lm_{nullptr};
  std::shared_ptr<vision::VisionTower> tower_;
  connectors::Projector projector_{nullptr};
  adapters::AdapterSet adapters_;
  vision::PreprocessConfig pre_;
  std::unique_ptr<text::Tokenizer> tok_;
  std::unique_ptr<vision::FeatureCache> cache_;
  text::ChatTemplate template_;
};

// Loads a VLM from an adapter checkpoint folder (adapter_config.json + adapter_model.safetensors);
// `overrides` may change the llm / vision paths.
std::unique_ptr<VisionLanguageModel> load_vlm_checkpoint(const std::string& dir, torch::Device device = torch::kCPU);

}  // namespace vadapt::vlm

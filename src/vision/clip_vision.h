// HF CLIPVisionModel / CLIPVisionModelWithProjection / the vision tower of a CLIPModel, under
// the HF names (vision_model.embeddings.*, vision_model.pre_layrnorm, vision_model.encoder.
// layers.N.*, vision_model.post_layernorm, visual_projection). Outputs follow HF:
// hidden_states[0] = pre_layrnorm(embeddings), last_hidden_state = last block (no post-LN),
// pooled = post_layernorm(CLS), head = image_embeds = visual_projection(pooled).
#pragma once

#include <torch/torch.h>

#include "io/hf_config.h"
#include "vision/encoder_block.h"
#include "vision/vision_tower.h"

namespace vadapt::vision {

class ClipVisionImpl : public torch::nn::Module, public VisionTower {
 public:
  ClipVisionImpl(io::ClipVisionConfig cfg, const torch::TensorOptions& opts);
  VisionOutput encode(const torch::Tensor& pixel_values) override;
  int64_t hidden_size() const override { return cfg_.hidden_size; }
  int64_t output_size() const override { return cfg_.projection_dim > 0 ? cfg_.projection_dim : cfg_.hidden_size; }
  int64_t num_layers() const override { return cfg_.num_hidden_layers; }
  int64_t image_size() const override { return cfg_.image_size; }
  int64_t num_patches() const override {
    return (cfg_.image_size / cfg_.patch_size) * (cfg_.image_size / cfg_.patch_size);
  }
  std::string architecture() const override { return cfg_.architecture; }
  model::SublayerHooks& hooks(int64_t layer) override { return layers_.at(layer)->hooks; }
  torch::nn::Module& module() override { return *this; }
  const io::ClipVisionConfig& config() const { return cfg_; }

 private:
  io::ClipVisionConfig cfg_;
  torch::Tensor class_embedding_, patch_weight_, position_weight_;
  model::LayerNorm pre_layrnorm_{nullptr}, post_layernorm_{nullptr};
  std::vector<EncoderBlock> layers_;
  model::Projection visual_projection_{nullptr};
};
TORCH_MODULE(ClipVision);

}  // namespace vadapt::vision

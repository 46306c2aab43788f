// HF ViTModel / ViTForImageClassification under the HF names (vit.embeddings.*,
// vit.encoder.layer.N.*, vit.layernorm, classifier; ViTModel: the same without "vit." plus
// pooler.dense). last_hidden_state is after the final LayerNorm, as in HF.
#pragma once

#include <torch/torch.h>

#include "io/hf_config.h"
#include "vision/encoder_block.h"
#include "vision/vision_tower.h"

namespace vadapt::vision {

class ViTImpl : public torch::nn::Module, public VisionTower {
 public:
  ViTImpl(io::ViTConfig cfg, const torch::TensorOptions& opts);
  VisionOutput encode(const torch::Tensor& pixel_values) override;
  int64_t hidden_size() const override { return cfg_.hidden_size; }
  int64_t num_layers() const override { return cfg_.num_hidden_layers; }
  int64_t image_size() const override { return cfg_.image_size; }
  int64_t num_patches() const override {
    return (cfg_.image_size / cfg_.patch_size) * (cfg_.image_size / cfg_.patch_size);
  }
  std::string architecture() const override { return cfg_.architecture; }
  model::SublayerHooks& hooks(int64_t layer) override { return layers_.at(layer)->hooks; }
  torch::nn::Module& module() override { return *this; }
  const io::ViTConfig& config() const { return cfg_; }

 private:
  io::ViTConfig cfg_;
  torch::Tensor cls_token_, position_embeddings_, patch_weight_, patch_bias_;
  std::vector<EncoderBlock> layers_;
  model::LayerNorm layernorm_{nullptr};
  model::Projection pooler_{nullptr}, classifier_{nullptr};
};
TORCH_MODULE(ViT);

}  // namespace vadapt::vision

// Common interface of the frozen vision encoders (ViT, CLIP ViT). Every hidden state is
// returned so a recipe can pick its layer (LLaVA: hidden_states[-2] patch tokens; LLaMA-Adapter
// V2: post-norm + projection of all tokens; LaVIN: CLS after every 4th block).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "io/hf_config.h"
#include "model/seams.h"

namespace vadapt::vision {

struct VisionOutput {
  std::vector<torch::Tensor> hidden_states;  // num_layers + 1 entries, each (B, 1 + N, C); [0] = embeddings
  torch::Tensor last_hidden_state;           // (B, 1 + N, C) as the HF model returns it
  torch::Tensor pooled;                      // (B, C): ViT pooler / CLIP post_layernorm(CLS); may be undefined
  torch::Tensor head;                        // (B, K): ViT classifier logits / CLIP image_embeds; may be undefined
  // (B, 1 + N, P): every token after the final norm and, where the tower has one, the visual
  // projection (OpenAI CLIP's `ln_post(x) @ proj` on all tokens; ViT: last_hidden_state).
  torch::Tensor tokens;
};

class VisionTower {
 public:
  virtual ~VisionTower() = default;
  // pixel_values (B, 3, H, W) -> outputs.
  virtual VisionOutput encode(const torch::Tensor& pixel_values) = 0;
  virtual int64_t hidden_size() const = 0;
  // Width of VisionOutput::tokens (the projection's where the tower has one).
  virtual int64_t output_size() const { return hidden_size(); }
  virtual int64_t num_layers() const = 0;
  virtual int64_t image_size() const = 0;
  virtual int64_t num_patches() const = 0;
  virtual std::string architecture() const = 0;
  // Sub-layer input seam for each encoder block.
  virtual model::SublayerHooks& hooks(int64_t layer) = 0;
  virtual torch::nn::Module& module() = 0;
};

// Loads DIR (config.json + safetensors) as a ViT or CLIP vision tower, strict, frozen.
std::shared_ptr<VisionTower> load_vision_tower(const std::string& dir, torch::ScalarType dtype, torch::Device device,
                                               const io::FolderPart& part = {});

// Patch tokens of a given hidden-state layer (negative counts from the end), CLS dropped:
// (B, N, C). LLaVA's "layer -2 patch features".
torch::Tensor select_patch_features(const VisionOutput& out, int64_t layer);

}  // namespace vadapt::vision

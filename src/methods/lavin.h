// LaVIN (Luo et al. 2023, arXiv 2305.15023): Mixture-of-Modality Adaptation. Router adapters
// (adapters/router_adapter.h) on the attention input of every LLM block and every vision block,
// routed by a learned modality token; the CLS tokens after every k-th vision block (raw residual
// stream, before the final norm) go through a bottleneck MLP (width -> 128 -> d, SiLU, xavier)
// to one visual token each, placed in the sequence after the "Image: " prefix (template `lavin`).
//
// The modality token (embedding (2, d): 0 text-only, 1 text+image) sits at position 0 of every
// sequence in the official code, and no later token attends to it; the routers of each layer
// read its normed hidden state. Since it attends only to itself, that state depends only on the
// modality and the layer: vadapt runs the two modality embeddings as a one-token forward (at
// position 0) in prepare(), keeps each row's routing weights in the adapter state for training,
// prefill and every decode step, and runs the sequence itself at positions 1.. (the modality
// token's place). The logits of the sequence are the official ones (goldens); beam search
// reorders the kept weights with the rows.
//
// The vision adapters train end to end: the tower runs with gradients (no feature cache).
// Compatibility switches for the official code (golden-tested):
//   vision_routing: per_image (default: each image routed by its own CLS token) | per_token
//     (each token by itself: the official result for a batch of one image) | official (the first
//     image of the batch routes every image, one routing per token position);
//   decode_positions: recompute (default: decode = full recompute) | official (generated tokens
//     one RoPE position lower, as the official KV-cache decode).
#pragma once

#include "adapters/router_adapter.h"
#include "connectors/bottleneck_mlp.h"
#include "methods/method.h"

namespace vadapt::methods {

class Lavin : public Method {
 public:
  struct Options {
    adapters::RouterOptions router;
    std::string llm_adapter = "attn";       // attn | block (also before the MLP)
    std::string vision_adapter = "router";  // router | router_block | none (LLM-only; features cacheable)
    int64_t tap_every = 4;                  // CLS after every k-th vision block
    int64_t hidden_proj = 128;              // the visual neck's hidden width
    std::string vision_routing = "per_image";    // per_image | per_token | official
    std::string decode_positions = "recompute";  // recompute | official
  };

  std::string name() const override { return "lavin"; }
  nlohmann::json parse_recipe(const nlohmann::json& section, const std::string& where) const override;
  void configure(const nlohmann::json& config, const std::string& source) override;
  nlohmann::json config() const override;
  std::string describe() const override;
  void build(const Frozen& f, uint64_t seed) override;
  vision::FeatureSelect feature_select() const override;
  bool adapts_vision() const override { return o_.vision_adapter != "none"; }
  int64_t image_tokens() const override;
  Inputs prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) override;
  std::vector<ParamGroup> groups() const override;
  std::vector<std::pair<std::string, torch::Tensor>> state() const override;
  void train_mode(bool on) override;
  nlohmann::json count(const io::LlamaConfig& llm, const VisionDims& vision) const override;
  // The official trainable-only checkpoint as safetensors or a flat torch.save state dict
  // (every key containing "adapter"; a "module." prefix from DDP is dropped; Conv1d kernels
  // (out, in, 1) are squeezed).
  void load_official(const std::string& path) override;

  const Options& options() const { return o_; }
  // (M, n_taps, d) visual tokens from CLS taps (M, n_taps, width).
  torch::Tensor visual_tokens(const torch::Tensor& taps);
  // Each modality's routing weights per layer: {"<key>" -> (2, 2)} (row 0 text-only, row 1 image).
  std::map<std::string, torch::Tensor> modality_routes();
  adapters::RouterSet& llm_routers() { return llm_; }
  adapters::RouterSet& vision_routers() { return vis_; }
  torch::Tensor& modality_embedding() { return modality_; }

 private:
  std::vector<int64_t> taps() const;
  Options o_;
  Frozen f_;
  adapters::RouterSet llm_{nullptr}, vis_{nullptr};
  connectors::BottleneckMlp neck_{nullptr};
  torch::Tensor modality_;  // (2, d)
};

}  // namespace vadapt::methods

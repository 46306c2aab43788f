// The pre-norm transformer block shared by HF ViT and CLIP vision encoders:
//   x = x + attn(ln1(x));  x = x + fc2(act(fc1(ln2(x))))
// Parameter names follow each family's HF checkpoint layout (see BlockNames).
#pragma once

#include <torch/torch.h>

#include <string>

#include "model/layers.h"
#include "model/seams.h"

namespace vadapt::vision {

struct BlockNames {
  std::string ln1, ln2, q, k, v, o, fc1, fc2;
  static BlockNames vit();
  static BlockNames clip();
};

struct BlockDims {
  int64_t hidden, intermediate, heads;
  double eps;
  std::string act;  // gelu | gelu_new | quick_gelu
  bool qkv_bias;
};

class EncoderBlockImpl : public torch::nn::Module {
 public:
  EncoderBlockImpl(const BlockNames& names, const BlockDims& dims, int64_t layer, const torch::TensorOptions& opts);
  torch::Tensor forward(const torch::Tensor& x, const model::ForwardContext& ctx);  // (B, S, C) -> (B, S, C)

  model::Projection q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr}, fc1{nullptr}, fc2{nullptr};
  model::LayerNorm ln1{nullptr}, ln2{nullptr};
  model::SublayerHooks hooks;

 private:
  BlockDims dims_;
  int64_t layer_;
};
TORCH_MODULE(EncoderBlock);

torch::Tensor activation(const torch::Tensor& x, const std::string& act);

// Runs the blocks in order, appending each block's output to `hidden_states`; returns the last.
torch::Tensor run_blocks(std::vector<EncoderBlock>& blocks, torch::Tensor x, std::vector<torch::Tensor>& hidden_states);

}  // namespace vadapt::vision

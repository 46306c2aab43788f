// LLaMA-Adapter V2's visual branch (released multimodal code, methods.md §1.7): all CLIP tokens
// after ln_post and the visual projection (M, N, C) ->
//   clip_proj (Linear C->w) + clip_proj_norm (LayerNorm)
//   -> [visual_query (Q, w); features] -> `depth` pre-norm transformer blocks (timm 0.3.2's Block:
//      LN, fused qkv with bias, softmax(q k^T / sqrt(hd)) v, proj; LN, fc1, exact GELU, fc2)
//   -> the first Q tokens -> visual_proj (Linear w->d) + visual_proj_norm (LayerNorm)  => (M, Q, d)
// Parameter names are the official ones, so the release's tensors load as they are. Init as the
// official code builds it: nn.Linear / nn.LayerNorm defaults, visual_query N(0, 1).
#pragma once

#include <torch/torch.h>

#include <vector>

#include "model/layers.h"

namespace vadapt::connectors {

struct VisualBranchOptions {
  int64_t in = 768;        // CLIP width after the projection
  int64_t width = 768;     // v_embed_dim
  int64_t queries = 10;    // Q
  int64_t depth = 8;       // transformer blocks
  int64_t heads = 16;
  double mlp_ratio = 4.0;
  int64_t out = 4096;      // the LLM width
  double eps = 1e-5;       // every LayerNorm
};

class VisualBranchImpl : public torch::nn::Module {
 public:
  VisualBranchImpl(const VisualBranchOptions& o, uint64_t seed);
  torch::Tensor forward(const torch::Tensor& feats);  // (M, N, in) -> (M, Q, out)
  const VisualBranchOptions& options() const { return o_; }
  static int64_t parameter_count(const VisualBranchOptions& o);

 private:
  struct Block {
    torch::Tensor n1w, n1b, qkv_w, qkv_b, proj_w, proj_b, n2w, n2b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  torch::Tensor block(const Block& b, const torch::Tensor& x) const;
  VisualBranchOptions o_;
  torch::Tensor clip_proj_w, clip_proj_b, clip_norm_w, clip_norm_b, query, vproj_w, vproj_b, vnorm_w, vnorm_b;
  std::vector<Block> blocks_;
};
TORCH_MODULE(VisualBranch);

}  // namespace vadapt::connectors

// LaVIN's mixture-of-modality adapter (Luo et al. 2023, arXiv 2305.15023; "RepAdapter-Router"):
//   a = dropout(A x)                 A: Linear(c -> hidden), xavier weight, zero bias (shared)
//   y = x + s * (w0 * B(a) + w1 * D(a))
// B and D are grouped 1x1 projections hidden -> c (groups g: output channels [k c/g, (k+1) c/g)
// read hidden units [k h/g, (k+1) h/g)), zero-initialised, so the adapter starts as the identity.
// w = softmax(Linear_{c->2}(r) / t) are the routing weights from a routing input r:
//   - in the LLM: the modality token's normed hidden state of that layer (LaVIN places the token
//     at position 0 and lets nothing else attend to it, so r depends only on the modality and
//     the layer: vadapt computes w once per batch from a one-token forward of the modality
//     embeddings and keeps them in the adapter state for prefill and every decode step);
//   - in the vision tower: the image's own CLS token (`per_image`); each token by itself
//     (`per_token`, what the official code computes for a batch of one image); or, as the
//     official code does by reading x[:, 0] of a tokens-first tensor, the tokens of the batch's
//     first image, one routing per token position applied to every image (`official_batch0`).
// RouterSet attaches one router per block of a model through the sub-layer input seam.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "model/layers.h"
#include "model/seams.h"

namespace vadapt::adapters {

// Grouped 1x1 projection in -> out (a Conv1d with kernel 1 and `groups`), weight (out, in / groups).
class GroupedLinearImpl : public torch::nn::Module {
 public:
  GroupedLinearImpl(int64_t in, int64_t out, int64_t groups);
  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., out)
  torch::Tensor weight, bias;
  int64_t in, out, groups;
};
TORCH_MODULE(GroupedLinear);

struct RouterOptions {
  int64_t hidden = 8;
  int64_t groups = 2;
  double scale = 1.0;
  double temperature = 10.0;
  double dropout = 0.1;
};

class RouterAdapterImpl : public torch::nn::Module {
 public:
  RouterAdapterImpl(int64_t dim, const RouterOptions& o, at::Generator& gen);
  // Routing weights (..., 2) from routing inputs (..., dim).
  torch::Tensor route(const torch::Tensor& r);
  // x (B, S, dim), w broadcastable to (B, S, 2) -> (B, S, dim).
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& w);
  static int64_t parameter_count(int64_t dim, const RouterOptions& o) {
    return dim * o.hidden + o.hidden + 2 * (dim * (o.hidden / o.groups) + dim) + 2 * dim + 2;
  }

  model::Projection conv_A{nullptr};
  GroupedLinear conv_B{nullptr}, conv_D{nullptr};
  model::Projection expert_weights{nullptr};

 private:
  RouterOptions o_;
};
TORCH_MODULE(RouterAdapter);

// One router per block (and sub-layer) of a model, attached through SublayerHooks.
// Names: "<block>.adapter_attn.*" (before attention) and "<block>.adapter_mlp.*" (before the MLP).
class RouterSetImpl : public torch::nn::Module, public model::SublayerAdapter {
 public:
  enum class Routing { kKept, kPerImage, kPerToken, kOfficialBatch0 };
  // kKept: w from ctx.adapter_state->kept["<key>.<layer>.<sublayer>"] when present; otherwise
  // computed from x[:, 0] and stored there (the one-token modality forward).
  RouterSetImpl(int64_t dim, int64_t blocks, bool before_mlp, const RouterOptions& o, Routing routing, std::string key, uint64_t seed,
                torch::Device device);
  torch::Tensor apply(const torch::Tensor& x, model::Sublayer where, int64_t layer, const model::ForwardContext& ctx) override;
  RouterAdapter& at(int64_t block, bool mlp);
  bool before_mlp() const { return before_mlp_; }
  // State key of a block's kept routing weights.
  std::string kept_key(int64_t block, bool mlp) const;

 private:
  std::vector<RouterAdapter> attn_, mlp_;
  bool before_mlp_;
  RouterOptions o_;
  Routing routing_;
  std::string key_;
};
TORCH_MODULE(RouterSet);

}  // namespace vadapt::adapters

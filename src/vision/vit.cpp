// HF ViT forward: conv patch embedding + CLS + learned positions, pre-norm blocks, final LN.
#include "vision/vit.h"

#include "common/error.h"
#include "model/module_path.h"

namespace vadapt::vision {

ViTImpl::ViTImpl(io::ViTConfig cfg, const torch::TensorOptions& opts) : cfg_(std::move(cfg)) {
  using model::namespace_module;
  const bool cls_head = cfg_.architecture == "ViTForImageClassification";
  torch::nn::Module& root = cls_head ? namespace_module(*this, "vit") : *this;
  const int64_t c = cfg_.hidden_size, n = num_patches();
  auto& emb = namespace_module(root, "embeddings");
  cls_token_ = emb.register_parameter("cls_token", torch::empty({1, 1, c}, opts), false);
  auto& proj = namespace_module(emb, "patch_embeddings.projection");
  patch_weight_ = proj.register_parameter("weight", torch::empty({c, cfg_.num_channels, cfg_.patch_size, cfg_.patch_size}, opts), false);
  patch_bias_ = proj.register_parameter("bias", torch::empty({c}, opts), false);
  position_embeddings_ = emb.register_parameter("position_embeddings", torch::empty({1, n + 1, c}, opts), false);
  auto& layer_list = namespace_module(root, "encoder.layer");
  BlockDims dims{c, cfg_.intermediate_size, cfg_.num_attention_heads, cfg_.layer_norm_eps, cfg_.hidden_act, cfg_.qkv_bias};
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i)
    layers_.push_back(layer_list.register_module(std::to_string(i), EncoderBlock(BlockNames::vit(), dims, i, opts)));
  layernorm_ = root.register_module("layernorm", model::LayerNorm(c, cfg_.layer_norm_eps, opts));
  if (cls_head) {
    classifier_ = register_module("classifier", model::Projection(c, cfg_.num_labels, true, opts));
  } else {
    pooler_ = model::register_at(root, "pooler.dense", model::Projection(c, c, true, opts));
  }
}

VisionOutput ViTImpl::encode(const torch::Tensor& pixel_values) {
  const auto& px = pixel_values;
  TORCH_CHECK(px.dim() == 4 && px.size(1) == cfg_.num_channels && px.size(2) == cfg_.image_size &&
                  px.size(3) == cfg_.image_size,
              "ViT expects pixel_values (B, ", cfg_.num_channels, ", ", cfg_.image_size, ", ", cfg_.image_size, "), got ",
              px.sizes());
  const int64_t b = px.size(0);
  auto x = torch::conv2d(px.to(patch_weight_.options()), patch_weight_, patch_bias_, cfg_.patch_size);  // (B, C, h, w)
  x = x.flatten(2).transpose(1, 2);                                                                     // (B, N, C)
  x = torch::cat({cls_token_.expand({b, 1, cfg_.hidden_size}), x}, 1) + position_embeddings_;          // (B, 1+N, C)
  VisionOutput out;
  out.hidden_states.push_back(x);
  x = run_blocks(layers_, x, out.hidden_states);  // (B, 1+N, C)
  out.last_hidden_state = layernorm_(x);          // (B, 1+N, C)
  out.tokens = out.last_hidden_state;             // (B, 1+N, C)
  auto cls = out.last_hidden_state.select(1, 0);  // (B, C)
  if (classifier_) out.head = classifier_(cls);                         // (B, num_labels)
  if (pooler_) out.pooled = torch::tanh(pooler_(cls));                  // (B, C)
  return out;
}

}  // namespace vadapt::vision

// CLIP vision transformer forward (HF CLIPVisionTransformer / openai VisionTransformer).
#include "vision/clip_vision.h"

#include "model/module_path.h"

namespace vadapt::vision {

ClipVisionImpl::ClipVisionImpl(io::ClipVisionConfig cfg, const torch::TensorOptions& opts) : cfg_(std::move(cfg)) {
  using model::namespace_module;
  const int64_t c = cfg_.hidden_size, n = num_patches();
  auto& vm = namespace_module(*this, "vision_model");
  auto& emb = namespace_module(vm, "embeddings");
  class_embedding_ = emb.register_parameter("class_embedding", torch::empty({c}, opts), false);
  patch_weight_ = namespace_module(emb, "patch_embedding")
                      .register_parameter("weight", torch::empty({c, cfg_.num_channels, cfg_.patch_size, cfg_.patch_size}, opts), false);
  position_weight_ = namespace_module(emb, "position_embedding").register_parameter("weight", torch::empty({n + 1, c}, opts), false);
  pre_layrnorm_ = vm.register_module("pre_layrnorm", model::LayerNorm(c, cfg_.layer_norm_eps, opts));
  auto& layer_list = namespace_module(vm, "encoder.layers");
  BlockDims dims{c, cfg_.intermediate_size, cfg_.num_attention_heads, cfg_.layer_norm_eps, cfg_.hidden_act, true};
  for (int64_t i = 0; i < cfg_.num_hidden_layers; ++i)
    layers_.push_back(layer_list.register_module(std::to_string(i), EncoderBlock(BlockNames::clip(), dims, i, opts)));
  post_layernorm_ = vm.register_module("post_layernorm", model::LayerNorm(c, cfg_.layer_norm_eps, opts));
  if (cfg_.projection_dim > 0)
    visual_projection_ = register_module("visual_projection", model::Projection(c, cfg_.projection_dim, false, opts));
}

VisionOutput ClipVisionImpl::encode(const torch::Tensor& px) {
  TORCH_CHECK(px.dim() == 4 && px.size(1) == cfg_.num_channels && px.size(2) == cfg_.image_size &&
                  px.size(3) == cfg_.image_size,
              "CLIP expects pixel_values (B, ", cfg_.num_channels, ", ", cfg_.image_size, ", ", cfg_.image_size,
              "), got ", px.sizes());
  const int64_t b = px.size(0), c = cfg_.hidden_size;
  auto x = torch::conv2d(px.to(patch_weight_.options()), patch_weight_, {}, cfg_.patch_size);  // (B, C, h, w)
  x = x.flatten(2).transpose(1, 2);                                                            // (B, N, C)
  x = torch::cat({class_embedding_.view({1, 1, c}).expand({b, 1, c}), x}, 1) + position_weight_.unsqueeze(0);  // (B, 1+N, C)
  x = pre_layrnorm_(x);  // (B, 1+N, C)
  VisionOutput out;
  out.hidden_states.push_back(x);
  out.last_hidden_state = run_blocks(layers_, x, out.hidden_states);  // (B, 1+N, C)
  x = out.last_hidden_state;
  out.pooled = post_layernorm_(x.select(1, 0));                    // (B, C)
  if (visual_projection_) out.head = visual_projection_(out.pooled);  // (B, P)
  out.tokens = post_layernorm_(x);                                      // (B, 1+N, C)
  if (visual_projection_) out.tokens = visual_projection_(out.tokens);  // (B, 1+N, P)
  return out;
}

}  // namespace vadapt::vision

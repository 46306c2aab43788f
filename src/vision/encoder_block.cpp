// Pre-norm ViT/CLIP encoder block forward.
#include "vision/encoder_block.h"

#include "model/module_path.h"

namespace vadapt::vision {

BlockNames BlockNames::vit() {
  return {"layernorm_before", "layernorm_after", "attention.attention.query", "attention.attention.key",
          "attention.attention.value", "attention.output.dense", "intermediate.dense", "output.dense"};
}

BlockNames BlockNames::clip() {
  return {"layer_norm1", "layer_norm2", "self_attn.q_proj", "self_attn.k_proj",
          "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"};
}

torch::Tensor activation(const torch::Tensor& x, const std::string& act) {
  if (act == "quick_gelu") return x * torch::sigmoid(1.702 * x);
  if (act == "gelu_new") return torch::gelu(x, "tanh");
  return torch::gelu(x);
}

torch::Tensor run_blocks(std::vector<EncoderBlock>& blocks, torch::Tensor x, std::vector<torch::Tensor>& hidden_states) {
  model::ForwardContext ctx;
  for (auto& b : blocks) {
    x = b->forward(x, ctx);  // (B, 1+N, C)
    hidden_states.push_back(x);
  }
  return x;
}

EncoderBlockImpl::EncoderBlockImpl(const BlockNames& n, const BlockDims& d, int64_t layer,
                                   const torch::TensorOptions& opts)
    : dims_(d), layer_(layer) {
  using model::LayerNorm;
  using model::Projection;
  using model::register_at;
  // Registration order follows the HF state-dict order.
  q = register_at(*this, n.q, Projection(d.hidden, d.hidden, d.qkv_bias, opts));
  k = register_at(*this, n.k, Projection(d.hidden, d.hidden, d.qkv_bias, opts));
  v = register_at(*this, n.v, Projection(d.hidden, d.hidden, d.qkv_bias, opts));
  o = register_at(*this, n.o, Projection(d.hidden, d.hidden, true, opts));
  ln1 = register_at(*this, n.ln1, LayerNorm(d.hidden, d.eps, opts));
  fc1 = register_at(*this, n.fc1, Projection(d.hidden, d.intermediate, true, opts));
  fc2 = register_at(*this, n.fc2, Projection(d.intermediate, d.hidden, true, opts));
  ln2 = register_at(*this, n.ln2, LayerNorm(d.hidden, d.eps, opts));
}

torch::Tensor EncoderBlockImpl::forward(const torch::Tensor& x, const model::ForwardContext& ctx) {
  const int64_t b = x.size(0), s = x.size(1), h = dims_.heads, hd = dims_.hidden / dims_.heads;
  auto a = hooks.run(ln1(x), model::Sublayer::kAttention, layer_, ctx);     // (B, S, C)
  auto qh = q(a).view({b, s, h, hd}).transpose(1, 2);                       // (B, H, S, hd)
  auto kh = k(a).view({b, s, h, hd}).transpose(1, 2);                       // (B, H, S, hd)
  auto vh = v(a).view({b, s, h, hd}).transpose(1, 2);                       // (B, H, S, hd)
  auto scores = torch::matmul(qh, kh.transpose(-1, -2)) / std::sqrt(static_cast<double>(hd));  // (B, H, S, S)
  auto probs = torch::softmax(scores, -1, torch::kFloat32).to(x.scalar_type());               // (B, H, S, S)
  auto ctxv = torch::matmul(probs, vh).transpose(1, 2).reshape({b, s, dims_.hidden});         // (B, S, C)
  auto y = x + o(ctxv);                                                                         // (B, S, C)
  auto m = hooks.run(ln2(y), model::Sublayer::kMlp, layer_, ctx);                              // (B, S, C)
  return y + fc2(activation(fc1(m), dims_.act));                                                // (B, S, C)
}

}  // namespace vadapt::vision

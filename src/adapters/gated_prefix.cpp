// Gated adaption prompts: parameters, attachment, and the prefix attention.
#include "adapters/gated_prefix.h"

#include <cmath>

#include "common/error.h"
#include "model/module_path.h"

namespace vadapt::adapters {
namespace {
// The per-layer object installed on the attention-prefix seam.
class LayerPrefix : public model::AttentionPrefix {
 public:
  LayerPrefix(const GatedPrefixImpl* owner, int64_t layer) : owner_(owner), layer_(layer) {}
  torch::Tensor attend(const torch::Tensor& q, const model::AttentionView& view, const model::ForwardContext& ctx) override {
    return owner_->attend(layer_, q, view, ctx);
  }

 private:
  const GatedPrefixImpl* owner_;
  int64_t layer_;
};
}  // namespace

GatedPrefixImpl::GatedPrefixImpl(const io::LlamaConfig& cfg, const GatedPrefixOptions& o, uint64_t seed, torch::Device device) : o_(o) {
  if (o.prompt_len < 0) throw VadaptError(cat("adapter prompt_len must be >= 0, got ", o.prompt_len));
  if (o.layers < 0 || o.layers > cfg.num_hidden_layers)
    throw VadaptError(cat("adapter layers must be in [0, ", cfg.num_hidden_layers, "] (the top L decoder layers carry prompts), got ", o.layers));
  if (o.gate != "tanh" && o.gate != "raw") throw VadaptError(cat("adapter gate must be tanh or raw, got '", o.gate, "'"));
  first_layer_ = o.start >= 0 ? o.start : cfg.num_hidden_layers - o.layers;
  if (first_layer_ + o.layers > cfg.num_hidden_layers)
    throw VadaptError(cat("adapter layers ", first_layer_, "..", first_layer_ + o.layers - 1, " exceed the LLM's ", cfg.num_hidden_layers, " layers"));
  if (!o.learned_query && !o.use_condition) throw VadaptError("adapter prompts need a learned query or a conditioning (or both)");
  auto gen = at::detail::createCPUGenerator(seed);
  if (o.learned_query) {
    auto q = torch::empty({o.layers * o.prompt_len, cfg.hidden_size}, torch::kFloat32);
    q.normal_(0.0, 1.0, gen);  // nn.Embedding's default init, as the official code
    adapter_query = model::namespace_module(*this, "adapter_query").register_parameter("weight", q.to(device));
  }
  for (int64_t l = first_layer_; l < first_layer_ + o.layers; ++l) {
    auto& ns = model::namespace_module(*this, cat("layers.", l, ".attention"));
    gates_.push_back(ns.register_parameter("gate", torch::zeros({1, cfg.num_attention_heads, 1, 1}, torch::TensorOptions().device(device))));
    if (o.new_gate) new_gates_.push_back(ns.register_parameter("new_gate", torch::ones({1, 1, 1, 1}, torch::TensorOptions().device(device))));
    kept_keys_.emplace_back(cat(o.tag, ".", l, ".k"), cat(o.tag, ".", l, ".v"));
  }
}

void GatedPrefixImpl::attach(model::LlamaForCausalLMImpl& lm) {
  if (o_.prompt_len == 0) return;
  for (int64_t l = first_layer_; l < first_layer_ + o_.layers; ++l) {
    if (lm.layer(l).self_attn->prefix) throw VadaptError(cat("adapter prompts: layer ", l, " already carries prompts"));
    lm.layer(l).self_attn->prefix = std::make_shared<LayerPrefix>(this, l);
  }
}

void GatedPrefixImpl::detach(model::LlamaForCausalLMImpl& lm) {
  for (int64_t l = first_layer_; l < first_layer_ + o_.layers; ++l) lm.layer(l).self_attn->prefix.reset();
}

bool GatedPrefixImpl::gates_zero() const {
  for (const auto& g : gates_)
    if (g.ne(0).any().item<bool>()) return false;
  return true;
}

torch::Tensor GatedPrefixImpl::attend(int64_t layer, const torch::Tensor& q, const model::AttentionView& view,
                                      const model::ForwardContext& ctx) const {
  const int64_t k_len = o_.prompt_len, h = view.num_heads, kv = view.num_kv_heads, d = view.head_dim;
  const int64_t b = q.size(0);
  // Prompt K/V (B, H, K, D): at generation (a KV cache in use) they are computed at prefill and
  // kept in the adapter state for the decode steps, reordered with the beams like the cache.
  torch::Tensor kp, vp;
  const auto& [key_k, key_v] = kept_keys_[static_cast<size_t>(layer - first_layer_)];
  auto* st = ctx.cache ? ctx.adapter_state : nullptr;
  const torch::Tensor* kept_k = nullptr;
  if (st) {
    auto it = st->kept.find(key_k);
    if (it != st->kept.end() && it->second.size(0) == b) kept_k = &it->second;
  }
  if (kept_k) {
    kp = *kept_k, vp = st->kept.at(key_v);
  } else {
    torch::Tensor prompt;  // (1 or B, K, dim)
    if (o_.learned_query) prompt = adapter_query.narrow(0, (layer - first_layer_) * k_len, k_len).unsqueeze(0);  // (1, K, dim)
    const bool cond = o_.use_condition && ctx.adapter_state && ctx.adapter_state->condition.defined();
    if (cond) {
      auto c = ctx.adapter_state->condition;                                                     // (B, d) or (B, K, d)
      if (c.dim() == 2) c = c.unsqueeze(1);                                                       // (B, 1, d): one vector for every prompt
      else if (c.size(1) != k_len)
        throw VadaptError(cat("adapter prompts: the conditioning has ", c.size(1), " tokens, the prompts ", k_len));
      prompt = prompt.defined() ? prompt + c.to(prompt.scalar_type()) : c;                       // (B, K, dim)
    }
    if (!prompt.defined()) return torch::zeros_like(q);  // no conditioning for a prompt made of it alone (text-only batch)
    prompt = prompt.to(q.scalar_type());
    kp = o_.adapted_kv ? view.k_proj.forward(prompt) : view.k_proj.base_forward(prompt);        // (Bp, K, kv*D)
    vp = o_.adapted_kv ? view.v_proj.forward(prompt) : view.v_proj.base_forward(prompt);        // (Bp, K, kv*D)
    const int64_t bp = kp.size(0);
    kp = kp.view({bp, k_len, kv, d}).transpose(1, 2);                                            // (Bp, kv, K, D)
    vp = vp.view({bp, k_len, kv, d}).transpose(1, 2);                                            // (Bp, kv, K, D)
    if (h != kv) kp = kp.repeat_interleave(h / kv, 1), vp = vp.repeat_interleave(h / kv, 1);     // (Bp, H, K, D)
    if (st) {
      st->kept[key_k] = kp.expand({b, h, k_len, d}).contiguous();                                // (B, H, K, D)
      st->kept[key_v] = vp.expand({b, h, k_len, d}).contiguous();
    }
  }
  auto g = gates_[static_cast<size_t>(layer - first_layer_)];                                   // (1, H, 1, 1)
  g = o_.gate == "tanh" ? torch::tanh(g) : g;
  if (k_len == 1 && o_.k1_ignores_new_gate)  // official V2: no softmax over one key, and new_gate unused
    return vp.expand({b, h, q.size(2), d}) * g.to(q.scalar_type());                              // (B, H, T, D)
  if (o_.new_gate) g = g * new_gates_[static_cast<size_t>(layer - first_layer_)];
  auto scores = torch::matmul(q, kp.transpose(-1, -2)).mul_(1.0 / std::sqrt(static_cast<double>(d)));  // (B, H, T, K)
  auto probs = torch::softmax(scores, -1, torch::kFloat32).to(q.scalar_type());                // (B, H, T, K)
  return torch::matmul(probs, vp) * g.to(q.scalar_type());                                      // (B, H, T, D)
}

int64_t gated_prefix_parameter_count(const io::LlamaConfig& cfg, const GatedPrefixOptions& o) {
  return (o.learned_query ? o.layers * o.prompt_len * cfg.hidden_size : 0) + o.layers * cfg.num_attention_heads + (o.new_gate ? o.layers : 0);
}

}  // namespace vadapt::adapters

// LLaMA-Adapter adaption prompts with zero-init gated attention (Zhang et al. 2023, arXiv
// 2303.16199, eq. 6-8), on the attention-prefix seam. The top L decoder layers each get K
// learned prompt vectors (one (L*K, d) table, `adapter_query.weight`); in such a layer the
// prompt goes through the layer's frozen k/v projections (no norm, no RoPE, no causal mask),
// the RoPE-rotated text queries score it in a softmax of its own, and the result, scaled per
// head by a zero-initialised gate (`layers.N.attention.gate`, (1, H, 1, 1)), is added to the
// attention output before o_proj. Gate forms: tanh(g) (official training code) or raw g
// (official inference code and the paper). A per-sample conditioning vector in the forward
// context (V1 multimodal: the visual token) is added to every prompt of every adapted layer.
// LLaMA-Adapter V2 uses the same module with per-sample (B, K, d) visual tokens as the
// conditioning (added position by position), a `new_gate` scalar per layer (LoRA form), and, for
// early fusion, prompts made of the visual tokens alone in the first layer(s).
// Prompt K/V never enter the KV cache (text positions start at 0 whatever K is); when a KV cache
// is in use they are computed once at prefill and kept in the forward context's AdapterState.
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "model/llama.h"
#include "model/seams.h"

namespace vadapt::adapters {

struct GatedPrefixOptions {
  int64_t prompt_len = 10;    // K
  int64_t layers = 30;        // L: the top L decoder layers carry prompts (0: none)
  std::string gate = "tanh";  // tanh | raw
  bool adapted_kv = false;    // prompt K/V through the adapted projections (k_proj / v_proj adapters) instead of the plain ones
  int64_t start = -1;         // first adapted layer; -1: the top `layers` layers
  bool learned_query = true;  // false: the prompt is the conditioning alone (V2 early fusion: the visual tokens)
  bool use_condition = true;  // add the per-sample conditioning of the adapter state to the prompt
  bool new_gate = false;      // V2 LoRA form: a (1, 1, 1, 1) scalar per layer (init 1) times the gate
  bool k1_ignores_new_gate = false;  // the official V2 code's K = 1 branch: tanh(gate) * v, new_gate unused
  std::string tag = "gated_prefix";  // names of the prompt K/V kept in the adapter state
};

class GatedPrefixImpl : public torch::nn::Module {
 public:
  GatedPrefixImpl(const io::LlamaConfig& cfg, const GatedPrefixOptions& o, uint64_t seed, torch::Device device);
  // Installs the per-layer prefixes on the top L layers of `lm`.
  void attach(model::LlamaForCausalLMImpl& lm);
  void detach(model::LlamaForCausalLMImpl& lm);
  int64_t first_layer() const { return first_layer_; }
  const GatedPrefixOptions& options() const { return o_; }
  // (1, H, 1, 1) gate of decoder layer `layer` (>= first_layer()).
  torch::Tensor& gate(int64_t layer) { return gates_[static_cast<size_t>(layer - first_layer_)]; }
  // (B, H, T, D) prefix attention of the adapted layer `layer`.
  torch::Tensor attend(int64_t layer, const torch::Tensor& q, const model::AttentionView& view, const model::ForwardContext& ctx) const;

  // (1, 1, 1, 1) new_gate of decoder layer `layer` (options().new_gate).
  torch::Tensor& new_gate(int64_t layer) { return new_gates_[static_cast<size_t>(layer - first_layer_)]; }
  // The gated prompt of one layer folded into a zero value: whether every gate is exactly 0.
  bool gates_zero() const;

  torch::Tensor adapter_query;  // (L*K, d); undefined without learned_query

 private:
  GatedPrefixOptions o_;
  int64_t first_layer_ = 0;
  std::vector<torch::Tensor> gates_;      // L x (1, H, 1, 1)
  std::vector<torch::Tensor> new_gates_;  // L x (1, 1, 1, 1) with new_gate
  std::vector<std::pair<std::string, std::string>> kept_keys_;  // per adapted layer: AdapterState::kept names of its prompt K / V
};
TORCH_MODULE(GatedPrefix);

// Parameter count of the prompts and gates from a config alone: L*K*d + L*H (+ L with new_gate).
int64_t gated_prefix_parameter_count(const io::LlamaConfig& cfg, const GatedPrefixOptions& o);

}  // namespace vadapt::adapters

// Frozen Llama decoder with Hugging Face LlamaForCausalLM semantics: RMSNorm, rotate-half RoPE
// (+ llama3 scaling), grouped-query attention, SwiGLU MLP, tied or separate lm_head.
// Modules are registered under the HF names (model.layers.N.self_attn.q_proj.weight, ...).
// The language model knows nothing of images: callers use embed / forward_embeds / logits.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/hf_config.h"
#include "model/kv_cache.h"
#include "model/layers.h"
#include "model/rope.h"
#include "model/seams.h"

namespace vadapt::model {

class LlamaAttentionImpl : public torch::nn::Module {
 public:
  LlamaAttentionImpl(const io::LlamaConfig& cfg, int64_t layer, const torch::TensorOptions& opts);
  // x (B, T, d); mask (B, 1, 1, T, S) additive or undefined.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& mask, const Rope& rope, ForwardContext& ctx);

  Projection q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  std::shared_ptr<AttentionPrefix> prefix;  // attention-prefix seam (null: none)

 private:
  int64_t layer_, num_heads_, num_kv_heads_, head_dim_;
  double scale_;
};
TORCH_MODULE(LlamaAttention);

class LlamaMLPImpl : public torch::nn::Module {
 public:
  LlamaMLPImpl(const io::LlamaConfig& cfg, const torch::TensorOptions& opts);
  torch::Tensor forward(const torch::Tensor& x);
  Projection gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMLP);

class LlamaDecoderLayerImpl : public torch::nn::Module {
 public:
  LlamaDecoderLayerImpl(const io::LlamaConfig& cfg, int64_t layer, const torch::TensorOptions& opts);
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin, const torch::Tensor& mask,
                        const Rope& rope, ForwardContext& ctx);

  LlamaAttention self_attn{nullptr};
  LlamaMLP mlp{nullptr};
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  SublayerHooks hooks;  // sub-layer input seam

 private:
  int64_t layer_;
};
TORCH_MODULE(LlamaDecoderLayer);

class LlamaModelImpl : public torch::nn::Module {
 public:
  LlamaModelImpl(const io::LlamaConfig& cfg, const torch::TensorOptions& opts);
  Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RMSNorm norm{nullptr};
};
TORCH_MODULE(LlamaModel);

class LlamaForCausalLMImpl : public torch::nn::Module {
 public:
  LlamaForCausalLMImpl(io::LlamaConfig cfg, const torch::TensorOptions& opts);

  // (B, T) int64 -> (B, T, d)
  torch::Tensor embed(const torch::Tensor& ids);
  // (B, T, d) input embeddings -> (B, T, d) final-normed hidden states. Appends to ctx.cache.
  torch::Tensor forward_embeds(const torch::Tensor& x, ForwardContext& ctx);
  // (B, T, d) -> (B, T, vocab)
  torch::Tensor logits(const torch::Tensor& h);
  // Convenience: ids -> logits.
  torch::Tensor forward(const torch::Tensor& ids, ForwardContext& ctx) { return logits(forward_embeds(embed(ids), ctx)); }

  KVCache make_cache(int64_t batch, int64_t capacity) const;
  const io::LlamaConfig& config() const { return cfg_; }
  // RoPE cos / sin (P, D) float32 on the CPU.
  std::pair<torch::Tensor, torch::Tensor> rope_tables() const { return rope_.cpu_tables(); }
  LlamaDecoderLayerImpl& layer(int64_t i) { return *model->layers[i]->as<LlamaDecoderLayerImpl>(); }
  torch::ScalarType dtype() const { return model->embed_tokens->weight.scalar_type(); }
  torch::Device device() const { return model->embed_tokens->weight.device(); }

  LlamaModel model{nullptr};
  Projection lm_head{nullptr};  // null when tie_word_embeddings

 private:
  io::LlamaConfig cfg_;
  Rope rope_;
};
TORCH_MODULE(LlamaForCausalLM);

// Builds the additive attention mask (B, 1, 1, T, S) for T new tokens after `past` cached
// ones; key_mask (B, S) with 1 = real token, or undefined. Undefined result when no masking
// is needed (T == 1 and no padding).
torch::Tensor build_attention_mask(int64_t batch, int64_t t, int64_t past, const torch::Tensor& key_mask,
                                   torch::ScalarType dtype, torch::Device device);

// Reads DIR/config.json and DIR/model.safetensors[.index.json], strict-loads, freezes.
// Writes a Hugging Face Llama folder: `tensors` (empty: the model's parameters) as
// model.safetensors, `config` (null: the model's) as config.json, and the tokenizer files of
// `tokenizer_dir`.
void save_hf_llama(const LlamaForCausalLMImpl& lm, const std::string& tokenizer_dir, const std::string& out,
                   const std::vector<std::pair<std::string, torch::Tensor>>& tensors = {}, const nlohmann::json& config = nullptr);

// `part`: the LLM's place in a folder that holds more than the LLM (io::FolderPart).
LlamaForCausalLM load_llama(const std::string& dir, torch::ScalarType dtype, torch::Device device, const io::FolderPart& part = {});

}  // namespace vadapt::model

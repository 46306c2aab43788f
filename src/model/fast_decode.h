// The decode step (one new token per row over the KV cache) of a plain Llama on the CPU with
// float32 or bfloat16 weights, without libtorch's per-operator dispatch: BLAS products (cblas,
// from Debian's OpenBLAS through libblas.so.3) or a few-rows kernel on the modules' own weights,
// and plain loops for the norms, RoPE, attention over the cache and SwiGLU. At batch 1 libtorch
// runs a linear layer as a one-row sgemm and pays a few microseconds of dispatch per operator
// (~20 per layer), which on a small model costs more than the arithmetic; this path is what a
// decode step needs and no more. Activations are float32 whatever the weights: bf16 weights are
// widened as they are read (the step reads half the bytes), and the KV cache keeps the weights'
// dtype, as on the module path.
//
// Same math as LlamaForCausalLMImpl::forward_embeds + logits (tests: equal logits within 1e-4 and
// identical greedy ids on every golden model, KV-cache decode = full recompute; bf16: within the
// rounding of the cache of the float32 math on the same weights). It applies only where nothing
// else acts on the model: no projection adapters (merge LoRA first), no attention prefix, no
// sub-layer adapter, no NF4 weights, no per-sample adapter state; anything else takes the module
// path. VADAPT_FAST_DECODE=0 turns it off (benchmarks compare both).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "model/llama.h"

namespace vadapt::model {

class FastDecoder {
 public:
  // Null when the fast path does not apply to `lm` (the reason in *why_not when given).
  static std::unique_ptr<FastDecoder> make(LlamaForCausalLMImpl& lm, std::string* why_not = nullptr);
  // Whether this call can take the fast path (the adapter state must be empty).
  static bool applies(const ForwardContext& ctx);

  // ids (B,) int64, one new token per row at ctx.cache->length(); ctx.position_ids (B, 1) or
  // undefined (= the cache length); ctx.attention_mask (B, length + 1) 1 = real key, or
  // undefined. Appends to the cache and advances it; returns logits (B, V) float32.
  torch::Tensor step(const torch::Tensor& ids, ForwardContext& ctx);

 private:
  explicit FastDecoder(LlamaForCausalLMImpl& lm);
  template <typename W>
  torch::Tensor step_as(const torch::Tensor& ids, ForwardContext& ctx);
  LlamaForCausalLMImpl& lm_;
  std::vector<torch::Tensor> norms_;  // each layer's two norm weights, then the final one, float32
  std::vector<int64_t> pos_;
  std::vector<float> x_, h_, q_, k_, v_, att_, gate_, up_, scores_;
};

// Logits (B, V) for one new token per row (ids (B,)) over ctx's cache: `fast`'s step when given
// and it applies to this call, else the modules. The one decode step of generation, beam search
// and continuous batching.
torch::Tensor decode_logits(LlamaForCausalLMImpl& lm, FastDecoder* fast, const torch::Tensor& ids, ForwardContext& ctx);

}  // namespace vadapt::model

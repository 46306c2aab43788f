// Autoregressive generation over the KV cache for a batch of prompts (left-padded, with an
// attention mask and per-row positions), from token ids or from input embeddings (so a
// vision-language model can splice image tokens in). Stops per row on EOS / stop ids / stop
// strings / max_new_tokens; a callback streams tokens as they are chosen.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

#include "generate/sampler.h"
#include "model/fast_decode.h"
#include "model/llama.h"
#include "text/tokenizer.h"

namespace vadapt::generate {

struct GenerateOptions {
  SamplingParams sampling;
  int64_t num_beams = 1;        // > 1: beam search (deterministic; sampling options ignored)
  double length_penalty = 1.0;  // beam score = sum log p / length^length_penalty
  int64_t max_new_tokens = 128;
  std::vector<int64_t> stop_ids;  // in addition to the model's EOS ids
  bool stop_at_eos = true;
  // Text that ends a row (cut before it); applied by vlm::answer, which has the tokenizer, in
  // addition to the chat template's own stop strings.
  std::vector<std::string> stop_strings;
};

struct GenerateResult {
  std::vector<std::vector<int64_t>> tokens;  // generated ids per row (stop token excluded)
  int64_t prompt_tokens = 0;                 // real (unpadded) prompt tokens in the batch
  int64_t generated_tokens = 0;
  double prefill_seconds = 0;
  double decode_seconds = 0;
  int64_t decode_steps = 0;
};

// Called with (row, token id) for each chosen token; return false to stop that row.
using TokenCallback = std::function<bool(int64_t row, int64_t id)>;

class Generator {
 public:
  explicit Generator(model::LlamaForCausalLM lm) : lm_(std::move(lm)) {}

  GenerateResult generate(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& opts,
                          const TokenCallback& on_token = {});
  // embeds (B, T, d) already left-padded; key_mask (B, T) 1 = real, or undefined; state: the
  // adapters' per-sample state (B rows), or null.
  GenerateResult generate_embeds(const torch::Tensor& embeds, const torch::Tensor& key_mask, const GenerateOptions& opts,
                                 const TokenCallback& on_token = {}, const model::AdapterState* state = nullptr);
  // Beam search for one prompt (embeds (1, T, d)); returns the best finished hypothesis. The
  // adapter state is expanded to the beams and reordered with them.
  GenerateResult beam_search(const torch::Tensor& embeds, const GenerateOptions& opts, const model::AdapterState* state = nullptr);

 private:
  // Logits (B, V) for one new token per row (ids (B,)) over ctx's cache: the fast CPU path
  // (model::FastDecoder) where it applies, else the modules.
  torch::Tensor decode_step(const torch::Tensor& ids, model::ForwardContext& ctx);

  model::LlamaForCausalLM lm_;
  std::shared_ptr<model::FastDecoder> fast_;  // made at the start of each generate call
};

// Left-pads prompts into (B, T) ids and a (B, T) mask.
std::pair<torch::Tensor, torch::Tensor> left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id);

}  // namespace vadapt::generate

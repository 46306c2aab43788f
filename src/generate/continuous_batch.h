// Continuous batching: rows (requests) join a running batch and leave it between decode steps.
// One decode step runs every row at once over a shared, right-aligned KV cache with a key mask
// and per-row positions, as the left-padded batch of Generator::generate_embeds does; a joining
// group is prefilled on its own and stacked under the running rows; rows that end are dropped,
// with the cache entries no remaining row needs. Each row has its own sampling settings, stop ids
// and token budget. The same greedy tokens as generating each row alone (tested).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <vector>

#include "generate/generator.h"
#include "generate/sampler.h"
#include "model/kv_cache.h"
#include "model/fast_decode.h"
#include "model/llama.h"
#include "model/seams.h"

namespace vadapt::generate {

struct RowOptions {
  SamplingParams sampling;
  int64_t max_new_tokens = 128;
  std::vector<int64_t> stop_ids;  // in addition to the model's EOS ids when stop_at_eos
  bool stop_at_eos = true;
};

class ContinuousBatch {
 public:
  explicit ContinuousBatch(model::LlamaForCausalLM lm) : lm_(std::move(lm)) {}

  int64_t size() const { return static_cast<int64_t>(rows_.size()); }
  bool empty() const { return rows_.empty(); }
  // Whether rows with this (pre-prefill) adapter state may join the rows running now.
  bool can_join(const model::AdapterState& state) const;
  // Prefills a group of n rows (embeds (n, T, d) left-padded, key_mask (n, T) 1 = real or
  // undefined, their adapter state or null) and adds them; returns their row ids (stable for the
  // life of the batch). Throws (nothing joins) when a row does not fit the model's context.
  std::vector<int64_t> join(const torch::Tensor& embeds, const torch::Tensor& key_mask, const model::AdapterState* state,
                            const std::vector<RowOptions>& rows);
  // Chooses the next token of every row and reports it as on_token(row id, token) (stop tokens
  // are not reported; the callback returns false to end its row); rows that end (stop token,
  // budget, callback) leave the batch and are returned; the others run one decode step.
  std::vector<int64_t> step(const TokenCallback& on_token);
  // Ends a row now (a cancelled request); unknown ids are ignored.
  void drop(int64_t id);

 private:
  struct Row {
    int64_t id;
    RowOptions opts;
    std::unique_ptr<Sampler> sampler;
    int64_t generated = 0;
  };
  void keep_rows(const std::vector<size_t>& keep);

  model::LlamaForCausalLM lm_;
  std::shared_ptr<model::FastDecoder> fast_;  // the fast CPU decode step, when it applies to lm_
  bool fast_checked_ = false;
  std::vector<Row> rows_;
  std::optional<model::KVCache> cache_;
  model::AdapterState state_;
  torch::Tensor mask_;      // (B, L) int64 1 = a real entry of the cache
  torch::Tensor next_pos_;  // (B, 1) the position of each row's next token
  torch::Tensor logits_;    // (B, V) of each row's next token
  int64_t next_id_ = 0;
};

}  // namespace vadapt::generate

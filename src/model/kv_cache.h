// Preallocated key/value cache: one (B, n_kv_heads, capacity, head_dim) buffer per layer,
// filled in place, so decoding allocates nothing per token for the cache.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace vadapt::model {

class KVCache {
 public:
  KVCache(int64_t num_layers, int64_t batch, int64_t num_kv_heads, int64_t capacity, int64_t head_dim,
          const torch::TensorOptions& opts);

  int64_t length() const { return length_; }
  int64_t capacity() const { return capacity_; }
  int64_t batch() const { return batch_; }
  // Writes k/v (B, kv, T, D) at [length, length+T) of `layer`; returns views over [0, length+T).
  std::pair<torch::Tensor, torch::Tensor> append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v);
  // Called by the model once all layers have appended `t` tokens.
  void advance(int64_t t) { length_ += t; }
  void reset() { length_ = 0; }
  // The whole (B, n_kv_heads, capacity, head_dim) buffers of a layer (the fast decode path
  // writes its new entries in place, then calls advance).
  torch::Tensor& keys(int64_t layer) { return k_[static_cast<size_t>(layer)]; }
  torch::Tensor& values(int64_t layer) { return v_[static_cast<size_t>(layer)]; }
  // Keeps only the batch rows in `index` (beam search reorders), in place.
  void select_rows(const torch::Tensor& index);

  // Continuous batching (rows join and leave between decode steps). All three keep the rows
  // right-aligned: a row's entries always end at length().
  // `a` over `b` as one cache of max(a.length, b.length) entries (the shorter one's rows
  // left-padded with zeros, which the caller masks) and `capacity` (at least that length).
  static KVCache stack(const KVCache& a, const KVCache& b, int64_t capacity);
  // Keeps the rows in `index` and drops the first `from` entries of every row (padding that no
  // kept row attends to any more).
  void keep(const torch::Tensor& index, int64_t from);
  // Grows the capacity (copying what is held) when it is below `capacity`.
  void reserve(int64_t capacity);

 private:
  KVCache() = default;
  // New buffers of `capacity` holding `length` entries: `rows` of each layer's k / v (B, kv, length, D).
  static KVCache from_layers(std::vector<torch::Tensor> k, std::vector<torch::Tensor> v, int64_t capacity);

  std::vector<torch::Tensor> k_, v_;
  int64_t batch_ = 0, capacity_ = 0, length_ = 0;
};

}  // namespace vadapt::model

// KV cache storage and in-place appends.
#include "model/kv_cache.h"

#include "common/error.h"

namespace vadapt::model {

KVCache::KVCache(int64_t num_layers, int64_t batch, int64_t num_kv_heads, int64_t capacity, int64_t head_dim,
                 const torch::TensorOptions& opts)
    : batch_(batch), capacity_(capacity) {
  for (int64_t i = 0; i < num_layers; ++i) {
    k_.push_back(torch::zeros({batch, num_kv_heads, capacity, head_dim}, opts));
    v_.push_back(torch::zeros({batch, num_kv_heads, capacity, head_dim}, opts));
  }
}

std::pair<torch::Tensor, torch::Tensor> KVCache::append(int64_t layer, const torch::Tensor& k, const torch::Tensor& v) {
  const int64_t t = k.size(2);
  if (length_ + t > capacity_)
    throw VadaptError(cat("KV cache full: ", length_, " + ", t, " tokens exceed its capacity of ", capacity_,
                          " (raise --max-seq-len or shorten the prompt)"));
  TORCH_CHECK(k.size(0) == batch_, "KV cache batch ", batch_, " != input batch ", k.size(0));
  k_[layer].narrow(2, length_, t).copy_(k);
  v_[layer].narrow(2, length_, t).copy_(v);
  return {k_[layer].narrow(2, 0, length_ + t), v_[layer].narrow(2, 0, length_ + t)};  // (B, kv, S, D)
}

void KVCache::select_rows(const torch::Tensor& index) {
  for (auto& t : k_) t.copy_(t.index_select(0, index));
  for (auto& t : v_) t.copy_(t.index_select(0, index));
}

}  // namespace vadapt::model

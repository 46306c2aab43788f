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

KVCache KVCache::from_layers(std::vector<torch::Tensor> k, std::vector<torch::Tensor> v, int64_t capacity) {
  KVCache c;
  c.batch_ = k.empty() ? 0 : k[0].size(0);
  c.length_ = k.empty() ? 0 : k[0].size(2);
  c.capacity_ = std::max(capacity, c.length_);
  for (size_t i = 0; i < k.size(); ++i) {
    for (auto* t : {&k[i], &v[i]}) {
      auto s = t->sizes().vec();
      s[2] = c.capacity_;
      auto buf = torch::zeros(s, t->options());
      buf.narrow(2, 0, c.length_).copy_(*t);
      (t == &k[i] ? c.k_ : c.v_).push_back(buf);
    }
  }
  return c;
}

KVCache KVCache::stack(const KVCache& a, const KVCache& b, int64_t capacity) {
  if (a.k_.size() != b.k_.size()) throw VadaptError("KV cache: stacking caches of different depths");
  KVCache c;
  c.batch_ = a.batch_ + b.batch_;
  c.length_ = std::max(a.length_, b.length_);
  c.capacity_ = std::max(capacity, c.length_);
  // Each part right-aligned at length_ in one new buffer per layer (the rest zeros, masked).
  auto stacked = [&](const torch::Tensor& x, const torch::Tensor& y) {  // (Ba, kv, cap, D), (Bb, kv, cap, D)
    auto s = x.sizes().vec();
    s[0] = c.batch_, s[2] = c.capacity_;
    auto buf = torch::zeros(s, x.options());
    buf.narrow(0, 0, a.batch_).narrow(2, c.length_ - a.length_, a.length_).copy_(x.narrow(2, 0, a.length_));
    buf.narrow(0, a.batch_, b.batch_).narrow(2, c.length_ - b.length_, b.length_).copy_(y.narrow(2, 0, b.length_));
    return buf;
  };
  for (size_t i = 0; i < a.k_.size(); ++i) c.k_.push_back(stacked(a.k_[i], b.k_[i])), c.v_.push_back(stacked(a.v_[i], b.v_[i]));
  return c;
}

void KVCache::keep(const torch::Tensor& index, int64_t from) {
  TORCH_CHECK(from >= 0 && from <= length_, "KV cache: dropping ", from, " of ", length_, " entries");
  std::vector<torch::Tensor> k, v;
  for (size_t i = 0; i < k_.size(); ++i) {
    k.push_back(k_[i].index_select(0, index.to(k_[i].device())).narrow(2, from, length_ - from));
    v.push_back(v_[i].index_select(0, index.to(v_[i].device())).narrow(2, from, length_ - from));
  }
  *this = from_layers(std::move(k), std::move(v), capacity_);
}

void KVCache::reserve(int64_t capacity) {
  if (capacity <= capacity_) return;
  std::vector<torch::Tensor> k, v;
  for (size_t i = 0; i < k_.size(); ++i) k.push_back(k_[i].narrow(2, 0, length_)), v.push_back(v_[i].narrow(2, 0, length_));
  *this = from_layers(std::move(k), std::move(v), capacity);
}

}  // namespace vadapt::model

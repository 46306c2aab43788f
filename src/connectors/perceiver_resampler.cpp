// Perceiver resampler: parameters, forward, parameter count.
#include "connectors/perceiver_resampler.h"

#include <cmath>

#include "common/error.h"
#include "model/module_path.h"

namespace vadapt::connectors {

void PerceiverOptions::validate(const std::string& where) const {
  for (auto [v, name] : {std::pair<int64_t, const char*>{in, "in"}, {width, "width"}, {queries, "queries"}, {layers, "layers"},
                         {heads, "heads"}, {ffn_mult, "ffn_mult"}, {max_frames, "max_frames"}})
    if (v <= 0) raise(where, name, "must be positive, got ", v);
  if (width % heads != 0) raise(where, "heads", "must divide width ", width, ", got ", heads);
  if (norms != "separate" && norms != "shared" && norms != "none")
    raise(where, "norms", "expected separate, shared or none, got '", norms, "'");
}

namespace {
// nn.Linear's default init: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
torch::Tensor linear_init(int64_t out, int64_t in, at::Generator& gen) {
  const double b = 1.0 / std::sqrt(static_cast<double>(in));
  return torch::empty({out, in}).uniform_(-b, b, gen);
}
torch::Tensor bias_init(int64_t out, int64_t in, at::Generator& gen) {
  const double b = 1.0 / std::sqrt(static_cast<double>(in));
  return torch::empty({out}).uniform_(-b, b, gen);
}
torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b, double eps) {
  if (!w.defined()) return x;  // norms: none
  return torch::layer_norm(x, {x.size(-1)}, w, b, eps);
}
// Multi-head attention of queries (B, N, w) over keys/values (B, S, *): projections (biases may
// be undefined), softmax(q k^T / sqrt(hd)) v per head, output projection -> (B, N, w).
torch::Tensor cross_attend(const torch::Tensor& qin, const torch::Tensor& kvin, int64_t heads, const torch::Tensor& wq,
                           const torch::Tensor& bq, const torch::Tensor& wk, const torch::Tensor& bk, const torch::Tensor& wv,
                           const torch::Tensor& bv, const torch::Tensor& wo, const torch::Tensor& bo) {
  namespace F = torch::nn::functional;
  const int64_t b = qin.size(0), n = qin.size(1), w = wq.size(0), hd = w / heads;
  auto split = [&](const torch::Tensor& t) { return t.view({b, t.size(1), heads, hd}).transpose(1, 2); };  // (B, H, *, hd)
  auto q = split(F::linear(qin, wq, bq)), k = split(F::linear(kvin, wk, bk)), v = split(F::linear(kvin, wv, bv));
  auto p = torch::softmax(torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(hd)), -1);  // (B, H, N, S)
  return F::linear(torch::matmul(p, v).transpose(1, 2).reshape({b, n, w}), wo, bo);                     // (B, N, w)
}
// (B, S, in) or (B, F, S, in) -> (B, F, S, in), checked.
torch::Tensor as_frames(const torch::Tensor& features, int64_t in, const char* who) {
  auto f = features.dim() == 3 ? features.unsqueeze(1) : features;
  if (f.dim() != 4 || f.size(-1) != in)
    throw VadaptError(cat(who, ": features must be (B, S, ", in, ") or (B, F, S, ", in, "), got ", features.sizes()));
  return f;
}
}  // namespace

PerceiverResamplerImpl::PerceiverResamplerImpl(const PerceiverOptions& o, uint64_t seed) : o_(o) {
  o.validate("perceiver resampler");
  auto gen = at::detail::createCPUGenerator(seed);
  const int64_t w = o.width, h = o.ffn_mult * o.width;
  auto ones = [&] { return torch::ones({w}); };
  auto zeros = [&] { return torch::zeros({w}); };
  queries_ = register_parameter("queries", torch::empty({o.queries, w}).normal_(0, 0.02, gen));
  in_w_ = model::namespace_module(*this, "input_proj").register_parameter("weight", linear_init(w, o.in, gen));
  in_b_ = model::namespace_module(*this, "input_proj").register_parameter("bias", bias_init(w, o.in, gen));
  if (o.time_embedding) time_ = register_parameter("time_embedding", torch::empty({o.max_frames, w}).normal_(0, 0.02, gen));
  for (int64_t i = 0; i < o.layers; ++i) {
    auto& ns = model::namespace_module(*this, cat("layers.", i));
    Layer l;
    if (o.norms != "none") {
      l.nq_w = model::namespace_module(ns, "norm_queries").register_parameter("weight", ones());
      l.nq_b = model::namespace_module(ns, "norm_queries").register_parameter("bias", zeros());
      if (o.norms == "separate") {
        l.nkv_w = model::namespace_module(ns, "norm_features").register_parameter("weight", ones());
        l.nkv_b = model::namespace_module(ns, "norm_features").register_parameter("bias", zeros());
      } else {
        l.nkv_w = l.nq_w, l.nkv_b = l.nq_b;  // shared
      }
    }
    auto& at = model::namespace_module(ns, "attn");
    l.wq = model::namespace_module(at, "q").register_parameter("weight", linear_init(w, w, gen));
    l.wk = model::namespace_module(at, "k").register_parameter("weight", linear_init(w, w, gen));
    l.wv = model::namespace_module(at, "v").register_parameter("weight", linear_init(w, w, gen));
    l.wo = model::namespace_module(at, "o").register_parameter("weight", linear_init(w, w, gen));
    if (o.ffn) {
      l.nf_w = model::namespace_module(ns, "ffn.norm").register_parameter("weight", ones());
      l.nf_b = model::namespace_module(ns, "ffn.norm").register_parameter("bias", zeros());
      l.fc1_w = model::namespace_module(ns, "ffn.fc1").register_parameter("weight", linear_init(h, w, gen));
      l.fc1_b = model::namespace_module(ns, "ffn.fc1").register_parameter("bias", bias_init(h, w, gen));
      l.fc2_w = model::namespace_module(ns, "ffn.fc2").register_parameter("weight", linear_init(w, h, gen));
      l.fc2_b = model::namespace_module(ns, "ffn.fc2").register_parameter("bias", bias_init(w, h, gen));
    }
    layers_.push_back(l);
  }
  if (o.final_norm) {
    final_w_ = model::namespace_module(*this, "final_norm").register_parameter("weight", ones());
    final_b_ = model::namespace_module(*this, "final_norm").register_parameter("bias", zeros());
  }
}

torch::Tensor PerceiverResamplerImpl::forward(const torch::Tensor& features) {
  auto f = as_frames(features, o_.in, "perceiver resampler");  // (B, F, S, in)
  const int64_t b = f.size(0), frames = f.size(1), s = f.size(2), w = o_.width;
  if (o_.time_embedding && frames > o_.max_frames)
    throw VadaptError(cat("perceiver resampler: ", frames, " frames, the time embedding has ", o_.max_frames));
  auto x = torch::nn::functional::linear(f.to(in_w_.scalar_type()), in_w_, in_b_);  // (B, F, S, w)
  if (o_.time_embedding) x = x + time_.narrow(0, 0, frames).view({1, frames, 1, w});
  x = x.reshape({b, frames * s, w});                                               // (B, F*S, w)
  auto l = queries_.unsqueeze(0).expand({b, o_.queries, w});                        // (B, N, w)
  for (const auto& L : layers_) {
    auto lq = layer_norm(l, L.nq_w, L.nq_b, o_.eps);                              // (B, N, w)
    auto kv = torch::cat({layer_norm(x, L.nkv_w, L.nkv_b, o_.eps), lq}, 1);        // (B, F*S + N, w)
    l = l + cross_attend(lq, kv, o_.heads, L.wq, {}, L.wk, {}, L.wv, {}, L.wo, {});
    if (o_.ffn) {
      auto hdn = torch::gelu(torch::nn::functional::linear(layer_norm(l, L.nf_w, L.nf_b, o_.eps), L.fc1_w, L.fc1_b));
      l = l + torch::nn::functional::linear(hdn, L.fc2_w, L.fc2_b);
    }
  }
  return o_.final_norm ? layer_norm(l, final_w_, final_b_, o_.eps) : l;  // (B, N, w)
}

int64_t PerceiverResamplerImpl::parameter_count(const PerceiverOptions& o) {
  const int64_t w = o.width, h = o.ffn_mult * o.width;
  int64_t per = 4 * w * w;                                                  // q, k, v, o (no bias)
  per += o.norms == "separate" ? 4 * w : o.norms == "shared" ? 2 * w : 0;   // LayerNorms of queries / features
  if (o.ffn) per += 2 * w + w * h + h + h * w + w;                          // LN + fc1 + fc2
  int64_t n = o.queries * w + o.in * w + w + o.layers * per;
  if (o.time_embedding) n += o.max_frames * w;
  if (o.final_norm) n += 2 * w;
  return n;
}

void PoolerOptions::validate(const std::string& where) const {
  for (auto [v, name] : {std::pair<int64_t, const char*>{in, "in"}, {width, "width"}, {queries, "queries"}, {heads, "heads"}})
    if (v <= 0) raise(where, name, "must be positive, got ", v);
  if (width % heads != 0) raise(where, "heads", "must divide width ", width, ", got ", heads);
}

AttentionalPoolerImpl::AttentionalPoolerImpl(const PoolerOptions& o, uint64_t seed) : o_(o) {
  o.validate("attentional pooler");
  auto gen = at::detail::createCPUGenerator(seed);
  const int64_t w = o.width;
  queries_ = register_parameter("queries", torch::empty({o.queries, w}).normal_(0, 0.02, gen));
  auto norm = [&](const char* name, int64_t n, torch::Tensor& wt, torch::Tensor& bt) {
    wt = model::namespace_module(*this, name).register_parameter("weight", torch::ones({n}));
    bt = model::namespace_module(*this, name).register_parameter("bias", torch::zeros({n}));
  };
  norm("norm_queries", w, nq_w_, nq_b_);
  norm("norm_features", o.in, nk_w_, nk_b_);
  auto lin = [&](const char* name, int64_t in, torch::Tensor& wt, torch::Tensor& bt) {
    wt = model::namespace_module(*this, name).register_parameter("weight", linear_init(w, in, gen));
    bt = model::namespace_module(*this, name).register_parameter("bias", bias_init(w, in, gen));
  };
  lin("attn.q", w, wq_, bq_);
  lin("attn.k", o.in, wk_, bk_);
  lin("attn.v", o.in, wv_, bv_);
  lin("attn.o", w, wo_, bo_);
  norm("norm_post", w, post_w_, post_b_);
}

torch::Tensor AttentionalPoolerImpl::forward(const torch::Tensor& features) {
  auto f = as_frames(features, o_.in, "attentional pooler");                          // (B, F, S, in)
  const int64_t b = f.size(0);
  auto x = layer_norm(f.reshape({b, -1, o_.in}).to(wk_.scalar_type()), nk_w_, nk_b_, o_.eps);  // (B, F*S, in)
  auto q = layer_norm(queries_.unsqueeze(0).expand({b, o_.queries, o_.width}), nq_w_, nq_b_, o_.eps);
  return layer_norm(cross_attend(q, x, o_.heads, wq_, bq_, wk_, bk_, wv_, bv_, wo_, bo_), post_w_, post_b_, o_.eps);  // (B, N, w)
}

int64_t AttentionalPoolerImpl::parameter_count(const PoolerOptions& o) {
  const int64_t w = o.width;
  return o.queries * w + 2 * w + 2 * o.in + 2 * (w * w + w) + 2 * (w * o.in + w) + 2 * w;
}

}  // namespace vadapt::connectors

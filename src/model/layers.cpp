// Leaf modules: Projection, Embedding, RMSNorm (HF LlamaRMSNorm numerics), LayerNorm.
#include "model/layers.h"

namespace vadapt::model {

ProjectionImpl::ProjectionImpl(int64_t in, int64_t out, bool with_bias, const torch::TensorOptions& opts)
    : in_features(in), out_features(out) {
  weight = register_parameter("weight", torch::empty({out, in}, opts), false);
  if (with_bias) bias = register_parameter("bias", torch::empty({out}, opts), false);
}

torch::Tensor ProjectionImpl::base_forward(const torch::Tensor& x) const {
  if (is_nf4()) return torch::nn::functional::linear(x, nf4_dequantize(nf4_, x.scalar_type()), bias);  // (..., out)
  return torch::nn::functional::linear(x, weight, bias);  // (..., out)
}

void ProjectionImpl::set_nf4(Nf4Weight q, torch::ScalarType dtype) {
  dense_dtype_ = dtype;
  nf4_ = std::move(q);
  torch::NoGradGuard ng;
  weight.set_data(torch::empty({0}, weight.options()));
}

void ProjectionImpl::quantize_nf4(Nf4DoubleQuant dq) {
  if (is_nf4()) return;
  set_nf4(nf4_quantize(weight, dq), weight.scalar_type());
}

void ProjectionImpl::dequantize() {
  if (!is_nf4()) return;
  torch::NoGradGuard ng;
  weight.set_data(dense_weight());
  nf4_ = Nf4Weight{};
}

torch::Tensor ProjectionImpl::dense_weight() const { return is_nf4() ? nf4_dequantize(nf4_, dense_dtype_) : weight; }

torch::Tensor ProjectionImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = base_forward(x);  // (..., out)
  for (const auto& a : adapters_) y = a->apply(x, y);
  return y;
}

EmbeddingImpl::EmbeddingImpl(int64_t num, int64_t dim, const torch::TensorOptions& opts) {
  weight = register_parameter("weight", torch::empty({num, dim}, opts), false);
}

torch::Tensor EmbeddingImpl::forward(const torch::Tensor& ids) {
  return torch::embedding(weight, ids);  // (B, T, dim)
}

RMSNormImpl::RMSNormImpl(int64_t dim, double e, const torch::TensorOptions& opts) : eps(e) {
  weight = register_parameter("weight", torch::empty({dim}, opts), false);
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat32);                                     // (..., d)
  auto var = xf.pow(2).mean(-1, /*keepdim=*/true);                     // (..., 1)
  // The weight in the activations' dtype: a trained norm (LLaMA-Adapter V2) keeps fp32 weights
  // beside a half-precision model without changing the stream's dtype.
  return weight.to(x.scalar_type()) * (xf * torch::rsqrt(var + eps)).to(x.scalar_type());  // (..., d)
}

LayerNormImpl::LayerNormImpl(int64_t dim, double e, const torch::TensorOptions& opts) : eps(e) {
  weight = register_parameter("weight", torch::empty({dim}, opts), false);
  bias = register_parameter("bias", torch::empty({dim}, opts), false);
}

torch::Tensor LayerNormImpl::forward(const torch::Tensor& x) {
  return torch::layer_norm(x, {weight.size(0)}, weight, bias, eps);  // (..., d)
}

void init_normal(torch::nn::Module& m, uint64_t seed, double std) {
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& p : m.named_parameters(true)) {
    auto t = torch::empty(p.value().sizes(), torch::TensorOptions().dtype(torch::kFloat32));
    t.normal_(0.0, std, gen);
    const std::string& n = p.key();
    bool is_norm = n.find("norm") != std::string::npos || n.find("layrnorm") != std::string::npos;
    if (is_norm && n.size() > 6 && n.compare(n.size() - 6, 6, "weight") == 0) t.add_(1.0);
    p.value().copy_(t);
  }
}

}  // namespace vadapt::model

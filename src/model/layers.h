// Leaf modules of the frozen models, with parameters under the HF names and allocated
// uninitialised in the requested dtype/device (weights always come from a checkpoint or from
// init_normal): Projection (Linear with the projection-output seam), Embedding, RMSNorm, LayerNorm.
#pragma once

#include <torch/torch.h>

#include "model/nf4.h"
#include "model/seams.h"

namespace vadapt::model {

class ProjectionImpl : public torch::nn::Module {
 public:
  ProjectionImpl(int64_t in_features, int64_t out_features, bool bias, const torch::TensorOptions& opts);
  // x (..., in) -> (..., out)
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor base_forward(const torch::Tensor& x) const;  // without adapters

  void add_adapter(std::shared_ptr<ProjectionAdapter> a) { adapters_.push_back(std::move(a)); }
  void clear_adapters() { adapters_.clear(); }
  const std::vector<std::shared_ptr<ProjectionAdapter>>& adapters() const { return adapters_; }

  // Stores the frozen weight as NF4 (QLoRA); forward dequantises on the fly. The "weight"
  // parameter is emptied; the bias stays.
  void quantize_nf4(Nf4DoubleQuant dq = Nf4DoubleQuant::kLinear8);
  // Takes an already quantised weight (a bitsandbytes checkpoint) in `dtype` for the dense form.
  void set_nf4(Nf4Weight q, torch::ScalarType dtype);
  bool is_nf4() const { return nf4_.numel > 0; }
  void dequantize();  // back to a dense weight
  const Nf4Weight& nf4() const { return nf4_; }
  // The dense weight (dequantised if stored as NF4).
  torch::Tensor dense_weight() const;

  int64_t in_features;
  int64_t out_features;
  torch::Tensor weight;  // (out, in)
  torch::Tensor bias;    // (out) or undefined

 private:
  std::vector<std::shared_ptr<ProjectionAdapter>> adapters_;
  Nf4Weight nf4_;
  torch::ScalarType dense_dtype_ = torch::kFloat32;
};
TORCH_MODULE(Projection);

class EmbeddingImpl : public torch::nn::Module {
 public:
  EmbeddingImpl(int64_t num, int64_t dim, const torch::TensorOptions& opts);
  torch::Tensor forward(const torch::Tensor& ids);  // (B, T) -> (B, T, dim)
  torch::Tensor weight;                             // (num, dim)
};
TORCH_MODULE(Embedding);

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps, const torch::TensorOptions& opts);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

class LayerNormImpl : public torch::nn::Module {
 public:
  LayerNormImpl(int64_t dim, double eps, const torch::TensorOptions& opts);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  torch::Tensor bias;
  double eps;
};
TORCH_MODULE(LayerNorm);

// Fills every parameter of `m` with N(0, std) (norm weights with 1 + N(0, std)), deterministic
// in `seed` and the parameter names. Used for tiny random fixtures and benchmarks.
void init_normal(torch::nn::Module& m, uint64_t seed, double std = 0.02);

}  // namespace vadapt::model

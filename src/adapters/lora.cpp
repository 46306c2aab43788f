// LoRA forward and weight delta.
#include "adapters/lora.h"

#include <cmath>

#include "model/module_path.h"

namespace vadapt::adapters {

LoraImpl::LoraImpl(int64_t in, int64_t out, const LoraOptions& o, const torch::TensorOptions& opts)
    : scaling_(o.alpha / (o.rslora ? std::sqrt(static_cast<double>(o.r)) : static_cast<double>(o.r))), dropout_(o.dropout) {
  auto fopts = opts.dtype(torch::kFloat32);  // trainable parameters stay fp32
  auto a = torch::empty({o.r, in}, fopts);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));  // kaiming_uniform(a=sqrt(5))
  torch::NoGradGuard ng;
  a.uniform_(-bound, bound);
  A = model::namespace_module(*this, "lora_A").register_parameter("weight", a);
  B = model::namespace_module(*this, "lora_B").register_parameter("weight", torch::zeros({out, o.r}, fopts));
}

torch::Tensor LoraImpl::apply(const torch::Tensor& x, torch::Tensor y) {
  auto h = x.to(A.scalar_type());
  if (is_training() && dropout_ > 0) h = torch::dropout(h, dropout_, true);
  auto d = torch::nn::functional::linear(torch::nn::functional::linear(h, A), B);  // (..., out)
  return y + (d * scaling_).to(y.scalar_type());
}

torch::Tensor LoraImpl::delta() const { return torch::matmul(B, A) * scaling_; }  // (out, in)

}  // namespace vadapt::adapters

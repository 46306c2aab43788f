// LLaVA projector forward and initialisation.
#include "connectors/projector.h"

#include <cmath>

#include "common/error.h"
#include "connectors/linear_init.h"

namespace vadapt::connectors {

ProjectorImpl::ProjectorImpl(std::string type, int64_t c, int64_t d, uint64_t seed, bool standardize) : type_(std::move(type)) {
  auto gen = at::detail::createCPUGenerator(seed);
  if (standardize) {
    mean_ = register_parameter("feature_mean", torch::zeros({c}), /*requires_grad=*/false);
    std_ = register_parameter("feature_std", torch::ones({c}), /*requires_grad=*/false);
  }
  if (type_ == "linear") {
    fc1 = trainable_linear(c, d, "default", gen);
    register_parameter("weight", fc1->weight);
    register_parameter("bias", fc1->bias);
  } else if (type_ == "mlp2x_gelu") {
    fc1 = register_module("0", trainable_linear(c, d, "default", gen));
    fc2 = register_module("2", trainable_linear(d, d, "default", gen));
  } else if (type_ == "identity") {
    if (c != d) throw VadaptError(cat("identity projector needs equal widths, got vision ", c, " and LLM ", d));
  } else {
    throw VadaptError(cat("unknown projector '", type_, "' (linear, mlp2x_gelu, identity)"));
  }
}

void ProjectorImpl::set_feature_stats(const torch::Tensor& mean, const torch::Tensor& std) {
  if (!mean_.defined()) throw VadaptError("projector: feature statistics need feature_norm: standardize");
  torch::NoGradGuard ng;
  mean_.copy_(mean);
  std_.copy_(std.clamp_min(1e-6));
}

torch::Tensor ProjectorImpl::forward(const torch::Tensor& x_in) {
  auto x = mean_.defined() ? (x_in - mean_) / std_ : x_in;  // (B, N, C)
  if (type_ == "identity") return x;
  auto h = fc1(x.to(fc1->weight.scalar_type()));  // (B, N, d)
  if (type_ == "mlp2x_gelu") h = fc2(torch::gelu(h));  // (B, N, d)
  return h;
}

int64_t ProjectorImpl::parameter_count(const std::string& type, int64_t c, int64_t d) {
  if (type == "linear") return c * d + d;
  if (type == "mlp2x_gelu") return c * d + d + d * d + d;
  if (type == "identity") return 0;
  throw VadaptError(cat("unknown projector '", type, "' (linear, mlp2x_gelu, identity)"));
}

}  // namespace vadapt::connectors

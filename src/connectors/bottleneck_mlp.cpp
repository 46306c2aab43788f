// Bottleneck MLP: initialisation and forward.
#include "connectors/bottleneck_mlp.h"

#include <cmath>

#include "common/error.h"

namespace vadapt::connectors {
namespace {
model::Projection make_linear(int64_t in, int64_t out, const std::string& init, at::Generator& gen) {
  model::Projection p(in, out, true, torch::TensorOptions().dtype(torch::kFloat32));
  torch::NoGradGuard ng;
  if (init == "xavier") {
    const double bound = std::sqrt(6.0 / static_cast<double>(in + out));
    p->weight.uniform_(-bound, bound, gen);
    p->bias.zero_();
  } else {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));  // nn.Linear's default
    p->weight.uniform_(-bound, bound, gen);
    p->bias.uniform_(-bound, bound, gen);
  }
  p->weight.set_requires_grad(true);
  p->bias.set_requires_grad(true);
  return p;
}
}  // namespace

BottleneckMlpImpl::BottleneckMlpImpl(int64_t in, int64_t hidden, int64_t out, std::string act, const std::string& init, uint64_t seed)
    : act_(std::move(act)) {
  if (act_ != "gelu" && act_ != "silu") throw VadaptError(cat("bottleneck MLP: act must be gelu or silu, got '", act_, "'"));
  if (init != "default" && init != "xavier") throw VadaptError(cat("bottleneck MLP: init must be default or xavier, got '", init, "'"));
  if (in <= 0 || hidden <= 0 || out <= 0) throw VadaptError(cat("bottleneck MLP: widths must be positive, got ", in, ", ", hidden, ", ", out));
  auto gen = at::detail::createCPUGenerator(seed);
  fc1 = register_module("0", make_linear(in, hidden, init, gen));
  fc2 = register_module("2", make_linear(hidden, out, init, gen));
}

torch::Tensor BottleneckMlpImpl::forward(const torch::Tensor& x) {
  auto h = fc1(x.to(fc1->weight.scalar_type()));         // (..., hidden)
  h = act_ == "gelu" ? torch::gelu(h) : torch::silu(h);  // (..., hidden)
  return fc2(h);                                         // (..., out)
}

}  // namespace vadapt::connectors

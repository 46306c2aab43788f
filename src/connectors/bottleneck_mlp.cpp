// Bottleneck MLP: initialisation and forward.
#include "connectors/bottleneck_mlp.h"

#include "common/error.h"
#include "connectors/linear_init.h"

namespace vadapt::connectors {

BottleneckMlpImpl::BottleneckMlpImpl(int64_t in, int64_t hidden, int64_t out, std::string act, const std::string& init, uint64_t seed)
    : act_(std::move(act)) {
  if (act_ != "gelu" && act_ != "silu") throw VadaptError(cat("bottleneck MLP: act must be gelu or silu, got '", act_, "'"));
  if (in <= 0 || hidden <= 0 || out <= 0) throw VadaptError(cat("bottleneck MLP: widths must be positive, got ", in, ", ", hidden, ", ", out));
  auto gen = at::detail::createCPUGenerator(seed);
  fc1 = register_module("0", trainable_linear(in, hidden, init, gen));
  fc2 = register_module("2", trainable_linear(hidden, out, init, gen));
}

torch::Tensor BottleneckMlpImpl::forward(const torch::Tensor& x) {
  auto h = fc1(x.to(fc1->weight.scalar_type()));         // (..., hidden)
  h = act_ == "gelu" ? torch::gelu(h) : torch::silu(h);  // (..., hidden)
  return fc2(h);                                         // (..., out)
}

}  // namespace vadapt::connectors

// Seeded initialisation of connector linears.
#include "connectors/linear_init.h"

#include <cmath>

#include "common/error.h"

namespace vadapt::connectors {

model::Projection trainable_linear(int64_t in, int64_t out, const std::string& init, at::Generator& gen) {
  if (init != "default" && init != "xavier") throw VadaptError(cat("linear init must be default or xavier, got '", init, "'"));
  model::Projection p(in, out, true, torch::TensorOptions().dtype(torch::kFloat32));
  torch::NoGradGuard ng;
  if (init == "xavier") {
    const double bound = std::sqrt(6.0 / static_cast<double>(in + out));
    p->weight.uniform_(-bound, bound, gen);
    p->bias.zero_();
  } else {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    p->weight.uniform_(-bound, bound, gen);
    p->bias.uniform_(-bound, bound, gen);
  }
  p->weight.set_requires_grad(true);
  p->bias.set_requires_grad(true);
  return p;
}

}  // namespace vadapt::connectors

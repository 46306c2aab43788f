// A trainable fp32 Linear (a Projection with bias) for connectors, initialised from a seeded
// generator: "default" = nn.Linear's (uniform +-1/sqrt(in) for weight and bias), "xavier" =
// xavier-uniform weight and zero bias.
#pragma once

#include <torch/torch.h>

#include <string>

#include "model/layers.h"

namespace vadapt::connectors {

model::Projection trainable_linear(int64_t in, int64_t out, const std::string& init, at::Generator& gen);

}  // namespace vadapt::connectors

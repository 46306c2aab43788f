// Strict checkpoint loading: module names are checkpoint names, so loading is a one-to-one copy.
// Missing, unexpected, wrong-shape and wrong-dtype tensors are all reported at once, by name.
#pragma once

#include <torch/torch.h>

#include <set>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace vadapt::model {

// `ignore` entries match a checkpoint name that ends with them (e.g. "rotary_emb.inv_freq") or
// starts with them when they end in '.' (e.g. "text_model.").
// `skip`: module parameter names (without prefix) that were filled otherwise (e.g. NF4 weights
// read from a bitsandbytes checkpoint): neither loaded nor expected.
void load_strict(torch::nn::Module& m, const io::TensorSource& src, const std::vector<std::string>& ignore = {},
                 const std::string& prefix = "", const std::set<std::string>& skip = {});

struct ParamCount {
  int64_t total = 0;
  int64_t trainable = 0;
  int64_t bytes = 0;
};
ParamCount count_parameters(const torch::nn::Module& m);

}  // namespace vadapt::model

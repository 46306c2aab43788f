// Rotary position embeddings, HF "rotate-half" layout, with linear and llama3 frequency scaling
// (transformers' _compute_llama3_parameters). Tables are float32 and cast to the input dtype.
#pragma once

#include <torch/torch.h>

#include "io/hf_config.h"

namespace vadapt::model {

class Rope {
 public:
  Rope() = default;
  Rope(const io::LlamaConfig& cfg, torch::Device device);
  // x: (B, H, T, D); position_ids: (B, T). Returns x rotated.
  torch::Tensor apply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) const;
  // cos/sin for the given positions: (B, 1, T, D) in `dtype`.
  std::pair<torch::Tensor, torch::Tensor> tables(const torch::Tensor& position_ids, torch::ScalarType dtype) const;
  int64_t max_positions() const { return cos_.defined() ? cos_.size(0) : 0; }
  // The whole (P, D) float32 tables on the CPU (the fast decode path indexes them by position).
  std::pair<torch::Tensor, torch::Tensor> cpu_tables() const {
    if (!cos_.device().is_cpu()) cos_ = cos_.cpu(), sin_ = sin_.cpu();
    return {cos_, sin_};
  }
  static torch::Tensor inv_freq(const io::LlamaConfig& cfg);  // (D/2,) float32

 private:
  // (P, D) float32; they follow the position ids to their device (the model may be moved with
  // Module::to after construction, which knows nothing of these tables).
  mutable torch::Tensor cos_;
  mutable torch::Tensor sin_;
};

}  // namespace vadapt::model

// Next-token selection: greedy (temperature 0) or temperature / top-k / top-p sampling with a
// seeded generator, so the same seed gives the same tokens.
#pragma once

#include <torch/torch.h>

#include <cstdint>

namespace vadapt::generate {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy
  int64_t top_k = 0;         // 0: off
  float top_p = 1.0f;        // 1: off
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // logits (B, V) -> ids (B,) int64 on CPU.
  torch::Tensor sample(const torch::Tensor& logits);

 private:
  SamplingParams p_;
  at::Generator gen_;
};

}  // namespace vadapt::generate

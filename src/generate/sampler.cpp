// Greedy and nucleus / top-k sampling.
#include "generate/sampler.h"

#include "common/error.h"

namespace vadapt::generate {

Sampler::Sampler(const SamplingParams& p) : p_(p), gen_(at::detail::createCPUGenerator(p.seed)) {
  if (p.temperature < 0) throw VadaptError(cat("temperature must be >= 0, got ", p.temperature));
  if (p.top_p <= 0 || p.top_p > 1) throw VadaptError(cat("top_p must be in (0, 1], got ", p.top_p));
  if (p.top_k < 0) throw VadaptError(cat("top_k must be >= 0, got ", p.top_k));
}

torch::Tensor Sampler::sample(const torch::Tensor& logits_in) {
  auto logits = logits_in.to(torch::kCPU, torch::kFloat32);  // (B, V)
  if (p_.temperature == 0.0f) return logits.argmax(-1);      // (B,)
  logits = logits / p_.temperature;
  if (p_.top_k > 0 && p_.top_k < logits.size(-1)) {
    auto kth = std::get<0>(logits.topk(p_.top_k, -1)).select(-1, p_.top_k - 1).unsqueeze(-1);  // (B, 1)
    logits = logits.masked_fill(logits < kth, -std::numeric_limits<float>::infinity());
  }
  auto probs = torch::softmax(logits, -1);  // (B, V)
  if (p_.top_p < 1.0f) {
    auto [sorted, idx] = probs.sort(-1, /*descending=*/true);       // (B, V)
    auto cum = sorted.cumsum(-1);                                   // (B, V)
    auto drop = (cum - sorted) > p_.top_p;                           // keep the smallest set reaching p
    sorted = sorted.masked_fill(drop, 0.0);
    probs = torch::zeros_like(probs).scatter(-1, idx, sorted);      // (B, V)
  }
  return torch::multinomial(probs, 1, false, gen_).squeeze(-1);     // (B,)
}

}  // namespace vadapt::generate

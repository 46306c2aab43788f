// Perceiver resampler (Flamingo, Alayrac et al. 2022; the PaLM2-VAdapter baseline and its 1-layer
// adapter front, arXiv 2402.10896 §3, Table 1): N learned queries read a variable number of
// frozen vision features through M layers of
//   l = l + Attn(q = Wq norm_q(l), k/v = Wk/Wv [norm_kv(x); norm_q(l)])      (no mask, no RoPE)
//   l = l + FFN(LN(l))                                                       (GELU, mult 4)
// x = input_proj(features) + time_embedding[frame] (frames of a video / multi-image sample share
// one embedding per frame). The paper's Table 1 choices are options: norms separate (default) |
// shared | none, final LayerNorm off (default) | on, FFN on | off, time embedding on | off.
// Projections without bias (Flamingo); queries and the time embedding N(0, 0.02), linears
// nn.Linear's default, LayerNorms (1, 0); seeded.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace vadapt::connectors {

struct PerceiverOptions {
  int64_t in = 768;          // width of the vision features
  int64_t width = 768;       // query / hidden width
  int64_t queries = 256;     // N
  int64_t layers = 6;        // M
  int64_t heads = 12;
  int64_t ffn_mult = 4;
  int64_t max_frames = 8;    // rows of the time embedding
  std::string norms = "separate";  // separate | shared | none
  bool final_norm = false;
  bool ffn = true;
  bool time_embedding = true;
  double eps = 1e-5;
  void validate(const std::string& where) const;
};

class PerceiverResamplerImpl : public torch::nn::Module {
 public:
  PerceiverResamplerImpl(const PerceiverOptions& o, uint64_t seed);
  // (B, S, in) one frame, or (B, F, S, in) F frames -> (B, queries, width).
  torch::Tensor forward(const torch::Tensor& features);
  const PerceiverOptions& options() const { return o_; }
  static int64_t parameter_count(const PerceiverOptions& o);

 private:
  struct Layer {
    torch::Tensor nq_w, nq_b, nkv_w, nkv_b, wq, wk, wv, wo, nf_w, nf_b, fc1_w, fc1_b, fc2_w, fc2_b;
  };
  PerceiverOptions o_;
  torch::Tensor queries_, in_w_, in_b_, time_, final_w_, final_b_;
  std::vector<Layer> layers_;
};
TORCH_MODULE(PerceiverResampler);

// CoCa's attentional pooler (Yu et al. 2022; PaLM2-VAdapter stage 1 attaches the tiny LM to the
// vision encoder through one): N learned queries, one multi-head cross-attention to the
// features, no residual and no FFN,
//   out = LN_post(MHA(q = LN_q(Q), k = v = LN_k(x)))     (q/k/v/o with bias, k/v read width `in`)
// Frames of a multi-image sample are attended together (no time embedding). Queries N(0, 0.02),
// linears nn.Linear's default, LayerNorms (1, 0); seeded.
struct PoolerOptions {
  int64_t in = 768, width = 768, queries = 256, heads = 12;
  double eps = 1e-5;
  void validate(const std::string& where) const;
};

class AttentionalPoolerImpl : public torch::nn::Module {
 public:
  AttentionalPoolerImpl(const PoolerOptions& o, uint64_t seed);
  // (B, S, in) or (B, F, S, in) -> (B, queries, width).
  torch::Tensor forward(const torch::Tensor& features);
  const PoolerOptions& options() const { return o_; }
  static int64_t parameter_count(const PoolerOptions& o);

 private:
  PoolerOptions o_;
  torch::Tensor queries_, nq_w_, nq_b_, nk_w_, nk_b_, wq_, bq_, wk_, bk_, wv_, bv_, wo_, bo_, post_w_, post_b_;
};
TORCH_MODULE(AttentionalPooler);

}  // namespace vadapt::connectors

// Rotary embedding tables and application (rotate-half), with llama3 / linear scaling.
#include "model/rope.h"

#include <cmath>

namespace vadapt::model {

torch::Tensor Rope::inv_freq(const io::LlamaConfig& cfg) {
  const int64_t d = cfg.head_dim;
  auto idx = torch::arange(0, d, 2, torch::kFloat64);                       // (D/2,)
  auto inv = 1.0 / torch::pow(torch::full({}, cfg.rope_theta, torch::kFloat64), idx / static_cast<double>(d));
  if (cfg.rope_scaling && cfg.rope_scaling->rope_type == "llama3") {
    const auto& r = *cfg.rope_scaling;
    const double low_wavelen = r.original_max_position_embeddings / r.low_freq_factor;
    const double high_wavelen = r.original_max_position_embeddings / r.high_freq_factor;
    auto wavelen = 2 * M_PI / inv;
    auto scaled = torch::where(wavelen > low_wavelen, inv / r.factor, inv);
    auto smooth = (r.original_max_position_embeddings / wavelen - r.low_freq_factor) /
                  (r.high_freq_factor - r.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
    auto is_medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen);
    inv = torch::where(is_medium, smoothed, scaled);
  }
  return inv.to(torch::kFloat32);
}

Rope::Rope(const io::LlamaConfig& cfg, torch::Device device) {
  auto inv = inv_freq(cfg);                                                    // (D/2,)
  auto pos = torch::arange(cfg.max_position_embeddings, torch::kFloat32);     // (P,)
  if (cfg.rope_scaling && cfg.rope_scaling->rope_type == "linear") pos = pos / cfg.rope_scaling->factor;
  auto freqs = torch::outer(pos, inv);                                         // (P, D/2)
  auto emb = torch::cat({freqs, freqs}, -1);                                   // (P, D)
  cos_ = emb.cos().to(device);
  sin_ = emb.sin().to(device);
}

std::pair<torch::Tensor, torch::Tensor> Rope::tables(const torch::Tensor& position_ids, torch::ScalarType dtype) const {
  if (cos_.device() != position_ids.device()) {
    cos_ = cos_.to(position_ids.device());
    sin_ = sin_.to(position_ids.device());
  }
  auto cos = cos_.index_select(0, position_ids.reshape(-1)).view({position_ids.size(0), 1, position_ids.size(1), -1});
  auto sin = sin_.index_select(0, position_ids.reshape(-1)).view({position_ids.size(0), 1, position_ids.size(1), -1});
  return {cos.to(dtype), sin.to(dtype)};  // (B, 1, T, D)
}

torch::Tensor Rope::apply(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) const {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half);                 // (B, H, T, D/2)
  auto x2 = x.narrow(-1, half, half);              // (B, H, T, D/2)
  auto rotated = torch::cat({-x2, x1}, -1);        // (B, H, T, D)
  return x * cos + rotated * sin;                  // (B, H, T, D)
}

}  // namespace vadapt::model

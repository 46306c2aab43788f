// LLaMA-Adapter V2's bias / scale tuning (Gao et al. 2023, arXiv 2304.15010, eq. 1-2) on the
// projection-output seam, in its three published forms:
//   scale_bias   y = s * (W x + b)      the paper (and litgpt's AdapterV2Linear)
//   input_scale  y = W (x * s) + b      the released chat-65B code (s over the input features)
//   bias         y = W x + b            the released multimodal code (no scale)
// b starts at 0 and s at 1, so the adapted model equals the base model at step 0. Parameters
// `adapter_bias` (out) and `adapter_scale` (out, or in for input_scale) are fp32. fold() writes
// the adapter into the projection's weight and bias (creating the bias when the base has none),
// after which the projection alone computes what projection + adapter computed.
#pragma once

#include <torch/torch.h>

#include <string>

#include "model/layers.h"
#include "model/seams.h"

namespace vadapt::adapters {

enum class BiasScaleForm { kScaleBias, kInputScale, kBias };
BiasScaleForm parse_bias_scale_form(const std::string& s, const std::string& where);
std::string bias_scale_form_name(BiasScaleForm f);

class BiasScaleImpl : public torch::nn::Module, public model::ProjectionAdapter {
 public:
  // `proj` is the projection it attaches to (input_scale reads its weight); it must outlive this.
  BiasScaleImpl(model::ProjectionImpl& proj, BiasScaleForm form);
  torch::Tensor apply(const torch::Tensor& x, torch::Tensor y) override;
  // Folds into the projection (weight and bias) and leaves the adapter at its identity values.
  void fold();
  BiasScaleForm form() const { return form_; }
  // Parameters per projection (in, out) from a config alone.
  static int64_t parameter_count(int64_t in, int64_t out, BiasScaleForm form);

  torch::Tensor bias;   // (out)
  torch::Tensor scale;  // (out) scale_bias, (in) input_scale; undefined for bias

 private:
  model::ProjectionImpl* proj_;
  BiasScaleForm form_;
};
TORCH_MODULE(BiasScale);

}  // namespace vadapt::adapters

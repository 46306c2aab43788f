// Bias / scale tuning: forward in the three forms and folding into the base projection.
#include "adapters/bias_scale.h"

#include "common/error.h"

namespace vadapt::adapters {

BiasScaleForm parse_bias_scale_form(const std::string& s, const std::string& where) {
  if (s == "scale_bias") return BiasScaleForm::kScaleBias;
  if (s == "input_scale") return BiasScaleForm::kInputScale;
  if (s == "bias") return BiasScaleForm::kBias;
  throw VadaptError(cat(where, ": bias form must be scale_bias (paper: s*(Wx+b)), input_scale (chat-65B code: W(x*s)+b) or bias (released multimodal code), got '", s, "'"));
}

std::string bias_scale_form_name(BiasScaleForm f) {
  switch (f) {
    case BiasScaleForm::kScaleBias: return "scale_bias";
    case BiasScaleForm::kInputScale: return "input_scale";
    case BiasScaleForm::kBias: return "bias";
  }
  return "?";
}

BiasScaleImpl::BiasScaleImpl(model::ProjectionImpl& proj, BiasScaleForm form) : proj_(&proj), form_(form) {
  auto o = torch::TensorOptions().dtype(torch::kFloat32).device(proj.weight.device());
  bias = register_parameter("adapter_bias", torch::zeros({proj.out_features}, o));
  if (form == BiasScaleForm::kScaleBias) scale = register_parameter("adapter_scale", torch::ones({proj.out_features}, o));
  if (form == BiasScaleForm::kInputScale) scale = register_parameter("adapter_scale", torch::ones({proj.in_features}, o));
}

torch::Tensor BiasScaleImpl::apply(const torch::Tensor& x, torch::Tensor y) {
  const auto dt = y.scalar_type();
  switch (form_) {
    case BiasScaleForm::kScaleBias:
      return (y + bias.to(dt)) * scale.to(dt);  // s * (W x + b_base + b)
    case BiasScaleForm::kInputScale: {
      // W (x * s) = W x + W (x * (s - 1)): the second term is exactly zero while s = 1.
      auto dx = x * (scale - 1).to(x.scalar_type());                                    // (..., in)
      return y + torch::nn::functional::linear(dx, proj_->dense_weight().to(x.scalar_type())).to(dt) + bias.to(dt);
    }
    case BiasScaleForm::kBias:
      return y + bias.to(dt);
  }
  return y;
}

void BiasScaleImpl::fold() {
  torch::NoGradGuard ng;
  auto& p = *proj_;
  p.dequantize();
  const auto dt = p.weight.scalar_type();
  auto w = p.weight.to(torch::kFloat32);                                            // (out, in)
  auto b = p.bias.defined() ? p.bias.to(torch::kFloat32) : torch::zeros({p.out_features}, w.options());  // (out)
  switch (form_) {
    case BiasScaleForm::kScaleBias:
      w = w * scale.unsqueeze(1), b = (b + bias) * scale;
      break;
    case BiasScaleForm::kInputScale:
      w = w * scale.unsqueeze(0), b = b + bias;
      break;
    case BiasScaleForm::kBias:
      b = b + bias;
      break;
  }
  p.weight.set_data(w.to(dt));
  if (p.bias.defined()) p.bias.set_data(b.to(dt));
  else p.bias = p.register_parameter("bias", b.to(dt), false);
  bias.zero_();
  if (scale.defined()) scale.fill_(1.0);
}

int64_t BiasScaleImpl::parameter_count(int64_t in, int64_t out, BiasScaleForm form) {
  switch (form) {
    case BiasScaleForm::kScaleBias: return 2 * out;
    case BiasScaleForm::kInputScale: return out + in;
    case BiasScaleForm::kBias: return out;
  }
  return 0;
}

}  // namespace vadapt::adapters

// Autocast guard over the two libtorch autocast APIs, and the fp16 loss scaler.
#include "train/precision.h"

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include "common/error.h"

namespace vadapt::train {

Precision parse_precision(const std::string& s, const std::string& what) {
  if (s == "fp32" || s == "float32") return Precision::kFp32;
  if (s == "bf16" || s == "bfloat16") return Precision::kBf16;
  if (s == "fp16" || s == "float16") return Precision::kFp16;
  throw VadaptError(cat(what, ": expected fp32, bf16 or fp16, got '", s, "'"));
}

std::string precision_name(Precision p) {
  return p == Precision::kBf16 ? "bf16" : p == Precision::kFp16 ? "fp16" : "fp32";
}

namespace {
#if TORCH_VERSION_MAJOR >= 2 && TORCH_VERSION_MINOR >= 4 || TORCH_VERSION_MAJOR >= 3
bool autocast_enabled(bool cuda) { return at::autocast::is_autocast_enabled(cuda ? at::kCUDA : at::kCPU); }
void set_autocast(bool cuda, bool on) { at::autocast::set_autocast_enabled(cuda ? at::kCUDA : at::kCPU, on); }
at::ScalarType autocast_dtype(bool cuda) { return at::autocast::get_autocast_dtype(cuda ? at::kCUDA : at::kCPU); }
void set_dtype(bool cuda, at::ScalarType t) { at::autocast::set_autocast_dtype(cuda ? at::kCUDA : at::kCPU, t); }
#else
bool autocast_enabled(bool cuda) { return cuda ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled(); }
void set_autocast(bool cuda, bool on) { cuda ? at::autocast::set_enabled(on) : at::autocast::set_cpu_enabled(on); }
at::ScalarType autocast_dtype(bool cuda) { return cuda ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype(); }
void set_dtype(bool cuda, at::ScalarType t) { cuda ? at::autocast::set_autocast_gpu_dtype(t) : at::autocast::set_autocast_cpu_dtype(t); }
#endif
}  // namespace

AutocastGuard::AutocastGuard(torch::Device device, Precision p) {
  if (p == Precision::kFp32) return;
  if (!device.is_cuda() && !device.is_cpu()) throw VadaptError(cat("autocast: unsupported device ", device.str()));
  cuda_ = device.is_cuda();
  if (!cuda_ && p == Precision::kFp16)
    throw VadaptError("precision fp16 needs a CUDA device (CPU autocast computes in bf16); use bf16 or fp32 on CPU");
  prev_enabled_ = autocast_enabled(cuda_);
  prev_dtype_ = autocast_dtype(cuda_);
  set_autocast(cuda_, true);
  set_dtype(cuda_, p == Precision::kBf16 ? at::kBFloat16 : at::kHalf);
  at::autocast::increment_nesting();
  active_ = true;
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  set_autocast(cuda_, prev_enabled_);
  set_dtype(cuda_, prev_dtype_);
}

LossScaler::LossScaler(bool enabled, double init_scale, int64_t growth_interval)
    : enabled_(enabled), scale_(init_scale), growth_interval_(growth_interval) {}

bool LossScaler::unscale_and_check(const std::vector<torch::Tensor>& params) {
  if (!enabled_) return true;
  torch::NoGradGuard ng;
  std::vector<torch::Tensor> finite;
  for (const auto& p : params)
    if (p.grad().defined()) {
      p.grad().mul_(1.0 / scale_);
      finite.push_back(p.grad().isfinite().all());
    }
  if (finite.empty()) return true;
  return torch::stack(finite).all().item<bool>();  // one host sync per step
}

void LossScaler::update(bool stepped) {
  if (!enabled_) return;
  if (!stepped) {
    scale_ = std::max(1.0, scale_ * 0.5);
    good_steps_ = 0;
    ++skipped_;
  } else if (++good_steps_ >= growth_interval_) {
    scale_ *= 2.0;
    good_steps_ = 0;
  }
}

}  // namespace vadapt::train

// Mixed precision for training: autocast (bf16 / fp16 compute, fp32 trainable parameters and
// optimizer state) and dynamic loss scaling for fp16. Works on both the Debian libtorch 1.13
// autocast API and the 2.x one.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace vadapt::train {

enum class Precision { kFp32, kBf16, kFp16 };

// "fp32" | "bf16" | "fp16" (also float32 / bfloat16 / float16); `what` names the field in errors.
Precision parse_precision(const std::string& s, const std::string& what);
std::string precision_name(Precision p);

// Turns autocast on for `device`'s type for the guard's lifetime (a no-op for fp32) and restores
// the previous state after; the autocast weight-cast cache is cleared when the outermost guard ends.
class AutocastGuard {
 public:
  AutocastGuard(torch::Device device, Precision p);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  bool cuda_ = false;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

// Dynamic loss scaling (fp16): the loss is multiplied by scale() before backward; unscale_and_check
// divides the gradients by it and says whether they are all finite. A step with non-finite
// gradients is skipped and halves the scale; `growth_interval` finite steps in a row double it.
class LossScaler {
 public:
  explicit LossScaler(bool enabled, double init_scale = 65536.0, int64_t growth_interval = 2000);
  bool enabled() const { return enabled_; }
  double scale() const { return enabled_ ? scale_ : 1.0; }
  // Returns true when the optimizer may step (all gradients finite after unscaling).
  bool unscale_and_check(const std::vector<torch::Tensor>& params);
  void update(bool stepped);
  int64_t skipped() const { return skipped_; }

 private:
  bool enabled_;
  double scale_;
  int64_t growth_interval_, good_steps_ = 0, skipped_ = 0;
};

}  // namespace vadapt::train

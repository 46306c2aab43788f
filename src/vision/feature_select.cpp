// Feature selection over a vision tower's hidden states.
#include "vision/feature_select.h"

#include "common/error.h"

namespace vadapt::vision {
namespace {
int64_t resolve(int64_t layer, int64_t n) {
  const int64_t idx = layer < 0 ? n + layer : layer;
  if (idx < 0 || idx >= n) throw VadaptError(cat("vision feature layer ", layer, " out of range for ", n, " hidden states"));
  return idx;
}
}  // namespace

FeatureSelect FeatureSelect::patch(int64_t layer) {
  FeatureSelect f;
  f.layer = layer;
  return f;
}

FeatureSelect FeatureSelect::cls_taps(std::vector<int64_t> taps) {
  if (taps.empty()) throw VadaptError("vision feature taps: give at least one layer");
  FeatureSelect f;
  f.kind = Kind::kClsTaps;
  f.taps = std::move(taps);
  return f;
}

FeatureSelect FeatureSelect::final_tokens() {
  FeatureSelect f;
  f.kind = Kind::kFinal;
  return f;
}

torch::Tensor FeatureSelect::select(const VisionOutput& out) const {
  if (kind == Kind::kFinal) {
    if (!out.tokens.defined()) throw VadaptError("vision features 'final': this vision tower gives no final-norm tokens");
    return out.tokens;  // (B, 1+N, P)
  }
  if (kind == Kind::kPatch) return select_patch_features(out, layer);  // (B, N, C)
  const int64_t n = static_cast<int64_t>(out.hidden_states.size());
  std::vector<torch::Tensor> cls;
  for (auto t : taps) cls.push_back(out.hidden_states[resolve(t, n)].select(1, 0));  // (B, C)
  return torch::stack(cls, 1);                                                       // (B, taps, C)
}

void FeatureSelect::validate(int64_t n) const {
  if (kind == Kind::kPatch) resolve(layer, n);
  for (auto t : taps) resolve(t, n);
}

int64_t FeatureSelect::rows(int64_t num_patches) const {
  if (kind == Kind::kFinal) return num_patches + 1;
  return kind == Kind::kPatch ? num_patches : static_cast<int64_t>(taps.size());
}

std::string FeatureSelect::describe() const {
  if (kind == Kind::kPatch) return cat(layer);  // the key LLaVA's caches were written with
  if (kind == Kind::kFinal) return "final";
  std::string s = "cls";
  for (auto t : taps) s += cat(":", t);
  return s;
}

}  // namespace vadapt::vision

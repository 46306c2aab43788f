// Which frozen vision features a method reads (and the feature cache stores):
//   patch      the patch tokens of one hidden-state layer, CLS dropped (LLaVA: layer -2)
//   cls_taps   the CLS token of several hidden-state layers, one row each (LLaMA-Adapter V1's
//              multi-scale global features; LaVIN: blocks 4, 8, ..., 24)
//   final      every token (CLS + patches) after the final norm and the visual projection
//              (LLaMA-Adapter V2's `clip.encode_image`)
// Layers index VisionOutput::hidden_states (0 = embeddings; negative counts from the end).
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

#include "vision/vision_tower.h"

namespace vadapt::vision {

struct FeatureSelect {
  enum class Kind { kPatch, kClsTaps, kFinal } kind = Kind::kPatch;
  int64_t layer = -2;         // kPatch
  std::vector<int64_t> taps;  // kClsTaps

  static FeatureSelect patch(int64_t layer);
  static FeatureSelect cls_taps(std::vector<int64_t> taps);
  static FeatureSelect final_tokens();
  // (B, N, C): N = patches (kPatch), taps.size() (kClsTaps) or 1 + patches (kFinal).
  torch::Tensor select(const VisionOutput& out) const;
  // Throws, naming the layer, when a layer is out of range for `num_hidden_states`.
  void validate(int64_t num_hidden_states) const;
  // Rows per image for a tower of `num_patches` patches.
  int64_t rows(int64_t num_patches) const;
  std::string describe() const;  // part of the feature-cache key
};

}  // namespace vadapt::vision

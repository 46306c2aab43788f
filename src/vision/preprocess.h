// Image preprocessing pipelines, selectable by name or read from preprocessor_config.json:
//  clip        HF CLIPImageProcessor: shortest side -> N (bicubic, floor), center crop N (floor)
//  llava_pad   LLaVA expand2square on the CLIP-mean colour, then clip
//  imagenet    LaVIN: square resize N x N bicubic, ImageNet mean/std
//  resize      HF ViTImageProcessor: square resize (bilinear or bicubic), mean/std from config
// All produce float32 (3, N, N) CHW RGB tensors, exact to PIL's numbers.
#pragma once

#include <torch/torch.h>

#include <array>
#include <string>

#include "vision/image.h"
#include "vision/resample.h"

namespace vadapt::vision {

struct PreprocessConfig {
  std::string pipeline = "clip";  // clip | llava_pad | imagenet | resize
  int size = 224;                 // shortest edge (clip) or square side (resize, imagenet)
  int crop = 224;                 // center crop side (clip, llava_pad)
  Filter resample = Filter::kBicubic;
  std::array<float, 3> mean{0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std{0.26862954f, 0.26130258f, 0.27577711f};

  // "clip224", "clip336", "llava_pad336", "imagenet224", "vit224" and pipeline names with a size.
  static PreprocessConfig named(const std::string& name);
  // Reads preprocessor_config.json (CLIPImageProcessor or ViTImageProcessor).
  static PreprocessConfig from_hf(const std::string& path);
  std::string describe() const;
};

// The uint8 image right before rescale/normalise (tests compare it bit-exactly with PIL).
Image prepare_uint8(const Image& img, const PreprocessConfig& cfg);
// Full pipeline: (3, N, N) float32.
torch::Tensor preprocess(const Image& img, const PreprocessConfig& cfg);

}  // namespace vadapt::vision

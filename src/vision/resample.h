// Pillow's 8-bit separable resampler (Resample.c), re-stated from the algorithm description in
// shared/golden/preprocess.pil.json: horizontal pass then vertical pass through a uint8
// intermediate, antialiased support scaled by the downscale factor, 22-bit fixed-point weights.
// Bit-identical to PIL's Image.resize for BILINEAR and BICUBIC.
#pragma once

#include "vision/image.h"

namespace vadapt::vision {

enum class Filter { kBilinear, kBicubic };

Image resize_pil(const Image& in, int out_w, int out_h, Filter filter);

}  // namespace vadapt::vision

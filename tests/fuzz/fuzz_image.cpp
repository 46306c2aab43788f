// libFuzzer target: the image decoders (JPEG through libjpeg-turbo, PNG / GIF / BMP through stb,
// WebP through libwebp) behind vision::decode_image_bytes. Every input must decode or raise
// VadaptError; ASan + UBSan catch memory errors. stb is compiled into this target (stb_impl.cpp)
// so that its code is instrumented too.
#include <cstddef>
#include <cstdint>

#include "common/error.h"
#include "vision/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  vadapt::vision::DecodeOptions o;
  o.max_pixels = 1 << 16;  // bound the work per input (the default limit is Pillow's 89 M; the check is the same code)
  for (const bool truncated : {false, true}) {
    o.allow_truncated = truncated;
    try {
      auto [w, h] = vadapt::vision::image_size(data, size, "input");
      (void)w, (void)h;
      auto img = vadapt::vision::decode_image_bytes(data, size, "input", o);
      if (img.rgb.size() != static_cast<size_t>(img.width) * img.height * 3) __builtin_trap();
    } catch (const vadapt::VadaptError&) {
    }
  }
  return 0;
}

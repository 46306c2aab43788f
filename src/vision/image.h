// Image decoding to 8-bit RGB, with the format detected from the bytes (JPEG, PNG, WebP, GIF,
// BMP), never the extension. Mode conversion follows PIL's convert("RGB"): alpha is dropped
// without compositing, palette images use the palette colours (tRNS ignored), L/LA replicate
// grey, CMYK uses PIL's formula (Adobe-inverted CMYK handled as PIL does).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace vadapt::vision {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // (H, W, 3) row-major
  std::string format;        // "JPEG", "PNG", ...
  uint8_t at(int y, int x, int c) const { return rgb[(static_cast<size_t>(y) * width + x) * 3 + c]; }
};

// Limits of decoding. The pixel limit is checked from the header, before any pixel is decoded
// (decompression bombs); 0 = none. Truncated data is an error unless allow_truncated (then a
// warning, and libjpeg's grey fill, as Pillow's LOAD_TRUNCATED_IMAGES). EXIF orientation is not
// applied, as the reference preprocessors (CLIP's, LLaVA's) do not apply it either.
struct DecodeOptions {
  int64_t max_pixels = 89478485;  // Pillow's MAX_IMAGE_PIXELS
  bool allow_truncated = false;
};
// The process-wide options decode_image_file / decode_image_bytes use (the CLI sets them).
DecodeOptions& default_decode_options();

Image decode_image_file(const std::string& path);
Image decode_image_bytes(const uint8_t* data, size_t size, const std::string& label);
Image decode_image_bytes(const uint8_t* data, size_t size, const std::string& label, const DecodeOptions& o);
// Width and height read from the header alone; throws naming `label` for data of no known format.
std::pair<int64_t, int64_t> image_size(const uint8_t* data, size_t size, const std::string& label);
// Writes 8-bit RGB as PNG (tests, synthetic data).
void write_png(const std::string& path, const Image& img);

}  // namespace vadapt::vision

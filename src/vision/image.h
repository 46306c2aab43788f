// Image decoding to 8-bit RGB, with the format detected from the bytes (JPEG, PNG, WebP, GIF,
// BMP), never the extension. Mode conversion follows PIL's convert("RGB"): alpha is dropped
// without compositing, palette images use the palette colours (tRNS ignored), L/LA replicate
// grey, CMYK uses PIL's formula (Adobe-inverted CMYK handled as PIL does).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace vadapt::vision {

struct Image {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> rgb;  // (H, W, 3) row-major
  std::string format;        // "JPEG", "PNG", ...
  uint8_t at(int y, int x, int c) const { return rgb[(static_cast<size_t>(y) * width + x) * 3 + c]; }
};

Image decode_image_file(const std::string& path);
Image decode_image_bytes(const uint8_t* data, size_t size, const std::string& label);
// Writes 8-bit RGB as PNG (tests, synthetic data).
void write_png(const std::string& path, const Image& img);

}  // namespace vadapt::vision

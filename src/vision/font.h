// TrueType text rendering onto RGB images through stb_truetype (Debian libstb): the words of the
// synthetic dataset and the labels of training-curve plots.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "vision/image.h"

struct stbtt_fontinfo;

namespace vadapt::vision {

// Debian's fonts-dejavu-core.
inline constexpr const char* kDefaultFont = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";

class Font {
 public:
  explicit Font(const std::string& path);
  ~Font();
  // Draws black text with its left edge at x and its top (ascent) at y, `height` pixels tall;
  // each pixel becomes min(pixel, 255 - coverage), so text on white is exact grey levels.
  void draw(Image& img, const std::string& text, int x, int y, int height) const;
  // Advance width in pixels of `text` at `height`.
  int width(const std::string& text, int height) const;

 private:
  std::string path_;
  std::vector<unsigned char> data_;
  std::unique_ptr<stbtt_fontinfo> info_;
};

// The font at `path`, loaded once and kept (errors name the file).
const Font& font_at(const std::string& path);

}  // namespace vadapt::vision

// stb_truetype glyph rasterisation onto vision::Image.
#include "vision/font.h"

#include <stb_truetype.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>

#include "common/error.h"
#include "io/atomic_file.h"

namespace vadapt::vision {

Font::Font(const std::string& path) : path_(path), info_(std::make_unique<stbtt_fontinfo>()) {
  auto text = io::read_text_file(path);
  data_.assign(text.begin(), text.end());
  int offset = stbtt_GetFontOffsetForIndex(data_.data(), 0);
  if (offset < 0 || !stbtt_InitFont(info_.get(), data_.data(), offset))
    raise(path, "", "not a TrueType font stb_truetype can read (install fonts-dejavu-core or pass --font)");
}

void Font::draw(Image& img, const std::string& text, int x, int y, int height) const {
  float scale = stbtt_ScaleForPixelHeight(info_.get(), static_cast<float>(height));
  int ascent = 0, descent = 0, gap = 0;
  stbtt_GetFontVMetrics(info_.get(), &ascent, &descent, &gap);
  int baseline = y + static_cast<int>(std::lround(ascent * scale));
  double pen = x;
  for (size_t i = 0; i < text.size(); ++i) {
    int cp = static_cast<unsigned char>(text[i]);
    int adv = 0, lsb = 0, x0 = 0, y0 = 0, x1 = 0, y1 = 0;
    stbtt_GetCodepointHMetrics(info_.get(), cp, &adv, &lsb);
    stbtt_GetCodepointBitmapBox(info_.get(), cp, scale, scale, &x0, &y0, &x1, &y1);
    int w = x1 - x0, h = y1 - y0;
    if (w > 0 && h > 0) {
      std::vector<uint8_t> glyph(static_cast<size_t>(w) * h);
      stbtt_MakeCodepointBitmap(info_.get(), glyph.data(), w, h, w, scale, scale, cp);
      int gx = static_cast<int>(std::lround(pen)) + x0, gy = baseline + y0;
      for (int yy = 0; yy < h; ++yy)
        for (int xx = 0; xx < w; ++xx) {
          int px = gx + xx, py = gy + yy;
          if (px < 0 || py < 0 || px >= img.width || py >= img.height) continue;
          uint8_t cov = glyph[static_cast<size_t>(yy) * w + xx];
          for (int c = 0; c < 3; ++c) {
            auto& v = img.rgb[(static_cast<size_t>(py) * img.width + px) * 3 + c];
            v = static_cast<uint8_t>(std::min<int>(v, 255 - cov));
          }
        }
    }
    pen += adv * scale;
    if (i + 1 < text.size()) pen += scale * stbtt_GetCodepointKernAdvance(info_.get(), cp, static_cast<unsigned char>(text[i + 1]));
  }
}

Font::~Font() = default;

int Font::width(const std::string& text, int height) const {
  float scale = stbtt_ScaleForPixelHeight(info_.get(), static_cast<float>(height));
  double pen = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    int cp = static_cast<unsigned char>(text[i]), adv = 0, lsb = 0;
    stbtt_GetCodepointHMetrics(info_.get(), cp, &adv, &lsb);
    pen += adv * scale;
    if (i + 1 < text.size()) pen += scale * stbtt_GetCodepointKernAdvance(info_.get(), cp, static_cast<unsigned char>(text[i + 1]));
  }
  return static_cast<int>(std::lround(pen));
}

const Font& font_at(const std::string& path) {
  static std::mutex mu;
  static std::string loaded;
  static std::unique_ptr<Font> font;
  std::lock_guard<std::mutex> lock(mu);
  if (!font || loaded != path) {
    font = std::make_unique<Font>(path);
    loaded = path;
  }
  return *font;
}

}  // namespace vadapt::vision

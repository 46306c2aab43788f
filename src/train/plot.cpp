// Rasterised line plot of a loss curve.
#include "train/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include "vision/font.h"
#include "vision/image.h"

namespace vadapt::train {
namespace {

struct Canvas {
  vision::Image img;
  Canvas(int w, int h) {
    img.width = w;
    img.height = h;
    img.rgb.assign(static_cast<size_t>(w) * h * 3, 255);
  }
  void put(int x, int y, const uint8_t c[3]) {
    if (x < 0 || y < 0 || x >= img.width || y >= img.height) return;
    for (int k = 0; k < 3; ++k) img.rgb[(static_cast<size_t>(y) * img.width + x) * 3 + k] = c[k];
  }
  void dot(int x, int y, int r, const uint8_t c[3]) {
    for (int dy = -r; dy <= r; ++dy)
      for (int dx = -r; dx <= r; ++dx)
        if (dx * dx + dy * dy <= r * r) put(x + dx, y + dy, c);
  }
  // Thick line by stepping along the longer axis.
  void line(double x0, double y0, double x1, double y1, int r, const uint8_t c[3]) {
    const int n = static_cast<int>(std::max(std::abs(x1 - x0), std::abs(y1 - y0))) + 1;
    for (int i = 0; i <= n; ++i) {
      double t = static_cast<double>(i) / n;
      dot(static_cast<int>(std::lround(x0 + t * (x1 - x0))), static_cast<int>(std::lround(y0 + t * (y1 - y0))), r, c);
    }
  }
};

std::string tick_label(double v) {
  char b[32];
  std::snprintf(b, sizeof b, std::abs(v) >= 1000 || (v != 0 && std::abs(v) < 0.01) ? "%.2g" : "%.3g", v);
  return b;
}

}  // namespace

void write_curve_png(const std::string& path, const std::vector<CurvePoint>& train, const std::vector<CurvePoint>& val,
                     const std::string& title) {
  const int W = 800, H = 480, left = 70, right = 20, top = 40, bottom = 50;
  Canvas cv(W, H);
  double x_min = 0, x_max = 1, y_min = 1e300, y_max = -1e300;
  for (const auto* s : {&train, &val})
    for (const auto& p : *s)
      if (std::isfinite(p.value)) {
        x_max = std::max(x_max, p.step);
        y_min = std::min(y_min, p.value);
        y_max = std::max(y_max, p.value);
      }
  if (y_min > y_max) y_min = 0, y_max = 1;
  if (y_max - y_min < 1e-9) y_min -= 0.5, y_max += 0.5;
  y_min = std::max(0.0, y_min - 0.05 * (y_max - y_min));
  y_max += 0.05 * (y_max - y_min);
  auto X = [&](double s) { return left + (s - x_min) / (x_max - x_min) * (W - left - right); };
  auto Y = [&](double v) { return H - bottom - (v - y_min) / (y_max - y_min) * (H - top - bottom); };
  const uint8_t grid[3] = {225, 225, 225}, axis[3] = {60, 60, 60}, blue[3] = {31, 119, 180}, red[3] = {214, 39, 40};
  const vision::Font* font = nullptr;
  if (std::filesystem::exists(vision::kDefaultFont)) font = &vision::font_at(vision::kDefaultFont);
  for (int i = 0; i <= 5; ++i) {
    double v = y_min + (y_max - y_min) * i / 5.0, s = x_min + (x_max - x_min) * i / 5.0;
    cv.line(left, Y(v), W - right, Y(v), 0, grid);
    cv.line(X(s), top, X(s), H - bottom, 0, grid);
    if (font) {
      auto ly = tick_label(v), lx = tick_label(std::round(s));
      font->draw(cv.img, ly, left - 8 - font->width(ly, 13), static_cast<int>(Y(v)) - 8, 13);
      font->draw(cv.img, lx, static_cast<int>(X(s)) - font->width(lx, 13) / 2, H - bottom + 6, 13);
    }
  }
  cv.line(left, top, left, H - bottom, 0, axis);
  cv.line(left, H - bottom, W - right, H - bottom, 0, axis);
  for (size_t i = 1; i < train.size(); ++i)
    if (std::isfinite(train[i - 1].value) && std::isfinite(train[i].value))
      cv.line(X(train[i - 1].step), Y(train[i - 1].value), X(train[i].step), Y(train[i].value), 1, blue);
  if (train.size() == 1) cv.dot(static_cast<int>(X(train[0].step)), static_cast<int>(Y(train[0].value)), 2, blue);
  for (const auto& p : val)
    if (std::isfinite(p.value)) cv.dot(static_cast<int>(X(p.step)), static_cast<int>(Y(p.value)), 4, red);
  if (font) {
    font->draw(cv.img, title, left, 10, 16);
    font->draw(cv.img, "step", W / 2 - 15, H - 24, 13);
    cv.line(W - 230, 20, W - 205, 20, 1, blue);
    font->draw(cv.img, "train loss", W - 200, 12, 13);
    cv.dot(W - 105, 20, 4, red);
    font->draw(cv.img, "val loss", W - 95, 12, 13);
  }
  vision::write_png(path, cv.img);
}

}  // namespace vadapt::train

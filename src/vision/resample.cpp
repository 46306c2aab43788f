// Fixed-point separable resampling, PIL-exact.
#include "vision/resample.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace vadapt::vision {
namespace {

constexpr int kPrecisionBits = 22;

double kernel(double x, Filter f) {
  x = std::fabs(x);
  if (f == Filter::kBilinear) return x < 1.0 ? 1.0 - x : 0.0;
  constexpr double a = -0.5;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
  if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
  return 0.0;
}

struct Coeffs {
  int taps = 0;
  std::vector<int> start;   // first input index per output index
  std::vector<int> count;   // number of taps used per output index
  std::vector<int32_t> k;   // (out, taps) fixed-point weights
};

Coeffs make_coeffs(int in_size, int out_size, Filter f) {
  const double support_base = f == Filter::kBicubic ? 2.0 : 1.0;
  const double scale = static_cast<double>(in_size) / out_size;
  const double fs = std::max(scale, 1.0);
  const double support = support_base * fs;
  Coeffs c;
  c.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.start.resize(out_size);
  c.count.resize(out_size);
  c.k.assign(static_cast<size_t>(out_size) * c.taps, 0);
  std::vector<double> w(c.taps);
  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    const int n = std::min(xmax - xmin, c.taps);
    double sum = 0.0;
    for (int j = 0; j < n; ++j) {
      w[j] = kernel((j + xmin - center + 0.5) / fs, f);
      sum += w[j];
    }
    for (int j = 0; j < n; ++j) {
      double v = sum != 0.0 ? w[j] / sum : w[j];
      c.k[static_cast<size_t>(i) * c.taps + j] =
          static_cast<int32_t>(v < 0 ? -0.5 + v * (1 << kPrecisionBits) : 0.5 + v * (1 << kPrecisionBits));
    }
    c.start[i] = xmin;
    c.count[i] = n;
  }
  return c;
}

inline uint8_t clip8(int32_t v) {
  v >>= kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

Image horizontal(const Image& in, int out_w, Filter f) {
  Coeffs c = make_coeffs(in.width, out_w, f);
  Image out;
  out.width = out_w;
  out.height = in.height;
  out.format = in.format;
  out.rgb.resize(static_cast<size_t>(out_w) * in.height * 3);
  for (int y = 0; y < in.height; ++y) {
    const uint8_t* row = &in.rgb[static_cast<size_t>(y) * in.width * 3];
    uint8_t* dst = &out.rgb[static_cast<size_t>(y) * out_w * 3];
    for (int x = 0; x < out_w; ++x) {
      const int32_t* k = &c.k[static_cast<size_t>(x) * c.taps];
      int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      const uint8_t* p = row + static_cast<size_t>(c.start[x]) * 3;
      for (int j = 0; j < c.count[x]; ++j) {
        s0 += p[3 * j] * k[j];
        s1 += p[3 * j + 1] * k[j];
        s2 += p[3 * j + 2] * k[j];
      }
      dst[3 * x] = clip8(s0);
      dst[3 * x + 1] = clip8(s1);
      dst[3 * x + 2] = clip8(s2);
    }
  }
  return out;
}

Image vertical(const Image& in, int out_h, Filter f) {
  Coeffs c = make_coeffs(in.height, out_h, f);
  Image out;
  out.width = in.width;
  out.height = out_h;
  out.format = in.format;
  out.rgb.resize(static_cast<size_t>(in.width) * out_h * 3);
  const size_t stride = static_cast<size_t>(in.width) * 3;
  std::vector<int32_t> acc(stride);
  for (int y = 0; y < out_h; ++y) {
    const int32_t* k = &c.k[static_cast<size_t>(y) * c.taps];
    std::fill(acc.begin(), acc.end(), 1 << (kPrecisionBits - 1));
    for (int j = 0; j < c.count[y]; ++j) {
      const uint8_t* row = &in.rgb[static_cast<size_t>(c.start[y] + j) * stride];
      const int32_t kj = k[j];
      for (size_t x = 0; x < stride; ++x) acc[x] += row[x] * kj;
    }
    uint8_t* dst = &out.rgb[static_cast<size_t>(y) * stride];
    for (size_t x = 0; x < stride; ++x) dst[x] = clip8(acc[x]);
  }
  return out;
}

}  // namespace

Image resize_pil(const Image& in, int out_w, int out_h, Filter f) {
  if (out_w <= 0 || out_h <= 0) throw VadaptError(cat("resize to ", out_w, "x", out_h, ": size must be positive"));
  Image cur = in;
  if (out_w != in.width) cur = horizontal(cur, out_w, f);
  if (out_h != in.height) cur = vertical(cur, out_h, f);
  return cur;
}

}  // namespace vadapt::vision

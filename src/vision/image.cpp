// Image decoding: libjpeg-turbo (bit-identical to PIL's JPEG path), libwebp, stb_image for
// PNG / GIF / BMP.
#include "vision/image.h"

#include <jpeglib.h>
#include <stb_image.h>
#include <stb_image_write.h>
#include <webp/decode.h>

#include <csetjmp>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include "common/error.h"
#include "io/atomic_file.h"

namespace vadapt::vision {
namespace {

constexpr int kMaxSide = 32768;
constexpr size_t kMaxPixels = 200u * 1000u * 1000u;

void check_size(int w, int h, const std::string& label) {
  if (w <= 0 || h <= 0) raise(label, "", "image has zero size (", w, "x", h, ")");
  if (w > kMaxSide || h > kMaxSide || static_cast<size_t>(w) * h > kMaxPixels)
    raise(label, "", "image of ", w, "x", h, " pixels is larger than the supported ", kMaxSide, " px per side");
}

struct JpegError {
  jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<JpegError*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  longjmp(err->jump, 1);
}

uint8_t muldiv255(int a, int b) {
  int tmp = a * b + 128;
  return static_cast<uint8_t>(((tmp >> 8) + tmp) >> 8);
}

bool has_adobe_marker(jpeg_decompress_struct& c) { return c.saw_Adobe_marker; }

Image decode_jpeg(const uint8_t* data, size_t size, const std::string& label) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.output_message = [](j_common_ptr) {};
  Image img;
  std::vector<uint8_t> row;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    raise(label, "", "corrupt JPEG: ", err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : (cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB);
  jpeg_start_decompress(&cinfo);
  check_size(static_cast<int>(cinfo.output_width), static_cast<int>(cinfo.output_height), label);
  img.width = static_cast<int>(cinfo.output_width);
  img.height = static_cast<int>(cinfo.output_height);
  img.format = "JPEG";
  img.rgb.resize(static_cast<size_t>(img.width) * img.height * 3);
  const int nc = cinfo.output_components;
  row.resize(static_cast<size_t>(img.width) * nc);
  const bool inverted = cmyk && has_adobe_marker(cinfo);  // PIL reads Adobe CMYK as "CMYK;I"
  while (cinfo.output_scanline < cinfo.output_height) {
    JSAMPROW rp = row.data();
    int y = static_cast<int>(cinfo.output_scanline);
    jpeg_read_scanlines(&cinfo, &rp, 1);
    uint8_t* dst = &img.rgb[static_cast<size_t>(y) * img.width * 3];
    for (int x = 0; x < img.width; ++x) {
      if (nc == 1) {
        dst[3 * x] = dst[3 * x + 1] = dst[3 * x + 2] = row[x];
      } else if (nc == 3) {
        std::memcpy(dst + 3 * x, &row[3 * x], 3);
      } else {
        int c[4];
        for (int k = 0; k < 4; ++k) c[k] = inverted ? 255 - row[4 * x + k] : row[4 * x + k];
        int nk = 255 - c[3];
        for (int k = 0; k < 3; ++k) dst[3 * x + k] = static_cast<uint8_t>(std::max(0, nk - muldiv255(c[k], nk)));
      }
    }
  }
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return img;
}

Image decode_webp(const uint8_t* data, size_t size, const std::string& label) {
  int w = 0, h = 0;
  if (!WebPGetInfo(data, size, &w, &h)) raise(label, "", "corrupt WebP header");
  check_size(w, h, label);
  std::unique_ptr<uint8_t, void (*)(void*)> px(WebPDecodeRGB(data, size, &w, &h), WebPFree);
  if (!px) raise(label, "", "corrupt WebP data");
  Image img;
  img.width = w;
  img.height = h;
  img.format = "WEBP";
  img.rgb.assign(px.get(), px.get() + static_cast<size_t>(w) * h * 3);
  return img;
}

Image decode_stb(const uint8_t* data, size_t size, const std::string& label, const char* format) {
  int w = 0, h = 0, n = 0;
  if (size > static_cast<size_t>(INT32_MAX)) raise(label, "", "file too large");
  if (!stbi_info_from_memory(data, static_cast<int>(size), &w, &h, &n))
    raise(label, "", "corrupt ", format, ": ", stbi_failure_reason() ? stbi_failure_reason() : "unknown error");
  check_size(w, h, label);
  std::unique_ptr<uint8_t, void (*)(void*)> px(stbi_load_from_memory(data, static_cast<int>(size), &w, &h, &n, 0),
                                               stbi_image_free);
  if (!px) raise(label, "", "corrupt ", format, ": ", stbi_failure_reason() ? stbi_failure_reason() : "unknown error");
  Image img;
  img.width = w;
  img.height = h;
  img.format = format;
  img.rgb.resize(static_cast<size_t>(w) * h * 3);
  const uint8_t* s = px.get();
  for (size_t i = 0, npx = static_cast<size_t>(w) * h; i < npx; ++i) {
    const uint8_t* p = s + i * n;
    uint8_t* d = &img.rgb[i * 3];
    if (n <= 2) d[0] = d[1] = d[2] = p[0];   // L, LA: grey replicated, alpha dropped
    else d[0] = p[0], d[1] = p[1], d[2] = p[2];  // RGB, RGBA (alpha dropped, as PIL)
  }
  return img;
}

}  // namespace

Image decode_image_bytes(const uint8_t* d, size_t n, const std::string& label) {
  if (n == 0) raise(label, "", "empty image file (0 bytes)");
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return decode_jpeg(d, n, label);
  if (n >= 8 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return decode_stb(d, n, label, "PNG");
  if (n >= 6 && (std::memcmp(d, "GIF87a", 6) == 0 || std::memcmp(d, "GIF89a", 6) == 0)) return decode_stb(d, n, label, "GIF");
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') return decode_stb(d, n, label, "BMP");
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) return decode_webp(d, n, label);
  raise(label, "", "unrecognised image format (expected JPEG, PNG, WebP, GIF or BMP by content)");
}

Image decode_image_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) raise(path, "", "cannot open image: ", std::strerror(errno));
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return decode_image_bytes(bytes.data(), bytes.size(), path);
}

void write_png(const std::string& path, const Image& img) {
  std::vector<uint8_t> png;
  auto sink = [](void* ctx, void* data, int n) {
    auto* v = static_cast<std::vector<uint8_t>*>(ctx);
    v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + n);
  };
  if (!stbi_write_png_to_func(sink, &png, img.width, img.height, 3, img.rgb.data(), img.width * 3))
    raise(path, "", "PNG encoding failed");
  io::write_file_atomic(path, [&](int fd) { io::write_all(fd, png.data(), png.size(), path); });
}

}  // namespace vadapt::vision

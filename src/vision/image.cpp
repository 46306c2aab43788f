// Image decoding: libjpeg-turbo (bit-identical to PIL's JPEG path), libwebp, stb_image for
// PNG / GIF / BMP.
#include "vision/image.h"

#include <jpeglib.h>
// after jpeglib.h, which it needs
#include <jerror.h>
#include <stb_image.h>
#include <stb_image_write.h>
#include <webp/decode.h>

#include <csetjmp>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include "common/error.h"
#include "common/log.h"
#include "io/atomic_file.h"

namespace vadapt::vision {
namespace {

constexpr int64_t kMaxSide = 65535;

void check_size(int64_t w, int64_t h, const std::string& label, const DecodeOptions& o) {
  if (w <= 0 || h <= 0) raise(label, "", "image has zero size (", w, "x", h, ")");
  if (w > kMaxSide || h > kMaxSide)
    raise(label, "", "image of ", w, "x", h, " pixels is larger than the supported ", kMaxSide, " px per side");
  if (o.max_pixels > 0 && w * h > o.max_pixels)
    raise(label, "", "image of ", w, "x", h, " = ", w * h, " pixels exceeds the limit of ", o.max_pixels,
          " pixels (a decompression bomb?); refused before decoding (raise the limit with --max-image-pixels)");
}

uint32_t be32(const uint8_t* p) { return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3]; }
uint32_t le32(const uint8_t* p) { return (uint32_t{p[3]} << 24) | (uint32_t{p[2]} << 16) | (uint32_t{p[1]} << 8) | p[0]; }
uint32_t le16(const uint8_t* p) { return (uint32_t{p[1]} << 8) | p[0]; }

struct JpegError {
  jpeg_error_mgr mgr;
  bool hit_eof = false;  // the data ended before the image (libjpeg warns, fills with grey)
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

// header_only: reads the size and stops (img.width / height set, no pixels).
Image decode_jpeg(const uint8_t* data, size_t size, const std::string& label, const DecodeOptions& o, bool header_only) {
  jpeg_decompress_struct cinfo;
  JpegError err;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = jpeg_error_exit;
  err.mgr.output_message = [](j_common_ptr) {};
  err.mgr.emit_message = [](j_common_ptr c, int level) {
    if (level >= 0) return;  // trace messages
    ++c->err->num_warnings;
    if (c->err->msg_code == JWRN_JPEG_EOF) reinterpret_cast<JpegError*>(c->err)->hit_eof = true;
  };
  Image img;
  std::vector<uint8_t> row;
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    raise(label, "", "corrupt JPEG: ", err.message);
  }
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&cinfo, TRUE);
  if (header_only) {
    img.width = static_cast<int>(cinfo.image_width), img.height = static_cast<int>(cinfo.image_height);
    jpeg_destroy_decompress(&cinfo);
    return img;
  }
  check_size(cinfo.image_width, cinfo.image_height, label, o);
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : (cinfo.num_components == 1 ? JCS_GRAYSCALE : JCS_RGB);
  jpeg_start_decompress(&cinfo);
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
  // libjpeg fills a truncated stream with grey and only warns; Pillow refuses it ("image file is
  // truncated") unless LOAD_TRUNCATED_IMAGES is set: so do we.
  const bool truncated = err.hit_eof;
  jpeg_finish_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  if (truncated) {
    if (!o.allow_truncated)
      raise(label, "", "truncated JPEG: the data ends before the image does (accept such images, grey-filled, with --allow-truncated-images)");
    log_warn(cat(label, ": truncated JPEG, the missing part is grey (--allow-truncated-images)"));
  }
  return img;
}

Image decode_webp(const uint8_t* data, size_t size, const std::string& label, const DecodeOptions& o) {
  int w = 0, h = 0;
  if (!WebPGetInfo(data, size, &w, &h)) raise(label, "", "corrupt WebP header");
  check_size(w, h, label, o);
  std::unique_ptr<uint8_t, void (*)(void*)> px(WebPDecodeRGB(data, size, &w, &h), WebPFree);
  if (!px) raise(label, "", "corrupt WebP data");
  Image img;
  img.width = w;
  img.height = h;
  img.format = "WEBP";
  img.rgb.assign(px.get(), px.get() + static_cast<size_t>(w) * h * 3);
  return img;
}

Image decode_stb(const uint8_t* data, size_t size, const std::string& label, const char* format, const DecodeOptions& o) {
  int w = 0, h = 0, n = 0;
  if (size > static_cast<size_t>(INT32_MAX)) raise(label, "", "file too large");
  auto [hw, hh] = image_size(data, size, label);  // from the header, before stb looks at it
  check_size(hw, hh, label, o);
  if (std::strcmp(format, "PNG") == 0) {
    // Every chunk must fit in the data: stb reserves a chunk's declared length before reading it
    // (the fuzzer's 89-byte PNG made it allocate 1.2 GB), and a cut chunk is a truncated file.
    for (size_t off = 8; off + 8 <= size;) {
      const uint32_t len = be32(data + off);
      if (len > size - off - 8 || size - off - 8 - len < 4)
        raise(label, "", "truncated PNG: chunk '", std::string(reinterpret_cast<const char*>(data + off + 4), 4), "' at byte ", off,
              " declares ", len, " bytes, the file has ", size - off - 8 < 4 ? 0 : size - off - 12, " left");
      if (std::memcmp(data + off + 4, "IEND", 4) == 0) break;
      off += 12 + static_cast<size_t>(len);
    }
  }
  if (!stbi_info_from_memory(data, static_cast<int>(size), &w, &h, &n))
    raise(label, "", "corrupt ", format, ": ", stbi_failure_reason() ? stbi_failure_reason() : "unknown error");
  check_size(w, h, label, o);
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

DecodeOptions& default_decode_options() {
  static DecodeOptions o;
  return o;
}

std::pair<int64_t, int64_t> image_size(const uint8_t* d, size_t n, const std::string& label) {
  if (n == 0) raise(label, "", "empty image file (0 bytes)");
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) {
    auto img = decode_jpeg(d, n, label, {}, /*header_only=*/true);
    return {img.width, img.height};
  }
  if (n >= 8 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) {
    if (n < 24 || std::memcmp(d + 12, "IHDR", 4) != 0) raise(label, "", "corrupt PNG: no IHDR header");
    return {be32(d + 16), be32(d + 20)};
  }
  if (n >= 6 && (std::memcmp(d, "GIF87a", 6) == 0 || std::memcmp(d, "GIF89a", 6) == 0)) {
    if (n < 10) raise(label, "", "corrupt GIF: truncated header");
    return {le16(d + 6), le16(d + 8)};
  }
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') {
    if (n < 26) raise(label, "", "corrupt BMP: truncated header");
    const auto h = static_cast<int32_t>(le32(d + 22));  // negative: top-down rows
    return {static_cast<int32_t>(le32(d + 18)), h < 0 ? -static_cast<int64_t>(h) : h};
  }
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) {
    int w = 0, h = 0;
    if (!WebPGetInfo(d, n, &w, &h)) raise(label, "", "corrupt WebP header");
    return {w, h};
  }
  raise(label, "", "unrecognised image format (expected JPEG, PNG, WebP, GIF or BMP by content)");
}

Image decode_image_bytes(const uint8_t* d, size_t n, const std::string& label, const DecodeOptions& o) {
  if (n == 0) raise(label, "", "empty image file (0 bytes)");
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return decode_jpeg(d, n, label, o, false);
  if (n >= 8 && std::memcmp(d, "\x89PNG\r\n\x1a\n", 8) == 0) return decode_stb(d, n, label, "PNG", o);
  if (n >= 6 && (std::memcmp(d, "GIF87a", 6) == 0 || std::memcmp(d, "GIF89a", 6) == 0)) return decode_stb(d, n, label, "GIF", o);
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') return decode_stb(d, n, label, "BMP", o);
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) return decode_webp(d, n, label, o);
  raise(label, "", "unrecognised image format (expected JPEG, PNG, WebP, GIF or BMP by content)");
}

Image decode_image_bytes(const uint8_t* d, size_t n, const std::string& label) {
  return decode_image_bytes(d, n, label, default_decode_options());
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

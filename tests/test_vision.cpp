// Vision towers on tiny fixtures, image decoding and the PIL-exact resampler, without ../shared.
#include <gtest/gtest.h>

#include <stb_image_write.h>
#include <webp/encode.h>
#include <webp/types.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "fixtures.h"
#include "io/atomic_file.h"
#include "model/load.h"
#include "vision/feature_cache.h"
#include "vision/image.h"
#include "vision/preprocess.h"
#include "vision/resample.h"
#include "vision/vision_tower.h"

using namespace vadapt;
using vadapt::test::TempDir;
using vadapt::test::tensors_close;

namespace {
vision::Image gradient_image(int w, int h) {
  vision::Image img;
  img.width = w;
  img.height = h;
  img.rgb.resize(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c) img.rgb[(static_cast<size_t>(y) * w + x) * 3 + c] = static_cast<uint8_t>((x * 7 + y * 3 + c * 50) % 256);
  return img;
}
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const VadaptError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST(VisionTower, TinyViTAndClipLoadStrictlyAndGiveAllHiddenStates) {
  TempDir vit_dir, clip_dir;
  vadapt::test::write_tiny_vit(vit_dir.path());
  vadapt::test::write_tiny_clip(clip_dir.path());
  torch::NoGradGuard ng;
  auto px = torch::randn({2, 3, 32, 32});
  auto vit = vision::load_vision_tower(vit_dir.path(), torch::kFloat32, torch::kCPU);
  auto out = vit->encode(px);
  EXPECT_EQ(out.hidden_states.size(), 3u);
  EXPECT_EQ(out.last_hidden_state.sizes(), (std::vector<int64_t>{2, 17, 32}));
  EXPECT_EQ(out.head.sizes(), (std::vector<int64_t>{2, 10}));
  EXPECT_EQ(vision::select_patch_features(out, -2).sizes(), (std::vector<int64_t>{2, 16, 32}));
  auto clip = vision::load_vision_tower(clip_dir.path(), torch::kFloat32, torch::kCPU);
  auto co = clip->encode(px);
  EXPECT_EQ(co.hidden_states.size(), 4u);
  EXPECT_EQ(co.head.sizes(), (std::vector<int64_t>{2, 16}));
  EXPECT_EQ(model::count_parameters(clip->module()).trainable, 0);
  // Batch rows are independent.
  auto single = clip->encode(px.narrow(0, 1, 1));
  EXPECT_TRUE(tensors_close(single.pooled[0], co.pooled[1], 1e-5));
  EXPECT_THROW(clip->encode(torch::randn({1, 3, 64, 64})), c10::Error);
}

TEST(Image, PngRoundTripAndFormatDetectedFromBytes) {
  TempDir tmp;
  auto img = gradient_image(13, 7);
  vision::write_png(tmp.file("named-like-a.jpg"), img);  // a PNG with a misleading extension
  auto back = vision::decode_image_file(tmp.file("named-like-a.jpg"));
  EXPECT_EQ(back.format, "PNG");
  EXPECT_EQ(back.width, 13);
  EXPECT_EQ(back.rgb, img.rgb);
}

TEST(Image, CorruptTruncatedAndEmptyFilesGiveErrorsNamingTheFile) {
  TempDir tmp;
  io::write_text_atomic(tmp.file("empty.png"), "");
  EXPECT_NE(error_of([&] { vision::decode_image_file(tmp.file("empty.png")); }).find("empty.png: empty image file"), std::string::npos);
  io::write_text_atomic(tmp.file("text.jpg"), "hello, not an image");
  EXPECT_NE(error_of([&] { vision::decode_image_file(tmp.file("text.jpg")); }).find("unrecognised image format"), std::string::npos);
  vision::write_png(tmp.file("ok.png"), gradient_image(20, 20));
  auto bytes = io::read_text_file(tmp.file("ok.png"));
  io::write_text_atomic(tmp.file("trunc.png"), bytes.substr(0, bytes.size() / 2));
  EXPECT_NE(error_of([&] { vision::decode_image_file(tmp.file("trunc.png")); }).find("trunc.png"), std::string::npos);
  std::string jpeg_head("\xFF\xD8\xFF\xE0\x00\x10JFIF\x00", 11);
  io::write_text_atomic(tmp.file("trunc.jpg"), jpeg_head);
  EXPECT_NE(error_of([&] { vision::decode_image_file(tmp.file("trunc.jpg")); }).find("corrupt JPEG"), std::string::npos);
  EXPECT_NE(error_of([&] { vision::decode_image_file(tmp.file("missing.png")); }).find("missing.png"), std::string::npos);
}

// A JPEG cut short is refused as Pillow refuses it (or accepted with a warning when asked); a
// header that claims more pixels than the limit is refused before decoding, saying why.
TEST(Image, TruncatedJpegAndDecompressionBombsAreRefused) {
  std::string jpg;
  auto img = gradient_image(96, 64);
  ASSERT_TRUE(stbi_write_jpg_to_func([](void* c, void* d, int n) { static_cast<std::string*>(c)->append(static_cast<char*>(d), n); }, &jpg,
                                     img.width, img.height, 3, img.rgb.data(), 90));
  const auto* d = reinterpret_cast<const uint8_t*>(jpg.data());
  EXPECT_EQ(vision::decode_image_bytes(d, jpg.size(), "whole.jpg").width, 96);
  EXPECT_EQ(vision::image_size(d, jpg.size(), "whole.jpg"), (std::pair<int64_t, int64_t>{96, 64}));
  const size_t cut = jpg.size() * 2 / 3;
  EXPECT_NE(error_of([&] { vision::decode_image_bytes(d, cut, "cut.jpg"); }).find("cut.jpg: truncated JPEG"), std::string::npos);
  vision::DecodeOptions lenient;
  lenient.allow_truncated = true;
  EXPECT_EQ(vision::decode_image_bytes(d, cut, "cut.jpg", lenient).height, 64);
  // A PNG header of 20,000 x 20,000 (400 M pixels > Pillow's 89,478,485).
  std::string png("\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR", 16);
  for (uint32_t v : {20000u, 20000u})
    for (int k = 3; k >= 0; --k) png.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
  png += std::string("\x08\x02\x00\x00\x00\x00\x00\x00\x00", 9);
  const auto* p = reinterpret_cast<const uint8_t*>(png.data());
  EXPECT_EQ(vision::image_size(p, png.size(), "bomb.png"), (std::pair<int64_t, int64_t>{20000, 20000}));
  const auto e = error_of([&] { vision::decode_image_bytes(p, png.size(), "bomb.png"); });
  EXPECT_NE(e.find("bomb.png: image of 20000x20000 = 400000000 pixels exceeds the limit of 89478485"), std::string::npos) << e;
  EXPECT_NE(e.find("decompression bomb"), std::string::npos) << e;
  vision::DecodeOptions small;
  small.max_pixels = 96 * 64 - 1;
  EXPECT_NE(error_of([&] { vision::decode_image_bytes(d, jpg.size(), "whole.jpg", small); }).find("exceeds the limit"), std::string::npos);
}

TEST(Resample, IdentityConstantAndShape) {
  auto img = gradient_image(40, 30);
  auto same = vision::resize_pil(img, 40, 30, vision::Filter::kBicubic);
  EXPECT_EQ(same.rgb, img.rgb);
  vision::Image flat = img;
  std::fill(flat.rgb.begin(), flat.rgb.end(), 77);
  for (auto f : {vision::Filter::kBicubic, vision::Filter::kBilinear}) {
    auto r = vision::resize_pil(flat, 17, 55, f);
    EXPECT_EQ(r.width, 17);
    EXPECT_EQ(r.height, 55);
    EXPECT_TRUE(std::all_of(r.rgb.begin(), r.rgb.end(), [](uint8_t v) { return v == 77; }));
  }
}

TEST(Preprocess, ClipShortestEdgeFloorsAndCentreCrops) {
  // 640x574 -> 249x224 (floor of 249.76), crop left (249-224)//2 = 12.
  auto img = gradient_image(640, 574);
  auto cfg = vision::PreprocessConfig::named("clip224");
  auto u8 = vision::prepare_uint8(img, cfg);
  EXPECT_EQ(u8.width, 224);
  EXPECT_EQ(u8.height, 224);
  auto full = vision::resize_pil(img, 249, 224, vision::Filter::kBicubic);
  EXPECT_EQ(u8.at(0, 0, 0), full.at(0, 12, 0));
  EXPECT_EQ(u8.at(100, 5, 2), full.at(100, 17, 2));
  auto t = vision::preprocess(img, vision::PreprocessConfig::named("llava_pad336"));
  EXPECT_EQ(t.sizes(), (std::vector<int64_t>{3, 336, 336}));
  EXPECT_THROW(vision::PreprocessConfig::named("clipxyz"), VadaptError);
  EXPECT_THROW(vision::PreprocessConfig::named("sobel"), VadaptError);
}

namespace {
std::vector<uint8_t> encode_with_stb(const vision::Image& img, int comp, const char* fmt) {
  std::vector<uint8_t> px;
  for (size_t i = 0; i < static_cast<size_t>(img.width) * img.height; ++i) {
    const uint8_t* p = &img.rgb[i * 3];
    if (comp == 1) px.push_back(p[0]);
    else if (comp == 2) px.push_back(p[0]), px.push_back(200);
    else px.insert(px.end(), p, p + 3);
  }
  std::vector<uint8_t> out;
  auto sink = [](void* ctx, void* data, int n) {
    auto* v = static_cast<std::vector<uint8_t>*>(ctx);
    v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + n);
  };
  if (std::string(fmt) == "png") stbi_write_png_to_func(sink, &out, img.width, img.height, comp, px.data(), img.width * comp);
  else stbi_write_bmp_to_func(sink, &out, img.width, img.height, comp, px.data());
  return out;
}
}  // namespace

TEST(Image, GreyGreyAlphaBmpAndWebpBecomeRgbAsPilDoes) {
  auto img = gradient_image(9, 5);
  // L and LA PNGs: grey replicated into R, G, B; alpha dropped without compositing.
  for (int comp : {1, 2}) {
    auto bytes = encode_with_stb(img, comp, "png");
    auto d = vision::decode_image_bytes(bytes.data(), bytes.size(), "grey.png");
    for (int y = 0; y < 5; ++y)
      for (int x = 0; x < 9; ++x)
        for (int c = 0; c < 3; ++c) ASSERT_EQ(d.at(y, x, c), img.at(y, x, 0)) << comp;
  }
  auto bmp = encode_with_stb(img, 3, "bmp");
  auto db = vision::decode_image_bytes(bmp.data(), bmp.size(), "x.bmp");
  EXPECT_EQ(db.format, "BMP");
  EXPECT_EQ(db.rgb, img.rgb);
  uint8_t* webp = nullptr;
  size_t n = WebPEncodeLosslessRGB(img.rgb.data(), img.width, img.height, img.width * 3, &webp);
  ASSERT_GT(n, 0u);
  auto dw = vision::decode_image_bytes(webp, n, "x.webp");
  WebPFree(webp);
  EXPECT_EQ(dw.format, "WEBP");
  EXPECT_EQ(dw.rgb, img.rgb);
}

// The disk feature cache: an entry is reused by a new process (fresh memory), and an entry with
// a flipped byte or cut short is detected by its checksum / bounds and recomputed, never used.
TEST(FeatureCache, DamagedDiskEntriesAreRecomputedNeverUsed) {
  TempDir tmp;
  vision::write_png(tmp.file("a.png"), gradient_image(8, 8));
  int computed = 0;
  auto compute = [&](const std::vector<std::string>& ps) -> torch::Tensor {
    computed += static_cast<int>(ps.size());
    const auto n = static_cast<int64_t>(ps.size());
    return (torch::arange(n * 4 * 3, torch::kFloat32).view({n, 4, 3}) + 0.5);
  };
  const auto want = compute({"x"});
  computed = 0;
  auto fresh = [&] { return vision::FeatureCache(tmp.file("cache"), "encoder"); };
  EXPECT_TRUE(torch::equal(fresh().get({tmp.file("a.png")}, compute), want));
  EXPECT_EQ(computed, 1);
  EXPECT_TRUE(torch::equal(fresh().get({tmp.file("a.png")}, compute), want));
  EXPECT_EQ(computed, 1) << "a new cache (process) reads the disk entry";
  std::string entry;
  for (const auto& e : std::filesystem::directory_iterator(tmp.file("cache"))) entry = e.path().string();
  ASSERT_FALSE(entry.empty());
  auto bytes = io::read_text_file(entry);
  for (int damage = 0; damage < 2; ++damage) {
    auto bad = bytes;
    if (damage == 0) bad[bad.size() - 3] ^= 0x40;  // a flipped bit in the feature data
    else bad.resize(bad.size() - 10);              // cut short
    io::write_text_atomic(entry, bad);
    auto c = fresh();
    EXPECT_TRUE(torch::equal(c.get({tmp.file("a.png")}, compute), want)) << damage;
    EXPECT_EQ(c.damaged(), 1) << damage;
    EXPECT_EQ(computed, 2 + damage) << "recomputed, damage " << damage;
    EXPECT_EQ(io::read_text_file(entry), bytes) << "and rewritten whole";
  }
}

// Found by the image fuzzer (tests/fuzz): PNGs whose first IDAT chunk is empty (stb_image reads
// them with a zero-length memcpy from a null buffer, suppressed for UBSan in tests/fuzz/ubsan.supp),
// and an 89-byte PNG whose chunk declares 1.2 GB (stb reserved it; now refused as truncated before
// stb sees it). They must decode or fail with an error naming the file, never crash.
TEST(Image, EmptyFirstIdatChunkFoundByTheFuzzer) {
  for (const char* name : {"zero-idat-1.png", "zero-idat-2.png", "huge-chunk-length.png"}) {
    const std::string path = std::string(VADAPT_SOURCE_DIR) + "/tests/fuzz/seeds/image/" + name;
    try {
      auto img = vision::decode_image_file(path);
      EXPECT_EQ(img.rgb.size(), static_cast<size_t>(img.width) * img.height * 3) << name;
    } catch (const VadaptError& e) {
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  }
  const std::string huge = std::string(VADAPT_SOURCE_DIR) + "/tests/fuzz/seeds/image/huge-chunk-length.png";
  std::string err;
  try {
    vision::decode_image_file(huge);
  } catch (const VadaptError& e) {
    err = e.what();
  }
  EXPECT_NE(err.find("truncated PNG: chunk"), std::string::npos) << err;
}

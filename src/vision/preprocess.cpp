// Preprocessing pipelines (HF CLIP / ViT image processors, LLaVA pad-to-square, LaVIN square).
#include "vision/preprocess.h"

#include <filesystem>

#include "common/error.h"
#include "io/json_file.h"

namespace vadapt::vision {
namespace {

const std::array<float, 3> kClipMean{0.48145466f, 0.4578275f, 0.40821073f};
const std::array<float, 3> kClipStd{0.26862954f, 0.26130258f, 0.27577711f};
const std::array<float, 3> kImageNetMean{0.485f, 0.456f, 0.406f};
const std::array<float, 3> kImageNetStd{0.229f, 0.224f, 0.225f};

Image center_crop(const Image& in, int side) {
  const int top = (in.height - side) / 2, left = (in.width - side) / 2;
  if (top < 0 || left < 0) throw VadaptError(cat("center crop ", side, " larger than image ", in.width, "x", in.height));
  Image out;
  out.width = out.height = side;
  out.format = in.format;
  out.rgb.resize(static_cast<size_t>(side) * side * 3);
  for (int y = 0; y < side; ++y)
    std::copy_n(&in.rgb[(static_cast<size_t>(y + top) * in.width + left) * 3], side * 3, &out.rgb[static_cast<size_t>(y) * side * 3]);
  return out;
}

Image expand_to_square(const Image& in, const std::array<float, 3>& mean) {
  if (in.width == in.height) return in;
  const int side = std::max(in.width, in.height);
  Image out;
  out.width = out.height = side;
  out.format = in.format;
  out.rgb.resize(static_cast<size_t>(side) * side * 3);
  uint8_t bg[3];
  for (int c = 0; c < 3; ++c) bg[c] = static_cast<uint8_t>(static_cast<int>(mean[c] * 255));  // int(x * 255)
  for (size_t i = 0; i < out.rgb.size(); i += 3) std::copy_n(bg, 3, &out.rgb[i]);
  const int ox = in.width > in.height ? 0 : (in.height - in.width) / 2;
  const int oy = in.width > in.height ? (in.width - in.height) / 2 : 0;
  for (int y = 0; y < in.height; ++y)
    std::copy_n(&in.rgb[static_cast<size_t>(y) * in.width * 3], in.width * 3,
                &out.rgb[(static_cast<size_t>(y + oy) * side + ox) * 3]);
  return out;
}

Image shortest_edge_resize(const Image& in, int size, Filter f) {
  const bool w_short = in.width <= in.height;
  const int64_t s = w_short ? in.width : in.height, l = w_short ? in.height : in.width;
  const int new_long = static_cast<int>(static_cast<double>(size * l) / static_cast<double>(s));  // HF floors
  return w_short ? resize_pil(in, size, new_long, f) : resize_pil(in, new_long, size, f);
}

}  // namespace

PreprocessConfig PreprocessConfig::named(const std::string& name) {
  auto split = [&](const std::string& prefix, int def) -> int {
    std::string rest = name.substr(prefix.size());
    if (rest.empty()) return def;
    try {
      size_t used = 0;
      int v = std::stoi(rest, &used);
      if (used != rest.size() || v <= 0) throw std::invalid_argument("");
      return v;
    } catch (...) {
      throw VadaptError(cat("preprocess: bad size in '", name, "'"));
    }
  };
  PreprocessConfig c;
  if (name.rfind("llava_pad", 0) == 0) {
    c.pipeline = "llava_pad";
    c.size = c.crop = split("llava_pad", 336);
  } else if (name.rfind("clip", 0) == 0) {
    c.pipeline = "clip";
    c.size = c.crop = split("clip", 224);
  } else if (name.rfind("imagenet", 0) == 0) {
    c.pipeline = "imagenet";
    c.size = c.crop = split("imagenet", 224);
    c.mean = kImageNetMean;
    c.std = kImageNetStd;
  } else if (name.rfind("vit", 0) == 0) {
    c.pipeline = "resize";
    c.size = c.crop = split("vit", 224);
    c.resample = Filter::kBilinear;
    c.mean = {0.5f, 0.5f, 0.5f};
    c.std = {0.5f, 0.5f, 0.5f};
  } else {
    throw VadaptError(cat("unknown preprocessing '", name,
                          "' (expected clipN, llava_padN, imagenetN or vitN, e.g. clip336)"));
  }
  return c;
}

PreprocessConfig PreprocessConfig::from_hf(const std::string& path_in) {
  namespace fs = std::filesystem;
  std::string path = fs::is_directory(path_in) ? (fs::path(path_in) / "preprocessor_config.json").string() : path_in;
  auto j = io::read_json(path);
  std::string type = io::json_get_or<std::string>(j, "image_processor_type", "", path);
  PreprocessConfig c;
  int resample = io::json_get_or<int>(j, "resample", 3, path);
  if (resample != 2 && resample != 3) raise(path, "resample", "unsupported PIL filter ", resample, " (2 = bilinear, 3 = bicubic)");
  c.resample = resample == 2 ? Filter::kBilinear : Filter::kBicubic;
  auto get3 = [&](const char* key, std::array<float, 3> def) {
    auto it = j.find(key);
    if (it == j.end()) return def;
    if (!it->is_array() || it->size() != 3) raise(path, key, "must be a list of 3 numbers");
    return std::array<float, 3>{(*it)[0].get<float>(), (*it)[1].get<float>(), (*it)[2].get<float>()};
  };
  if (type == "CLIPImageProcessor") {
    c.pipeline = "clip";
    const auto& size = j.at("size");
    c.size = size.is_object() ? io::json_get<int>(size, "shortest_edge", path + " size") : size.get<int>();
    const auto& crop = j.contains("crop_size") ? j["crop_size"] : j["size"];
    c.crop = crop.is_object() ? io::json_get<int>(crop, "height", path + " crop_size") : crop.get<int>();
    c.mean = get3("image_mean", kClipMean);
    c.std = get3("image_std", kClipStd);
  } else if (type == "ViTImageProcessor") {
    c.pipeline = "resize";
    const auto& size = j.at("size");
    c.size = size.is_object() ? io::json_get<int>(size, "height", path + " size") : size.get<int>();
    if (size.is_object() && io::json_get<int>(size, "width", path + " size") != c.size)
      raise(path, "size", "only square sizes are supported");
    c.crop = c.size;
    c.mean = get3("image_mean", {0.5f, 0.5f, 0.5f});
    c.std = get3("image_std", {0.5f, 0.5f, 0.5f});
  } else {
    raise(path, "image_processor_type", "unsupported '", type, "' (CLIPImageProcessor, ViTImageProcessor)");
  }
  if (c.size <= 0 || c.crop <= 0 || c.crop > c.size) raise(path, "size", "invalid size ", c.size, " / crop ", c.crop);
  return c;
}

std::string PreprocessConfig::describe() const {
  return cat(pipeline, " size=", size, " crop=", crop, " resample=", resample == Filter::kBicubic ? "bicubic" : "bilinear");
}

Image prepare_uint8(const Image& img, const PreprocessConfig& c) {
  if (c.pipeline == "clip") return center_crop(shortest_edge_resize(img, c.size, c.resample), c.crop);
  if (c.pipeline == "llava_pad") return center_crop(shortest_edge_resize(expand_to_square(img, kClipMean), c.size, c.resample), c.crop);
  if (c.pipeline == "imagenet" || c.pipeline == "resize") return resize_pil(img, c.size, c.size, c.resample);
  throw VadaptError(cat("unknown preprocessing pipeline '", c.pipeline, "'"));
}

torch::Tensor preprocess(const Image& img, const PreprocessConfig& c) {
  Image u8 = prepare_uint8(img, c);
  const int h = u8.height, w = u8.width;
  auto out = torch::empty({3, h, w}, torch::kFloat32);
  float* o = out.data_ptr<float>();
  const bool torchvision = c.pipeline == "imagenet";  // ToTensor: float32(u8) / 255
  for (int ch = 0; ch < 3; ++ch) {
    const float mean = c.mean[ch], std = c.std[ch];
    for (int i = 0; i < h * w; ++i) {
      const uint8_t v = u8.rgb[static_cast<size_t>(i) * 3 + ch];
      float x = torchvision ? static_cast<float>(v) / 255.0f : static_cast<float>(static_cast<double>(v) * (1.0 / 255.0));
      o[static_cast<size_t>(ch) * h * w + i] = (x - mean) / std;
    }
  }
  return out;
}

}  // namespace vadapt::vision

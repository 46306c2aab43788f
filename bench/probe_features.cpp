// Linear probe of frozen vision features on the synthetic task: can a linear classifier read an
// object's colour and shape from the features the LLaVA connector sees? Single-object scenes
// only (one answer per image), pooled patch features (mean of all patches, and the 2x2 grid
// concatenated), softmax regression trained on the train split, accuracy on the test split.
//   build/bench/probe_features SYNTH_DIR VISION_DIR [LAYER] [PREPROCESS]
#include <torch/torch.h>

#include <iostream>
#include <map>

#include "common/log.h"
#include "common/runtime.h"
#include "data/dataset.h"
#include "train/recipe.h"
#include "vision/feature_cache.h"
#include "vision/image.h"
#include "vision/preprocess.h"
#include "vision/vision_tower.h"

using namespace vadapt;

namespace {
struct Labelled {
  std::vector<std::string> images;
  std::map<std::string, std::vector<std::string>> labels;  // per question type, aligned with images
};

// Images whose count answer is "one", with their colour and shape answers.
Labelled single_object(const std::string& file) {
  auto samples = data::load_dataset(file, {});
  std::map<std::string, std::map<std::string, std::string>> by_image;
  for (const auto& s : samples) by_image[s.image][s.type] = s.conv.turns.back().text;
  Labelled out;
  for (const auto& [img, ans] : by_image)
    if (ans.count("count") && ans.at("count") == "one" && ans.count("color") && ans.count("shape")) {
      out.images.push_back(img);
      out.labels["color"].push_back(ans.at("color"));
      out.labels["shape"].push_back(ans.at("shape"));
    }
  return out;
}

// Softmax regression; `standardise`: z-score every feature first (else the raw features, as the
// projector sees them).
double probe(const torch::Tensor& xtr, const std::vector<int64_t>& ytr, const torch::Tensor& xte, const std::vector<int64_t>& yte,
             int64_t classes, bool standardise = true, double lr = 1e-2, int iters = 500) {
  auto mean = xtr.mean(0, true), sd = xtr.std(0, true, true) + 1e-6;
  auto a = standardise ? (xtr - mean) / sd : xtr, b = standardise ? (xte - mean) / sd : xte;
  torch::manual_seed(0);
  auto lin = torch::nn::Linear(a.size(1), classes);
  torch::optim::Adam opt(lin->parameters(), torch::optim::AdamOptions(lr).weight_decay(1e-3));
  auto y = torch::tensor(ytr);
  for (int i = 0; i < iters; ++i) {
    opt.zero_grad();
    torch::nn::functional::cross_entropy(lin(a), y).backward();
    opt.step();
  }
  torch::NoGradGuard ng;
  return lin(b).argmax(1).eq(torch::tensor(yte)).to(torch::kFloat64).mean().item<double>();
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: probe_features SYNTH_DIR VISION_DIR [LAYER=-2] [PREPROCESS=vit224]\n";
    return 2;
  }
  configure_runtime(Workload::kTraining);
  const std::string dir = argv[1], vision_dir = argv[2];
  const int64_t layer = argc > 3 ? std::stoll(argv[3]) : -2;
  auto pre = vision::PreprocessConfig::named(argc > 4 ? argv[4] : "vit224");
  auto tower = vision::load_vision_tower(vision_dir, torch::kFloat32, torch::kCPU);
  auto features = [&](const std::vector<std::string>& imgs) {
    torch::NoGradGuard ng;
    std::vector<torch::Tensor> mean, grid;
    for (size_t i = 0; i < imgs.size(); i += 32) {
      std::vector<torch::Tensor> px;
      for (size_t j = i; j < std::min(imgs.size(), i + 32); ++j) px.push_back(vision::preprocess(vision::decode_image_file(imgs[j]), pre));
      auto f = vision::select_patch_features(tower->encode(torch::stack(px)), layer);  // (B, N, C)
      const int64_t side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(f.size(1)))));
      mean.push_back(f.mean(1));
      grid.push_back(torch::adaptive_avg_pool2d(f.reshape({f.size(0), side, side, -1}).permute({0, 3, 1, 2}), {2, 2}).flatten(1));
    }
    return std::make_pair(torch::cat(mean), torch::cat(grid));
  };
  auto tr = single_object(dir + "/train.json"), te = single_object(dir + "/test.json");
  auto [tr_mean, tr_grid] = features(tr.images);
  auto [te_mean, te_grid] = features(te.images);
  auto scale = torch::cat({tr_mean, te_mean}).abs().amax(0);  // (C,)
  auto sorted = std::get<0>(scale.sort(0, true));
  std::cerr << "largest |feature| per channel: top 3 " << sorted.narrow(0, 0, 3) << " median " << scale.median().item<double>() << "\n";
  std::cout << "| target | classes | train / test images | probe on mean-pooled | probe on 2x2 grid | mean-pooled, raw features | raw, lr 1e-3 x 100 steps | standardised, lr 1e-3 x 100 steps |\n|---|---|---|---|---|---|---|---|\n";
  for (const char* t : {"color", "shape"}) {
    std::map<std::string, int64_t> cls;
    for (const auto& l : tr.labels[t]) cls.emplace(l, static_cast<int64_t>(cls.size()));
    std::vector<int64_t> ytr, yte;
    for (const auto& l : tr.labels[t]) ytr.push_back(cls.at(l));
    for (const auto& l : te.labels[t]) yte.push_back(cls.count(l) ? cls.at(l) : -1);
    const int64_t k = static_cast<int64_t>(cls.size());
    std::cout << "| " << t << " | " << k << " | " << tr.images.size() << " / " << te.images.size() << " | "
              << probe(tr_mean, ytr, te_mean, yte, k) << " | " << probe(tr_grid, ytr, te_grid, yte, k) << " | "
              << probe(tr_mean, ytr, te_mean, yte, k, false) << " | " << probe(tr_mean, ytr, te_mean, yte, k, false, 1e-3, 100) << " | " << probe(tr_mean, ytr, te_mean, yte, k, true, 1e-3, 100) << " |\n";
  }
  return 0;
}

// Vision tower factory (config.json -> ViT or CLIP) and feature selection helpers.
#include "vision/vision_tower.h"

#include "common/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/load.h"
#include "model/weight_share.h"
#include "vision/clip_vision.h"
#include "vision/vit.h"

namespace vadapt::vision {

std::shared_ptr<VisionTower> load_vision_tower(const std::string& dir, torch::ScalarType dtype, torch::Device device,
                                               const io::FolderPart& part) {
  std::string cfg_path;
  auto j = io::part_config(dir, part, nlohmann::json::object(), cfg_path);
  auto opts = torch::TensorOptions().dtype(dtype).device(device);
  std::shared_ptr<VisionTower> tower;
  std::vector<std::string> ignore;
  switch (io::detect_model_kind(j, cfg_path)) {
    case io::ModelKind::kViT:
      tower = std::make_shared<ViTImpl>(io::ViTConfig::from_json(j, cfg_path), opts);
      break;
    case io::ModelKind::kClipVision: {
      auto cfg = io::ClipVisionConfig::from_json(j, cfg_path);
      if (cfg.architecture == "CLIPModel") ignore = {"text_model.", "text_projection.weight", "logit_scale"};
      ignore.push_back("position_ids");  // older HF checkpoints store this buffer
      tower = std::make_shared<ClipVisionImpl>(cfg, opts);
      break;
    }
    default:
      raise(cfg_path, "model_type", "is a language model, not a vision tower (expected vit or clip)");
  }
  ignore.insert(ignore.end(), part.ignore.begin(), part.ignore.end());
  const std::string share_key = model::WeightShare::key(dir, "vision|" + part.prefix, dtype, device);
  if (!model::WeightShare::attach(tower->module(), share_key)) {
    model::load_strict(tower->module(), io::TensorSource::open(dir), ignore, part.prefix);
    model::WeightShare::add(tower->module(), share_key);
  }
  tower->module().eval();
  return tower;
}

torch::Tensor select_patch_features(const VisionOutput& out, int64_t layer) {
  const int64_t n = static_cast<int64_t>(out.hidden_states.size());
  const int64_t idx = layer < 0 ? n + layer : layer;
  if (idx < 0 || idx >= n)
    throw VadaptError(cat("vision feature layer ", layer, " out of range for ", n, " hidden states"));
  const auto& h = out.hidden_states[idx];  // (B, 1+N, C)
  return h.narrow(1, 1, h.size(1) - 1);    // (B, N, C)
}

}  // namespace vadapt::vision

// Runs a recipe's stages in order: each stage builds its VisionLanguageModel, optionally takes
// the projector of an earlier stage (LLaVA's --pretrain_mm_mlp_adapter), trains, and leaves
// its adapter in OUT/<stage name>/.
#pragma once

#include <string>
#include <vector>

#include "train/recipe.h"

namespace vadapt::train {

struct StageResult {
  std::string name, out_dir;
  TrainResult result;
};

struct RunOptions {
  std::string only_stage;  // empty: every stage
  std::string resume;      // checkpoint folder or "latest"
  torch::Device device = torch::kCPU;
  std::string precision;   // overrides every stage's train.precision when set
  bool plot = false;       // loss.png for every stage
  bool skip_bad = false;   // every stage as with data.skip_bad: true (--skip-bad)
  std::shared_ptr<Communicator> comm;  // data-parallel process group, or nullptr
};

std::vector<StageResult> run_recipe(const Recipe& r, const std::string& out_dir, const RunOptions& o = {});

}  // namespace vadapt::train

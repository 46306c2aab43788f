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

std::vector<StageResult> run_recipe(const Recipe& r, const std::string& out_dir, const std::string& only_stage = "",
                                    const std::string& resume = "");

}  // namespace vadapt::train

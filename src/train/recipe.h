// Recipes: YAML files under recipes/ that name the method, the frozen models, the connector and
// one or more training stages (LLaVA: stage 1 projector alignment on captions, stage 2 visual
// instruction tuning). `--set a.b.c=value` overrides any key. "${name}" in a path expands to
// $VADAPT_<NAME>_DIR; defaults: ${shared} = ../shared beside the working directory, ${synth} =
// runs/synth-data (where scripts/demo.sh renders the synthetic dataset).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "io/path_vars.h"
#include "train/trainer.h"
#include "vlm/vlm_spec.h"

namespace vadapt::train {

struct StageData {
  std::vector<std::string> train, val;  // one or more files each, concatenated in order
  std::string format, image_root;
  int64_t limit = -1, val_limit = -1;   // per file
  int64_t split_every = 0;  // > 0: train/val from one file, every k-th image held out
  bool skip_bad = false;
  std::string image_placement = "front";  // data::LoadOptions
  std::string scienceqa_format = "CQM-A";
  // An expert's text about each image put before its question in training and validation
  // samples, as `--expert` does at inference (experts/expert.h): none | ocr | caption.
  std::string expert = "none", expert_model;
};

struct Stage {
  std::string name;
  vlm::VlmSpec spec;
  StageData data;
  TrainConfig train;
  std::string init_from;  // earlier stage whose projector initialises this one
  std::string feature_cache = "default";  // a folder, "default", "memory" or "none"
};

// Default feature-cache folder: $VADAPT_CACHE_DIR, else $XDG_CACHE_HOME/vadapt/features, else
// ~/.cache/vadapt/features.
std::string default_feature_cache_dir();

struct Recipe {
  std::string source;
  std::vector<Stage> stages;
  nlohmann::json raw;  // after overrides
};

// Reads YAML (or JSON) from `path` and applies "key.path=value" overrides.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides);
nlohmann::json yaml_file_to_json(const std::string& path);
using io::expand_vars;

}  // namespace vadapt::train

// Multi-stage recipe execution.
#include "train/run_recipe.h"

#include <filesystem>
#include <set>

#include "common/error.h"
#include "common/log.h"
#include "io/atomic_file.h"

namespace vadapt::train {

std::vector<StageResult> run_recipe(const Recipe& r, const std::string& out_dir, const RunOptions& o) {
  const std::string& only_stage = o.only_stage;
  std::vector<StageResult> out;
  bool matched = only_stage.empty();
  for (const auto& st : r.stages) {
    if (!only_stage.empty() && st.name != only_stage) continue;
    matched = true;
    log_info(cat("== stage ", st.name, " =="));
    vlm::VisionLanguageModel m(st.spec, o.device);
    if (!st.init_from.empty()) m.init_projector_from(out_dir + "/" + st.init_from);
    if (st.feature_cache != "none")
      m.enable_feature_cache(st.feature_cache == "memory" ? "" : st.feature_cache == "default" ? default_feature_cache_dir() : st.feature_cache);
    data::LoadOptions lo;
    lo.format = st.data.format;
    lo.image_root = st.data.image_root;
    lo.skip_bad = st.data.skip_bad;
    lo.limit = st.data.limit;
    lo.split_every = st.data.split_every;
    lo.split = st.data.split_every > 0 ? "train" : "";
    data::LoadReport rep;
    auto train_set = data::load_dataset(st.data.train, lo, &rep);
    if (rep.skipped) log_warn(cat(rep.skipped, " bad training records skipped"));
    if (st.spec.feature_norm == "standardize" && st.init_from.empty() && o.resume.empty()) {
      std::vector<std::string> imgs;  // statistics from up to 512 distinct training images
      std::set<std::string> seen;
      for (const auto& s : train_set)
        if (!s.image.empty() && seen.insert(s.image).second && imgs.size() < 512) imgs.push_back(s.image);
      m.init_feature_stats(imgs);
      log_info(cat("feature_norm: per-channel statistics from ", imgs.size(), " training images"));
    }
    std::vector<data::Sample> val_set;
    if (!st.data.val.empty() || st.data.split_every > 0) {
      lo.limit = st.data.val_limit;
      lo.split = st.data.split_every > 0 ? "val" : "";
      val_set = data::load_dataset(st.data.val.empty() ? st.data.train : st.data.val, lo);
    }
    TrainConfig cfg = st.train;
    cfg.out_dir = out_dir + "/" + st.name;
    cfg.resume = o.resume;
    if (!o.precision.empty()) cfg.precision = o.precision;
    cfg.plot = cfg.plot || o.plot;
    cfg.comm = o.comm;
    Trainer t(m, std::move(train_set), std::move(val_set), cfg);
    StageResult sr{st.name, cfg.out_dir, t.fit()};
    out.push_back(sr);
  }
  if (!matched) throw VadaptError(cat(r.source, ": no stage named '", only_stage, "'"));
  return out;
}

}  // namespace vadapt::train

// Multi-stage recipe execution.
#include "train/run_recipe.h"

#include <filesystem>

#include "common/error.h"
#include "common/log.h"
#include "experts/expert.h"
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
    if (!st.init_from.empty()) m.method().init_from(out_dir + "/" + st.init_from);
    if (st.feature_cache != "none")
      m.enable_feature_cache(st.feature_cache == "memory" ? "" : st.feature_cache == "default" ? default_feature_cache_dir() : st.feature_cache);
    data::LoadOptions lo;
    lo.format = st.data.format;
    lo.image_root = st.data.image_root;
    lo.skip_bad = st.data.skip_bad || o.skip_bad;
    lo.image_placement = st.data.image_placement;
    lo.scienceqa_format = st.data.scienceqa_format;
    lo.limit = st.data.limit;
    lo.split_every = st.data.split_every;
    lo.split = st.data.split_every > 0 ? "train" : "";
    data::LoadReport rep;
    auto load_all = [&](const std::vector<std::string>& paths, data::LoadReport* report) {
      std::vector<data::Sample> all;
      for (const auto& p : paths) {
        data::LoadReport r;
        auto part = data::load_dataset(p, lo, &r);
        if (report) report->skipped += r.skipped;
        all.insert(all.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
      }
      return all;
    };
    auto expert = experts::make_expert(st.data.expert, st.data.expert_model, o.device);
    auto train_set = load_all(st.data.train, &rep);
    if (expert) experts::add_context(*expert, train_set, "training");
    if (rep.skipped) log_warn(cat(rep.skipped, " bad training records skipped"));
    if (st.init_from.empty() && o.resume.empty()) m.method().prepare_training(m, train_set);
    std::vector<data::Sample> val_set;
    if (!st.data.val.empty() || st.data.split_every > 0) {
      lo.limit = st.data.val_limit;
      lo.split = st.data.split_every > 0 ? "val" : "";
      val_set = load_all(st.data.val.empty() ? st.data.train : st.data.val, nullptr);
      if (expert) experts::add_context(*expert, val_set, "validation");
    }
    TrainConfig cfg = st.train;
    cfg.out_dir = out_dir + "/" + st.name;
    cfg.resume = o.resume;
    if (!o.precision.empty()) cfg.precision = o.precision;
    cfg.plot = cfg.plot || o.plot;
    cfg.comm = o.comm;
    cfg.skip_bad = lo.skip_bad;
    Trainer t(m, std::move(train_set), std::move(val_set), cfg);
    StageResult sr{st.name, cfg.out_dir, t.fit()};
    out.push_back(sr);
  }
  if (!matched) throw VadaptError(cat(r.source, ": no stage named '", only_stage, "'"));
  return out;
}

}  // namespace vadapt::train

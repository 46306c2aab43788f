// libFuzzer target: training / evaluation data files. Built once per format
// (VADAPT_FUZZ_FORMAT: llava, alpaca, jsonl, coco, scienceqa); the input is the data file
// (for scienceqa, problems.json beside a fixed pid_splits.json). Each input is loaded strictly,
// then with skip_bad and a held-out split, and what loads is rendered as a vicuna_v1 prompt;
// every step must work or raise VadaptError.
#include "common/error.h"
#include "data/dataset.h"
#include "fuzz_common.h"

using namespace vadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const bool once = [] {
    fuzz::write_text("data/pid_splits.json", R"({"test": ["1", "2", "3", "4"], "train": ["5", "6", "7", "8"]})");
    return true;
  }();
  (void)once;
  const std::string format = VADAPT_FUZZ_FORMAT;
  const std::string name = format == "scienceqa" ? "problems.json" : format == "jsonl" ? "data.jsonl" : "data.json";
  const std::string path = fuzz::write_input("data/" + name, data, size);
  for (int mode = 0; mode < 2; ++mode) {
    data::LoadOptions o;
    o.format = format;
    o.check_images = false;
    o.skip_bad = mode == 1;
    if (mode == 1) {
      o.split_every = 2;
      o.split = "val";
      o.scienceqa_format = "QCM-ALE";
      o.image_placement = "as_written";
    }
    try {
      data::LoadReport report;
      auto samples = data::load_dataset(path, o, &report);
      if (static_cast<int64_t>(samples.size()) != report.loaded) __builtin_trap();
      static const auto chat = text::ChatTemplate::by_name("vicuna_v1");
      for (const auto& s : samples) {
        try {
          (void)chat.render(s.conv, false);
        } catch (const VadaptError&) {
        }
      }
    } catch (const VadaptError&) {
    }
  }
  return 0;
}

// libFuzzer target: recipes (YAML through yaml-cpp, then the generic keys, the stages and the
// named method's own options), with a few --set overrides. Every input must load or raise
// VadaptError; ASan + UBSan catch memory errors.
#include "common/error.h"
#include "fuzz_common.h"
#include "train/recipe.h"

using namespace vadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_input("recipe.yaml", data, size);
  for (const auto& overrides : {std::vector<std::string>{}, std::vector<std::string>{"train.lr=1e-3", "model.pool=2"}}) {
    try {
      (void)train::load_recipe(path, overrides);
    } catch (const VadaptError&) {
    }
  }
  return 0;
}

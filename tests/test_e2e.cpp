// End to end on the real frozen models in ../shared/models (ViT-Tiny + stories260K): the LLaVA
// recipe's stage 1 then stage 2 (shortened) lower the held-out loss clearly, and the trained
// adapter changes what `vadapt generate --adapter --image` answers.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>

#include "fixtures.h"
#include "train/recipe.h"
#include "train/run_recipe.h"

using namespace vadapt;

namespace {
std::string run_cli(const std::string& args) {
  std::string out;
  FILE* p = popen((std::string(VADAPT_BINARY) + " -q " + args + " 2>/dev/null").c_str(), "r");
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  EXPECT_EQ(pclose(p), 0) << args;
  return out;
}
}  // namespace

TEST(EndToEnd, LlavaTwoStagesOnRealModelsLowerHeldOutLossAndChangeAnswers) {
  VADAPT_REQUIRE_SHARED();
  setenv("VADAPT_SHARED_DIR", vadapt::test::shared_dir().c_str(), 1);
  vadapt::test::TempDir out;
  auto recipe = train::load_recipe(std::string(VADAPT_SOURCE_DIR) + "/recipes/llava-coco-tiny.yaml",
                                   {"feature_cache=memory", "stages.0.train.epochs=1", "stages.0.train.batch_size=8",
                                    "stages.1.train.max_steps=6", "stages.1.train.batch_size=4", "stages.1.train.grad_accum=1",
                                    "stages.1.train.lr=2e-3", "stages.1.train.lr_projector=2e-4",
                                    "data.val_limit=40", "stages.0.train.log_every=50", "stages.1.train.log_every=50"});
  auto res = train::run_recipe(recipe, out.path());
  ASSERT_EQ(res.size(), 2u);
  const auto& s1 = res[0].result;
  const auto& s2 = res[1].result;
  EXPECT_LT(s1.val_loss_after, s1.val_loss_before - 1.0) << "stage 1: " << s1.val_loss_before << " -> " << s1.val_loss_after;
  EXPECT_LT(s2.val_loss_after, s2.val_loss_before) << "stage 2: " << s2.val_loss_before << " -> " << s2.val_loss_after;
  EXPECT_EQ(s1.trainable, 16512);  // mlp2x_gelu 192 -> 64 -> 64
  const std::string img = vadapt::test::shared_dir() + "/data/coco-captions-val2017/val2017/000000000139.jpg";
  auto trained = run_cli("generate --adapter " + out.path() + "/stage2 --image " + img +
                         " --prompt 'Describe the image.' --max-new-tokens 24");
  // The same recipe's stage-2 model before training: stage-1 projector, LoRA B = 0 (only the
  // projector of stage 1 differs from an untrained model), saved without a step.
  auto untrained = run_cli("generate --adapter " + out.path() + "/stage1 --image " + img +
                           " --prompt 'Describe the image.' --max-new-tokens 24");
  EXPECT_FALSE(trained.empty());
  EXPECT_NE(trained, untrained);
}

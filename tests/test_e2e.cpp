// End to end on the real frozen models in ../shared/models (ViT-Tiny + stories260K): the LLaVA
// recipe's stage 1 then stage 2 (shortened) lower the held-out loss clearly, and the trained
// adapter changes what `vadapt generate --adapter --image` answers.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <iostream>

#include "data/synth.h"
#include "eval/eval_runner.h"
#include "fixtures.h"
#include "train/recipe.h"
#include "train/run_recipe.h"
#include "vlm/vision_language_model.h"

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

// The main job's recipe, shortened (1000 rendered images, its stage 2 on the single-object
// scenes for 600 steps), learns to read colour and shape from the image: exact match on the
// held-out single-object questions well above what a model that ignores the image can reach
// (chance 1/6 and 1/5; the best constant answer ~0.3 on these splits). Catches a broken image
// path (features, standardisation, pooling, projector, image-token placement) on every run.
TEST(EndToEnd, MainRecipeShortenedReadsColourAndShapeFromTheImage) {
  VADAPT_REQUIRE_SHARED();
  setenv("VADAPT_SHARED_DIR", vadapt::test::shared_dir().c_str(), 1);
  vadapt::test::TempDir out;
  data::SynthOptions so;
  so.out = out.file("data");
  so.n = 1000;
  data::write_synthetic_dataset(so);
  setenv("VADAPT_SYNTH_DIR", so.out.c_str(), 1);
  auto recipe = train::load_recipe(std::string(VADAPT_SOURCE_DIR) + "/recipes/llava-synth-tiny.yaml",
                                   {"feature_cache=memory", "stages.0.data.val_limit=32", "stages.1.data.train=${synth}/train_single.json",
                                    "stages.1.data.val=${synth}/val_single.json", "stages.1.data.val_limit=32",
                                    "stages.1.train.max_steps=600", "stages.1.train.batch_size=16", "stages.1.train.save_every=0",
                                    "stages.0.train.log_every=100", "stages.1.train.log_every=100"});
  ASSERT_EQ(recipe.stages.size(), 2u);
  auto res = train::run_recipe(recipe, out.path());
  ASSERT_EQ(res.size(), 2u);
  auto m = vlm::load_vlm_checkpoint(out.path() + "/" + res[1].name);
  eval::EvalOptions eo;
  eo.task = "exact_match";
  eo.data = so.out + "/test_single.json";
  eo.batch_size = 16;
  auto rep = eval::run_eval(*m, eo);
  std::cerr << "held-out single-object questions after the shortened recipe:\n" << rep.table;
  const auto& mt = rep.summary["metrics"];
  ASSERT_TRUE(mt.contains("color") && mt.contains("shape")) << rep.summary.dump();
  EXPECT_GE(mt["color"]["n"].get<double>(), 15) << rep.table;
  EXPECT_GE(mt["color"]["accuracy"].get<double>(), 0.5) << rep.table;
  EXPECT_GE(mt["shape"]["accuracy"].get<double>(), 0.5) << rep.table;
}

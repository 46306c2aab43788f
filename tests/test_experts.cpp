// Expert models at inference (LLaMA-Adapter V2): Tesseract OCR reads the word of rendered
// `vadapt synth` word cards and a real COCO photo's sign; the context goes before the question
// (after a leading <image> tag); bad expert arguments are clear errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>

#include "common/error.h"
#include "data/synth.h"
#include "experts/expert.h"
#include "fixtures.h"
#include "text/prompt.h"
#include "vision/image.h"

using namespace vadapt;
using vadapt::test::TempDir;

namespace {
std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}
}  // namespace

TEST(Experts, OcrReadsTheWordOfRenderedWordCards) {
  TempDir tmp;
  data::SynthOptions so;
  int read = 0, total = 0;
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    data::SynthRng rng(seed);
    auto scene = data::make_scene(rng, 224, true);
    ASSERT_FALSE(scene.word.empty());
    const std::string f = tmp.file("card" + std::to_string(seed) + ".png");
    vision::write_png(f, data::render_scene(scene, 224, so.font));
    const std::string got = lower(experts::ocr_text(f));
    ++total;
    if (got.find(lower(scene.word)) != std::string::npos) ++read;
    else ADD_FAILURE() << "OCR of a card with '" << scene.word << "' gave '" << got << "'";
  }
  EXPECT_EQ(read, total);
}

// A real image with text: ScienceQA test problem 78 is a table of the planets (a rendered
// figure, not a photo); the expert's context names them.
TEST(Experts, OcrReadsTheTableOfARealScienceQaImage) {
  VADAPT_REQUIRE_SHARED();
  const std::string got = lower(experts::ocr_text(vadapt::test::shared_dir() + "/data/scienceqa/images/test/78/image.png"));
  for (const char* w : {"planet", "mercury", "jupiter", "neptune", "rock", "gas"}) EXPECT_NE(got.find(w), std::string::npos) << w << " in " << got;
}

// Tesseract is a document OCR: on COCO photos it does not read scene text (measured: the stop
// sign of 000000252332 and 000000460229, the clock of 000000551780 give only low-confidence junk
// such as "3%", "nh", "-"). The expert must then say nothing rather than feed that junk to the LLM.
TEST(Experts, OcrFeedsNoJunkFromNaturalPhotos) {
  VADAPT_REQUIRE_SHARED();
  for (const char* id : {"000000252332", "000000460229", "000000551780", "000000163951"}) {
    const std::string got = experts::ocr_text(vadapt::test::shared_dir() + "/data/coco-captions-val2017/val2017/" + id + ".jpg");
    EXPECT_EQ(got, "") << id;
  }
}

TEST(Experts, ContextGoesBeforeTheQuestionAfterTheImageTag) {
  class Fixed : public experts::Expert {
   public:
    std::string name() const override { return "ocr"; }
    std::string read(const std::string&) override { return "SALE"; }
  } e;
  const std::string tag = std::string(text::kImageTag) + "\n";
  EXPECT_EQ(experts::with_context(&e, "x.png", tag + "What word is written?", "q"), tag + "Text in the image: \"SALE\"\nWhat word is written?");
  EXPECT_EQ(experts::with_context(&e, "x.png", "What word?", "q"), "Text in the image: \"SALE\"\nWhat word?");
  EXPECT_EQ(experts::with_context(&e, "", "What word?", "q"), "What word?");  // text-only query: no expert
  EXPECT_EQ(experts::with_context(nullptr, "x.png", "What word?", "q"), "What word?");
  EXPECT_THROW(experts::make_expert("caption", ""), VadaptError);
  EXPECT_THROW(experts::make_expert("detector", ""), VadaptError);
  EXPECT_THROW(experts::make_expert("ocr", "/some/dir"), VadaptError);
  EXPECT_EQ(experts::make_expert("none", ""), nullptr);
}

// Training with the context the model will see at inference (recipe `data.expert`): every
// sample with an image gets it before its first question, each image is read once, text-only
// samples are untouched.
TEST(Experts, TrainingSamplesGetTheContextOfTheirImageOnce) {
  class Counting : public experts::Expert {
   public:
    int reads = 0;
    std::string name() const override { return "ocr"; }
    std::string read(const std::string& image) override { return ++reads, image == "blank.png" ? "" : "WORD"; }
  } e;
  std::vector<data::Sample> s(4);
  const std::string tag = std::string(text::kImageTag) + "\n";
  for (int i = 0; i < 4; ++i) s[i].conv.turns = {{"user", tag + "Q" + std::to_string(i)}, {"assistant", "A"}};
  s[0].image = s[1].image = "card.png";
  s[2].image = "blank.png";
  s[3].conv.turns[0].text = "Q3";  // text-only
  experts::add_context(e, s, "training");
  EXPECT_EQ(e.reads, 2);
  EXPECT_EQ(s[0].conv.turns[0].text, tag + "Text in the image: \"WORD\"\nQ0");
  EXPECT_EQ(s[1].conv.turns[0].text, tag + "Text in the image: \"WORD\"\nQ1");
  EXPECT_EQ(s[2].conv.turns[0].text, tag + "Q2");
  EXPECT_EQ(s[3].conv.turns[0].text, "Q3");
}

// The synthetic shapes-and-words task: the same seed gives the same bytes, and every answer is
// consistent with the pixels actually rendered.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <set>

#include "data/dataset.h"
#include "data/synth.h"
#include "fixtures.h"
#include "io/atomic_file.h"
#include "vision/image.h"

using namespace vadapt;
using vadapt::test::TempDir;
namespace fs = std::filesystem;

namespace {

std::map<std::string, std::string> read_tree(const std::string& root) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(root))
    if (e.is_regular_file()) out[fs::relative(e.path(), root).string()] = io::read_text_file(e.path().string());
  return out;
}

struct Blob {
  int64_t n = 0, x0 = 1 << 30, y0 = 1 << 30, x1 = -1, y1 = -1;
  double sx = 0, sy = 0;
  std::map<int, int> row_width;
};

std::map<std::vector<uint8_t>, Blob> blobs_by_color(const vision::Image& img) {
  std::map<std::vector<uint8_t>, Blob> out;
  for (int y = 0; y < img.height; ++y)
    for (int x = 0; x < img.width; ++x) {
      std::vector<uint8_t> c = {img.at(y, x, 0), img.at(y, x, 1), img.at(y, x, 2)};
      if (c == std::vector<uint8_t>{255, 255, 255}) continue;
      auto& b = out[c];
      ++b.n;
      b.x0 = std::min<int64_t>(b.x0, x), b.x1 = std::max<int64_t>(b.x1, x);
      b.y0 = std::min<int64_t>(b.y0, y), b.y1 = std::max<int64_t>(b.y1, y);
      b.sx += x, b.sy += y;
      ++b.row_width[y];
    }
  return out;
}

// The shape as read back from its pixels: fill ratio of the bounding box, and for the two
// half-filled shapes, whether the widest row is at the bottom (triangle) or the middle (diamond).
std::string shape_from_pixels(const Blob& b) {
  const double fill = static_cast<double>(b.n) / static_cast<double>((b.x1 - b.x0 + 1) * (b.y1 - b.y0 + 1));
  if (fill > 0.95) return "square";
  if (fill > 0.7) return "circle";
  if (fill < 0.45) return "star";
  int widest = 0, at = 0;
  for (const auto& [y, w] : b.row_width)
    if (w > widest) widest = w, at = y;
  return at > b.y0 + 0.75 * (b.y1 - b.y0) ? "triangle" : "diamond";
}

}  // namespace

TEST(Synth, SameSeedSameBytesOtherSeedOtherBytes) {
  TempDir a, b, c;
  data::SynthOptions o;
  o.n = 24;
  o.seed = 7;
  o.out = a.path();
  data::write_synthetic_dataset(o);
  o.out = b.path();
  data::write_synthetic_dataset(o);
  o.seed = 8;
  o.out = c.path();
  auto rep = data::write_synthetic_dataset(o);
  auto ta = read_tree(a.path()), tb = read_tree(b.path()), tc = read_tree(c.path());
  EXPECT_EQ(ta.size(), 24u + 16u);  // images + 3 QA + 3 single-object QA + 3 conversation + 3 caption + 3 text-only files + synth.json
  EXPECT_TRUE(ta == tb);
  EXPECT_FALSE(ta == tc);
  // The splits load with the LLaVA reader, every record with its question type.
  auto test = data::load_dataset(c.file("test.json"), {});
  auto train = data::load_dataset(c.file("train.json"), {});
  EXPECT_EQ(static_cast<int64_t>(train.size()), rep.train);
  EXPECT_EQ(static_cast<int64_t>(test.size()), rep.test);
  for (const auto& s : train) EXPECT_FALSE(s.type.empty());
  // The text-only instructions load with the Alpaca reader: no image, a type, an answer.
  auto text = data::load_dataset(c.file("text_train.json"), {});
  EXPECT_EQ(static_cast<int64_t>(text.size()), rep.text_train);
  for (const auto& s : text) {
    EXPECT_TRUE(s.image.empty());
    EXPECT_TRUE(s.type == "first_word" || s.type == "last_word" || s.type == "word_count") << s.type;
    ASSERT_EQ(s.conv.turns.size(), 2u);
    const auto& input = s.conv.turns[0].text;
    const auto list = input.substr(input.rfind('\n') + 1);
    if (s.type == "first_word") EXPECT_EQ(list.substr(0, list.find(' ')), s.conv.turns[1].text);
    if (s.type == "last_word") EXPECT_EQ(list.substr(list.rfind(' ') + 1), s.conv.turns[1].text);
  }
  auto caps = data::load_dataset(c.file("train_captions.json"), {});
  EXPECT_FALSE(caps.empty());
  // The single-object questions are the split's questions about scenes with one object.
  auto single = data::load_dataset(c.file("train_single.json"), {});
  EXPECT_FALSE(single.empty());
  std::set<std::string> ids;
  for (const auto& s : train) ids.insert(s.id);
  for (const auto& s : single) {
    EXPECT_TRUE(ids.count(s.id)) << s.id;
    if (s.type == "count") EXPECT_EQ(s.conv.turns[1].text, "one") << s.id;
  }
  // One conversation per image asks exactly that image's questions (the image with the first).
  std::map<std::string, std::multiset<std::pair<std::string, std::string>>> by_image, in_chats;
  for (const auto& s : train) by_image[s.image].insert({s.conv.turns[0].text.substr(std::string("<image>\n").size()), s.conv.turns[1].text});
  auto chats = data::load_dataset(c.file("train_chat.json"), {});
  ASSERT_EQ(chats.size(), by_image.size());
  for (const auto& s : chats) {
    ASSERT_EQ(s.conv.turns[0].text.rfind("<image>\n", 0), 0u) << s.id;
    for (size_t t = 0; t + 1 < s.conv.turns.size(); t += 2) {
      std::string q = s.conv.turns[t].text;
      if (t == 0) q = q.substr(std::string("<image>\n").size());
      EXPECT_EQ(q.find("<image>"), std::string::npos) << s.id;
      in_chats[s.image].insert({q, s.conv.turns[t + 1].text});
    }
  }
  EXPECT_TRUE(in_chats == by_image);
}

TEST(Synth, AnswersAgreeWithTheRenderedPixels) {
  data::SynthRng rng(123);
  const int size = 224;
  for (int i = 0; i < 150; ++i) {
    auto scene = data::make_scene(rng, size, false);
    auto img = data::render_scene(scene, size, "");
    auto blobs = blobs_by_color(img);
    ASSERT_EQ(blobs.size(), scene.objects.size()) << data::caption_of(scene);
    for (const auto& o : scene.objects) {
      auto it = blobs.find(data::synth_color_rgb(o.color));
      ASSERT_NE(it, blobs.end()) << o.color;
      const Blob& b = it->second;
      const double cx = b.sx / b.n, cy = b.sy / b.n;
      const std::string pos = std::string(cy < size / 2 ? "top" : "bottom") + (cx < size / 2 ? " left" : " right");
      EXPECT_EQ(pos, o.position) << data::caption_of(scene);
      EXPECT_EQ(shape_from_pixels(b), o.shape) << data::caption_of(scene);
    }
    for (const auto& q : data::questions_of(scene)) {
      if (q.type == "count") {
        const char* words[] = {"zero", "one", "two", "three", "four"};
        EXPECT_EQ(q.answer, words[blobs.size()]);
      } else if (q.type == "color") {
        // "What color is the <shape>?": the blob whose pixels read as that shape has that colour.
        const std::string shape = q.question.substr(18, q.question.size() - 19);
        int found = 0;
        for (const auto& [rgb, b] : blobs)
          if (shape_from_pixels(b) == shape) found += rgb == data::synth_color_rgb(q.answer);
        EXPECT_EQ(found, 1) << q.question << " " << q.answer;
      } else if (q.type == "shape") {
        const std::string color = q.question.substr(18, q.question.find(" object") - 18);
        EXPECT_EQ(shape_from_pixels(blobs.at(data::synth_color_rgb(color))), q.answer) << q.question;
      }
    }
  }
}

TEST(Synth, WordCardsShowTheirWordInDarkPixels) {
  data::SynthRng rng(5);
  data::SynthOptions o;
  if (!fs::exists(o.font)) GTEST_SKIP() << o.font << " is missing (scripts/setup.sh installs fonts-dejavu-core)";
  for (int i = 0; i < 10; ++i) {
    auto scene = data::make_scene(rng, 224, true);
    ASSERT_FALSE(scene.word.empty());
    auto img = data::render_scene(scene, 224, o.font);
    int64_t dark = 0, x1 = 0;
    for (int y = 0; y < img.height; ++y)
      for (int x = 0; x < img.width; ++x)
        if (img.at(y, x, 0) < 128) ++dark, x1 = std::max<int64_t>(x1, x);
    EXPECT_GT(dark, 300 * static_cast<int64_t>(scene.word.size())) << scene.word;
    EXPECT_LT(x1, 223) << "word clipped at the right edge: " << scene.word;
    auto qs = data::questions_of(scene);
    ASSERT_EQ(qs.size(), 1u);
    EXPECT_EQ(qs[0].type, "word");
    EXPECT_EQ(qs[0].answer, scene.word);
  }
  TempDir d;
  o.out = d.path();
  o.font = d.file("missing.ttf");
  EXPECT_THROW(data::write_synthetic_dataset(o), std::exception);
}

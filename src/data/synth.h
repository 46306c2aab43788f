// A procedural visual task that small frozen models can learn (`vadapt synth`): scenes of 1-4
// shapes (circle, square, triangle, star, diamond) in named colours and sizes, one per quadrant,
// and cards with a short word rendered in a Debian TrueType font (stb_truetype). Each image
// comes with a caption and question/answer pairs about colour, shape, count, position and the
// written word, written in the LLaVA conversation format with train / val / test splits.
// Deterministic by seed: the generator uses its own integer RNG (no std:: distributions, whose
// output differs between standard libraries), so the same seed gives the same bytes anywhere.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "vision/image.h"

namespace vadapt::data {

struct SynthObject {
  std::string shape;     // circle | square | triangle | star | diamond
  std::string color;     // red | green | blue | yellow | purple | orange
  std::string size;      // small | large
  std::string position;  // top left | top right | bottom left | bottom right
  int cx = 0, cy = 0, radius = 0;  // pixels
};

struct SynthScene {
  std::vector<SynthObject> objects;  // empty for a word card
  std::string word;                  // non-empty for a word card
  int word_x = 0, word_y = 0, word_height = 0;
};

struct SynthQuestion {
  std::string type;  // color | shape | count | position | word
  std::string question;
  std::string answer;
};

struct SynthOptions {
  std::string out;
  uint64_t seed = 0;
  int64_t n = 1000;          // images
  int image_size = 224;
  double word_fraction = 0.2;  // share of images that are word cards
  double val_fraction = 0.1;
  double test_fraction = 0.1;
  std::string font = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf";
};

struct SynthReport {
  int64_t images = 0;
  int64_t train = 0, val = 0, test = 0;  // question/answer samples per split
  int64_t text_train = 0;                // text-only instructions (text_train.json)
  // The first colour question of the test split (for a demo): image path, question, answer.
  std::string example_image, example_question, example_answer;
};

const std::vector<std::string>& synth_colors();
const std::vector<std::string>& synth_shapes();
const std::vector<std::string>& synth_words();
std::vector<uint8_t> synth_color_rgb(const std::string& color);

// Small deterministic RNG (splitmix64).
class SynthRng {
 public:
  explicit SynthRng(uint64_t seed) : state_(seed) {}
  uint64_t next();
  int64_t below(int64_t n);  // uniform-ish in [0, n)
  double unit();             // [0, 1)

 private:
  uint64_t state_;
};

SynthScene make_scene(SynthRng& rng, int image_size, bool word_card);
// Renders a scene; `font_path` is needed only for word cards.
vision::Image render_scene(const SynthScene& scene, int image_size, const std::string& font_path);
std::string caption_of(const SynthScene& scene);
std::vector<SynthQuestion> questions_of(const SynthScene& scene);

// Writes images/NNNNN.png, train.json / val.json / test.json (question/answer, LLaVA format with
// a "type" field), train_single.json / val_single.json / test_single.json (the questions
// about single-object scenes: a curriculum's first step), {train,val,test}_chat.json (the same
// questions, one multi-turn conversation per image, as LLaVA's instruction data), train_captions.json / val_captions.json (stage-1 captions, LLaVA format) and
// text_train.json / text_val.json / text_test.json (text-only instructions, Alpaca format with
// a "type" field: first_word | last_word | word_count) and synth.json (options and counts) under
// opts.out.
SynthReport write_synthetic_dataset(const SynthOptions& opts);

}  // namespace vadapt::data

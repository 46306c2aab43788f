// Procedural shapes-and-words dataset; see synth.h. Shapes are rasterised without anti-aliasing
// (every shape pixel has exactly its named colour), words with stb_truetype's coverage.
#include "data/synth.h"

#include <array>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "io/atomic_file.h"
#include "vision/font.h"

namespace vadapt::data {
namespace fs = std::filesystem;
namespace {

struct NamedColor {
  const char* name;
  uint8_t r, g, b;
};
constexpr std::array<NamedColor, 6> kColors = {{{"red", 220, 30, 30},
                                                {"green", 30, 160, 40},
                                                {"blue", 30, 60, 220},
                                                {"yellow", 240, 210, 20},
                                                {"purple", 140, 40, 180},
                                                {"orange", 250, 130, 10}}};
constexpr uint8_t kBackground = 255;
const char* const kPositions[4] = {"top left", "top right", "bottom left", "bottom right"};
const char* const kCountWords[5] = {"zero", "one", "two", "three", "four"};

bool inside_polygon(const std::vector<std::pair<double, double>>& poly, double x, double y) {
  bool in = false;
  for (size_t i = 0, j = poly.size() - 1; i < poly.size(); j = i++) {
    auto [xi, yi] = poly[i];
    auto [xj, yj] = poly[j];
    if ((yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) in = !in;
  }
  return in;
}

std::vector<std::pair<double, double>> star_polygon(double cx, double cy, double r) {
  std::vector<std::pair<double, double>> p;
  for (int k = 0; k < 10; ++k) {
    double rr = k % 2 == 0 ? r : r * 0.45;
    double a = -M_PI / 2 + k * M_PI / 5;
    p.emplace_back(cx + rr * std::cos(a), cy + rr * std::sin(a));
  }
  return p;
}

bool covers(const SynthObject& o, double x, double y) {
  const double dx = x - o.cx, dy = y - o.cy, r = o.radius;
  if (o.shape == "circle") return dx * dx + dy * dy <= r * r;
  if (o.shape == "square") return std::abs(dx) <= r * 0.85 && std::abs(dy) <= r * 0.85;
  if (o.shape == "diamond") return std::abs(dx) + std::abs(dy) <= r;
  if (o.shape == "triangle") {
    // apex up, base at cy + 0.8 r: |dx| <= r * (dy + r) / 1.8r
    return dy >= -r && dy <= 0.8 * r && std::abs(dx) <= (dy + r) / 1.8;
  }
  if (o.shape == "star") return inside_polygon(star_polygon(o.cx, o.cy, r), x, y);
  throw VadaptError(cat("synth: unknown shape '", o.shape, "'"));
}

constexpr int kWordHeight = 48;

}  // namespace

const std::vector<std::string>& synth_colors() {
  static const std::vector<std::string> v = [] {
    std::vector<std::string> out;
    for (const auto& c : kColors) out.emplace_back(c.name);
    return out;
  }();
  return v;
}

const std::vector<std::string>& synth_shapes() {
  static const std::vector<std::string> v = {"circle", "square", "triangle", "star", "diamond"};
  return v;
}

const std::vector<std::string>& synth_words() {
  static const std::vector<std::string> v = {"cat", "dog", "sun", "tree", "ball", "fish",
                                             "bird", "cake", "book", "milk", "boat", "frog"};
  return v;
}

std::vector<uint8_t> synth_color_rgb(const std::string& color) {
  for (const auto& c : kColors)
    if (color == c.name) return {c.r, c.g, c.b};
  throw VadaptError(cat("synth: unknown colour '", color, "'"));
}

uint64_t SynthRng::next() {
  uint64_t z = (state_ += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

int64_t SynthRng::below(int64_t n) { return static_cast<int64_t>((next() >> 11) % static_cast<uint64_t>(n)); }

double SynthRng::unit() { return static_cast<double>(next() >> 11) / 9007199254740992.0; }

// Draws k distinct items of [0, n) in random order.
static std::vector<int64_t> pick_distinct(SynthRng& rng, int64_t n, int64_t k) {
  std::vector<int64_t> all(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
  for (int64_t i = 0; i < k; ++i) std::swap(all[static_cast<size_t>(i)], all[static_cast<size_t>(i + rng.below(n - i))]);
  all.resize(static_cast<size_t>(k));
  return all;
}

SynthScene make_scene(SynthRng& rng, int size, bool word_card) {
  SynthScene s;
  if (word_card) {
    const auto& words = synth_words();
    s.word = words[static_cast<size_t>(rng.below(static_cast<int64_t>(words.size())))];
    s.word_height = kWordHeight;
    // Position jitter that keeps the word inside: words have at most 4 glyphs, each narrower
    // than 0.8 * the pixel height in DejaVu Sans Bold.
    const int max_w = 4 * kWordHeight * 8 / 10;
    s.word_x = static_cast<int>(8 + rng.below(std::max(1, size - max_w - 16)));
    s.word_y = static_cast<int>(8 + rng.below(std::max(1, size - kWordHeight - 16)));
    return s;
  }
  const int64_t count = 1 + rng.below(4);
  auto colors = pick_distinct(rng, static_cast<int64_t>(kColors.size()), count);
  auto shapes = pick_distinct(rng, static_cast<int64_t>(synth_shapes().size()), count);
  auto cells = pick_distinct(rng, 4, count);
  const int cell = size / 2;
  for (int64_t i = 0; i < count; ++i) {
    SynthObject o;
    o.shape = synth_shapes()[static_cast<size_t>(shapes[static_cast<size_t>(i)])];
    o.color = kColors[static_cast<size_t>(colors[static_cast<size_t>(i)])].name;
    const bool large = rng.below(2) == 1;
    o.size = large ? "large" : "small";
    o.radius = large ? cell * 3 / 8 : cell / 5;
    const int q = static_cast<int>(cells[static_cast<size_t>(i)]);
    o.position = kPositions[q];
    const int slack = cell / 2 - o.radius - 2;
    o.cx = (q % 2) * cell + cell / 2 + static_cast<int>(rng.below(2 * slack + 1)) - slack;
    o.cy = (q / 2) * cell + cell / 2 + static_cast<int>(rng.below(2 * slack + 1)) - slack;
    s.objects.push_back(o);
  }
  return s;
}

vision::Image render_scene(const SynthScene& scene, int size, const std::string& font_path) {
  vision::Image img;
  img.width = img.height = size;
  img.format = "PNG";
  img.rgb.assign(static_cast<size_t>(size) * size * 3, kBackground);
  for (const auto& o : scene.objects) {
    auto rgb = synth_color_rgb(o.color);
    for (int y = std::max(0, o.cy - o.radius); y <= std::min(size - 1, o.cy + o.radius); ++y)
      for (int x = std::max(0, o.cx - o.radius); x <= std::min(size - 1, o.cx + o.radius); ++x)
        if (covers(o, x, y))
          for (int c = 0; c < 3; ++c) img.rgb[(static_cast<size_t>(y) * size + x) * 3 + c] = rgb[static_cast<size_t>(c)];
  }
  if (!scene.word.empty()) vision::font_at(font_path).draw(img, scene.word, scene.word_x, scene.word_y, scene.word_height);
  return img;
}

std::string caption_of(const SynthScene& s) {
  if (!s.word.empty()) return "The word \"" + s.word + "\" written in black.";
  std::string out;
  for (size_t i = 0; i < s.objects.size(); ++i) {
    const auto& o = s.objects[i];
    if (i > 0) out += i + 1 == s.objects.size() ? " and " : ", ";
    out += std::string(i == 0 ? "A " : "a ") + o.size + " " + o.color + " " + o.shape + " at the " + o.position;
  }
  return out + ".";
}

std::vector<SynthQuestion> questions_of(const SynthScene& s) {
  if (!s.word.empty()) return {{"word", "What word is written?", s.word}};
  const auto& objs = s.objects;
  const auto& a = objs.front();
  const auto& b = objs.back();
  const auto& c = objs[objs.size() / 2];
  // Colours and shapes are distinct within a scene, so every question has one answer.
  return {{"color", "What color is the " + a.shape + "?", a.color},
          {"shape", "What shape is the " + b.color + " object?", b.shape},
          {"count", "How many shapes are there?", kCountWords[objs.size()]},
          {"position", "Where is the " + c.color + " " + c.shape + "?", c.position}};
}

// Text-only instructions in the Alpaca format (for text-only and mixed-modality recipes): a list
// of 2-5 words and one of three questions about it (its first word, its last word, how many
// words), from an RNG stream of its own so the visual task's bytes do not depend on it.
void write_text_instructions(const SynthOptions& o, SynthReport& rep) {
  using ojson = nlohmann::ordered_json;
  SynthRng rng(o.seed ^ 0x7e57ull);
  std::vector<std::string> vocab = synth_words();
  for (const auto& c : synth_colors()) vocab.push_back(c);
  for (const auto& c : synth_shapes()) vocab.push_back(c);
  const char* counts[] = {"zero", "one", "two", "three", "four", "five"};
  std::map<std::string, ojson> out;
  for (const char* split : {"train", "val", "test"}) out[split] = ojson::array();
  const int64_t n = 2 * o.n;
  const int64_t n_test = static_cast<int64_t>(std::llround(n * o.test_fraction)), n_val = static_cast<int64_t>(std::llround(n * o.val_fraction));
  for (int64_t i = 0; i < n; ++i) {
    const std::string split = i < n_test ? "test" : i < n_test + n_val ? "val" : "train";
    const int64_t len = 2 + rng.below(4);
    std::vector<std::string> words;
    std::string list;
    for (int64_t k = 0; k < len; ++k) {
      words.push_back(vocab[static_cast<size_t>(rng.below(static_cast<int64_t>(vocab.size())))]);
      list += (k ? " " : "") + words.back();
    }
    const int64_t kind = rng.below(3);
    const std::string type = kind == 0 ? "first_word" : kind == 1 ? "last_word" : "word_count";
    const std::string instruction = kind == 0 ? "What is the first word of the list?"
                                    : kind == 1 ? "What is the last word of the list?"
                                                : "How many words are in the list?";
    const std::string answer = kind == 0 ? words.front() : kind == 1 ? words.back() : counts[len];
    char id[32];
    std::snprintf(id, sizeof id, "t%05ld", static_cast<long>(i));
    out[split].push_back({{"id", id}, {"type", type}, {"instruction", instruction}, {"input", list}, {"output", answer}});
  }
  for (const char* split : {"train", "val", "test"})
    io::write_text_atomic((fs::path(o.out) / ("text_" + std::string(split) + ".json")).string(), out[split].dump(1));
  rep.text_train = static_cast<int64_t>(out["train"].size());
}

SynthReport write_synthetic_dataset(const SynthOptions& o) {
  if (o.out.empty()) throw VadaptError("synth: --out is required");
  if (o.n <= 0) throw VadaptError(cat("synth: --n must be positive, got ", o.n));
  if (o.image_size < 64) throw VadaptError(cat("synth: --image-size must be at least 64, got ", o.image_size));
  if (o.val_fraction < 0 || o.test_fraction < 0 || o.val_fraction + o.test_fraction >= 1)
    throw VadaptError("synth: val and test fractions must be >= 0 and sum to less than 1");
  if (o.word_fraction > 0) vision::font_at(o.font);  // fail before writing anything
  fs::create_directories(fs::path(o.out) / "images");
  SynthRng rng(o.seed);
  using ojson = nlohmann::ordered_json;
  std::map<std::string, ojson> qa, caps;
  for (const char* split : {"train", "val", "test"}) qa[split] = caps[split] = ojson::array();
  std::map<std::string, ojson> single;  // questions about single-object scenes (a curriculum's first step)
  std::map<std::string, ojson> chats;   // all questions about an image as one multi-turn conversation
  for (const char* split : {"train", "val", "test"}) single[split] = chats[split] = ojson::array();
  const int64_t n_test = static_cast<int64_t>(std::llround(o.n * o.test_fraction));
  const int64_t n_val = static_cast<int64_t>(std::llround(o.n * o.val_fraction));
  SynthReport rep;
  Stopwatch sw;
  for (int64_t i = 0; i < o.n; ++i) {
    const std::string split = i < n_test ? "test" : i < n_test + n_val ? "val" : "train";
    const bool word = rng.unit() < o.word_fraction;
    auto scene = make_scene(rng, o.image_size, word);
    char name[32];
    std::snprintf(name, sizeof name, "images/%05ld.png", static_cast<long>(i));
    vision::write_png((fs::path(o.out) / name).string(), render_scene(scene, o.image_size, o.font));
    const std::string id = std::string(name).substr(7, 5);
    caps[split].push_back({{"id", id},
                           {"image", name},
                           {"conversations", {{{"from", "human"}, {"value", "<image>"}}, {{"from", "gpt"}, {"value", caption_of(scene)}}}}});
    // The conversation asks the image's questions in an order of their own (a generator apart
    // from the scene's, so the images and the other files stay as they were), so every type
    // also comes first, right after the image, as in the single-question files.
    const auto questions = questions_of(scene);
    auto qs = questions;
    SynthRng order(o.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i) + 1);
    for (size_t k = qs.size(); k > 1; --k) std::swap(qs[k - 1], qs[static_cast<size_t>(order.below(static_cast<int64_t>(k)))]);
    ojson turns = ojson::array();
    for (const auto& q : qs) {
      turns.push_back({{"from", "human"}, {"value", (turns.empty() ? "<image>\n" : "") + q.question}});
      turns.push_back({{"from", "gpt"}, {"value", q.answer}});
    }
    for (const auto& q : questions) {
      if (split == "test" && q.type == "color" && rep.example_image.empty()) {
        rep.example_image = (fs::path(o.out) / name).string();
        rep.example_question = q.question;
        rep.example_answer = q.answer;
      }
      ojson sample = {{"id", id + "_" + q.type},
                      {"image", name},
                      {"type", q.type},
                      {"conversations", {{{"from", "human"}, {"value", "<image>\n" + q.question}}, {{"from", "gpt"}, {"value", q.answer}}}}};
      if (scene.objects.size() == 1) single[split].push_back(sample);
      qa[split].push_back(std::move(sample));
    }
    chats[split].push_back({{"id", id}, {"image", name}, {"conversations", std::move(turns)}});
    ++rep.images;
    if ((i + 1) % 250 == 0 || i + 1 == o.n)
      log_info(cat("synth: ", i + 1, "/", o.n, " images (", static_cast<int64_t>((i + 1) / std::max(1e-9, sw.seconds())), " img/s)"));
  }
  for (const char* split : {"train", "val", "test"}) {
    io::write_text_atomic((fs::path(o.out) / (std::string(split) + ".json")).string(), qa[split].dump(1));
    io::write_text_atomic((fs::path(o.out) / (std::string(split) + "_captions.json")).string(), caps[split].dump(1));
    io::write_text_atomic((fs::path(o.out) / (std::string(split) + "_single.json")).string(), single[split].dump(1));
    io::write_text_atomic((fs::path(o.out) / (std::string(split) + "_chat.json")).string(), chats[split].dump(1));
  }
  write_text_instructions(o, rep);
  rep.train = static_cast<int64_t>(qa["train"].size());
  rep.val = static_cast<int64_t>(qa["val"].size());
  rep.test = static_cast<int64_t>(qa["test"].size());
  ojson meta = {{"generator", "vadapt synth"},
                {"seed", o.seed},
                {"images", o.n},
                {"image_size", o.image_size},
                {"word_fraction", o.word_fraction},
                {"font", fs::path(o.font).filename().string()},
                {"questions", {{"train", rep.train}, {"val", rep.val}, {"test", rep.test}}}};
  io::write_text_atomic((fs::path(o.out) / "synth.json").string(), meta.dump(2));
  return rep;
}

}  // namespace vadapt::data

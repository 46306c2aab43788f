// Tiny random HF-format models and comparison helpers for the tests.
#include "fixtures.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "vision/clip_vision.h"
#include "vision/image.h"
#include "vision/vit.h"

namespace vadapt::test {
namespace fs = std::filesystem;

TempDir::TempDir() {
  std::string tmpl = (fs::temp_directory_path() / "vadapt-test-XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
  path_ = buf.data();
}

TempDir::~TempDir() {
  io::remove_tree(path_);
}

io::LlamaConfig tiny_llama_config(bool gqa, bool tied, bool bias) {
  io::LlamaConfig c;
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.num_key_value_heads = gqa ? 2 : 4;
  c.head_dim = 8;
  c.vocab_size = 300;
  c.max_position_embeddings = 512;
  c.rms_norm_eps = 1e-5;
  c.tie_word_embeddings = tied;
  c.attention_bias = bias;
  c.mlp_bias = bias;
  c.bos_token_id = 256;
  c.eos_token_ids = {257};
  return c;
}

namespace {
void write_module(const std::string& path, torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& p : m.named_parameters(true)) tensors.emplace_back(p.key(), p.value());
  io::write_safetensors(path, tensors, {{"format", "pt"}});
}
}  // namespace

void write_tiny_llama(const std::string& dir, const io::LlamaConfig& cfg, uint64_t seed) {
  fs::create_directories(dir);
  model::LlamaForCausalLM m(cfg, torch::TensorOptions().dtype(torch::kFloat32));
  model::init_normal(*m, seed, 0.1);
  io::write_text_atomic(dir + "/config.json", cfg.to_json().dump(2));
  write_module(dir + "/model.safetensors", *m);
  write_tiny_tokenizer(dir, cfg.vocab_size);
}

void write_tiny_vit(const std::string& dir, uint64_t seed) {
  fs::create_directories(dir);
  io::ViTConfig c;
  c.architecture = "ViTForImageClassification";
  c.hidden_size = 32;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.intermediate_size = 64;
  c.image_size = 32;
  c.patch_size = 8;
  c.num_labels = 10;
  vision::ViT m(c, torch::TensorOptions().dtype(torch::kFloat32));
  model::init_normal(*m, seed, 0.1);
  io::write_text_atomic(dir + "/config.json", c.to_json().dump(2));
  write_module(dir + "/model.safetensors", *m);
}

void write_tiny_clip(const std::string& dir, uint64_t seed) {
  fs::create_directories(dir);
  io::ClipVisionConfig c;
  c.architecture = "CLIPVisionModelWithProjection";
  c.hidden_size = 32;
  c.intermediate_size = 64;
  c.num_hidden_layers = 3;
  c.num_attention_heads = 4;
  c.image_size = 32;
  c.patch_size = 8;
  c.projection_dim = 16;
  vision::ClipVision m(c, torch::TensorOptions().dtype(torch::kFloat32));
  model::init_normal(*m, seed, 0.1);
  io::write_text_atomic(dir + "/config.json", c.to_json().dump(2));
  write_module(dir + "/model.safetensors", *m);
}

void write_tiny_tokenizer(const std::string& dir, int64_t vocab_size) {
  // GPT-2 byte-to-unicode map, so that every byte is a token.
  auto to_unicode = [](int b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    static int extra[256];
    static bool init = false;
    if (!init) {
      int n = 0;
      for (int x = 0; x < 256; ++x) {
        bool pr = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
        extra[x] = pr ? x : 256 + n++;
      }
      init = true;
    }
    uint32_t cp = printable ? b : extra[b];
    std::string s;
    if (cp < 0x80) s += static_cast<char>(cp);
    else s += static_cast<char>(0xC0 | (cp >> 6)), s += static_cast<char>(0x80 | (cp & 0x3F));
    return s;
  };
  nlohmann::json vocab = nlohmann::json::object();
  for (int b = 0; b < 256; ++b) vocab[to_unicode(b)] = b;
  // Merges: "Ġ t", "h e", "Ġt he" -> ids 258.. (256/257 are <s>, </s>)
  std::vector<std::pair<std::string, std::string>> merges = {{"\xC4\xA0", "t"}, {"h", "e"}, {"\xC4\xA0t", "he"}, {"i", "n"}};
  int64_t next = 258;
  for (const auto& [a, b] : merges)
    if (next < vocab_size) vocab[a + b] = next++;
  nlohmann::json merge_list = nlohmann::json::array();
  for (const auto& [a, b] : merges) merge_list.push_back(a + " " + b);
  nlohmann::json tok = {
      {"version", "1.0"},
      {"added_tokens",
       {{{"id", 256}, {"content", "<s>"}, {"special", true}}, {{"id", 257}, {"content", "</s>"}, {"special", true}}}},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"}, {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merge_list}}}};
  io::write_text_atomic(dir + "/tokenizer.json", tok.dump(1));
  nlohmann::json cfg = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"add_bos_token", true}};
  io::write_text_atomic(dir + "/tokenizer_config.json", cfg.dump(1));
}

std::vector<data::Sample> mixed_samples(const TinyVlmWorld& w) {
  auto samples = data::load_dataset(w.data, {});
  for (const char* c : {"red", "green", "blue", "white"}) {
    data::Sample t;
    t.id = std::string("text-") + c;
    t.conv.turns = {{"user", std::string("Say ") + c + "."}, {"assistant", c}};
    samples.push_back(t);
  }
  return samples;
}

vlm::Batch batch_of(vlm::VisionLanguageModel& m, const std::vector<data::Sample>& s, const std::vector<size_t>& idx) {
  std::vector<text::EncodedPrompt> prompts;
  std::vector<std::string> images;
  for (auto i : idx) {
    prompts.push_back(text::encode_segments(m.tokenizer(), m.chat_template().segments(s[i].conv, false), m.image_tokens()));
    images.push_back(s[i].image);
  }
  return m.collate(prompts, images);
}

torch::Tensor logits_of(vlm::VisionLanguageModel& m, const vlm::Batch& b) {
  torch::NoGradGuard ng;
  auto in = m.prepare(b);
  model::ForwardContext ctx;
  if (!in.state.empty()) ctx.adapter_state = &in.state;
  if (b.mask.defined() && b.mask.min().item<int64_t>() == 0) ctx.attention_mask = b.mask;
  return m.lm()->logits(m.lm()->forward_embeds(in.embeds, ctx));
}

std::string shared_dir() {
  if (const char* env = std::getenv("VADAPT_SHARED_DIR")) return fs::exists(env) ? env : "";
  fs::path p = fs::path(VADAPT_SOURCE_DIR) / ".." / "shared";
  if (fs::exists(p / "models")) return fs::canonical(p).string();
  return "";
}

::testing::AssertionResult tensors_close(const torch::Tensor& a_in, const torch::Tensor& b_in, double atol, double rtol) {
  auto a = a_in.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  auto b = b_in.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  if (a.sizes() != b.sizes()) {
    std::ostringstream os;
    os << "shape " << a.sizes() << " != " << b.sizes();
    return ::testing::AssertionFailure() << os.str();
  }
  if (a.numel() == 0) return ::testing::AssertionSuccess();
  auto diff = (a - b).abs();
  auto bad = diff > (atol + rtol * b.abs());
  double max_diff = diff.max().item<double>();
  if (!bad.any().item<bool>() && !std::isnan(max_diff)) return ::testing::AssertionSuccess() << "max abs diff " << max_diff;
  int64_t first = bad.flatten().nonzero().numel() ? bad.flatten().nonzero()[0][0].item<int64_t>() : -1;
  std::ostringstream os;
  os << "max abs diff " << max_diff << " > atol " << atol << "; first bad flat index " << first;
  if (first >= 0) os << " (got " << a.flatten()[first].item<double>() << ", expected " << b.flatten()[first].item<double>() << ")";
  return ::testing::AssertionFailure() << os.str();
}

::testing::AssertionResult tensors_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type())
    return ::testing::AssertionFailure() << "shape/dtype differ";
  auto ac = a.contiguous().to(torch::kCPU), bc = b.contiguous().to(torch::kCPU);
  if (std::memcmp(ac.data_ptr(), bc.data_ptr(), static_cast<size_t>(ac.numel()) * ac.element_size()) != 0)
    return tensors_close(a, b, 0.0) << " (bitwise differ)";
  return ::testing::AssertionSuccess();
}

TinyVlmWorld::TinyVlmWorld() {
  llm = dir.file("llm");
  clip = dir.file("clip");
  write_tiny_llama(llm, tiny_llama_config());
  write_tiny_clip(clip);
  nlohmann::json recs = nlohmann::json::array();
  const char* names[] = {"red", "green", "blue", "white"};
  const uint8_t rgb[4][3] = {{220, 20, 20}, {20, 200, 20}, {20, 20, 220}, {240, 240, 240}};
  for (int i = 0; i < 8; ++i) {
    vision::Image img;
    img.width = img.height = 40;
    img.rgb.resize(40 * 40 * 3);
    for (size_t p = 0; p < img.rgb.size(); ++p) img.rgb[p] = rgb[i % 4][p % 3];
    std::string f = "img" + std::to_string(i) + ".png";
    vision::write_png(dir.file(f), img);
    recs.push_back({{"id", i}, {"image", f},
                    {"conversations", {{{"from", "human"}, {"value", "<image>\nWhat colour?"}},
                                       {{"from", "gpt"}, {"value", std::string("the ") + names[i % 4]}}}}});
  }
  data = dir.file("train.json");
  io::write_text_atomic(data, recs.dump());
}

vlm::VlmSpec TinyVlmWorld::spec(const std::string& tune) const {
  vlm::VlmSpec s;
  s.llm = llm;
  s.vision = clip;
  s.preprocess = "clip32";
  s.template_name = "vicuna_v1";
  s.options = {{"mm_projector_type", "mlp2x_gelu"}, {"tune", tune}};
  if (tune == "lora" || tune == "qlora") s.options.update({{"r", 4}, {"lora_alpha", 8}, {"lora_dropout", 0.0}});
  return s;
}

}  // namespace vadapt::test

// Numerics against external reference implementations (../shared/golden, see its README):
// llama2.c for stories260K, torchvision for ViT-Tiny, openai/CLIP for the tiny CLIP, and
// Pillow for every preprocessing pipeline. Skips with a message when ../shared is absent.
// tests/golden/peft (in this repository; made by tests/python/peft_crosscheck.py with
// transformers + PEFT from random weights): a PEFT LoRA folder and the PEFT model's logits.
#include <gtest/gtest.h>

#include "adapters/peft.h"
#include "data/dataset.h"
#include "fixtures.h"
#include "generate/generator.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/fast_decode.h"
#include "model/llama.h"
#include "text/tokenizer.h"
#include "vision/image.h"
#include "vision/preprocess.h"
#include "vision/vision_tower.h"

using namespace vadapt;
using vadapt::test::shared_dir;
using vadapt::test::tensors_close;

namespace {
std::string S(const std::string& rel) { return shared_dir() + "/" + rel; }
}  // namespace

TEST(GoldenStories260K, TokenizationMatchesLlama2c) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::read_json(S("golden/stories260K.llama2c.json"));
  auto tok = text::load_tokenizer(S("models/stories260K"));
  for (const auto& t : g["tokenization"]) {
    auto ids = tok->encode(t["text"].get<std::string>(), true);
    EXPECT_EQ(ids, t["ids_with_bos"].get<std::vector<int64_t>>()) << t["text"];
  }
}

TEST(GoldenStories260K, LogitsAtEveryPositionMatchLlama2c) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::read_json(S("golden/stories260K.llama2c.json"));
  auto ids_v = g["logits_prompt_ids"].get<std::vector<int64_t>>();
  auto expected = torch::tensor(g["logits"].get<std::vector<std::vector<float>>>()[0]);
  std::vector<float> flat;
  for (const auto& row : g["logits"]) for (float v : row.get<std::vector<float>>()) flat.push_back(v);
  expected = torch::tensor(flat).view({static_cast<int64_t>(ids_v.size()), -1});
  auto lm = model::load_llama(S("models/stories260K"), torch::kFloat32, torch::kCPU);
  torch::NoGradGuard ng;
  auto ids = torch::tensor(ids_v).unsqueeze(0);
  model::ForwardContext full;
  auto logits = lm->forward(ids, full)[0];  // (T, 512)
  EXPECT_TRUE(tensors_close(logits, expected, 1e-4));
  // One token at a time through the KV cache, as llama2.c computes them.
  auto cache = lm->make_cache(1, ids.size(1));
  model::ForwardContext ctx;
  ctx.cache = &cache;
  std::vector<torch::Tensor> steps;
  for (int64_t t = 0; t < ids.size(1); ++t) steps.push_back(lm->forward(ids.narrow(1, t, 1), ctx)[0]);
  EXPECT_TRUE(tensors_close(torch::cat(steps, 0), expected, 1e-4));
  // The fast decode step (what generation uses on the CPU), one token at a time likewise.
  auto fast = model::FastDecoder::make(*lm);
  ASSERT_TRUE(fast);
  auto fast_cache = lm->make_cache(1, ids.size(1));
  model::ForwardContext fctx;
  fctx.cache = &fast_cache;
  std::vector<torch::Tensor> fast_steps;
  for (int64_t t = 0; t < ids.size(1); ++t) fast_steps.push_back(fast->step(ids.select(1, t), fctx));
  EXPECT_TRUE(tensors_close(torch::cat(fast_steps, 0), expected, 1e-4));
}

TEST(GoldenStories260K, GreedyIdsMatchLlama2c) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::read_json(S("golden/stories260K.llama2c.json"));
  auto want = g["greedy_ids"].get<std::vector<int64_t>>();
  auto tok = text::load_tokenizer(S("models/stories260K"));
  auto prompt = tok->encode(g["greedy_prompt"].get<std::string>(), true);
  ASSERT_LT(prompt.size(), want.size());
  auto lm = model::load_llama(S("models/stories260K"), torch::kFloat32, torch::kCPU);
  generate::GenerateOptions opts;
  opts.max_new_tokens = static_cast<int64_t>(want.size() - prompt.size());
  opts.stop_at_eos = false;
  for (const char* fast : {"1", "0"}) {  // the fast decode step, then the modules
    setenv("VADAPT_FAST_DECODE", fast, 1);
    auto res = generate::Generator(lm).generate({prompt}, opts);
    std::vector<int64_t> got = prompt;
    got.insert(got.end(), res.tokens[0].begin(), res.tokens[0].end());
    EXPECT_EQ(got, want) << "VADAPT_FAST_DECODE=" << fast;
  }
  unsetenv("VADAPT_FAST_DECODE");
}

// bf16 weights (the fast step widens them and keeps activations in float32; the KV cache is
// bf16) against llama2c's float32 logits at every position of the golden prompt: closer than the
// bf16 module path (which rounds every activation), and within a stated tolerance.
TEST(GoldenStories260K, Bf16WeightsOnTheFastPathStayCloseToTheFloat32Logits) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::read_json(S("golden/stories260K.llama2c.json"));
  auto ids_v = g["logits_prompt_ids"].get<std::vector<int64_t>>();
  std::vector<float> flat;
  for (const auto& row : g["logits"]) for (float v : row.get<std::vector<float>>()) flat.push_back(v);
  auto expected = torch::tensor(flat).view({static_cast<int64_t>(ids_v.size()), -1});
  auto lm = model::load_llama(S("models/stories260K"), torch::kBFloat16, torch::kCPU);
  torch::NoGradGuard ng;
  auto ids = torch::tensor(ids_v).unsqueeze(0);
  auto fast = model::FastDecoder::make(*lm);
  ASSERT_TRUE(fast);
  auto fc = lm->make_cache(1, ids.size(1)), mc = lm->make_cache(1, ids.size(1));
  model::ForwardContext f, m;
  f.cache = &fc, m.cache = &mc;
  std::vector<torch::Tensor> fs, ms;
  for (int64_t t = 0; t < ids.size(1); ++t) {
    fs.push_back(fast->step(ids.select(1, t), f));
    ms.push_back(lm->forward(ids.narrow(1, t, 1), m)[0].to(torch::kFloat32));
  }
  const double err = (torch::cat(fs, 0) - expected).abs().max().item<double>();
  const double err_mod = (torch::cat(ms, 0) - expected).abs().max().item<double>();
  const double scale = expected.abs().max().item<double>();
  EXPECT_LT(err, 0.02 * scale) << "bf16 fast " << err << ", logits up to " << scale;
  EXPECT_LT(err, err_mod) << "bf16 fast " << err << ", bf16 modules " << err_mod;
  std::cerr << "[ bf16 ] max |logit - llama2c f32|: fast " << err << ", modules " << err_mod << " (logits up to " << scale << ")\n";
}

TEST(GoldenViTTiny, HiddenStatesAndLogitsMatchTorchvision) {
  VADAPT_REQUIRE_SHARED();
  auto tower = vision::load_vision_tower(S("models/vit-tiny-patch16-224"), torch::kFloat32, torch::kCPU);
  auto g = io::SafeTensorsFile::open(S("golden/vit-tiny.torchvision.safetensors"));
  auto pre = vision::PreprocessConfig::from_hf(S("models/vit-tiny-patch16-224"));
  torch::NoGradGuard ng;
  for (const std::string img : {"000000000139.jpg", "000000000802.jpg"}) {
    auto px = g->tensor(img + ".pixel_values");
    // Our own decode + preprocessing reproduces the reference pixel values.
    auto ours = vision::preprocess(vision::decode_image_file(S("data/coco-captions-val2017/val2017/" + img)), pre);
    EXPECT_TRUE(tensors_close(ours, px, 1e-6)) << img;
    auto out = tower->encode(px.unsqueeze(0));
    EXPECT_TRUE(tensors_close(out.last_hidden_state[0], g->tensor(img + ".last_hidden_state"), 1e-4)) << img;
    EXPECT_TRUE(tensors_close(out.head[0], g->tensor(img + ".logits"), 1e-4)) << img;
  }
}

TEST(GoldenTinyClip, HiddenStatesPooledAndEmbedsMatchOpenAiClip) {
  VADAPT_REQUIRE_SHARED();
  auto tower = vision::load_vision_tower(S("models/tiny-random-clip-vision"), torch::kFloat32, torch::kCPU);
  auto g = io::SafeTensorsFile::open(S("golden/tiny-clip-vision.openai.safetensors"));
  torch::NoGradGuard ng;
  for (const std::string name : {"random", "gradient", "coco_000000194875"}) {
    auto out = tower->encode(g->tensor(name + ".pixel_values").unsqueeze(0));
    ASSERT_EQ(out.hidden_states.size(), 4u);
    for (int k = 0; k < 4; ++k)
      EXPECT_TRUE(tensors_close(out.hidden_states[k][0], g->tensor(name + ".hidden_states." + std::to_string(k)), 1e-5))
          << name << " hidden_states." << k;
    EXPECT_TRUE(tensors_close(out.last_hidden_state[0], g->tensor(name + ".last_hidden_state"), 1e-5)) << name;
    EXPECT_TRUE(tensors_close(out.pooled[0], g->tensor(name + ".pooler_output"), 1e-5)) << name;
    EXPECT_TRUE(tensors_close(out.head[0], g->tensor(name + ".image_embeds"), 1e-5)) << name;
    EXPECT_TRUE(tensors_close(vision::select_patch_features(out, -2)[0], g->tensor(name + ".llava_features"), 1e-5)) << name;
  }
  // The COCO input through our decoder and the folder's 32 px CLIP preprocessing.
  auto pre = vision::PreprocessConfig::from_hf(S("models/tiny-random-clip-vision"));
  auto px = vision::preprocess(vision::decode_image_file(S("data/coco-captions-val2017/val2017/000000194875.jpg")), pre);
  EXPECT_TRUE(tensors_close(px, g->tensor("coco_000000194875.pixel_values"), 1e-6));
}

TEST(GoldenPreprocess, EveryPipelineIsPixelExactWithPillow) {
  VADAPT_REQUIRE_SHARED();
  auto meta = io::read_json(S("golden/preprocess.pil.json"));
  auto g = io::SafeTensorsFile::open(S("golden/preprocess.pil.safetensors"));
  const std::vector<std::pair<std::string, std::string>> pipelines = {
      {"clip224", "clip224"}, {"clip336", "clip336"}, {"llava_pad336", "llava_pad336"},
      {"imagenet224_square", "imagenet224"}, {"vit224_bilinear", "vit224"}};
  for (const auto& im : meta["images"]) {
    std::string name = im["name"].get<std::string>();
    auto img = vision::decode_image_file(S(im["path"].get<std::string>()));
    EXPECT_EQ(img.width, im["size_wh"][0].get<int>()) << name;
    EXPECT_EQ(img.height, im["size_wh"][1].get<int>()) << name;
    for (const auto& [key, ours] : pipelines) {
      auto got = vision::preprocess(img, vision::PreprocessConfig::named(ours));
      auto want = g->tensor(name + "." + key);
      // One uint8 level is ~0.015 after normalisation: 1e-5 means every pixel is identical.
      EXPECT_TRUE(tensors_close(got, want, 1e-5)) << name << " " << key;
    }
  }
}

TEST(GoldenLlama2Tokenizer, LoadsThe32kSentencePieceModel) {
  VADAPT_REQUIRE_SHARED();
  auto tok = text::load_tokenizer(S("models/llama2-tokenizer"));
  EXPECT_EQ(tok->vocab_size(), 32000);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  auto ids = tok->encode("Hello world", true);
  EXPECT_EQ(ids, (std::vector<int64_t>{1, 15043, 3186}));
  EXPECT_EQ(tok->decode(ids), "Hello world");
}

// Our reader of the original ScienceQA problems.json builds exactly the prompts and answers of
// LLaVA's converted llava_test_CQM-A.json (the 50 problems both files hold).
TEST(GoldenScienceQA, ProblemsJsonGivesLlavasCqmAPrompts) {
  VADAPT_REQUIRE_SHARED();
  const std::string dir = vadapt::test::shared_dir() + "/data/scienceqa";
  vadapt::data::LoadOptions o;
  o.pid_split = "test";
  auto ours = vadapt::data::load_dataset(dir + "/problems.json", o);
  vadapt::data::LoadOptions lo;
  lo.image_root = dir + "/images/test";
  auto llava = vadapt::data::load_dataset(dir + "/llava_test_CQM-A.json", lo);
  std::map<std::string, const vadapt::data::Sample*> by_id;
  for (const auto& s : llava) by_id[s.id] = &s;
  int compared = 0;
  for (const auto& s : ours) {
    auto it = by_id.find(s.id);
    if (it == by_id.end()) continue;
    ++compared;
    ASSERT_EQ(s.conv.turns.size(), 2u);
    EXPECT_EQ(s.conv.turns[0].text, it->second->conv.turns[0].text) << "problem " << s.id;
    EXPECT_EQ(s.conv.turns[1].text, it->second->conv.turns[1].text) << "problem " << s.id;
    EXPECT_EQ(s.image, it->second->image) << "problem " << s.id;
    EXPECT_FALSE(s.tags.at("subject").empty());
  }
  EXPECT_EQ(compared, 50);
}

TEST(GoldenPeft, LoraMadeByPeftGivesPeftsLogits) {
  const std::string dir = std::string(VADAPT_SOURCE_DIR) + "/tests/golden/peft";
  auto expected = io::SafeTensorsFile::open(dir + "/expected.safetensors");
  auto lm = model::load_llama(dir + "/llm", torch::kFloat32, torch::kCPU);
  adapters::AdapterSet set;
  EXPECT_EQ(adapters::load_peft_lora(*lm, *set, dir + "/peft"), 6);  // q, v, down in 2 layers
  torch::NoGradGuard ng;
  model::ForwardContext ctx;
  auto logits = lm->forward(expected->tensor("ids").to(torch::kInt64), ctx);
  EXPECT_TRUE(tensors_close(logits, expected->tensor("logits"), 1e-4, 1e-4));
}

// LaVIN on tiny random models: zero up-projections = the base model (text-only and image rows,
// modality token in place), KV-cache decode with kept routing weights = full recompute, the
// official decode positions differ from it, a left-padded batch = one prompt at a time and beam
// 1 = greedy, per-image vision routing is batch-invariant, the modality indicator matters once
// the adapters are trained, gradients reach the vision adapters and nothing frozen, no feature
// cache, the `lavin` template, training changes only the adapters and save -> load is bitwise,
// and the official loader's errors.
#include <gtest/gtest.h>

#include "common/error.h"
#include "data/dataset.h"
#include "fixtures.h"
#include "generate/generator.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "methods/lavin.h"
#include "train/trainer.h"
#include "vlm/pipeline.h"
#include "vlm/vision_language_model.h"

using namespace vadapt;
using vadapt::test::TempDir;
using vadapt::test::logits_of;
using vadapt::test::batch_of;
using vadapt::test::mixed_samples;
using vadapt::test::tensors_close;
using vadapt::test::tensors_equal;

namespace {
using World = vadapt::test::TinyVlmWorld;

vlm::VlmSpec lavin_spec(const World& w, const std::string& routing = "per_image", const std::string& decode = "recompute",
                        const std::string& llm = "attn", const std::string& vision = "router") {
  vlm::VlmSpec s = w.spec("projector");
  s.method = "lavin";
  s.template_name = "lavin";
  s.preprocess = "imagenet32";
  s.options = {{"adapter_dim", 4},           {"tap_every", 1},          {"hidden_proj", 16},
               {"vision_routing", routing},  {"decode_positions", decode}, {"adapter_type", llm},
               {"visual_adapter_type", vision}, {"temperature", 2.0}};
  return s;
}

methods::Lavin& lavin(vlm::VisionLanguageModel& m) { return m.method_as<methods::Lavin>(); }

// Random adapters (the zero-init up-projections too), so every part matters.
void randomize(vlm::VisionLanguageModel& m, uint64_t seed) {
  torch::NoGradGuard ng;
  torch::manual_seed(seed);
  for (auto& [k, t] : m.trainable_state()) t.copy_(0.5 * torch::randn_like(t));
}

}  // namespace

TEST(Lavin, TemplatePutsTheModalityPrefixBeforeTheExample) {
  auto t = text::ChatTemplate::by_name("lavin");
  text::Conversation img, txt;
  img.turns = {{"user", "<image>\nWhat colour?"}, {"assistant", "red"}};
  txt.turns = {{"user", "Say red."}, {"assistant", "red"}};
  EXPECT_EQ(t.render(img, false), "<s>Image: <image>\nWhat colour?\nResponse: red</s>");
  EXPECT_EQ(t.render(txt, false), "<s>Image: N/A\nSay red.\nResponse: red</s>");
  txt.turns.pop_back();
  EXPECT_EQ(t.render(txt, true), "<s>Image: N/A\nSay red.\nResponse:");
}

TEST(Lavin, ZeroUpProjectionsAreTheBaseModel) {
  World w;
  vlm::VisionLanguageModel base(w.spec("projector"));
  auto samples = mixed_samples(w);
  torch::NoGradGuard ng;
  for (const char* llm : {"attn", "block"}) {
    vlm::VisionLanguageModel m(lavin_spec(w, "per_image", "recompute", llm, "router_block"));
    for (std::vector<size_t> idx : {std::vector<size_t>{0, 1}, {8, 9}, {0, 9}}) {  // images, text-only, mixed
      auto b = batch_of(m, samples, idx);
      auto in = m.prepare(b);
      // The same input embeddings (visual tokens included) through the plain LLM at positions
      // 1.. (the modality token holds 0): bitwise; at positions 0..: RoPE is relative, 1e-5.
      const int64_t t = b.ids.size(1);
      model::ForwardContext ctx;
      ctx.attention_mask = b.mask;
      ctx.position_ids = torch::arange(1, t + 1, torch::kInt64).unsqueeze(0).expand({b.ids.size(0), t});
      auto plain = base.lm()->logits(base.lm()->forward_embeds(in.embeds, ctx));
      auto got = logits_of(m, b);
      auto real = b.mask.to(torch::kBool).unsqueeze(-1);
      EXPECT_TRUE(tensors_equal(got.masked_fill(~real, 0), plain.masked_fill(~real, 0))) << llm;
      model::ForwardContext c0;
      c0.attention_mask = b.mask;
      auto at0 = base.lm()->logits(base.lm()->forward_embeds(in.embeds, c0));
      EXPECT_TRUE(tensors_close(got.masked_fill(~real, 0), at0.masked_fill(~real, 0), 1e-5)) << llm;
    }
  }
}

TEST(Lavin, KvCacheDecodeWithKeptRoutingEqualsFullRecompute) {
  World w;
  auto samples = mixed_samples(w);
  for (const char* decode : {"recompute", "official"}) {
    vlm::VisionLanguageModel m(lavin_spec(w, "per_image", decode));
    randomize(m, 3);
    auto b = batch_of(m, samples, {1, 2});  // two images, equal lengths
    torch::NoGradGuard ng;
    auto in = m.prepare(b);
    EXPECT_EQ(in.state.kept.size(), 2u);  // one routing per layer, kept from prefill on
    auto full = logits_of(m, b);
    const int64_t t = b.ids.size(1), pre = t - 4;
    auto cache = m.lm()->make_cache(2, t);
    model::ForwardContext ctx;
    ctx.cache = &cache;
    ctx.adapter_state = &in.state;
    std::vector<torch::Tensor> steps{m.lm()->logits(m.lm()->forward_embeds(in.embeds.narrow(1, 0, pre), ctx))};
    for (int64_t p = pre; p < t; ++p) steps.push_back(m.lm()->logits(m.lm()->forward_embeds(in.embeds.narrow(1, p, 1), ctx)));
    auto real = b.mask.to(torch::kBool).unsqueeze(-1);
    const bool same = tensors_close(torch::cat(steps, 1).masked_fill(~real, 0), full.masked_fill(~real, 0), 1e-5);
    // The official decode gives the generated tokens one RoPE position less than a recompute.
    EXPECT_EQ(same, std::string(decode) == "recompute") << decode;
  }
}

TEST(Lavin, LeftPaddedBatchEqualsOneAtATimeAndBeamOneIsGreedy) {
  World w;
  vlm::VisionLanguageModel m(lavin_spec(w));
  randomize(m, 4);
  std::vector<vlm::Query> qs(3);
  qs[0].conv.turns = {{"user", "<image>\nWhat colour?"}};
  qs[0].image = w.dir.file("img0.png");
  qs[1].conv.turns = {{"user", "Say something long about the weather today, please."}};
  qs[2].conv.turns = {{"user", "<image>\nWhich colour is this picture, really?"}};
  qs[2].image = w.dir.file("img2.png");
  generate::GenerateOptions o;
  o.max_new_tokens = 6;
  o.stop_at_eos = false;
  std::vector<text::EncodedPrompt> enc;
  std::vector<std::string> imgs;
  for (const auto& q : qs) enc.push_back(vlm::encode_query(m, q)), imgs.push_back(q.image);
  EXPECT_EQ(std::count(enc[0].ids.begin(), enc[0].ids.end(), text::kImageToken), 3);  // one visual token per tap (3 blocks)
  auto batched = vlm::answer(m, enc, imgs, o);
  for (size_t i = 0; i < qs.size(); ++i) {
    auto one = vlm::answer(m, {enc[i]}, {imgs[i]}, o);
    EXPECT_EQ(batched.tokens[i], one.tokens[0]) << "row " << i;
    auto beam_o = o;
    beam_o.num_beams = 1;
    EXPECT_EQ(vlm::answer(m, {enc[i]}, {imgs[i]}, beam_o).tokens[0], one.tokens[0]);
  }
  auto beam_o = o;
  beam_o.num_beams = 3;
  EXPECT_EQ(vlm::answer(m, {enc[0]}, {imgs[0]}, beam_o).tokens[0].size(), 6u);
}

TEST(Lavin, VisionRoutingPerImageIsBatchInvariantAndTheOfficialFormIsNot) {
  World w;
  auto px = [&](vlm::VisionLanguageModel& m) {
    return torch::stack({m.load_pixels(w.dir.file("img0.png")), m.load_pixels(w.dir.file("img1.png"))});
  };
  torch::NoGradGuard ng;
  for (const char* routing : {"per_image", "per_token", "official"}) {
    vlm::VisionLanguageModel m(lavin_spec(w, routing));
    randomize(m, 5);
    auto p = px(m);
    auto both = m.vision_features(p), second = m.vision_features(p.narrow(0, 1, 1));
    const bool invariant = tensors_close(both.narrow(0, 1, 1), second, 1e-5);
    EXPECT_EQ(invariant, std::string(routing) != "official") << routing;
  }
}

TEST(Lavin, TheModalityIndicatorMattersOnceTrained) {
  World w;
  vlm::VisionLanguageModel m(lavin_spec(w));
  randomize(m, 6);
  auto samples = mixed_samples(w);
  auto b = batch_of(m, samples, {8});
  torch::NoGradGuard ng;
  auto in = m.prepare(b);
  auto routes = lavin(m).modality_routes();
  auto run = [&](int64_t indicator) {
    model::AdapterState st = in.state;
    for (auto& [k, v] : routes) st.kept[k] = v.narrow(0, indicator, 1);
    model::ForwardContext ctx;
    ctx.adapter_state = &st;
    return m.lm()->logits(m.lm()->forward_embeds(in.embeds, ctx));
  };
  EXPECT_TRUE(tensors_equal(run(0), logits_of(m, b)));  // a text-only sample is routed as text-only
  EXPECT_FALSE(tensors_close(run(0), run(1), 1e-4));
}

TEST(Lavin, GradientsReachTheVisionAdaptersAndNothingFrozen) {
  World w;
  vlm::VisionLanguageModel m(lavin_spec(w));
  randomize(m, 7);
  EXPECT_TRUE(m.method().adapts_vision());
  TempDir cache;
  m.enable_feature_cache(cache.path());
  EXPECT_EQ(m.feature_cache(), nullptr);  // features depend on trained adapters: never cached
  auto samples = mixed_samples(w);
  auto b = batch_of(m, samples, {0, 9});
  ASSERT_TRUE(b.pixels.defined());
  auto r = m.loss(b);
  r.loss.backward();
  for (auto& [k, t] : m.trainable_state()) {
    ASSERT_TRUE(t.grad().defined()) << k;
    if (k.find("conv_B") != std::string::npos || k.find("backbone.visual") == 0) EXPECT_GT(t.grad().abs().sum().item<double>(), 0) << k;
  }
  for (const auto& p : m.lm()->named_parameters()) EXPECT_FALSE(p.value().grad().defined()) << p.key();
  auto* tower = dynamic_cast<torch::nn::Module*>(&m.tower());
  ASSERT_NE(tower, nullptr);
  int64_t frozen = 0;
  for (const auto& p : tower->named_parameters()) {
    if (p.key().find("adapter") != std::string::npos) continue;  // (the routers are not registered in the tower)
    EXPECT_FALSE(p.value().grad().defined()) << p.key();
    ++frozen;
  }
  EXPECT_GT(frozen, 0);
  for (auto& [k, t] : m.trainable_state()) (void)k, t.mutable_grad() = torch::Tensor();
}

TEST(Lavin, TrainingChangesOnlyTheAdaptersAndSaveLoadIsBitwise) {
  World w;
  vlm::VisionLanguageModel m(lavin_spec(w));
  auto samples = mixed_samples(w);
  std::map<std::string, torch::Tensor> base_before;
  for (const auto& p : m.lm()->named_parameters()) base_before[p.key()] = p.value().clone();
  TempDir out;
  train::TrainConfig cfg;
  cfg.max_steps = 6, cfg.batch_size = 4, cfg.blr = 2.0, cfg.beta2 = 0.95, cfg.weight_decay = 0.02, cfg.schedule = "half_cosine";
  cfg.warmup_epochs = 0.5, cfg.log_every = 1, cfg.out_dir = out.path();
  train::Trainer tr(m, samples, samples, cfg);
  auto r = tr.fit();
  EXPECT_LT(r.val_loss_after, r.val_loss_before);
  for (const auto& p : m.lm()->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), base_before[p.key()])) << p.key();
  auto f = io::SafeTensorsFile::open(out.file("adapter_model.safetensors"));
  EXPECT_TRUE(f->contains("layers.0.adapter_attn.conv_B.weight"));
  EXPECT_TRUE(f->contains("backbone.visual.transformer.resblocks.2.adapter_attn.expert_weights.bias"));
  EXPECT_TRUE(f->contains("adapter_proj.conv_A.weight"));
  EXPECT_TRUE(f->contains("adapter_modality_embedding.weight"));
  auto back = vlm::load_vlm_checkpoint(out.path());
  auto a = m.trainable_state(), bb = back->trainable_state();
  ASSERT_EQ(a.size(), bb.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(tensors_equal(a[i].second, bb[i].second)) << a[i].first;
  m.train_mode(false);
  auto batch = batch_of(m, samples, {0, 9});
  EXPECT_TRUE(tensors_equal(logits_of(*back, batch), logits_of(m, batch)));
  // Its own file is in the official layout: the official loader reads it back.
  vlm::VisionLanguageModel again(lavin_spec(w));
  again.method().load_official(out.file("adapter_model.safetensors"));
  again.train_mode(false);
  EXPECT_TRUE(tensors_equal(logits_of(again, batch), logits_of(m, batch)));
  // A file for another configuration is refused, naming the tensor.
  vlm::VisionLanguageModel other(lavin_spec(w, "per_image", "recompute", "block"));
  try {
    other.method().load_official(out.file("adapter_model.safetensors"));
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("adapter_mlp"), std::string::npos) << e.what();
  }
}

TEST(Lavin, RecipeSectionIsValidated) {
  methods::Lavin m;
  auto ok = m.parse_recipe({{"adapter", {{"dim", 8}, {"temperature", 5}}}, {"compat", {{"vision_routing", "official"}}}}, "r");
  EXPECT_EQ(ok["temperature"].get<double>(), 5.0);
  EXPECT_EQ(ok["vision_routing"], "official");
  for (auto bad : {nlohmann::json{{"adapter", {{"dims", 8}}}}, nlohmann::json{{"adapter", {{"dim", 7}}}},
                   nlohmann::json{{"compat", {{"vision_routing", "batch"}}}}, nlohmann::json{{"visual", {{"tap_every", 0}}}},
                   nlohmann::json{{"prompts", 1}}})
    EXPECT_THROW(m.parse_recipe(bad, "r"), VadaptError) << bad.dump();
}

// LaVIN's ScienceQA prompt: problems.json in the QCM-ALE format through the `lavin` template.
TEST(Lavin, ScienceQaQcmAlePromptThroughTheTemplate) {
  VADAPT_REQUIRE_SHARED();
  data::LoadOptions lo;
  lo.scienceqa_format = "QCM-ALE";
  auto samples = data::load_dataset(vadapt::test::shared_dir() + "/data/scienceqa/problems.json", lo);
  ASSERT_FALSE(samples.empty());
  auto t = text::ChatTemplate::by_name("lavin");
  int images = 0, texts = 0;
  for (const auto& s : samples) {
    const std::string r = t.render(s.conv, false);
    const std::string head = s.image.empty() ? "<s>Image: N/A\nQuestion: " : "<s>Image: <image>\nQuestion: ";
    EXPECT_EQ(r.rfind(head, 0), 0u) << r;
    EXPECT_NE(r.find("\nContext: "), std::string::npos) << r;
    EXPECT_NE(r.find("\nOptions: (A) "), std::string::npos) << r;
    EXPECT_NE(r.find("\nResponse: The answer is "), std::string::npos) << r;
    EXPECT_EQ(r.substr(r.size() - 4), "</s>");
    (s.image.empty() ? texts : images) += 1;
  }
  EXPECT_GT(images, 0);
  EXPECT_GT(texts, 0);
}

// The LLM-only variant (vision tower frozen): no vision routers, the feature cache works, and the
// count from configs leaves the vision adapters out.
TEST(Lavin, LlmOnlyVariantKeepsTheFeatureCache) {
  World w;
  vlm::VisionLanguageModel m(lavin_spec(w, "per_image", "recompute", "attn", "none"));
  EXPECT_FALSE(m.method().adapts_vision());
  TempDir cache;
  m.enable_feature_cache(cache.path());
  EXPECT_NE(m.feature_cache(), nullptr);
  for (const auto& [k, t] : m.trainable_state()) EXPECT_EQ(k.find("backbone.visual"), std::string::npos) << k;
  auto samples = mixed_samples(w);
  auto b = batch_of(m, samples, {0, 9});
  EXPECT_TRUE(b.features.defined());  // cached frozen features instead of pixels
  EXPECT_GT(m.loss(b).loss.item<double>(), 0);
  auto spec = lavin_spec(w, "per_image", "recompute", "attn", "none");
  auto c = vlm::VisionLanguageModel::count_from_configs(spec);
  EXPECT_EQ(c["vision_adapter_parameters"].get<int64_t>(), 0);
  int64_t n = 0;
  for (const auto& [k, t] : m.trainable_state()) n += t.numel();
  EXPECT_EQ(c["trainable_parameters"].get<int64_t>(), n);
}

// A bf16 frozen model without autocast: the fp32 adapters run in their own dtype.
TEST(Lavin, Bf16FrozenModelsRunWithFp32Adapters) {
  World w;
  auto spec = lavin_spec(w);
  spec.dtype = "bfloat16";
  vlm::VisionLanguageModel m(spec);
  randomize(m, 9);
  auto samples = mixed_samples(w);
  auto b = batch_of(m, samples, {0, 9});
  auto logits = logits_of(m, b);
  EXPECT_EQ(logits.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
  auto r = m.loss(b);
  r.loss.backward();
  for (auto& [k, t] : m.trainable_state()) EXPECT_TRUE(t.grad().defined()) << k;
}

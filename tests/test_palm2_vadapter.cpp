// PaLM2-VAdapter on tiny random models: the paper's prompts, the attentional pooler against
// libtorch's own multi-head attention, parameter counts (from configs = built), the perceiver
// baseline / tiny-LM adapter / pooler / decoder layouts, batch-row equivariance, frames
// resampled together in order, the progressive stages (stage 2 starts from exactly the stage-1
// tiny LM and fc_in), pretrained vs random init, training changes only what it trains,
// save -> load bitwise, recipe errors, multi-image data refused by one-image methods.
#include <gtest/gtest.h>

#include "common/error.h"
#include "connectors/perceiver_resampler.h"
#include "data/dataset.h"
#include "fixtures.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "methods/palm2_vadapter.h"
#include "model/llama.h"
#include "train/trainer.h"
#include "vlm/pipeline.h"
#include "vlm/vision_language_model.h"

using namespace vadapt;
using vadapt::test::TempDir;
using vadapt::test::batch_of;
using vadapt::test::logits_of;
using vadapt::test::mixed_samples;
using vadapt::test::tensors_close;
using vadapt::test::tensors_equal;

namespace {
using World = vadapt::test::TinyVlmWorld;

// A second, different tiny Llama (width 24, 3 layers) as the tiny LM.
struct Palm2World : World {
  std::string tiny;
  Palm2World() {
    tiny = dir.file("tiny");
    auto c = vadapt::test::tiny_llama_config();
    c.hidden_size = 24, c.intermediate_size = 40, c.num_hidden_layers = 3, c.num_attention_heads = 3, c.num_key_value_heads = 3;
    vadapt::test::write_tiny_llama(tiny, c, 11);
  }
};

vlm::VlmSpec palm2_spec(const Palm2World& w, const nlohmann::json& section) {
  vlm::VlmSpec s = w.spec("projector");
  s.method = "palm2_vadapter";
  s.template_name = "palm2_vqa";
  s.options = methods::Palm2VAdapter().parse_recipe(section, "test");
  return s;
}

nlohmann::json adapter_section(const Palm2World& w) {
  return {{"tiny_lm", {{"path", w.tiny}}}, {"resampler", {{"queries", 3}, {"heads", 2}}}};
}

methods::Palm2VAdapter& palm2(vlm::VisionLanguageModel& m) { return m.method_as<methods::Palm2VAdapter>(); }

int64_t numel(const std::vector<std::pair<std::string, torch::Tensor>>& s) {
  int64_t n = 0;
  for (const auto& [k, t] : s) n += t.numel();
  return n;
}

train::TrainConfig quick(const std::string& out, int64_t steps) {
  train::TrainConfig cfg;
  cfg.max_steps = steps, cfg.batch_size = 4, cfg.lr = 3e-3, cfg.log_every = 1, cfg.out_dir = out;
  return cfg;
}
}  // namespace

TEST(Palm2VAdapter, PaperPrompts) {
  text::Conversation c;
  c.turns = {{"user", "<image>\nWhat colour is it"}, {"assistant", "red"}};
  EXPECT_EQ(text::ChatTemplate::by_name("palm2_vqa").render(c, false),
            "<s>Answer the question given the images. Given <image>. Question: What colour is it? Answer: red</s>");
  EXPECT_EQ(text::ChatTemplate::by_name("palm2_caption").render(c, false), "<s>Describe the following: <image> : red</s>");
  c.turns = {{"user", "Is the sky blue?"}};
  EXPECT_EQ(text::ChatTemplate::by_name("palm2_vqa").render(c, true), "<s>Answer the question given the images. Question: Is the sky blue? Answer:");
}

TEST(Palm2VAdapter, AttentionalPoolerIsLibtorchMultiheadAttention) {
  connectors::PoolerOptions o;
  o.in = 12, o.width = 16, o.queries = 5, o.heads = 4;
  connectors::AttentionalPooler p(o, 3);
  {
    torch::NoGradGuard ng;  // non-trivial norms
    for (auto& q : p->named_parameters())
      if (q.key().find("norm") != std::string::npos) q.value().add_(0.3 * torch::randn_like(q.value()));
  }
  auto x = torch::randn({2, 2, 7, 12});  // 2 rows, 2 frames each
  auto got = p(x);
  ASSERT_EQ(got.sizes(), torch::IntArrayRef({2, 5, 16}));
  auto P = p->named_parameters();
  auto ln = [](const torch::Tensor& t, const torch::Tensor& w, const torch::Tensor& b) { return torch::layer_norm(t, {t.size(-1)}, w, b, 1e-5); };
  auto kv = ln(x.reshape({2, 14, 12}), P["norm_features.weight"], P["norm_features.bias"]).transpose(0, 1);     // (S, B, in)
  auto q = ln(P["queries"], P["norm_queries.weight"], P["norm_queries.bias"]).unsqueeze(1).expand({5, 2, 16});  // (N, B, w)
  namespace F = torch::nn::functional;
  auto opts = F::MultiheadAttentionForwardFuncOptions(16, 4, torch::Tensor(), torch::cat({P["attn.q.bias"], P["attn.k.bias"], P["attn.v.bias"]}),
                                                      torch::Tensor(), torch::Tensor(), false, 0.0, P["attn.o.weight"], P["attn.o.bias"])
                  .training(false)
                  .need_weights(false)
                  .use_separate_proj_weight(true)
                  .q_proj_weight(P["attn.q.weight"])
                  .k_proj_weight(P["attn.k.weight"])
                  .v_proj_weight(P["attn.v.weight"]);
  auto ref = std::get<0>(F::multi_head_attention_forward(q, kv, kv, opts)).transpose(0, 1);  // (B, N, w)
  EXPECT_TRUE(tensors_close(got, ln(ref, P["norm_post.weight"], P["norm_post.bias"]), 1e-5));
  EXPECT_EQ(connectors::AttentionalPoolerImpl::parameter_count(o), numel([&] {
              std::vector<std::pair<std::string, torch::Tensor>> s;
              for (const auto& q : P) s.emplace_back(q.key(), q.value());
              return s;
            }()));
}

TEST(Palm2VAdapter, CountsFromConfigsMatchTheBuiltModel) {
  Palm2World w;
  std::vector<nlohmann::json> layouts = {
      adapter_section(w),                                                                                   // tiny-LM adapter
      {{"tiny_lm", {{"path", w.tiny}}}, {"connector", "pooler"}, {"resampler", {{"queries", 3}, {"heads", 2}}}},  // Table 4 pooler
      {{"resampler", {{"queries", 4}, {"width", 16}, {"heads", 2}, {"layers", 2}}}},                      // perceiver baseline
      {{"role", "decoder"}, {"resampler", {{"queries", 3}, {"heads", 2}}}},                                // stage 1
  };
  for (const auto& sec : layouts) {
    auto spec = palm2_spec(w, sec);
    vlm::VisionLanguageModel m(spec);
    auto c = vlm::VisionLanguageModel::count_from_configs(spec);
    EXPECT_EQ(c["trainable_parameters"].get<int64_t>(), numel(m.trainable_state())) << sec.dump() << "\n" << c.dump();
    int64_t grads = 0;
    for (const auto& g : m.trainable_groups())
      for (const auto& p : g.params) grads += p.numel();
    EXPECT_EQ(grads, numel(m.trainable_state())) << sec.dump();
  }
}

TEST(Palm2VAdapter, RealPairCountFromConfigs) {
  VADAPT_REQUIRE_SHARED();
  const std::string ref = vadapt::test::shared_dir() + "/reference/configs";
  // A stories110M-shaped tiny Llama (d 768, 12 layers, FFN 2048, vocab 32000) in front of LLaMA-7B,
  // CLIP ViT-L/14 (1024): the shipped recipe's pair.
  nlohmann::json tiny = {{"hidden_size", 768}, {"intermediate_size", 2048}, {"num_hidden_layers", 12}, {"num_attention_heads", 12},
                         {"num_key_value_heads", 12}, {"vocab_size", 32000}, {"rms_norm_eps", 1e-5}, {"model_type", "llama"}};
  methods::Palm2VAdapter m;
  m.configure(methods::Palm2VAdapter().parse_recipe({{"tiny_lm", {{"path", "/nowhere"}, {"config", tiny}}},
                                                     {"resampler", {{"queries", 256}, {"heads", 12}}}}, "test"),
              "test");
  auto llm = io::LlamaConfig::from_json(io::read_json(ref + "/llama-7b/config.json"), "llama-7b");
  auto c = m.count(llm, methods::VisionDims::from_config_dir(ref + "/clip-vit-large-patch14"));
  // Resampler: queries 256x768 + input 1024x768+768 + time 8x768 + one layer (4 x 768^2 + 4 norms x 768 + FFN 768->3072->768 with LN).
  EXPECT_EQ(c["connector_parameters"].get<int64_t>(), 196608 + 787200 + 6144 + (2359296 + 3072 + 4723968));
  EXPECT_EQ(c["tiny_lm_parameters"].get<int64_t>(), 12 * (4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768) + 768);
  EXPECT_EQ(c["fc_in_parameters"].get<int64_t>(), 768 * 768 + 768);
  EXPECT_EQ(c["fc_out_parameters"].get<int64_t>(), 768 * 4096 + 4096);
  EXPECT_EQ(c["trainable_parameters"].get<int64_t>(), 96770560);
}

TEST(Palm2VAdapter, VisualTokensAreBatchRowEquivariant) {
  Palm2World w;
  for (const auto& sec : {adapter_section(w), nlohmann::json{{"resampler", {{"queries", 4}, {"width", 16}, {"heads", 2}}}}}) {
    vlm::VisionLanguageModel m(palm2_spec(w, sec));
    torch::NoGradGuard ng;
    auto f = torch::randn({4, m.tower().num_patches(), m.tower().hidden_size()});
    auto rows = torch::arange(4, torch::kInt64);
    auto all = palm2(m).visual_tokens(f, rows);
    ASSERT_EQ(all.sizes(), torch::IntArrayRef({4, 3 + (sec.contains("tiny_lm") ? 0 : 1), 32}));
    auto perm = torch::tensor({2, 0, 3, 1}, torch::kInt64);
    EXPECT_TRUE(tensors_close(palm2(m).visual_tokens(f.index_select(0, perm), rows), all.index_select(0, perm), 1e-6));
    for (int64_t i = 0; i < 4; ++i)
      EXPECT_TRUE(tensors_close(palm2(m).visual_tokens(f.narrow(0, i, 1), rows.narrow(0, 0, 1)), all.narrow(0, i, 1), 1e-6));
  }
}

TEST(Palm2VAdapter, FramesOfARowAreResampledTogetherInOrder) {
  Palm2World w;
  vlm::VisionLanguageModel m(palm2_spec(w, adapter_section(w)));
  torch::NoGradGuard ng;
  auto f = torch::randn({3, m.tower().num_patches(), m.tower().hidden_size()});
  // Row 0: one image; row 1: two frames.
  auto out = palm2(m).visual_tokens(f, torch::tensor({0, 1, 1}, torch::kInt64));
  ASSERT_EQ(out.size(0), 2);
  EXPECT_TRUE(tensors_close(out.narrow(0, 0, 1), palm2(m).visual_tokens(f.narrow(0, 0, 1), torch::zeros({1}, torch::kInt64)), 1e-6));
  auto swapped = palm2(m).visual_tokens(f.index_select(0, torch::tensor({0, 2, 1}, torch::kInt64)), torch::tensor({0, 1, 1}, torch::kInt64));
  EXPECT_FALSE(torch::allclose(swapped.narrow(0, 1, 1), out.narrow(0, 1, 1), 1e-4, 1e-4)) << "the time embedding orders the frames";
  EXPECT_THROW(palm2(m).visual_tokens(f, torch::tensor({1, 0, 0}, torch::kInt64)), VadaptError);
}

TEST(Palm2VAdapter, MultiImageSamplesThroughTheTrainerAndRefusedByOneImageMethods) {
  Palm2World w;
  auto samples = mixed_samples(w);
  for (size_t i = 0; i < 8; ++i) samples[i].frames = {samples[(i + 1) % 8].image, samples[(i + 2) % 8].image};
  vlm::VisionLanguageModel m(palm2_spec(w, adapter_section(w)));
  TempDir out;
  train::Trainer t(m, samples, {}, quick(out.path(), 2));
  EXPECT_NO_THROW(t.fit());
  vlm::VisionLanguageModel llava(w.spec("projector"));
  TempDir out2;
  try {  // refused before training starts
    train::Trainer t2(llava, samples, {}, quick(out2.path(), 1));
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("3 images for one <image>"), std::string::npos) << e.what();
  }
}

TEST(Palm2VAdapter, MultiImageRecordsAreRead) {
  Palm2World w;
  TempDir d;
  nlohmann::json recs = nlohmann::json::array();
  recs.push_back({{"id", "v"}, {"image", {w.dir.file("img0.png"), w.dir.file("img1.png")}},
                  {"conversations", {{{"from", "human"}, {"value", "<image>\nWhat changed?"}}, {{"from", "gpt"}, {"value", "colour"}}}}});
  recs.push_back({{"id", "bad"}, {"image", {w.dir.file("img0.png"), 3}}, {"conversations", recs[0]["conversations"]}});
  io::write_text_atomic(d.file("a.json"), nlohmann::json::array({recs[0]}).dump());
  io::write_text_atomic(d.file("b.json"), recs.dump());
  data::LoadOptions lo;
  auto s = data::load_dataset(d.file("a.json"), lo);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].image, w.dir.file("img0.png"));
  EXPECT_EQ(s[0].frames, std::vector<std::string>{w.dir.file("img1.png")});
  try {
    data::load_dataset(d.file("b.json"), lo);
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("image[1]"), std::string::npos) << e.what();
  }
}

TEST(Palm2VAdapter, ProgressiveStageTwoStartsFromExactlyTheStageOneWeights) {
  Palm2World w;
  auto samples = mixed_samples(w);
  // Stage 1: the tiny LM (model.llm) learns to caption through the attentional pooler.
  vlm::VlmSpec s1 = w.spec("projector");
  s1.llm = w.tiny;
  s1.method = "palm2_vadapter";
  s1.template_name = "palm2_vqa";
  s1.options = methods::Palm2VAdapter().parse_recipe({{"role", "decoder"}, {"resampler", {{"queries", 3}, {"heads", 2}}}}, "stage1");
  vlm::VisionLanguageModel m1(s1);
  TempDir st1;
  auto r1 = train::Trainer(m1, samples, samples, quick(st1.path(), 6)).fit();
  EXPECT_LT(r1.val_loss_after, r1.val_loss_before);
  // Stage 2: init_from stage 1 carries tiny_lm.model.* and fc_in bitwise; resampler and fc_out fresh.
  vlm::VisionLanguageModel m2(palm2_spec(w, adapter_section(w)));
  m2.method().init_from(st1.path());
  auto f = io::SafeTensorsFile::open(st1.file("adapter_model.safetensors"));
  int64_t carried = 0;
  for (const auto& [name, t] : m2.trainable_state()) {
    if (name.rfind("tiny_lm.", 0) == 0 || name.rfind("fc_in.", 0) == 0) {
      ASSERT_TRUE(f->contains(name)) << name;
      EXPECT_TRUE(tensors_equal(t, f->tensor(name))) << name;
      ++carried;
    } else {
      EXPECT_FALSE(f->contains(name)) << name;
    }
  }
  EXPECT_EQ(carried, 3 * 9 + 1 + 2);  // 3 layers x 9 tensors, the final norm, fc_in
  // The stage-1 tiny LM differs from the pretrained one (it was trained).
  auto pre = model::load_llama(w.tiny, torch::kFloat32, torch::kCPU);
  EXPECT_FALSE(torch::equal(pre->named_parameters()["model.layers.0.self_attn.q_proj.weight"],
                            palm2(m2).tiny_lm().named_parameters()["model.layers.0.self_attn.q_proj.weight"]));
  // Stage 2 trains; the large LLM stays frozen.
  std::map<std::string, torch::Tensor> base;
  for (const auto& p : m2.lm()->named_parameters()) base[p.key()] = p.value().clone();
  TempDir st2;
  auto r2 = train::Trainer(m2, samples, samples, quick(st2.path(), 6)).fit();
  EXPECT_LT(r2.val_loss_after, r2.val_loss_before);
  for (const auto& p : m2.lm()->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), base[p.key()])) << p.key();
  // An earlier stage without a tiny LM cannot seed one.
  vlm::VisionLanguageModel base_m(palm2_spec(w, {{"resampler", {{"queries", 3}, {"width", 16}, {"heads", 2}}}}));
  TempDir b;
  base_m.save_adapter(b.path());
  vlm::VisionLanguageModel m3(palm2_spec(w, adapter_section(w)));
  EXPECT_THROW(m3.method().init_from(b.path()), VadaptError);
}

TEST(Palm2VAdapter, PretrainedOrRandomTinyLm) {
  Palm2World w;
  auto pre = model::load_llama(w.tiny, torch::kFloat32, torch::kCPU);
  auto want = pre->named_parameters()["model.layers.1.mlp.up_proj.weight"];
  auto sec = adapter_section(w);
  vlm::VisionLanguageModel a(palm2_spec(w, sec));
  a.method().prepare_training(a, {});
  EXPECT_TRUE(tensors_equal(palm2(a).tiny_lm().named_parameters()["model.layers.1.mlp.up_proj.weight"], want));
  sec["tiny_lm"]["init"] = "random";
  vlm::VisionLanguageModel r(palm2_spec(w, sec));
  r.method().prepare_training(r, {});
  auto got = palm2(r).tiny_lm().named_parameters()["model.layers.1.mlp.up_proj.weight"];
  EXPECT_FALSE(torch::equal(got, want));
  EXPECT_NEAR(got.std().item<double>(), 0.02, 0.005);
  EXPECT_TRUE(torch::equal(palm2(r).tiny_lm().named_parameters()["model.norm.weight"], torch::ones({24})));
}

TEST(Palm2VAdapter, SaveLoadIsBitwiseAndNeedsNoTinyLmFolder) {
  Palm2World w;
  auto samples = mixed_samples(w);
  vlm::VisionLanguageModel m(palm2_spec(w, adapter_section(w)));
  m.method().prepare_training(m, samples);
  TempDir out;
  train::Trainer(m, samples, {}, quick(out.path(), 3)).fit();
  std::filesystem::rename(w.tiny, w.tiny + ".moved");  // the checkpoint alone rebuilds the model
  auto back = vlm::load_vlm_checkpoint(out.path());
  auto a = m.trainable_state(), b = back->trainable_state();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(tensors_equal(a[i].second, b[i].second)) << a[i].first;
  m.train_mode(false);
  auto batch = batch_of(m, samples, {0, 9});
  EXPECT_TRUE(tensors_equal(logits_of(*back, batch), logits_of(m, batch)));
  // Greedy answers through the one pipeline: a left-padded batch = one prompt at a time.
  generate::GenerateOptions g;
  g.max_new_tokens = 5;
  std::vector<text::EncodedPrompt> ps;
  std::vector<std::string> imgs;
  for (size_t i : {0, 9}) {
    vlm::Query q{samples[i].id, samples[i].conv, samples[i].image};
    q.conv.turns.pop_back();
    ps.push_back(vlm::encode_query(m, q));
    imgs.push_back(samples[i].image);
  }
  auto both = vlm::answer(m, ps, imgs, g);
  for (size_t i = 0; i < 2; ++i)
    EXPECT_EQ(vlm::answer(m, {ps[i]}, {imgs[i]}, g).tokens[0], both.tokens[i]) << i;
}

TEST(Palm2VAdapter, RecipeSectionIsValidated) {
  Palm2World w;
  auto expect_error = [](const nlohmann::json& sec, const std::string& needle) {
    try {
      methods::Palm2VAdapter().parse_recipe(sec, "r.yaml");
      ADD_FAILURE() << sec.dump();
    } catch (const VadaptError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({{"role", "encoder"}}, "role");
  expect_error({{"connector", "qformer"}}, "connector");
  expect_error({{"tiny_lm", {{"init", "pretrained"}}}}, "path");
  expect_error({{"tiny_lm", {{"path", "/nowhere"}}}}, "config.json");
  expect_error({{"role", "decoder"}, {"tiny_lm", {{"path", w.tiny}}}}, "model.llm");
  expect_error({{"resampler", {{"queries", 0}}}}, "queries");
  expect_error({{"resampler", {{"width", 30}, {"heads", 4}}}}, "heads");
  expect_error({{"resampler", {{"norm", "separate"}}}}, "norm");
  expect_error({{"tiny_lm", {{"path", w.tiny}, {"init", "zeros"}}}}, "init");
}

// LLaMA-Adapter V2 on tiny random models: zero-init = base model bitwise (every bias form, both
// fusions, LoRA), KV-cache decode = full recompute, bias/scale + LoRA + norms merge = unmerged
// (and the merged Hugging Face folder reloads to the same logits), joint training keeps the
// disjoint groups disjoint (no gradient, no momentum step into the other group), the released
// phases, save -> load bitwise, parameter counts of the released 7B forms from configs alone,
// and the official loader's errors.
#include <gtest/gtest.h>

#include <filesystem>

#include "common/error.h"
#include "data/dataset.h"
#include "fixtures.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "methods/llama_adapter_v2.h"
#include "model/llama.h"
#include "train/trainer.h"
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

// Tiny world: 2-layer LLM (d 32), CLIP with 16-wide projected tokens.
vlm::VlmSpec v2_spec(const World& w, const std::string& fusion, const std::string& bias, int64_t lora = 0, const std::string& phase = "all") {
  vlm::VlmSpec s = w.spec("projector");
  s.method = "llama_adapter_v2";
  s.template_name = "alpaca";
  s.options = {{"adapter_len", 3},     {"adapter_layer", 1},  {"fusion", fusion},  {"visual", true}, {"visual_width", 16},
               {"visual_queries", 3},  {"visual_blocks", 1},  {"visual_heads", 2}, {"bias_form", bias}, {"lora_r", lora},
               {"phase", phase}};
  return s;
}

methods::LlamaAdapterV2& v2(vlm::VisionLanguageModel& m) { return m.method_as<methods::LlamaAdapterV2>(); }

// Every adapter tensor random (gates too unless `keep_gates_zero`), so each part matters.
void randomize(vlm::VisionLanguageModel& m, uint64_t seed, bool keep_gates_zero = false) {
  torch::NoGradGuard ng;
  torch::manual_seed(seed);
  for (auto& [k, t] : m.trainable_state()) {
    const bool gate = k.find(".gate") != std::string::npos;
    if (gate && keep_gates_zero) continue;
    if (k.find("layernorm") != std::string::npos || k.find("norm.weight") != std::string::npos || k.find("adapter_scale") != std::string::npos ||
        k.find("new_gate") != std::string::npos)
      t.copy_(1 + 0.3 * torch::randn_like(t));
    else
      t.copy_((gate ? 0.8 : 0.2) * torch::randn_like(t));
  }
}

std::map<std::string, torch::Tensor> snapshot(vlm::VisionLanguageModel& m) {
  std::map<std::string, torch::Tensor> s;
  for (const auto& [k, t] : m.trainable_state()) s[k] = t.detach().clone();
  return s;
}
}  // namespace

TEST(LlamaAdapterV2, ZeroInitIsTheBaseModelBitwiseInEveryForm) {
  World w;
  vlm::VisionLanguageModel base(w.spec("projector"));
  auto samples = mixed_samples(w);
  torch::NoGradGuard ng;
  for (auto [fusion, bias, lora] : {std::tuple<const char*, const char*, int>{"late", "bias", 0}, {"early", "scale_bias", 0},
                                    {"late", "input_scale", 4}, {"early", "bias", 2}}) {
    vlm::VisionLanguageModel m(v2_spec(w, fusion, bias, lora));
    for (std::vector<size_t> idx : {std::vector<size_t>{0, 1}, {8}, {0, 9}}) {  // images, text-only, mixed
      auto b = batch_of(m, samples, idx);
      EXPECT_EQ(b.ids.eq(text::kImageToken).sum().item<int64_t>(), 0);  // images enter through prompts only
      model::ForwardContext ctx;
      if (b.mask.min().item<int64_t>() == 0) ctx.attention_mask = b.mask;
      EXPECT_TRUE(tensors_equal(logits_of(m, b), base.lm()->forward(b.ids, ctx))) << fusion << " " << bias << " lora " << lora;
    }
    randomize(m, 7);
    auto b = batch_of(m, samples, {0, 1});
    model::ForwardContext ctx;
    EXPECT_FALSE(tensors_close(logits_of(m, b), base.lm()->forward(b.ids, ctx), 1e-3)) << fusion << " " << bias;
  }
}

TEST(LlamaAdapterV2, EarlyFusionAndPromptsNeverShareALayer) {
  World w;
  auto s = v2_spec(w, "early", "bias");
  s.options["adapter_layer"] = 2;  // 2 layers: the top 2 prompt layers would include layer 0
  EXPECT_THROW(vlm::VisionLanguageModel m(s), VadaptError);
  s = v2_spec(w, "late", "bias");
  s.options["visual_queries"] = 4;  // late fusion adds visual tokens to prompts position by position
  EXPECT_THROW(vlm::VisionLanguageModel m(s), VadaptError);
}

TEST(LlamaAdapterV2, KvCacheDecodeEqualsFullRecompute) {
  World w;
  auto samples = mixed_samples(w);
  for (const char* fusion : {"late", "early"}) {
    vlm::VisionLanguageModel m(v2_spec(w, fusion, "scale_bias", 2));
    randomize(m, 3);
    auto b = batch_of(m, samples, {1, 2});
    torch::NoGradGuard ng;
    auto in = m.prepare(b);
    ASSERT_TRUE(in.state.condition.defined());
    EXPECT_EQ(in.state.condition.dim(), 3);  // (B, Q, d) per-sample visual tokens
    auto full = logits_of(m, b);
    const int64_t t = b.ids.size(1), pre = t - 4;
    auto cache = m.lm()->make_cache(2, t);
    model::ForwardContext ctx;
    ctx.cache = &cache;
    ctx.adapter_state = &in.state;
    std::vector<torch::Tensor> steps{m.lm()->logits(m.lm()->forward_embeds(in.embeds.narrow(1, 0, pre), ctx))};
    for (int64_t p = pre; p < t; ++p) steps.push_back(m.lm()->logits(m.lm()->forward_embeds(in.embeds.narrow(1, p, 1), ctx)));
    auto real = b.mask.to(torch::kBool).unsqueeze(-1);
    EXPECT_TRUE(tensors_close(torch::cat(steps, 1).masked_fill(~real, 0), full.masked_fill(~real, 0), 1e-5)) << fusion;
  }
}

TEST(LlamaAdapterV2, BiasScaleLoraAndNormsMergeEqualsUnmerged) {
  World w;
  auto samples = mixed_samples(w);
  for (auto [bias, lora] : {std::pair<const char*, int>{"scale_bias", 0}, {"input_scale", 0}, {"bias", 4}}) {
    vlm::VisionLanguageModel m(v2_spec(w, "late", bias, lora));
    randomize(m, 11, /*keep_gates_zero=*/true);
    auto b = batch_of(m, samples, {8, 9});
    auto before = logits_of(m, b);
    auto rest = m.method().merge_into(m);
    EXPECT_TRUE(rest.config["attention_bias"].get<bool>()) << bias;
    EXPECT_TRUE(rest.config["mlp_bias"].get<bool>()) << bias;
    model::ForwardContext ctx;
    if (b.mask.min().item<int64_t>() == 0) ctx.attention_mask = b.mask;
    torch::NoGradGuard ng;
    auto merged = m.lm()->forward(b.ids, ctx);
    EXPECT_TRUE(tensors_close(merged, before, 1e-5)) << bias;
    // The Hugging Face folder it writes loads as a plain Llama with the same logits.
    TempDir out;
    model::save_hf_llama(*m.lm(), w.llm, out.path(), {}, rest.config);
    auto back = model::load_llama(out.path(), torch::kFloat32, torch::kCPU);
    EXPECT_TRUE(tensors_close(back->forward(b.ids, ctx), before, 1e-5)) << bias;
  }
  // Live prompts cannot be folded.
  vlm::VisionLanguageModel m(v2_spec(w, "late", "bias"));
  randomize(m, 12);
  EXPECT_THROW(m.method().merge_into(m), VadaptError);
}

TEST(LlamaAdapterV2, JointTrainingKeepsTheDisjointGroupsDisjoint) {
  World w;
  auto samples = mixed_samples(w);
  std::vector<data::Sample> images(samples.begin(), samples.begin() + 8), texts(samples.begin() + 8, samples.end());
  auto is_visual = [](const std::string& k) {
    return k.rfind("clip_proj", 0) == 0 || k.rfind("visual_", 0) == 0 || k.rfind("early.", 0) == 0;
  };
  for (int which = 0; which < 3; ++which) {  // caption-like image data only, text only, mixed batches
    vlm::VisionLanguageModel m(v2_spec(w, "early", "scale_bias", 2, "joint"));
    randomize(m, 5);
    auto groups = m.trainable_groups();
    for (const auto& g : groups)
      EXPECT_EQ(g.data, g.name == "visual" ? methods::DataKind::kImage : methods::DataKind::kText) << g.name;
    auto before = snapshot(m);
    TempDir out;
    train::TrainConfig cfg;
    cfg.max_steps = 3, cfg.batch_size = 4, cfg.lr = 1e-2, cfg.weight_decay = 0.1, cfg.warmup_ratio = 0, cfg.log_every = 1;
    cfg.lr_groups = {{"visual", 2e-2}};
    cfg.out_dir = out.path();
    train::Trainer tr(m, which == 0 ? images : which == 1 ? texts : samples, {}, cfg);
    tr.fit();
    int visual_moved = 0, language_moved = 0;
    for (const auto& [k, t] : m.trainable_state()) {
      const bool same = torch::equal(t, before[k]);
      if (is_visual(k)) visual_moved += !same;
      else language_moved += !same;
      if (which == 0 && !is_visual(k)) EXPECT_TRUE(same) << "image data moved language parameter " << k;
      if (which == 1 && is_visual(k)) EXPECT_TRUE(same) << "text data moved visual parameter " << k;
    }
    if (which != 1) EXPECT_GT(visual_moved, 0);
    if (which != 0) EXPECT_GT(language_moved, 0);
  }
  // lr_groups names a group that does not train: an error naming it.
  vlm::VisionLanguageModel m(v2_spec(w, "late", "bias", 0, "pretrain"));
  TempDir out;
  train::TrainConfig cfg;
  cfg.max_steps = 1, cfg.out_dir = out.path(), cfg.lr_groups = {{"norms", 1e-3}};
  train::Trainer tr(m, samples, {}, cfg);
  try {
    tr.fit();
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("'norms'"), std::string::npos) << e.what();
  }
}

TEST(LlamaAdapterV2, ReleasedPhasesTrainTheirOwnPartsAndSaveLoadIsBitwise) {
  World w;
  auto samples = mixed_samples(w);
  std::map<std::string, std::set<std::string>> want = {{"pretrain", {"visual", "prompts"}}, {"finetune", {"bias_scale", "norms", "lora"}},
                                                       {"all", {"visual", "prompts", "bias_scale", "norms", "lora"}}};
  TempDir out;
  for (const auto& [phase, names] : want) {
    vlm::VisionLanguageModel m(v2_spec(w, "late", "bias", 2, phase));
    std::set<std::string> got;
    for (const auto& g : m.trainable_groups()) got.insert(g.name);
    EXPECT_EQ(got, names) << phase;
    if (phase != "finetune") continue;
    // Finetune from a "pretrained" adapter: the visual branch and prompts stay as loaded.
    randomize(m, 21);
    auto before = snapshot(m);
    train::TrainConfig cfg;
    cfg.max_steps = 2, cfg.batch_size = 4, cfg.lr = 1e-2, cfg.out_dir = out.path();
    train::Trainer tr(m, samples, {}, cfg);
    tr.fit();
    for (const auto& [k, t] : m.trainable_state()) {
      const bool frozen = k.rfind("clip_proj", 0) == 0 || k.rfind("visual_", 0) == 0 || k == "adapter_query.weight" || k.find(".attention.gate") != std::string::npos;
      if (frozen) EXPECT_TRUE(torch::equal(t, before[k])) << k;
    }
    auto back = vlm::load_vlm_checkpoint(out.path());
    auto a = m.trainable_state(), b = back->trainable_state();
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(tensors_equal(a[i].second, b[i].second)) << a[i].first;
    auto batch = batch_of(m, samples, {0, 8});
    EXPECT_TRUE(tensors_equal(logits_of(*back, batch), logits_of(m, batch)));
    auto cfgj = io::read_json(out.file("adapter_config.json"));
    EXPECT_EQ(cfgj["method"], "llama_adapter_v2");
    EXPECT_EQ(cfgj["phase"], "finetune");
  }
}

TEST(LlamaAdapterV2, ParameterCountsOfTheReleased7BFormsFromConfigsAlone) {
  TempDir tmp;
  io::LlamaConfig l7;
  l7.hidden_size = 4096, l7.intermediate_size = 11008, l7.num_hidden_layers = 32, l7.num_attention_heads = 32;
  l7.num_key_value_heads = 32, l7.head_dim = 128, l7.vocab_size = 32000, l7.max_position_embeddings = 2048;
  std::filesystem::create_directories(tmp.file("llm"));
  std::filesystem::create_directories(tmp.file("clip"));
  io::write_text_atomic(tmp.file("llm/config.json"), l7.to_json().dump());
  io::write_text_atomic(tmp.file("clip/config.json"),
                        R"({"architectures":["CLIPVisionModel"],"model_type":"clip_vision_model","hidden_size":1024,"intermediate_size":4096,)"
                        R"("num_hidden_layers":24,"num_attention_heads":16,"image_size":224,"patch_size":14,"projection_dim":768})");
  vlm::VlmSpec s;
  s.method = "llama_adapter_v2";
  s.llm = tmp.file("llm");
  s.vision = tmp.file("clip");
  s.options = {{"adapter_len", 10}, {"adapter_layer", 31}, {"visual", true}, {"visual_width", 768}, {"visual_queries", 10},
               {"visual_blocks", 8}, {"visual_heads", 16}, {"bias_form", "bias"}, {"phase", "pretrain"}};
  auto c = vlm::VisionLanguageModel::count_from_configs(s);
  EXPECT_EQ(c["official_pretrain_phase_parameters"].get<int64_t>(), 61731584);  // methods.md: 32 x 32 gates in the official file
  EXPECT_EQ(c["trainable_parameters"].get<int64_t>(), 61731584 - 32);            // ours: gates only where prompts are
  EXPECT_EQ(c["finetune_phase_parameters"].get<int64_t>(), 1363968);
  s.options["phase"] = "finetune";
  EXPECT_EQ(vlm::VisionLanguageModel::count_from_configs(s)["trainable_parameters"].get<int64_t>(), 1363968);
  s.options["lora_r"] = 16;
  c = vlm::VisionLanguageModel::count_from_configs(s);
  EXPECT_EQ(c["lora_parameters"].get<int64_t>(), 39976960);
  EXPECT_EQ(c["new_gate_parameters"].get<int64_t>(), 31);
  // The paper's form: s and b on all seven linears of LLaMA-7B.
  s.options["bias_form"] = "scale_bias";
  s.options["lora_r"] = 0;
  c = vlm::VisionLanguageModel::count_from_configs(s);
  EXPECT_EQ(c["bias_scale_parameters"].get<int64_t>(), 32 * 2 * (4 * 4096 + 2 * 11008 + 4096));
}

TEST(LlamaAdapterV2, OfficialLoaderNamesTheBadTensor) {
  World w;
  vlm::VisionLanguageModel m(v2_spec(w, "late", "bias"));
  TempDir tmp;
  io::write_safetensors(tmp.file("bad.safetensors"), {{"adapter_query.weight", torch::randn({3, 32})}, {"llama.layers.0.attention.wk.bias", torch::randn({16})}});
  try {
    m.method().load_official(tmp.file("bad.safetensors"));
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("wk.bias"), std::string::npos) << e.what();
  }
  io::write_safetensors(tmp.file("short.safetensors"), {{"adapter_query.weight", torch::randn({3, 32})}});
  try {
    m.method().load_official(tmp.file("short.safetensors"));
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
}

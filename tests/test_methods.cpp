// The method part and LLaMA-Adapter V1 on tiny random models: registry and recipe sections,
// the zero-init / K=0 / L=0 invariants, KV-cache decode = full recompute with prompts, a
// left-padded batch = one prompt at a time, beam search with per-sample state, parameter counts
// from configs alone (1,229,760 on LLaMA-7B), training changes only the adapter, save -> load
// is bitwise, the official key layout, and merge refusing with the reason.
#include <gtest/gtest.h>

#include "adapters/gated_prefix.h"
#include "common/error.h"
#include "data/dataset.h"
#include "fixtures.h"
#include "generate/generator.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "methods/llama_adapter_v1.h"
#include "methods/registry.h"
#include "train/recipe.h"
#include "train/trainer.h"
#include "vlm/pipeline.h"
#include "vlm/vision_language_model.h"

using namespace vadapt;
using vadapt::test::TempDir;
using vadapt::test::logits_of;
using vadapt::test::batch_of;
using vadapt::test::tensors_close;
using vadapt::test::tensors_equal;

namespace {

using World = vadapt::test::TinyVlmWorld;

vlm::VlmSpec v1_spec(const World& w, int64_t k, int64_t l, const std::string& gate, bool visual) {
  vlm::VlmSpec s = w.spec("projector");
  s.method = "llama_adapter_v1";
  s.template_name = "alpaca";
  s.options = {{"adapter_len", k}, {"adapter_layer", l}, {"gate_form", gate}};
  if (visual) s.options["visual_taps"] = std::vector<int64_t>{1, 3}, s.options["visual_hidden"] = 16;
  return s;
}

methods::LlamaAdapterV1& v1(vlm::VisionLanguageModel& m) { return m.method_as<methods::LlamaAdapterV1>(); }

// Random nonzero gates so the prompts matter.
void randomize_gates(vlm::VisionLanguageModel& m, uint64_t seed) {
  torch::NoGradGuard ng;
  torch::manual_seed(seed);
  auto& p = v1(m).prefix();
  for (int64_t l = p->first_layer(); l < m.lm()->config().num_hidden_layers; ++l) p->gate(l).normal_(0, 0.8);
}

}  // namespace

TEST(Methods, RegistryNamesEveryMethodAndRejectsUnknownOnes) {
  auto names = methods::names();
  EXPECT_NE(std::find(names.begin(), names.end(), "llava"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "llama_adapter_v1"), names.end());
  try {
    methods::create("lavin_x", "r.yaml: method");
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown method 'lavin_x'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("llama_adapter_v1"), std::string::npos) << e.what();
  }
}

TEST(Methods, RecipeSectionsAreTheMethodsOwnAndValidated) {
  TempDir tmp;
  auto write = [&](const std::string& body) {
    io::write_text_atomic(tmp.file("r.yaml"), "method: llama_adapter_v1\nmodel: {llm: a, vision: b}\ndata: {train: t.json}\n" + body);
    return tmp.file("r.yaml");
  };
  auto r = train::load_recipe(write("adapter: {prompt_len: 10, layers: 30, gate: raw}\nstages:\n  - name: s\n"), {});
  EXPECT_EQ(r.stages[0].spec.options["adapter_len"], 10);
  EXPECT_EQ(r.stages[0].spec.options["adapter_layer"], 30);
  EXPECT_EQ(r.stages[0].spec.options["gate_form"], "raw");
  // A stage may override the method's section; overrides reach it too.
  r = train::load_recipe(write("adapter: {layers: 30}\nstages:\n  - name: s\n    adapter: {layers: 8}\n"), {"stages.0.adapter.prompt_len=4"});
  EXPECT_EQ(r.stages[0].spec.options["adapter_layer"], 8);
  EXPECT_EQ(r.stages[0].spec.options["adapter_len"], 4);
  auto expect_error = [&](const std::string& body, const std::string& needle) {
    try {
      train::load_recipe(write(body), {});
      ADD_FAILURE() << "accepted: " << body;
    } catch (const VadaptError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error("adapter: {layers: 30, promt_len: 3}\nstages:\n  - name: s\n", "'promt_len': unknown key");
  expect_error("adapter: {prompt_len: 3}\nstages:\n  - name: s\n", "layers");  // which layers carry prompts must be said
  expect_error("adapter: {layers: 2, gate: sigmoid}\nstages:\n  - name: s\n", "gate_form");
  expect_error("adapter: {layers: 2}\nstages:\n  - name: s\n    tune: lora\n", "'tune': unknown key");  // LLaVA's key, not V1's
  expect_error("adapter: {layers: 2}\nvisual: {hidden: 8}\nstages:\n  - name: s\n", "taps");
}

TEST(LlamaAdapterV1, ZeroGatesAndEmptyPromptsAreTheBaseModelBitwise) {
  World w;
  vlm::VisionLanguageModel base(w.spec("projector"));
  auto samples = data::load_dataset(w.data, {});
  auto text_batch = [&](vlm::VisionLanguageModel& m) {
    text::Conversation c;
    c.turns = {{"user", "What colour is the sky?"}, {"assistant", "blue"}};
    return m.collate({text::encode_segments(m.tokenizer(), m.chat_template().segments(c, false), 0)}, {""});
  };
  model::ForwardContext ctx;
  torch::NoGradGuard ng;
  for (auto [k, l, visual] : {std::tuple<int, int, bool>{3, 2, false}, {3, 2, true}, {0, 2, false}, {3, 0, true}}) {
    vlm::VisionLanguageModel m(v1_spec(w, k, l, "tanh", visual));
    auto b = text_batch(m);
    auto ref = base.lm()->forward(b.ids, ctx);
    EXPECT_TRUE(tensors_equal(logits_of(m, b), ref)) << "K " << k << " L " << l;
    if (visual) {  // with an image: the visual token only moves the prompts, which the zero gates hide
      auto bi = batch_of(m, samples, {0});
      auto ids = bi.ids;
      EXPECT_EQ(ids.eq(text::kImageToken).sum().item<int64_t>(), 0);  // no image tokens in the sequence
      EXPECT_TRUE(tensors_equal(logits_of(m, bi), base.lm()->forward(ids, ctx)));
    }
  }
  // Nonzero gates: the prompts change the logits, in both gate forms.
  vlm::VisionLanguageModel m(v1_spec(w, 3, 2, "raw", true));
  randomize_gates(m, 1);
  auto b = batch_of(m, samples, {0});
  EXPECT_FALSE(tensors_close(logits_of(m, b), base.lm()->forward(b.ids, ctx), 1e-3));
}

TEST(LlamaAdapterV1, KvCacheDecodeEqualsFullRecomputeWithPrompts) {
  World w;
  vlm::VisionLanguageModel m(v1_spec(w, 3, 2, "tanh", true));
  randomize_gates(m, 2);
  auto samples = data::load_dataset(w.data, {});
  auto b = batch_of(m, samples, {1, 2});  // two images, equal lengths
  torch::NoGradGuard ng;
  auto in = m.prepare(b);
  ASSERT_TRUE(in.state.condition.defined());
  auto full = logits_of(m, b);  // (2, T, V)
  const int64_t t = b.ids.size(1), pre = t - 4;
  auto cache = m.lm()->make_cache(2, t);
  model::ForwardContext ctx;
  ctx.cache = &cache;
  ctx.adapter_state = &in.state;
  std::vector<torch::Tensor> steps{m.lm()->logits(m.lm()->forward_embeds(in.embeds.narrow(1, 0, pre), ctx))};
  for (int64_t p = pre; p < t; ++p) steps.push_back(m.lm()->logits(m.lm()->forward_embeds(in.embeds.narrow(1, p, 1), ctx)));
  // Right padding: compare the real positions (pads come last and never reach them).
  auto real = b.mask.to(torch::kBool).unsqueeze(-1);
  EXPECT_TRUE(tensors_close(torch::cat(steps, 1).masked_fill(~real, 0), full.masked_fill(~real, 0), 1e-5));
}

TEST(LlamaAdapterV1, LeftPaddedBatchEqualsOneAtATimeAndBeamOneIsGreedy) {
  World w;
  vlm::VisionLanguageModel m(v1_spec(w, 3, 2, "raw", true));
  randomize_gates(m, 3);
  std::vector<vlm::Query> qs(3);
  qs[0].conv.turns = {{"user", "<image>\nWhat colour?"}};
  qs[0].image = w.dir.file("img0.png");
  qs[1].conv.turns = {{"user", "Say something long about the weather today, please."}};  // text-only in the same batch
  qs[2].conv.turns = {{"user", "<image>\nWhich colour is this picture, really?"}};
  qs[2].image = w.dir.file("img2.png");
  generate::GenerateOptions o;
  o.max_new_tokens = 6;
  o.stop_at_eos = false;
  std::vector<text::EncodedPrompt> enc;
  std::vector<std::string> imgs;
  for (const auto& q : qs) enc.push_back(vlm::encode_query(m, q)), imgs.push_back(q.image);
  auto batched = vlm::answer(m, enc, imgs, o);
  for (size_t i = 0; i < qs.size(); ++i) {
    auto one = vlm::answer(m, {enc[i]}, {imgs[i]}, o);
    EXPECT_EQ(batched.tokens[i], one.tokens[0]) << "row " << i;
    auto beam_o = o;
    beam_o.num_beams = 1;
    EXPECT_EQ(vlm::answer(m, {enc[i]}, {imgs[i]}, beam_o).tokens[0], one.tokens[0]);
  }
  // Beam search carries the visual token to every beam: 3 beams give a finite answer of the
  // requested length, and a different image gives a different prompt state.
  auto beam_o = o;
  beam_o.num_beams = 3;
  auto r = vlm::answer(m, {enc[0]}, {imgs[0]}, beam_o);
  EXPECT_EQ(r.tokens[0].size(), 6u);
}

TEST(Pipeline, StopStringsEndTheAnswerBeforeThem) {
  World w;
  vlm::VisionLanguageModel m(v1_spec(w, 3, 2, "raw", true));
  randomize_gates(m, 3);
  vlm::Query q;
  q.conv.turns = {{"user", "Say something long about the weather today, please."}};
  auto enc = vlm::encode_query(m, q);
  generate::GenerateOptions o;
  o.max_new_tokens = 12;
  o.stop_at_eos = false;
  auto full = vlm::answer(m, {enc}, {""}, o).tokens[0];
  const std::string text = m.tokenizer().decode(full);
  ASSERT_GE(text.size(), 6u);
  // A stop string from the middle of the answer: the answer ends where it starts.
  const size_t at = text.size() / 2;
  o.stop_strings = {text.substr(at, 2)};
  const size_t first = text.find(o.stop_strings[0]);
  auto cut = vlm::answer(m, {enc}, {""}, o).tokens[0];
  const std::string got = m.tokenizer().decode(cut);
  EXPECT_LE(got.size(), first);
  EXPECT_EQ(got, text.substr(0, got.size()));
  EXPECT_LT(cut.size(), full.size());
  EXPECT_EQ(got.find(o.stop_strings[0]), std::string::npos);
}

TEST(LlamaAdapterV1, ParameterCountsFromConfigsAlone) {
  TempDir tmp;
  io::LlamaConfig l7;  // LLaMA-7B
  l7.hidden_size = 4096, l7.intermediate_size = 11008, l7.num_hidden_layers = 32, l7.num_attention_heads = 32;
  l7.num_key_value_heads = 32, l7.head_dim = 128, l7.vocab_size = 32000, l7.max_position_embeddings = 2048;
  std::filesystem::create_directories(tmp.file("llm"));
  std::filesystem::create_directories(tmp.file("clip"));
  io::write_text_atomic(tmp.file("llm/config.json"), l7.to_json().dump());
  io::ClipVisionConfig cl;
  cl.hidden_size = 1024, cl.num_hidden_layers = 24, cl.num_attention_heads = 16, cl.intermediate_size = 4096, cl.patch_size = 14,
  cl.image_size = 224;
  io::write_text_atomic(tmp.file("clip/config.json"), cl.to_json().dump());
  vlm::VlmSpec s;
  s.method = "llama_adapter_v1";
  s.llm = tmp.file("llm");
  s.vision = tmp.file("clip");
  s.options = {{"adapter_len", 10}, {"adapter_layer", 30}};
  auto c = vlm::VisionLanguageModel::count_from_configs(s);
  EXPECT_EQ(c["trainable_parameters"].get<int64_t>(), 1229760);  // 30*10*4096 + 30*32 (methods.md)
  s.options["visual_taps"] = std::vector<int64_t>{6, 12, 18, 24};
  s.options["visual_hidden"] = 128;
  c = vlm::VisionLanguageModel::count_from_configs(s);
  EXPECT_EQ(c["connector_parameters"].get<int64_t>(), 4 * 1024 * 128 + 128 + 128 * 4096 + 4096);
  EXPECT_EQ(c["trainable_parameters"].get<int64_t>(), 1229760 + c["connector_parameters"].get<int64_t>());
  s.options["adapter_layer"] = 33;
  EXPECT_THROW(vlm::VisionLanguageModel::count_from_configs(s), VadaptError);
}

TEST(LlamaAdapterV1, TrainingChangesOnlyTheAdapterAndSaveLoadIsBitwise) {
  World w;
  auto spec = v1_spec(w, 3, 2, "tanh", true);
  vlm::VisionLanguageModel m(spec);
  auto samples = data::load_dataset(w.data, {});
  // Mixed text-only and image samples in one run.
  data::Sample t;
  t.id = "text";
  t.conv.turns = {{"user", "Name a colour."}, {"assistant", "red"}};
  samples.push_back(t);
  std::map<std::string, torch::Tensor> base_before;
  for (const auto& p : m.lm()->named_parameters()) base_before[p.key()] = p.value().clone();
  TempDir out;
  train::TrainConfig cfg;
  cfg.max_steps = 6;
  cfg.batch_size = 3;
  cfg.blr = 0.5;  // lr = blr * 3 / 256
  cfg.beta2 = 0.95;
  cfg.weight_decay = 0.02;
  cfg.schedule = "half_cosine";
  cfg.warmup_epochs = 1;
  cfg.log_every = 1;
  cfg.out_dir = out.path();
  train::Trainer tr(m, samples, samples, cfg);
  auto r = tr.fit();
  EXPECT_LT(r.val_loss_after, r.val_loss_before);
  EXPECT_EQ(r.trainable, 2 * 3 * 32 + 2 * 4 + (2 * 32 * 16 + 16 + 16 * 32 + 32));
  for (const auto& p : m.lm()->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), base_before[p.key()])) << p.key();
  auto& pre = v1(m).prefix();
  EXPECT_GT(pre->gate(1).abs().sum().item<double>(), 0.0);  // the zero-init gates moved
  // The checkpoint holds exactly the adapter, under the official key names.
  auto f = io::SafeTensorsFile::open(out.file("adapter_model.safetensors"));
  std::set<std::string> keys;
  for (const auto& info : f->tensors()) keys.insert(info.name);
  std::set<std::string> want = {"adapter_query.weight", "layers.0.attention.gate", "layers.1.attention.gate", "visual_proj.0.weight",
                                "visual_proj.0.bias", "visual_proj.2.weight", "visual_proj.2.bias"};
  EXPECT_EQ(keys, want);
  auto cfgj = io::read_json(out.file("adapter_config.json"));
  EXPECT_EQ(cfgj["method"], "llama_adapter_v1");
  EXPECT_EQ(cfgj["adapter_len"], 3);
  EXPECT_EQ(cfgj["gate_form"], "tanh");
  auto back = vlm::load_vlm_checkpoint(out.path());
  auto a = m.trainable_state(), bb = back->trainable_state();
  ASSERT_EQ(a.size(), bb.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(tensors_equal(a[i].second, bb[i].second)) << a[i].first;
  auto batch = batch_of(m, samples, {0, 8});
  EXPECT_TRUE(tensors_equal(logits_of(*back, batch), logits_of(m, batch)));
  // Prompts cannot be folded into the weights: merge says so.
  try {
    back->method().merge_into(*back);
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("cannot be folded"), std::string::npos) << e.what();
  }
}

TEST(LlamaAdapterV1, OfficialKeyLayoutLoadsAndIgnoresGatesOfLayersWithoutPrompts) {
  World w;
  vlm::VisionLanguageModel m(v1_spec(w, 3, 1, "raw", false));  // only layer 1 of 2 carries prompts
  TempDir tmp;
  auto q = torch::randn({3, 32});
  auto g0 = torch::full({1, 4, 1, 1}, 0.7), g1 = torch::randn({1, 4, 1, 1});
  io::write_safetensors(tmp.file("official.safetensors"),
                        {{"adapter_query.weight", q}, {"layers.0.attention.gate", g0}, {"layers.1.attention.gate", g1}});
  m.method().load_official(tmp.file("official.safetensors"));
  EXPECT_TRUE(tensors_equal(v1(m).prefix()->adapter_query, q));
  EXPECT_TRUE(tensors_equal(v1(m).prefix()->gate(1), g1));
  io::write_safetensors(tmp.file("bad.safetensors"), {{"adapter_query.weight", q}, {"layers.1.attention.gate", g1}, {"norm.weight", q}});
  try {
    m.method().load_official(tmp.file("bad.safetensors"));
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("norm.weight"), std::string::npos) << e.what();
  }
  io::write_safetensors(tmp.file("short.safetensors"), {{"adapter_query.weight", torch::randn({6, 32})}, {"layers.1.attention.gate", g1}});
  EXPECT_THROW(m.method().load_official(tmp.file("short.safetensors")), VadaptError);  // L*K rows disagree with the recipe
}

TEST(Data, AlpacaJsonBecomesInstructionConversations) {
  TempDir tmp;
  io::write_text_atomic(tmp.file("alpaca.json"), R"([{"instruction": "Give a colour.", "input": "", "output": "red"},
    {"instruction": "Repeat the word.", "input": "cat", "output": "cat"}])");
  auto s = data::load_dataset(tmp.file("alpaca.json"), {});
  ASSERT_EQ(s.size(), 2u);
  EXPECT_TRUE(s[0].image.empty());
  auto t = text::ChatTemplate::by_name("alpaca");
  EXPECT_EQ(t.render(s[0].conv, false),
            "<s>Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nGive a colour.\n\n### Response:red</s>");
  EXPECT_EQ(t.render(s[1].conv, false),
            "<s>Below is an instruction that describes a task, paired with an input that provides further context. Write a response that "
            "appropriately completes the request.\n\n### Instruction:\nRepeat the word.\n\n### Input:\ncat\n\n### Response:cat</s>");
  io::write_text_atomic(tmp.file("bad.json"), R"([{"instruction": "x"}])");
  try {
    data::load_dataset(tmp.file("bad.json"), {});
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("output"), std::string::npos) << e.what();
  }
}

TEST(AdapterState, SelectRowsReordersEveryTensorByBatchRow) {
  model::AdapterState st;
  st.condition = torch::arange(6, torch::kFloat32).view({3, 2});
  st.kept["layer.1.k"] = torch::arange(3, torch::kFloat32).view({3, 1, 1});
  EXPECT_FALSE(st.empty());
  st.select_rows(torch::tensor({2, 0, 0, 1}, torch::kInt64));  // beams: reorder and duplicate rows
  EXPECT_TRUE(tensors_equal(st.condition, torch::tensor({4.f, 5.f, 0.f, 1.f, 0.f, 1.f, 2.f, 3.f}).view({4, 2})));
  EXPECT_TRUE(tensors_equal(st.kept["layer.1.k"], torch::tensor({2.f, 0.f, 0.f, 1.f}).view({4, 1, 1})));
  EXPECT_FALSE(st.modality.defined());
}

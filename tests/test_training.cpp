// The training engine and the LLaVA recipe on tiny fixtures: templates, data errors, LoRA
// invariants (zero-init = base, merge = unmerged), one step changes only trainable tensors,
// save -> load and save -> resume are bitwise, parameter counts from configs alone.
#include <gtest/gtest.h>

#include <limits>

#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <set>

#include "adapters/peft.h"
#include "common/error.h"
#include "data/dataset.h"
#include "eval/eval_runner.h"
#include "fixtures.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/load.h"
#include "train/lr_schedule.h"
#include "train/recipe.h"
#include "train/trainer.h"
#include "vision/image.h"
#include "methods/llava.h"
#include "vlm/vision_language_model.h"

using namespace vadapt;
using vadapt::test::TempDir;
using vadapt::test::tensors_close;

namespace {

using World = vadapt::test::TinyVlmWorld;

torch::Tensor logits_of(vlm::VisionLanguageModel& m, const vlm::Batch& b) {
  torch::NoGradGuard ng;
  auto in = m.prepare(b);
  model::ForwardContext ctx;
  if (!in.state.empty()) ctx.adapter_state = &in.state;
  return m.lm()->logits(m.lm()->forward_embeds(in.embeds, ctx));
}

methods::Llava& llava(vlm::VisionLanguageModel& m) { return m.method_as<methods::Llava>(); }

vlm::Batch first_batch(vlm::VisionLanguageModel& m, const std::vector<data::Sample>& s) {
  auto e = text::encode_segments(m.tokenizer(), m.chat_template().segments(s[0].conv, false), m.image_tokens());
  return m.collate({e}, {s[0].image});
}

}  // namespace

TEST(Templates, ExactTextOfEveryTemplate) {
  text::Conversation c;
  c.turns = {{"user", "<image>\nWhat is it?"}, {"assistant", "A cat."}};
  EXPECT_EQ(text::ChatTemplate::by_name("vicuna_v1").render(c, false),
            "<s>A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
            "detailed, and polite answers to the user's questions. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>");
  EXPECT_EQ(text::ChatTemplate::by_name("plain").render(c, false), "<s><image>A cat.\n");
  EXPECT_EQ(text::ChatTemplate::by_name("mistral_instruct").render(c, false), "<s>[INST] <image>\nWhat is it? [/INST] A cat. </s>");
  c.system = "Be brief.";
  EXPECT_EQ(text::ChatTemplate::by_name("llama_2").render(c, false),
            "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A cat. </s>");
  EXPECT_EQ(text::ChatTemplate::by_name("mpt").render(c, false),
            "<s><|im_start|>system\nBe brief.<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\nA cat.<|im_end|>");
  c.system.clear();
  EXPECT_EQ(text::ChatTemplate::by_name("chatml").render(c, false),
            "<s><|im_start|>user\n<image>\nWhat is it?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n");
  EXPECT_EQ(text::ChatTemplate::by_name("alpaca").render(c, false),
            "<s>Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\n<image>\nWhat is it?\n\n### Response:A cat.</s>");
  text::Conversation q;
  q.turns = {{"user", "Hi"}};
  std::string gen = text::ChatTemplate::by_name("vicuna_v1").render(q, true);
  EXPECT_EQ(gen.substr(gen.size() - 20), " USER: Hi ASSISTANT:");
  EXPECT_THROW(text::ChatTemplate::by_name("vicuna_v2"), VadaptError);
  EXPECT_THROW(text::ChatTemplate::by_name("vicuna_v1").segments(c, true), VadaptError);  // last turn is the assistant's
}

TEST(Templates, LabelsCoverExactlyTheAssistantTurnsAndEos) {
  TempDir tmp;
  vadapt::test::write_tiny_tokenizer(tmp.path(), 300);
  auto tok = text::load_tokenizer(tmp.path());
  text::Conversation c;
  c.turns = {{"user", "<image>\nhi"}, {"assistant", "in the"}, {"user", "more"}, {"assistant", "the"}};
  auto e = text::encode_segments(*tok, text::ChatTemplate::by_name("vicuna_v1").segments(c, false), 3);
  ASSERT_EQ(e.ids.size(), e.labels.size());
  EXPECT_EQ(e.num_images, 1);
  std::vector<int64_t> trained;
  for (size_t i = 0; i < e.ids.size(); ++i)
    if (e.labels[i] != text::kIgnore) {
      trained.push_back(e.ids[i]);
      EXPECT_EQ(e.labels[i], e.ids[i]);
    }
  // " in the" + </s>, then " the" + </s> (BPE merges: " the" = 260, "in" = 261, " " = 'Ġ' byte 32).
  auto ans1 = tok->encode(" in the", false), ans2 = tok->encode(" the", false);
  std::vector<int64_t> want = ans1;
  want.push_back(257);
  want.insert(want.end(), ans2.begin(), ans2.end());
  want.push_back(257);
  EXPECT_EQ(trained, want);
  EXPECT_EQ(std::count(e.ids.begin(), e.ids.end(), text::kImageToken), 3);
}

TEST(Templates, IdsAreTheWholeStringTokenisedForTokenizerJson) {
  // The reference tokenises the whole prompt string (split only at <image> and special tokens):
  // for a byte-level BPE model that is tok.encode of each run between them.
  TempDir tmp;
  vadapt::test::write_tiny_tokenizer(tmp.path(), 300);
  auto tok = text::load_tokenizer(tmp.path());
  for (const std::string name : text::template_names()) {
    SCOPED_TRACE(name);
    text::Conversation c;
    c.turns = {{"user", "<image>\nin the"}, {"assistant", "the in"}};
    if (name != "plain" && name != "palm2_caption") c.turns.insert(c.turns.end(), {{"user", "the"}, {"assistant", "in"}});
    const auto tmpl = text::ChatTemplate::by_name(name);
    auto e = text::encode_segments(*tok, tmpl.segments(c, false), 2);
    std::string s = tmpl.render(c, false);
    std::vector<int64_t> want;
    size_t pos = 0, run = 0;
    auto flush = [&](size_t end) {
      auto ids = tok->encode(s.substr(run, end - run), false);
      want.insert(want.end(), ids.begin(), ids.end());
    };
    while (pos < s.size()) {
      int64_t special = s.compare(pos, 3, "<s>") == 0 ? tok->bos_id() : s.compare(pos, 4, "</s>") == 0 ? tok->eos_id()
                        : s.compare(pos, 7, "<image>") == 0 ? text::kImageToken : -1;
      if (special == -1) {
        ++pos;
        continue;
      }
      const size_t len = special == tok->bos_id() ? 3 : special == tok->eos_id() ? 4 : 7;
      flush(pos);
      if (special == text::kImageToken) want.insert(want.end(), 2, special);
      else if (special >= 0 && !(special == tok->bos_id() && pos == 0 && !tok->add_bos_token())) want.push_back(special);
      pos += len;
      run = pos;
    }
    flush(s.size());
    EXPECT_EQ(e.ids, want) << s;
  }
}

TEST(Templates, MethodsWithoutImageTokensDropTheTagAndItsNewline) {
  TempDir tmp;
  vadapt::test::write_tiny_tokenizer(tmp.path(), 300);
  auto tok = text::load_tokenizer(tmp.path());
  text::Conversation a, b;
  a.turns = {{"user", "<image>\nin the"}, {"assistant", "the"}};
  b.turns = {{"user", "in the"}, {"assistant", "the"}};
  const auto t = text::ChatTemplate::by_name("alpaca");
  auto ea = text::encode_segments(*tok, t.segments(a, false), 0), eb = text::encode_segments(*tok, t.segments(b, false), 0);
  EXPECT_EQ(ea.ids, eb.ids);
  EXPECT_EQ(ea.labels, eb.labels);
  EXPECT_EQ(ea.num_images, 1);
}

TEST(Data, ImageTagMovesToTheFrontAndLeadingAssistantTurnsAreSkippedAsInLlava) {
  TempDir tmp;
  io::write_text_atomic(tmp.file("d.json"), R"([{"id": "a", "image": "x.png", "conversations": [
      {"from": "gpt", "value": "ignored"}, {"from": "human", "value": "What is it?\n<image>"}, {"from": "gpt", "value": "A cat."},
      {"from": "human", "value": "  <image> colour? "}, {"from": "gpt", "value": "grey"}]}])");
  data::LoadOptions o;
  o.check_images = false;
  auto s = data::load_dataset(tmp.file("d.json"), o);
  ASSERT_EQ(s.size(), 1u);
  ASSERT_EQ(s[0].conv.turns.size(), 4u);
  EXPECT_EQ(s[0].conv.turns[0].text, "<image>\nWhat is it?");
  EXPECT_EQ(s[0].conv.turns[2].text, "<image>\ncolour?");
  o.image_placement = "as_written";
  s = data::load_dataset(tmp.file("d.json"), o);
  EXPECT_EQ(s[0].conv.turns[0].text, "What is it?\n<image>");
  o.image_placement = "middle";
  EXPECT_THROW(data::load_dataset(tmp.file("d.json"), o), VadaptError);
  text::Conversation three;
  three.turns = {{"user", "<image>"}, {"assistant", "a"}, {"user", "b"}, {"assistant", "c"}};
  EXPECT_THROW(text::ChatTemplate::by_name("plain").segments(three, false), VadaptError);  // LLaVA's preprocess_plain asserts
}

TEST(Data, ScienceQaFormatsFollowBasePromptPy) {
  TempDir tmp;
  io::write_text_atomic(tmp.file("problems.json"), R"({"7": {"question": "Which is a mammal?", "choices": ["frog", "cat"], "answer": 1,
      "hint": "", "image": "image.png", "lecture": "Mammals have fur.", "solution": "A cat has fur.", "subject": "natural science",
      "grade": "grade3"}})");
  io::write_text_atomic(tmp.file("pid_splits.json"), R"({"train": ["7"]})");
  data::LoadOptions o;
  o.check_images = false;
  o.pid_split = "train";
  auto s = data::load_dataset(tmp.file("problems.json"), o);
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].conv.turns[0].text, "<image>\nWhich is a mammal?\nA. frog\nB. cat");
  EXPECT_EQ(s[0].conv.turns[1].text, "B");
  o.scienceqa_format = "QCM-LEA";  // convert_sqa_to_llava.py: no "Question: " / "Answer: ", image after the text
  s = data::load_dataset(tmp.file("problems.json"), o);
  EXPECT_EQ(s[0].conv.turns[0].text, "<image>\nWhich is a mammal?\nContext: N/A\nOptions: (A) frog (B) cat");
  EXPECT_EQ(s[0].conv.turns[1].text, "Mammals have fur. A cat has fur. The answer is B.");
  o.image_placement = "as_written";
  s = data::load_dataset(tmp.file("problems.json"), o);
  EXPECT_EQ(s[0].conv.turns[0].text, "Which is a mammal?\nContext: N/A\nOptions: (A) frog (B) cat\n<image>");
  o.image_placement = "front";
  o.scienceqa_format = "QCM-ALE";  // LaVIN
  s = data::load_dataset(tmp.file("problems.json"), o);
  EXPECT_EQ(s[0].conv.turns[0].text, "<image>\nQuestion: Which is a mammal?\nContext: N/A\nOptions: (A) frog (B) cat");
  EXPECT_EQ(s[0].conv.turns[1].text, "The answer is B. BECAUSE: Mammals have fur. A cat has fur.");
  o.scienceqa_format = "QCM-X";
  EXPECT_THROW(data::load_dataset(tmp.file("problems.json"), o), VadaptError);
}

TEST(Training, GroupByModalityLengthKeepsEachBatchToOneModality) {
  std::vector<data::Sample> d(23);
  for (size_t i = 0; i < d.size(); ++i) {
    d[i].image = i % 3 == 0 ? "" : "img.png";
    d[i].conv.turns = {{"user", std::string(i, 'w') + " a b"}, {"assistant", "x"}};
  }
  std::vector<size_t> order(d.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(3);
  auto g = train::group_by_modality(d, order, 4, rng);
  ASSERT_EQ(g.size(), d.size());
  EXPECT_EQ(std::set<size_t>(g.begin(), g.end()).size(), d.size());
  // 15 image samples -> 3 full batches + 3 left; 8 text -> 1 full + 4 left: 4 pure batches, then the rest.
  for (size_t b = 0; b < 4; ++b) {
    std::set<bool> kinds;
    for (size_t k = 0; k < 4; ++k) kinds.insert(d[g[b * 4 + k]].image.empty());
    EXPECT_EQ(kinds.size(), 1u) << "batch " << b;
  }
}

TEST(Data, MalformedRecordsNameFileIndexAndField) {
  TempDir tmp;
  io::write_text_atomic(tmp.file("d.json"), R"([{"id": 1, "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]},
    {"id": 2, "conversations": [{"from": "robot", "value": "x"}]}])");
  try {
    data::load_dataset(tmp.file("d.json"), {});
    FAIL();
  } catch (const VadaptError& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("d.json"), std::string::npos) << m;
    EXPECT_NE(m.find("record 1 field 'conversations[0].from'"), std::string::npos) << m;
  }
  data::LoadOptions o;
  o.skip_bad = true;
  data::LoadReport rep;
  auto s = data::load_dataset(tmp.file("d.json"), o, &rep);
  EXPECT_EQ(s.size(), 1u);
  EXPECT_EQ(rep.skipped, 1);
  io::write_text_atomic(tmp.file("m.json"), R"([{"id": 1, "image": "nope.png", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}]}])");
  try {
    data::load_dataset(tmp.file("m.json"), {});
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("1 image file(s) not found"), std::string::npos) << e.what();
  }
  // COCO images and ScienceQA choices of the wrong type are named (they escaped as nlohmann
  // exceptions before; found by fuzz_data_coco / fuzz_data_scienceqa).
  io::write_text_atomic(tmp.file("captions_x.json"), R"({"images": [{"id": 1.5, "file_name": "a.jpg"}], "annotations": []})");
  data::LoadOptions no_images;
  no_images.check_images = false;
  try {
    data::load_dataset(tmp.file("captions_x.json"), no_images);
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("images[0]"), std::string::npos) << e.what();
  }
  io::write_text_atomic(tmp.file("problems.json"), R"({"1": {"question": "q", "choices": ["a", 2], "answer": 0}})");
  try {
    data::load_dataset(tmp.file("problems.json"), no_images);
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("problem 1 field 'choices'"), std::string::npos) << e.what();
  }
  io::write_text_atomic(tmp.file("c.jsonl"), "{\"text\": \"a\"}\n{\"txt\": 1}\n");
  EXPECT_THROW(data::load_dataset(tmp.file("c.jsonl"), {}), VadaptError);
}

TEST(Schedules, CosineAndLinearWithWarmup) {
  EXPECT_DOUBLE_EQ(train::lr_multiplier("cosine", 0, 100, 10), 0.0);
  EXPECT_DOUBLE_EQ(train::lr_multiplier("cosine", 5, 100, 10), 0.5);
  EXPECT_DOUBLE_EQ(train::lr_multiplier("cosine", 10, 100, 10), 1.0);
  EXPECT_NEAR(train::lr_multiplier("cosine", 55, 100, 10), 0.5, 1e-12);
  EXPECT_NEAR(train::lr_multiplier("linear", 55, 100, 10), 0.5, 1e-12);
  EXPECT_DOUBLE_EQ(train::lr_multiplier("constant", 99, 100, 0), 1.0);
  EXPECT_THROW(train::lr_multiplier("warp", 1, 10, 0), VadaptError);
}

TEST(Recipe, ParameterCountsFromConfigsAloneMatchTheGoldenNumbers) {
  TempDir tmp;
  io::LlamaConfig l7 = vadapt::test::tiny_llama_config(false);
  l7.hidden_size = 4096;
  l7.num_attention_heads = l7.num_key_value_heads = 32;
  l7.head_dim = 128;
  l7.intermediate_size = 11008;
  l7.num_hidden_layers = 32;
  l7.vocab_size = 32000;
  std::filesystem::create_directories(tmp.file("llm"));
  std::filesystem::create_directories(tmp.file("clip"));
  io::write_text_atomic(tmp.file("llm/config.json"), l7.to_json().dump());
  io::ClipVisionConfig cl;
  cl.hidden_size = 1024;
  cl.num_hidden_layers = 24;
  cl.num_attention_heads = 16;
  cl.intermediate_size = 4096;
  cl.patch_size = 14;
  cl.image_size = 336;
  io::write_text_atomic(tmp.file("clip/config.json"), cl.to_json().dump());
  vlm::VlmSpec s;
  s.llm = tmp.file("llm");
  s.vision = tmp.file("clip");
  s.options["mm_projector_type"] = "linear";
  EXPECT_EQ(vlm::VisionLanguageModel::count_from_configs(s)["connector_parameters"].get<int64_t>(), 4198400);
  s.options["mm_projector_type"] = "mlp2x_gelu";
  EXPECT_EQ(vlm::VisionLanguageModel::count_from_configs(s)["connector_parameters"].get<int64_t>(), 20979712);
  EXPECT_EQ(vlm::VisionLanguageModel::count_from_configs(s)["llm_parameters"].get<int64_t>(), 6738415616);  // LLaMA-7B
  s.options["tune"] = "lora";
  s.options["r"] = 16;
  s.options["lora_alpha"] = 32;
  EXPECT_EQ(vlm::VisionLanguageModel::count_from_configs(s)["lora_parameters"].get<int64_t>(), 39976960);  // r16, 7 linears
}

TEST(Templates, SystemPromptSetOrLeftOut) {
  text::Conversation c;
  c.turns = {{"user", "<image>\nWhat is it?"}, {"assistant", "A cat."}};
  EXPECT_EQ(text::ChatTemplate::by_name("vicuna_v1", "").render(c, false), "<s>USER: <image>\nWhat is it? ASSISTANT: A cat.</s>");
  EXPECT_EQ(text::ChatTemplate::by_name("vicuna_v1", "Be brief.").render(c, false),
            "<s>Be brief. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>");
  EXPECT_EQ(text::ChatTemplate::by_name("v0", "").render(c, false), "<s>Human: <image>\nWhat is it?###Assistant: A cat.###");
  EXPECT_EQ(text::ChatTemplate::by_name("chatml_direct", "").render(c, false),
            "<s><|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\nA cat.<|im_end|>");
  c.turns.pop_back();
  EXPECT_EQ(text::ChatTemplate::by_name("chatml", "Hi.").render(c, true).rfind("<s><|im_start|>system\nHi.<|im_end|>\n<|im_start|>user", 0), 0u);
  c.turns.push_back({"assistant", "A cat."});
  EXPECT_EQ(text::ChatTemplate::by_name("llama_2", "").render(c, false), "<s>[INST] <image>\nWhat is it? [/INST] A cat. </s>");
  c.system = "Own.";  // a conversation's own system prompt wins
  EXPECT_EQ(text::ChatTemplate::by_name("vicuna_v1", "").render(c, false), "<s>Own. USER: <image>\nWhat is it? ASSISTANT: A cat.</s>");
  EXPECT_THROW(text::ChatTemplate::by_name("plain", ""), VadaptError);
  EXPECT_NO_THROW(text::ChatTemplate::by_name("plain"));
}

TEST(Recipe, SystemPromptAppliesToStagesWhoseTemplateHasOneAndIsSaved) {
  TempDir tmp;
  io::write_text_atomic(tmp.file("r.yaml"),
                        "model: {llm: a, vision: b, system_prompt: ''}\ndata: {train: t.json}\nstages:\n"
                        "  - {name: s1, tune: projector, template: plain}\n  - {name: s2, tune: full, template: vicuna_v1}\n");
  auto r = train::load_recipe(tmp.file("r.yaml"), {});
  EXPECT_FALSE(r.stages[0].spec.system_prompt.has_value());
  ASSERT_TRUE(r.stages[1].spec.system_prompt.has_value());
  EXPECT_EQ(*r.stages[1].spec.system_prompt, "");
  auto j = r.stages[1].spec.to_json();
  EXPECT_EQ(j["system_prompt"], "");
  EXPECT_EQ(vlm::VlmSpec::from_json(j, "adapter_config.json").system_prompt, std::optional<std::string>(""));
  EXPECT_FALSE(vlm::VlmSpec::from_json(r.stages[0].spec.to_json(), "adapter_config.json").system_prompt.has_value());
  auto r2 = train::load_recipe(tmp.file("r.yaml"), {"stages.1.system_prompt=Answer in one word."});
  EXPECT_EQ(*r2.stages[1].spec.system_prompt, "Answer in one word.");
  try {
    train::load_recipe(tmp.file("r.yaml"), {"stages.0.system_prompt=x"});
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("system_prompt"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("plain"), std::string::npos) << e.what();
  }
}

// Found by fuzz_recipe: YAML takes any bytes, and a value that is not UTF-8 made the error
// message itself throw (nlohmann's dump) instead of naming the key; such a recipe would also
// have failed only when saving adapter_config.json at the end of training.
TEST(Recipe, TextThatIsNotUtf8IsRefusedAtItsKey) {
  TempDir tmp;
  io::write_text_atomic(tmp.file("r.yaml"), "method: llava\nmodel: {llm: /m, system_prompt: \"caf\xe9\"}\nstages: [{name: s, data: {train: x.json}}]\n");
  try {
    train::load_recipe(tmp.file("r.yaml"), {});
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("model.system_prompt"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("is not UTF-8 text"), std::string::npos) << e.what();
  }
  nlohmann::json bad = std::string("\xff\xfe");
  EXPECT_EQ(io::show(bad), "\"\xef\xbf\xbd\xef\xbf\xbd\"");
  try {
    io::json_get<int64_t>(nlohmann::json{{"k", bad}}, "k", "f.json");
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("has the wrong type (string"), std::string::npos) << e.what();
  }
  // Found by fuzz_config / fuzz_tokenizer_json / fuzz_data_*: a number too large for a double
  // made read_json throw nlohmann's out_of_range instead of an error naming the file.
  io::write_text_atomic(tmp.file("big.json"), R"({"hidden_size": 1e0050000})");
  try {
    io::read_json(tmp.file("big.json"));
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("big.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("number overflow"), std::string::npos) << e.what();
  }
  // Also found by fuzz_recipe: an integer key given 2.2e72 was cast to int64 (undefined
  // behaviour, a garbage value); a whole number written as a float is still accepted.
  EXPECT_THROW(io::json_get<int64_t>(nlohmann::json{{"k", 2.2e72}}, "k", "f.json"), VadaptError);
  EXPECT_THROW(io::json_get<int64_t>(nlohmann::json{{"k", 1.5}}, "k", "f.json"), VadaptError);
  EXPECT_EQ(io::json_get<int64_t>(nlohmann::json{{"k", 3.0}}, "k", "f.json"), 3);
  EXPECT_EQ(io::json_get_or<int>(nlohmann::json{{"k", -7.0}}, "k", 0, "f.json"), -7);
}

TEST(Recipe, UnknownKeysAndBadValuesAreNamed) {
  TempDir tmp;
  io::write_text_atomic(tmp.file("r.yaml"), "model: {llm: a, vision: b}\ndata: {train: t.json}\nstages:\n  - name: s1\n    tune: projector\n    trian: {lr: 1}\n");
  try {
    train::load_recipe(tmp.file("r.yaml"), {});
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("'trian': unknown key"), std::string::npos) << e.what();
  }
  io::write_text_atomic(tmp.file("r.yaml"), "model: {llm: a, vision: b}\ndata: {train: t.json}\nstages:\n  - name: s1\n    tune: half\n");
  EXPECT_THROW(train::load_recipe(tmp.file("r.yaml"), {}), VadaptError);
  auto r = train::load_recipe(tmp.file("r.yaml"), {"stages.0.tune=lora", "train.lr=0.5"});
  EXPECT_EQ(r.stages[0].spec.options["tune"], "lora");
  EXPECT_DOUBLE_EQ(r.stages[0].train.lr, 0.5);
  io::write_text_atomic(tmp.file("bad.yaml"), "model: [unclosed\n");
  EXPECT_THROW(train::load_recipe(tmp.file("bad.yaml"), {}), VadaptError);
}

TEST(Lora, ZeroInitEqualsBaseAndMergeEqualsUnmerged) {
  World w;
  vlm::VisionLanguageModel base(w.spec("projector"));
  vlm::VisionLanguageModel lora(w.spec("lora"));
  auto samples = data::load_dataset(w.data, {});
  auto b = first_batch(base, samples);
  EXPECT_TRUE(tensors_close(logits_of(lora, b), logits_of(base, b), 0.0));  // B = 0 and the same projector seed
  {
    torch::NoGradGuard ng;
    for (auto& [name, l] : llava(lora).adapters()->loras()) l->B.normal_(0, 0.05);
  }
  auto unmerged = logits_of(lora, b);
  EXPECT_FALSE(tensors_close(unmerged, logits_of(base, b), 1e-6));
  llava(lora).adapters()->merge_into(*lora.lm());
  EXPECT_TRUE(tensors_close(logits_of(lora, b), unmerged, 1e-5));
}

TEST(Trainer, OneStepChangesOnlyTrainableTensorsAndSaveLoadIsBitwise) {
  World w;
  vlm::VisionLanguageModel m(w.spec("lora"));
  auto samples = data::load_dataset(w.data, {});
  std::map<std::string, torch::Tensor> frozen_before;
  for (const auto& p : m.lm()->named_parameters()) frozen_before[p.key()] = p.value().clone();
  for (const auto& p : m.tower().module().named_parameters()) frozen_before["v." + p.key()] = p.value().clone();
  std::map<std::string, torch::Tensor> train_before;
  for (const auto& [k, v] : m.trainable_state()) train_before[k] = v.clone();
  {
    torch::NoGradGuard ng;
    for (auto& [name, l] : llava(m).adapters()->loras()) l->B.normal_(0, 0.01);  // so LoRA A gets gradients too
    for (const auto& [k, v] : m.trainable_state()) train_before[k] = v.clone();
  }
  TempDir out;
  train::TrainConfig cfg;
  cfg.max_steps = 1;
  cfg.batch_size = 4;
  cfg.lr = 1e-2;
  cfg.warmup_ratio = 0;
  cfg.out_dir = out.path();
  train::Trainer t(m, samples, {}, cfg);
  t.fit();
  for (const auto& p : m.lm()->named_parameters()) EXPECT_TRUE(vadapt::test::tensors_equal(p.value(), frozen_before[p.key()])) << p.key();
  for (const auto& p : m.tower().module().named_parameters())
    EXPECT_TRUE(vadapt::test::tensors_equal(p.value(), frozen_before["v." + p.key()])) << p.key();
  int changed = 0;
  for (const auto& [k, v] : m.trainable_state()) changed += !torch::equal(v, train_before[k]);
  EXPECT_EQ(changed, static_cast<int>(train_before.size()));
  for (const auto& p : m.lm()->parameters()) EXPECT_FALSE(p.grad().defined());  // frozen weights get no gradient buffers
  // The adapter checkpoint holds exactly the trainable tensors, and loads back bitwise.
  auto f = io::SafeTensorsFile::open(out.file("adapter_model.safetensors"));
  EXPECT_EQ(f->tensors().size(), m.trainable_state().size());
  auto back = vlm::load_vlm_checkpoint(out.path());
  auto a = m.trainable_state(), bb = back->trainable_state();
  ASSERT_EQ(a.size(), bb.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(vadapt::test::tensors_equal(a[i].second, bb[i].second)) << a[i].first;
  EXPECT_TRUE(std::filesystem::exists(out.file("checkpoint-1/optimizer.pt")));
}

// The loss takes logits only at labelled positions; it equals cross-entropy over the full logits
// with the unlabelled positions ignored (a padded batch of image and text-only samples).
TEST(Trainer, LossFromLabelledPositionsOnlyEqualsTheFullLogitsLoss) {
  World w;
  vlm::VisionLanguageModel m(w.spec("lora"));
  auto samples = vadapt::test::mixed_samples(w);
  std::vector<size_t> idx(samples.size());
  std::iota(idx.begin(), idx.end(), 0);
  auto b = vadapt::test::batch_of(m, samples, idx);
  auto logits = vadapt::test::logits_of(m, b);  // (B, T, V)
  auto labels = b.labels.narrow(1, 1, b.labels.size(1) - 1).reshape({-1});
  auto want = torch::nn::functional::cross_entropy(logits.narrow(1, 0, logits.size(1) - 1).reshape({-1, logits.size(2)}), labels,
                                                   torch::nn::functional::CrossEntropyFuncOptions().ignore_index(text::kIgnore).reduction(torch::kSum));
  torch::NoGradGuard ng;
  auto got = m.loss(b);
  EXPECT_EQ(got.target_tokens, labels.ne(text::kIgnore).sum().item<int64_t>());
  EXPECT_NEAR(got.loss_sum, want.item<double>(), 1e-4 * std::abs(want.item<double>()));
}

TEST(Trainer, PreScanReportsUntrainableAndOverLongSamplesWithFileAndRecordBeforeTheFirstStep) {
  World w;
  vlm::VisionLanguageModel m(w.spec("lora"));
  TempDir tmp;
  std::string long_text;
  for (int i = 0; i < 300; ++i) long_text += "red blue ";
  auto rec = [](const std::string& id, const std::string& q, const std::string& a) {
    return nlohmann::json{{"id", id}, {"conversations", {{{"from", "human"}, {"value", q}}, {{"from", "gpt"}, {"value", a}}}}};
  };
  io::write_text_atomic(tmp.file("t.json"), nlohmann::json{rec("ok", "Say red.", "red"), rec("long_answer", "Say it.", long_text),
                                                           rec("long_question", long_text, "red")}.dump());
  io::write_text_atomic(tmp.file("long.json"), nlohmann::json{rec("a", "Say it.", long_text), rec("b", long_text, "red")}.dump());
  const auto samples = data::load_dataset(tmp.file("t.json"), {});
  TempDir out;
  train::TrainConfig cfg;
  cfg.max_steps = 1;
  cfg.batch_size = 2;
  cfg.max_seq_len = 256;
  cfg.out_dir = out.path();
  auto error_of = [&](const std::vector<data::Sample>& train, const train::TrainConfig& c) -> std::string {
    try {
      train::Trainer t(m, train, {}, c);
      return "";
    } catch (const VadaptError& e) {
      return e.what();
    }
  };
  // The question alone fills max_seq_len: nothing of the answer would be learned. An error naming
  // the file and record before any step, unless skip_bad drops it.
  std::string e = error_of(samples, cfg);
  EXPECT_NE(e.find("training data: 1 of 3 samples cannot be trained"), std::string::npos) << e;
  EXPECT_NE(e.find("t.json record 2 (id long_question)"), std::string::npos) << e;
  EXPECT_NE(e.find("would cut away every answer token"), std::string::npos) << e;
  EXPECT_EQ(e.find("long_answer"), std::string::npos) << e;  // truncated (the default), not an error
  auto c = cfg;
  c.skip_bad = true;
  EXPECT_EQ(error_of(samples, c), "");
  train::Trainer t(m, samples, {}, c);
  EXPECT_EQ(t.fit().steps, 1);
  // long_samples: error refuses what is longer than max_seq_len, naming it.
  c.long_samples = "error";
  e = error_of(samples, c);
  EXPECT_NE(e.find("1 of 3 samples are longer than train.max_seq_len 256"), std::string::npos) << e;
  EXPECT_NE(e.find("t.json record 1 (id long_answer)"), std::string::npos) << e;
  // long_samples: skip drops them; a set with nothing left says so.
  c.long_samples = "skip";
  c.skip_bad = false;
  EXPECT_EQ(error_of(samples, c), "");
  e = error_of(data::load_dataset(tmp.file("long.json"), {}), c);
  EXPECT_NE(e.find("no training sample is left after the pre-scan"), std::string::npos) << e;
}

TEST(Trainer, ResumeContinuesTheSameLossCurveBitwise) {
  World w;
  auto samples = data::load_dataset(w.data, {});
  train::TrainConfig cfg;
  cfg.max_steps = 4;
  cfg.batch_size = 2;
  cfg.lr = 5e-3;
  cfg.seed = 3;
  cfg.log_every = 1;
  auto spec = w.spec("lora");
  spec.options["lora_dropout"] = 0.1;  // the dropout RNG must be restored too
  TempDir a, b;
  vlm::VisionLanguageModel ma(spec);
  cfg.out_dir = a.path();
  train::Trainer ta(ma, samples, {}, cfg);
  ta.fit();
  // The same run saving at step 2; a fresh model then resumes from checkpoint-2 (as after a kill).
  vlm::VisionLanguageModel mb(spec);
  cfg.out_dir = b.path();
  cfg.save_every = 2;
  train::Trainer tb(mb, samples, {}, cfg);
  tb.fit();
  EXPECT_EQ(tb.losses(), ta.losses());
  vlm::VisionLanguageModel mc(spec);
  auto resumed = cfg;
  resumed.resume = b.file("checkpoint-2");
  resumed.out_dir = b.file("resumed");
  train::Trainer tc(mc, samples, {}, resumed);
  tc.fit();
  ASSERT_EQ(ta.losses().size(), 4u);
  ASSERT_EQ(tc.losses().size(), 2u);
  EXPECT_EQ(tc.losses()[0], ta.losses()[2]);
  EXPECT_EQ(tc.losses()[1], ta.losses()[3]);
  auto sa = ma.trainable_state(), sc = mc.trainable_state();
  for (size_t i = 0; i < sa.size(); ++i) EXPECT_TRUE(vadapt::test::tensors_equal(sa[i].second, sc[i].second)) << sa[i].first;
}

// A NaN gradient with a finite loss (here from a hook on one parameter at step 3) stops the run
// before the update, naming the step: the weights are those after step 2, and checkpoint-2 loads.
TEST(Trainer, NanGradientStopsBeforeTheUpdateWithTheLastCheckpointIntact) {
  World w;
  auto samples = data::load_dataset(w.data, {});
  train::TrainConfig cfg;
  cfg.max_steps = 5;
  cfg.batch_size = 2;
  cfg.lr = 5e-3;
  cfg.save_every = 1;
  cfg.log_every = 1;
  TempDir out;
  cfg.out_dir = out.path();
  vlm::VisionLanguageModel m(w.spec("lora"));
  auto params = m.trainable_groups()[0].params;
  int calls = 0;
  params[0].register_hook([&](torch::Tensor g) { return ++calls >= 3 ? g * std::numeric_limits<float>::quiet_NaN() : g; });
  train::Trainer t(m, samples, {}, cfg);
  std::string err;
  try {
    t.fit();
  } catch (const VadaptError& e) {
    err = e.what();
  }
  EXPECT_NE(err.find("gradient norm is "), std::string::npos) << err;
  EXPECT_NE(err.find("nan at step 3 "), std::string::npos) << err;
  EXPECT_NE(err.find("intact"), std::string::npos) << err;
  EXPECT_FALSE(std::filesystem::exists(out.file("checkpoint-3")));
  vlm::VisionLanguageModel back(w.spec("lora"));
  back.load_adapter_weights(out.file("checkpoint-2"));
  auto a = m.trainable_state(), b = back.trainable_state();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::isfinite(a[i].second).all().item<bool>()) << a[i].first;
    EXPECT_TRUE(vadapt::test::tensors_equal(a[i].second, b[i].second)) << a[i].first;
  }
}

TEST(Nf4, RoundTripErrorWithinTheFormatsBound) {
  torch::manual_seed(0);
  for (auto dq : {model::Nf4DoubleQuant::kLinear8, model::Nf4DoubleQuant::kDynamic8})
  for (auto shape : std::vector<std::vector<int64_t>>{{64, 64}, {300, 17}, {5}, {1000, 70}}) {
    auto w = torch::randn(shape) * 0.05;
    w.view({-1})[0] = 0.9;  // an outlier block
    auto q = model::nf4_quantize(w, dq);
    auto back = model::nf4_dequantize(q, torch::kFloat32);
    ASSERT_EQ(back.sizes(), w.sizes());
    auto flat = w.view({-1});
    const int64_t blocks = (flat.numel() + 63) / 64;
    auto padded = torch::nn::functional::pad(flat, torch::nn::functional::PadFuncOptions({0, blocks * 64 - flat.numel()})).view({blocks, 64});
    auto true_absmax = padded.abs().amax(1);
    auto deq_absmax = model::nf4_block_absmax(q);
    auto bound = (deq_absmax * 0.1520 + (true_absmax - deq_absmax).abs()).repeat_interleave(64).narrow(0, 0, flat.numel());
    auto err = (back.view({-1}) - flat).abs();
    EXPECT_TRUE((err <= bound + 1e-6).all().item<bool>()) << "max excess " << (err - bound).max().item<double>();
    if (w.numel() >= 4096) EXPECT_LT(q.bytes(), w.numel() * 4 / 7);  // ~4.1 bits per weight plus scales
    EXPECT_TRUE(torch::equal(model::nf4_dequantize(q, torch::kFloat32), back));  // deterministic
  }
}

TEST(Nf4, DynamicCodeIsBitsandbytesAndBothDoubleQuantsAreMeasured) {
  // bitsandbytes' create_dynamic_map(signed=True): 256 sorted values, 0 and 1 included, the
  // smallest magnitude 0.55e-6 (exponent 10^-6, the one mean of linspace(0.1, 1, 2)), the most
  // negative -(0.9859375 + 1) / 2.
  const auto& c = model::dynamic8_code();
  ASSERT_EQ(c.numel(), 256);
  EXPECT_TRUE(torch::equal(c, std::get<0>(c.sort())));
  EXPECT_EQ(c[0].item<float>(), -0.99296875f);
  EXPECT_EQ(c[255].item<float>(), 1.0f);
  EXPECT_EQ((c == 0).sum().item<int64_t>(), 1);
  EXPECT_EQ(c[127].item<float>(), 0.0f);
  EXPECT_NEAR(c[128].item<float>(), 0.55e-6, 1e-12);
  // Block-scale error of the two double quantisations on LLM-like weights (N(0, 0.02), 4096 x
  // 1024, some outlier rows): printed for docs/results.md; ours (linear int8) is the default
  // only while it is the more accurate.
  torch::manual_seed(1);
  auto w = torch::randn({4096, 1024}) * 0.02;
  w.narrow(0, 0, 8).mul_(20);
  double err[2], werr[2];
  for (int k = 0; k < 2; ++k) {
    auto q = model::nf4_quantize(w, k ? model::Nf4DoubleQuant::kDynamic8 : model::Nf4DoubleQuant::kLinear8);
    auto true_absmax = w.view({-1, 64}).abs().amax(1);
    err[k] = ((model::nf4_block_absmax(q) - true_absmax).abs() / true_absmax).mean().item<double>();
    werr[k] = (model::nf4_dequantize(q, torch::kFloat32) - w).pow(2).mean().sqrt().item<double>();
  }
  std::cerr << "[nf4] absmax mean relative error: linear8 " << err[0] << ", dynamic8 (bitsandbytes) " << err[1]
            << " | weight RMS error: linear8 " << werr[0] << ", dynamic8 " << werr[1] << std::endl;
  EXPECT_LT(err[0], err[1]);
}

TEST(Nf4, BitsandbytesCheckpointsLoadAndDequantiseExactly) {
  // A checkpoint in the layout transformers saves a bitsandbytes 4-bit model in (double-quantised
  // NF4), written from our kDynamic8 quantisation of the tiny Llama: loading it gives the same
  // logits as quantising the dense model in that mode, bit for bit.
  TempDir tmp;
  const std::string dense = tmp.file("dense"), bnb = tmp.file("bnb");
  std::filesystem::create_directories(bnb);
  auto cfg = vadapt::test::tiny_llama_config();
  vadapt::test::write_tiny_llama(dense, cfg);
  auto ref = model::load_llama(dense, torch::kFloat32, torch::kCPU);
  std::vector<std::pair<std::string, torch::Tensor>> out;
  std::set<std::string> quantised;
  for (const auto& item : ref->named_modules("", false)) {
    auto* p = item.value()->as<model::ProjectionImpl>();
    if (!p || item.key() == "lm_head") continue;
    p->quantize_nf4(model::Nf4DoubleQuant::kDynamic8);
    const auto& q = p->nf4();
    const std::string w = item.key() + ".weight";
    quantised.insert(w);
    nlohmann::json st = {{"quant_type", "nf4"}, {"blocksize", 64}, {"dtype", "float32"}, {"shape", q.shape}, {"nested_blocksize", 256},
                         {"nested_offset", q.absmax_offset}, {"nested_dtype", "float32"}};
    const std::string js = st.dump();
    out.emplace_back(w, q.codes.view({-1, 1}));
    out.emplace_back(w + ".absmax", q.absmax_q);
    out.emplace_back(w + ".nested_absmax", q.absmax_scale);
    out.emplace_back(w + ".quant_map", torch::tensor(model::nf4_levels()));
    out.emplace_back(w + ".nested_quant_map", model::dynamic8_code());
    out.emplace_back(w + ".quant_state.bitsandbytes__nf4", torch::from_blob(const_cast<char*>(js.data()), {static_cast<int64_t>(js.size())},
                                                                            torch::kUInt8).clone());
  }
  for (const auto& p : ref->named_parameters())
    if (!quantised.count(p.key())) out.emplace_back(p.key(), p.value());
  io::write_safetensors(bnb + "/model.safetensors", out);
  auto j = io::read_json(dense + "/config.json");
  j["quantization_config"] = {{"quant_method", "bitsandbytes"}, {"load_in_4bit", true}, {"bnb_4bit_quant_type", "nf4"},
                              {"bnb_4bit_use_double_quant", true}, {"bnb_4bit_compute_dtype", "float32"}};
  io::write_text_atomic(bnb + "/config.json", j.dump());
  auto got = model::load_llama(bnb, torch::kFloat32, torch::kCPU);
  auto ids = torch::tensor({{1, 5, 9, 17, 3}}, torch::kInt64);
  torch::NoGradGuard ng;
  model::ForwardContext c1, c2;
  EXPECT_TRUE(vadapt::test::tensors_equal(got->forward(ids, c1), ref->forward(ids, c2)));
  // A code that is not bitsandbytes' is refused by name.
  for (auto& [n, t] : out)
    if (n.size() > 17 && n.compare(n.size() - 17, 17, ".nested_quant_map") == 0) {
      t = t.clone();
      t[3] = 0.5f;
      break;
    }
  io::write_safetensors(bnb + "/model.safetensors", out);
  try {
    model::load_llama(bnb, torch::kFloat32, torch::kCPU);
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("nested_quant_map"), std::string::npos) << e.what();
  }
}

TEST(QLora, ZeroInitEqualsTheQuantisedBaseAndMergeEqualsUnmerged) {
  World w;
  vlm::VisionLanguageModel base(w.spec("projector"));
  vlm::VisionLanguageModel q(w.spec("qlora"));
  auto samples = data::load_dataset(w.data, {});
  auto b = first_batch(base, samples);
  auto lq = logits_of(q, b), lb = logits_of(base, b);
  // 4-bit weights: close to the dense model, not equal.
  EXPECT_LT((lq - lb).abs().mean().item<double>(), 0.2 * lb.abs().mean().item<double>());
  EXPECT_FALSE(tensors_close(lq, lb, 1e-6));
  int64_t nf4 = 0;
  for (const auto& item : q.lm()->named_modules("", false))
    if (auto* p = item.value()->as<model::ProjectionImpl>(); p && p->is_nf4()) ++nf4;
  EXPECT_EQ(nf4, 2 * 7);  // every linear of both layers; lm_head and embeddings stay dense
  {
    torch::NoGradGuard ng;
    for (auto& [name, l] : llava(q).adapters()->loras()) l->B.normal_(0, 0.05);
  }
  auto unmerged = logits_of(q, b);
  llava(q).adapters()->merge_into(*q.lm());
  EXPECT_TRUE(tensors_close(logits_of(q, b), unmerged, 1e-5));
}

TEST(Eval, RunnerWritesPredictionsAndScoresEveryTask) {
  World w;
  vlm::VisionLanguageModel m(w.spec("projector"));
  TempDir out;
  eval::EvalOptions o;
  o.data = w.data;
  o.batch_size = 3;  // a ragged last batch
  o.max_new_tokens = 4;
  o.out_dir = out.path();
  o.task = "exact_match";
  auto em = eval::run_eval(m, o);
  EXPECT_EQ(em.summary["n"].get<int64_t>(), 8);
  const double acc = em.summary["metrics"]["all"]["accuracy"].get<double>();
  EXPECT_GE(acc, 0.0);
  EXPECT_LE(acc, 1.0);
  auto lines = io::read_text_file(out.file("predictions.jsonl"));
  EXPECT_EQ(std::count(lines.begin(), lines.end(), '\n'), 8);
  EXPECT_TRUE(std::filesystem::exists(out.file("summary.json")));
  // Batched generation answers exactly as one prompt at a time.
  o.batch_size = 1;
  auto single = eval::run_eval(m, o);
  EXPECT_EQ(io::read_text_file(out.file("predictions.jsonl")), lines);
  o.task = "captions";
  auto cap = eval::run_eval(m, o);
  EXPECT_TRUE(cap.summary["metrics"].contains("CIDEr-D"));
  EXPECT_EQ(cap.summary["n"].get<int64_t>(), 8);  // one generation per image
  o.task = "loss";
  auto loss = eval::run_eval(m, o);
  const double l = loss.summary["metrics"]["loss"].get<double>();
  EXPECT_GT(l, 0.0);
  EXPECT_NEAR(loss.summary["metrics"]["perplexity"].get<double>(), std::exp(l), 1e-9);
  // Prompts longer than the context are not generated for: counted and scored as wrong.
  o.task = "exact_match";
  o.prompt_suffix = std::string(600, 'x');
  auto long_prompts = eval::run_eval(m, o);
  EXPECT_EQ(long_prompts.summary["too_long_for_context"].get<int64_t>(), 8);
  EXPECT_EQ(long_prompts.summary["metrics"]["all"]["accuracy"].get<double>(), 0.0);
  o.task = "nope";
  EXPECT_THROW(eval::run_eval(m, o), VadaptError);
}

namespace {
// A LoRA folder as PEFT writes it (every field PEFT's LoraConfig saves; bf16 weights), on the
// tiny Llama's q_proj / v_proj, optionally only in some layers.
void write_peft_folder(const std::string& dir, const nlohmann::json& overrides, const std::vector<int>& layers, bool rslora,
                       std::map<std::string, torch::Tensor>* weights) {
  nlohmann::json cfg = {{"alpha_pattern", nlohmann::json::object()}, {"auto_mapping", nullptr}, {"base_model_name_or_path", "tiny"},
                        {"bias", "none"}, {"fan_in_fan_out", false}, {"inference_mode", true}, {"init_lora_weights", true},
                        {"layer_replication", nullptr}, {"layers_pattern", nullptr}, {"layers_to_transform", nullptr},
                        {"loftq_config", nlohmann::json::object()}, {"lora_alpha", 16}, {"lora_dropout", 0.05},
                        {"megatron_config", nullptr}, {"megatron_core", "megatron.core"}, {"modules_to_save", nullptr},
                        {"peft_type", "LORA"}, {"r", 4}, {"rank_pattern", nlohmann::json::object()}, {"revision", nullptr},
                        {"target_modules", {"v_proj", "q_proj"}}, {"task_type", "CAUSAL_LM"}, {"use_dora", false},
                        {"use_rslora", rslora}};
  for (auto& [k, v] : overrides.items()) cfg[k] = v;
  std::filesystem::create_directories(dir);
  io::write_text_atomic(dir + "/adapter_config.json", cfg.dump(2));
  torch::manual_seed(11);
  std::vector<std::pair<std::string, torch::Tensor>> t;
  const int64_t q_out = 4 * 8, v_out = 2 * 8;  // tiny config: 4 heads, 2 KV heads, head_dim 8, hidden 32
  for (int l : layers)
    for (auto [proj, out] : {std::pair<const char*, int64_t>{"q_proj", q_out}, {"v_proj", v_out}}) {
      std::string base = "base_model.model.model.layers." + std::to_string(l) + ".self_attn." + proj;
      auto a = (torch::randn({4, 32}) * 0.3).to(torch::kBFloat16), b = (torch::randn({out, 4}) * 0.3).to(torch::kBFloat16);
      t.emplace_back(base + ".lora_A.weight", a);
      t.emplace_back(base + ".lora_B.weight", b);
      if (weights) (*weights)[base + ".lora_A.weight"] = a, (*weights)[base + ".lora_B.weight"] = b;
    }
  io::write_safetensors(dir + "/adapter_model.safetensors", t, {{"format", "pt"}});
}

torch::Tensor peft_logits(const std::string& llm, const std::string& lora, const torch::Tensor& ids) {
  auto lm = model::load_llama(llm, torch::kFloat32, torch::kCPU);
  adapters::AdapterSet set;
  if (!lora.empty()) adapters::load_peft_lora(*lm, *set, lora);
  torch::NoGradGuard ng;
  model::ForwardContext ctx;
  return lm->forward(ids, ctx);
}
}  // namespace

// PEFT-made LoRA folders load onto the model and give the logits of the base model with
// W + s * B A folded in by hand (s = alpha / r, or alpha / sqrt(r) with rsLoRA); PEFT's list
// and regex target forms and layers_to_transform select the same modules; options that change
// the math and are not implemented are refused with the field named.
TEST(Peft, LoraFoldersLoadAndEqualTheHandMergedModel) {
  TempDir dir;
  const std::string llm = dir.file("llm");
  vadapt::test::write_tiny_llama(llm, vadapt::test::tiny_llama_config());
  auto ids = torch::randint(0, 300, {2, 9}, torch::kInt64);
  const auto base = peft_logits(llm, "", ids);
  struct Case {
    nlohmann::json overrides;
    std::vector<int> layers;
    bool rslora;
  };
  std::vector<Case> cases = {{nlohmann::json::object(), {0, 1}, false},
                             {{{"target_modules", ".*\\.(q_proj|v_proj)"}}, {0, 1}, false},
                             {{{"layers_to_transform", {1}}}, {1}, true}};
  for (size_t c = 0; c < cases.size(); ++c) {
    const std::string lora = dir.file("lora" + std::to_string(c));
    std::map<std::string, torch::Tensor> w;
    write_peft_folder(lora, cases[c].overrides, cases[c].layers, cases[c].rslora, &w);
    // The expected model: every adapted weight W + s * B A, written as a plain HF folder.
    const double s = 16.0 / (cases[c].rslora ? 2.0 : 4.0);
    auto merged = model::load_llama(llm, torch::kFloat32, torch::kCPU);
    {
      torch::NoGradGuard ng;
      for (auto& p : merged->named_parameters()) {
        const std::string key = "base_model.model." + p.key().substr(0, p.key().size() - 7);  // strip ".weight"
        if (w.count(key + ".lora_A.weight"))
          p.value().add_(torch::matmul(w[key + ".lora_B.weight"].to(torch::kFloat32), w[key + ".lora_A.weight"].to(torch::kFloat32)) * s);
      }
    }
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& p : merged->named_parameters()) tensors.emplace_back(p.key(), p.value());
    const std::string mdir = dir.file("merged" + std::to_string(c));
    std::filesystem::create_directories(mdir);
    std::filesystem::copy_file(llm + "/config.json", mdir + "/config.json");
    io::write_safetensors(mdir + "/model.safetensors", tensors);
    auto got = peft_logits(llm, lora, ids);
    EXPECT_TRUE(tensors_close(got, peft_logits(mdir, "", ids), 1e-5, 1e-5)) << "case " << c;
    EXPECT_FALSE(torch::allclose(got, base, 1e-3, 1e-3)) << "case " << c;  // the adapter does something
  }
  auto expect_error = [&](const nlohmann::json& ov, const std::string& needle, std::vector<int> layers = {0, 1}) {
    const std::string lora = dir.file("bad");
    io::remove_tree(lora);
    write_peft_folder(lora, ov, layers, false, nullptr);
    try {
      peft_logits(llm, lora, ids);
      ADD_FAILURE() << "no error for " << ov.dump();
    } catch (const VadaptError& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error({{"use_dora", true}}, "use_dora");
  expect_error({{"peft_type", "IA3"}}, "peft_type");
  expect_error({{"bias", "all"}}, "bias");
  expect_error({{"modules_to_save", {"lm_head"}}}, "modules_to_save");
  expect_error({{"target_modules", {"q_proj", "v_proj", "k_proj"}}}, "k_proj.lora_A.weight");  // expected, not in the file
  expect_error({{"layers_to_transform", {0}}}, "layers.1");                                    // in the file, not expected
}

// mm_pool: the patch grid is average-pooled to pool x pool tokens before the projector, the
// prompt holds that many image positions, and the setting travels in adapter_config.json.
TEST(Connector, PoolAveragesPatchBlocksBeforeTheProjector) {
  World w;
  auto spec = w.spec("projector");
  spec.options["mm_pool"] = 2;
  vlm::VisionLanguageModel m(spec);
  EXPECT_EQ(m.image_tokens(), 4);
  torch::NoGradGuard ng;
  auto feats = m.image_features({w.dir.file("img0.png")});  // (1, N, C)
  const int64_t n = feats.size(1), side = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(n)))), half = side / 2;
  ASSERT_EQ(side * side, n);
  auto grid = feats.view({side, side, feats.size(2)});
  std::vector<torch::Tensor> blocks;
  for (int64_t by = 0; by < 2; ++by)
    for (int64_t bx = 0; bx < 2; ++bx) blocks.push_back(grid.narrow(0, by * half, half).narrow(1, bx * half, half).mean(std::vector<int64_t>{0, 1}));
  vlm::VlmSpec unpooled = spec;
  unpooled.options["mm_pool"] = 0;
  vlm::VisionLanguageModel plain(unpooled);  // same seed: the same projector
  auto expected = llava(plain).project(torch::stack(blocks).unsqueeze(0));
  EXPECT_TRUE(tensors_close(llava(m).project(feats), expected, 1e-6, 1e-6));
  auto samples = data::load_dataset(w.data, {});
  auto b = first_batch(m, samples);
  EXPECT_EQ(b.ids.eq(text::kImageToken).sum().item<int64_t>(), 4);
  TempDir out;
  m.save_adapter(out.path());
  EXPECT_EQ(vlm::load_vlm_checkpoint(out.path())->image_tokens(), 4);
  spec.options["mm_pool"] = 100;
  EXPECT_THROW(vlm::VisionLanguageModel bad(spec), VadaptError);
}

// CPU autocast (bf16 compute, fp32 master weights) trains close to fp32; fp16 is refused on the
// CPU with the reason; --plot writes a PNG of the curve beside metrics.csv.
TEST(Trainer, Bf16AutocastOnCpuKeepsFp32WeightsAndPlotIsWritten) {
  World w;
  auto samples = data::load_dataset(w.data, {});
  auto run = [&](const std::string& precision, bool plot, double* before, double* after) {
    vlm::VisionLanguageModel m(w.spec("lora"));
    TempDir out;
    train::TrainConfig cfg;
    cfg.max_steps = 8;
    cfg.batch_size = 4;
    cfg.lr = 5e-3;
    cfg.warmup_ratio = 0;
    cfg.log_every = 2;
    cfg.precision = precision;
    cfg.plot = plot;
    cfg.out_dir = out.path();
    train::Trainer t(m, samples, samples, cfg);
    auto r = t.fit();
    *before = r.val_loss_before;
    *after = r.val_loss_after;
    for (const auto& [name, v] : m.trainable_state()) EXPECT_EQ(v.scalar_type(), torch::kFloat32) << name;
    if (plot) {
      auto png = io::read_text_file(out.file("loss.png"));
      ASSERT_GT(png.size(), 8u);
      EXPECT_EQ(png.substr(1, 3), "PNG");
      auto img = vision::decode_image_file(out.file("loss.png"));
      EXPECT_EQ(img.width, 800);
    }
  };
  double b32 = 0, a32 = 0, b16 = 0, a16 = 0;
  run("fp32", true, &b32, &a32);
  run("bf16", false, &b16, &a16);
  EXPECT_LT(a32, b32);
  EXPECT_NEAR(b16, b32, 0.03 * b32);
  EXPECT_LT(a16, b16);
  EXPECT_NEAR(a16, a32, 0.1 * a32);
  try {
    double x, y;
    run("fp16", false, &x, &y);
    ADD_FAILURE() << "fp16 on the CPU should be refused";
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("CUDA"), std::string::npos) << e.what();
  }
}

// feature_norm standardize: per-channel statistics of the frozen features of the training
// images, applied before the projector, frozen (not optimised), saved and loaded with it.
TEST(Connector, StandardizeUsesTrainingStatisticsAndTravelsWithTheAdapter) {
  World w;
  auto spec = w.spec("projector");
  spec.options["mm_feature_norm"] = "standardize";
  vlm::VisionLanguageModel m(spec);
  std::vector<std::string> imgs;
  for (int i = 0; i < 8; ++i) imgs.push_back(w.dir.file("img" + std::to_string(i) + ".png"));
  llava(m).init_feature_stats(m, imgs);
  torch::NoGradGuard ng;
  auto feats = m.image_features(imgs);                               // (8, N, C)
  auto flat = feats.reshape({-1, feats.size(-1)}).to(torch::kFloat64);
  auto mean = flat.mean(0), sd = flat.std(0, /*unbiased=*/false).clamp_min(1e-6);
  vlm::VlmSpec plain_spec = spec;
  plain_spec.options["mm_feature_norm"] = "";
  vlm::VisionLanguageModel plain(plain_spec);  // same seed: the same projector weights
  auto z = ((feats.to(torch::kFloat64) - mean) / sd).to(torch::kFloat32);
  EXPECT_TRUE(tensors_close(llava(m).project(feats), llava(plain).project(z), 1e-4, 1e-4));
  for (const auto& group : m.trainable_groups())
    for (const auto& p : group.params) EXPECT_TRUE(p.requires_grad()) << group.name;  // the statistics are not optimised
  TempDir out;
  m.save_adapter(out.path());
  auto back = vlm::load_vlm_checkpoint(out.path());
  EXPECT_TRUE(vadapt::test::tensors_equal(llava(*back).project(feats), llava(m).project(feats)));
}

namespace {
int vadapt_cli(const std::string& args, const std::string& err_file) {
  return std::system((std::string(VADAPT_BINARY) + " " + args + " >/dev/null 2>" + err_file).c_str());
}
std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
std::vector<std::string> names_in(const std::string& path) {
  auto src = io::TensorSource::open(path);
  return src.names();
}
}  // namespace

TEST(LlavaRelease, EveryLayoutLoadsWithTheSameLogitsAndTheReferenceNames) {
  World w;
  TempDir tmp;
  auto samples = data::load_dataset(w.data, {});
  for (const std::string tune : {"lora", "projector"}) {
    SCOPED_TRACE(tune);
    vlm::VisionLanguageModel m(w.spec(tune));
    {
      torch::NoGradGuard ng;
      for (auto& [n, t] : m.trainable_state()) t.normal_(0, 0.05);  // as after training (LoRA B != 0)
    }
    const auto b = first_batch(m, samples);
    const auto ref = logits_of(m, b);
    const std::string ours = tmp.file("ours_" + tune), rel = tmp.file("llava_" + tune);
    m.save_adapter(ours);
    ASSERT_EQ(vadapt_cli("export --adapter " + ours + " --format llava --out " + rel, tmp.file("err")), 0) << slurp(tmp.file("err"));
    // The names LLaVA's builder.py loads.
    auto cfg = io::read_json(rel + "/config.json");
    EXPECT_EQ(cfg["architectures"][0], "LlavaLlamaForCausalLM");
    EXPECT_EQ(cfg["mm_projector_type"], "mlp2x_gelu");
    EXPECT_EQ(cfg["mm_vision_select_layer"], -2);
    EXPECT_EQ(cfg["mm_hidden_size"], m.tower().hidden_size());
    if (tune == "projector") {
      auto n = names_in(rel + "/mm_projector.bin");
      EXPECT_EQ(n, (std::vector<std::string>{"model.mm_projector.0.bias", "model.mm_projector.0.weight", "model.mm_projector.2.bias",
                                              "model.mm_projector.2.weight"}));
    } else {
      for (const auto& n : names_in(rel + "/non_lora_trainables.bin")) EXPECT_EQ(n.rfind("base_model.model.model.mm_projector.", 0), 0u) << n;
      for (const auto& n : names_in(rel + "/adapter_model.safetensors")) EXPECT_EQ(n.rfind("base_model.model.model.layers.", 0), 0u) << n;
      EXPECT_EQ(io::read_json(rel + "/adapter_config.json")["peft_type"], "LORA");
    }
    // Read back as a LLaVA folder, and imported into a fresh model of the same recipe.
    auto back = vlm::load_vlm_checkpoint(rel);
    EXPECT_TRUE(tensors_close(logits_of(*back, b), ref, 0.0));
    vlm::VisionLanguageModel fresh(w.spec(tune));
    fresh.method().load_official(tune == "projector" ? rel + "/mm_projector.bin" : rel);
    fresh.train_mode(false);
    EXPECT_TRUE(tensors_close(logits_of(fresh, b), ref, 0.0));
    // Hugging Face's layout (LlavaForConditionalGeneration): read back with the same logits
    // (LoRA folded into the LLM, so within float rounding).
    const std::string hf = tmp.file("hf_" + tune);
    ASSERT_EQ(vadapt_cli("export --adapter " + ours + " --format llava-hf --out " + hf, tmp.file("err")), 0) << slurp(tmp.file("err"));
    auto hc = io::read_json(hf + "/config.json");
    EXPECT_EQ(hc["architectures"][0], "LlavaForConditionalGeneration");
    EXPECT_EQ(hc["vision_feature_layer"], -2);
    EXPECT_EQ(hc["image_token_index"], m.lm()->config().vocab_size);
    EXPECT_EQ(hc["text_config"]["vocab_size"].get<int64_t>() % 64, 0);
    auto hsrc = io::TensorSource::open(hf);
    for (const char* k : {"multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_2.bias", "language_model.lm_head.weight",
                          "language_model.model.layers.0.self_attn.q_proj.weight", "vision_tower.vision_model.embeddings.patch_embedding.weight"})
      EXPECT_TRUE(hsrc.contains(k)) << k;
    EXPECT_EQ(io::read_json(hf + "/tokenizer_config.json")["pad_token"], "<pad>");
    auto hb = vlm::load_vlm_checkpoint(hf);
    // Not bitwise even for the projector: the padded lm_head is a GEMM of another shape, whose
    // blocking (and float summation order) depends on the BLAS build and the CPU.
    EXPECT_TRUE(tensors_close(logits_of(*hb, b).narrow(-1, 0, ref.size(-1)), ref, tune == "lora" ? 1e-5 : 1e-6));
    if (tune != "lora") continue;
    // vadapt merge writes a merged LLaVA checkpoint (LLM + model.mm_projector.* + mm_* config).
    const std::string merged = tmp.file("merged");
    ASSERT_EQ(vadapt_cli("merge --adapter " + ours + " --out " + merged, tmp.file("err")), 0) << slurp(tmp.file("err"));
    EXPECT_EQ(io::read_json(merged + "/config.json")["model_type"], "llava_llama");
    EXPECT_TRUE(io::TensorSource::open(merged).contains("model.mm_projector.2.weight"));
    auto mb = vlm::load_vlm_checkpoint(merged);
    EXPECT_TRUE(tensors_close(logits_of(*mb, b), ref, 1e-5));
    // A vision tower named by hub id: a clear error, then --vision.
    cfg["mm_vision_tower"] = "openai/clip-vit-large-patch14-336";
    io::write_text_atomic(rel + "/config.json", cfg.dump());
    EXPECT_NE(vadapt_cli("generate --adapter " + rel + " --prompt hi --max-new-tokens 2", tmp.file("err")), 0);
    const std::string err = slurp(tmp.file("err"));
    EXPECT_NE(err.find("mm_vision_tower"), std::string::npos) << err;
    EXPECT_NE(err.find("--vision"), std::string::npos) << err;
    EXPECT_EQ(vadapt_cli("generate --adapter " + rel + " --vision " + w.clip + " --image " + w.dir.file("img0.png") +
                             " --prompt 'What colour?' --max-new-tokens 2",
                         tmp.file("err")),
              0)
        << slurp(tmp.file("err"));
  }
}

// Prompt token ids against the reference's tokenisation on the real Llama-2 tokenizer
// (../shared/models/llama2-tokenizer). Each expected list was made from the literal prompt
// string below as LLaVA builds it (conversation.py get_prompt, preprocess_multimodal) by
// tokenizer_image_token's rule, independently of vadapt's prompt code: split the string at
// "<image>" (-200 in between), each part one tokenizer call (BOS, then the text split at "<s>" /
// "</s>", each piece SentencePiece-encoded with libsentencepiece 0.1.97, which Hugging Face's
// slow LlamaTokenizer with legacy: true does). Facts checked on the way: "...questions. USER"
// is 29889, 3148 (no 29871 between) and "USER: Hi" is 4 tokens (3148, 1001, 29901, 6324).
#include <gtest/gtest.h>

#include <filesystem>

#include "fixtures.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "text/prompt.h"
#include "text/tokenizer.h"

using namespace vadapt;
using vadapt::test::shared_dir;

namespace {

const char* kVicunaSys =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, and "
    "polite answers to the user's questions.";
const char* kLlavaSys =
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, detailed, and "
    "polite answers to the human's questions.";
const char* kLlavaLlama2Sys =
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.";

struct Case {
  const char* name;
  const char* tmpl;
  std::vector<std::pair<std::string, std::string>> turns;  // (role, text)
  std::string reference;                                    // the prompt string LLaVA builds
  std::vector<int64_t> ids;
  std::vector<std::string> trained;  // the text the labels keep, per trained run ("</s>" = EOS)
};

std::vector<Case> cases() {
  const std::string V = kVicunaSys, L = kLlavaSys;
  return {
      {"vicuna_v1 image turn", "vicuna_v1", {{"user", "<image>\nWhat is in the picture?"}, {"assistant", "A red circle."}},
       V + " USER: <image>\nWhat is in the picture? ASSISTANT: A red circle.</s>",
       {1,     319,   13563, 1546,  263,   12758, 1404,  322,   385,   23116, 21082, 20255, 29889, 450,   20255, 4076,  8444,  29892,
        13173, 29892, 322,   1248,  568,   6089,  304,   278,   1404,  29915, 29879, 5155,  29889, 3148,  1001,  29901, 29871, -200,
        29871, 13,    5618,  338,   297,   278,   7623,  29973, 319,   1799,  9047,  13566, 29901, 319,   2654,  8607,  29889, 2},
       {" A red circle.</s>"}},
      {"vicuna_v1 text-only multi-turn", "vicuna_v1",
       {{"user", "Hi"}, {"assistant", "Hello."}, {"user", "How are you?"}, {"assistant", "Fine, thanks."}},
       V + " USER: Hi ASSISTANT: Hello.</s>USER: How are you? ASSISTANT: Fine, thanks.</s>",
       {1,     319,   13563, 1546,  263,   12758, 1404,  322,   385,   23116, 21082, 20255, 29889, 450,   20255, 4076,
        8444,  29892, 13173, 29892, 322,   1248,  568,   6089,  304,   278,   1404,  29915, 29879, 5155,  29889, 3148,
        1001,  29901, 6324,  319,   1799,  9047,  13566, 29901, 15043, 29889, 2,     3148,  1001,  29901, 1128,  526,
        366,   29973, 319,   1799,  9047,  13566, 29901, 28896, 29892, 3969,  29889, 2},
       {" Hello.</s>", " Fine, thanks.</s>"}},
      {"vicuna_v1 <image> at the end of the text (as written), generation prompt", "vicuna_v1",
       {{"user", "What is this?\n<image>"}},
       V + " USER: What is this?\n<image> ASSISTANT:",
       {1,     319,   13563, 1546, 263,   12758, 1404,  322,   385,   23116, 21082, 20255, 29889, 450,  20255, 4076, 8444,
        29892, 13173, 29892, 322,  1248,  568,   6089,  304,   278,   1404,  29915, 29879, 5155,  29889, 3148, 1001, 29901,
        1724,  338,   445,   29973, 13, -200, 29871, 319,   1799,  9047,  13566, 29901},
       {}},
      {"llava_v1 generation prompt", "llava_v1", {{"user", "<image>\nDescribe it."}},
       L + " USER: <image>\nDescribe it. ASSISTANT:",
       {1,     319,   13563, 1546, 263,  12758, 5199,  322,   385,   23116, 21082, 20255, 29889, 450,   20255, 4076,
        8444,  29892, 13173, 29892, 322,  1248,  568,   6089,  304,   278,   5199,  29915, 29879, 5155,  29889, 3148,
        1001,  29901, 29871, -200, 29871, 13,   4002,  29581, 372,   29889, 319,   1799,  9047,  13566, 29901},
       {}},
      {"llava_llama_2 two turns, default system", "llava_llama_2",
       {{"user", "<image>\nWhat is it?"}, {"assistant", "A cat."}, {"user", "And its colour?"}},
       std::string("[INST] <<SYS>>\n") + kLlavaLlama2Sys + "\n<</SYS>>\n\n<image>\nWhat is it? [/INST] A cat. </s><s>[INST] And its colour? [/INST]",
       {1,     518,   25580, 29962, 3532,  14816, 29903, 6778,  13,    3492,  526,   263,   8444,  4086,  322,   18551,
        20255, 29889, 887,   526,   2221,  304,   2274,  278,   7604,  2793,  393,   278,   1404,  8128,  29892, 322,
        6985,  278,   1404,  411,   263,   12875, 310,   9595,  773,   5613,  4086,  29889, 13,    29966, 829,   14816,
        29903, 6778,  13,    13,    -200,  29871, 13,    5618,  338,   372,   29973, 518,   29914, 25580, 29962, 319,
        6635,  29889, 29871, 2,     1,     518,   25580, 29962, 1126,  967,   12384, 29973, 518,   29914, 25580, 29962},
       {" A cat. </s>"}},
      {"mistral_instruct two turns", "mistral_instruct",
       {{"user", "<image>\nWhat is it?"}, {"assistant", "A cat."}, {"user", "Sure?"}},
       "[INST] <image>\nWhat is it? [/INST] A cat. </s>[INST] Sure? [/INST]",
       {1, 518, 25580, 29962, 29871, -200, 29871, 13, 5618, 338, 372, 29973, 518, 29914, 25580, 29962, 319, 6635, 29889, 29871, 2,
        518, 25580, 29962, 18585, 29973, 518, 29914, 25580, 29962},
       {" A cat. </s>"}},
      {"v0 two turns", "v0", {{"user", "<image>\nWhat is it?"}, {"assistant", "A cat."}, {"user", "Sure?"}},
       L + "###Human: <image>\nWhat is it?###Assistant: A cat.###Human: Sure?###Assistant:",
       {1,     319,   13563, 1546,  263,   12758, 5199,  322,   385,   23116, 21082, 20255, 29889, 450,   20255, 4076,  8444,
        29892, 13173, 29892, 322,   1248,  568,   6089,  304,   278,   5199,  29915, 29879, 5155,  29889, 2277,  29937, 29950,
        7889,  29901, 29871, -200,  29871, 13,    5618,  338,   372,   29973, 2277,  29937, 7900,  22137, 29901, 319,   6635,
        29889, 2277,  29937, 29950, 7889,  29901, 18585, 29973, 2277,  29937, 7900,  22137, 29901},
       {" A cat.###"}},
      {"chatml_direct", "chatml_direct", {{"user", "<image>\nWhat is it?"}, {"assistant", "A cat."}},
       "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is it?<|im_end|><|im_start|>assistant\nA "
       "cat.<|im_end|>",
       {1,     529,   29989, 326,   29918, 2962,  29989, 29958, 5205,  13,    22550, 278,   5155,  19423, 29989, 326,
        29918, 355,   29989, 5299,  29989, 326,   29918, 2962,  29989, 29958, 1792,  13,    -200,  29871, 13,    5618,
        338,   372,   29973, 29966, 29989, 326,   29918, 355,   29989, 5299,  29989, 326,   29918, 2962,  29989, 29958,
        465,   22137, 13,    29909, 6635,  19423, 29989, 326,   29918, 355,   29989, 29958},
       {"A cat.<|im_end|>"}},
      {"plain (stage-1 caption)", "plain", {{"user", "<image>"}, {"assistant", "a red circle on a white card"}},
       "<image>a red circle on a white card\n", {1, -200, 263, 2654, 8607, 373, 263, 4796, 5881, 13}, {"a red circle on a white card\n"}},
  };
}

std::string tok_text(const text::Tokenizer& tok, const std::vector<int64_t>& ids) {
  std::string out;
  std::vector<int64_t> run;
  for (auto id : ids) {
    if (id != tok.eos_id()) {
      run.push_back(id);
      continue;
    }
    out += tok.decode(run) + "</s>";
    run.clear();
  }
  return out + tok.decode(run);
}

}  // namespace

TEST(GoldenPrompts, EveryTemplateMatchesTheReferenceTokenisationOnLlama2) {
  VADAPT_REQUIRE_SHARED();
  auto tok = text::load_tokenizer(shared_dir() + "/models/llama2-tokenizer");
  ASSERT_TRUE(tok->legacy());
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    text::Conversation conv;
    for (const auto& [role, t] : c.turns) conv.turns.push_back({role, t});
    const bool gen = c.turns.size() % 2 == 1;
    auto tmpl = text::ChatTemplate::by_name(c.tmpl);
    EXPECT_EQ(tmpl.render(conv, gen), "<s>" + c.reference);
    auto e = text::encode_segments(*tok, tmpl.segments(conv, gen), 1);
    EXPECT_EQ(e.ids, c.ids);
    ASSERT_EQ(e.labels.size(), e.ids.size());
    // Labels: a copy of the ids on the answers (and their EOS / separator), -100 elsewhere.
    std::vector<std::string> runs;
    std::vector<int64_t> run;
    for (size_t i = 0; i <= e.ids.size(); ++i) {
      if (i < e.ids.size() && e.labels[i] != text::kIgnore) {
        EXPECT_EQ(e.labels[i], e.ids[i]);
        run.push_back(e.ids[i]);
      } else if (!run.empty()) {
        runs.push_back(tok_text(*tok, run));
        run.clear();
      }
    }
    std::vector<std::string> want;
    for (const auto& t : c.trained) {
      // SentencePiece decodes a leading "▁" of the first piece as nothing.
      want.push_back(t[0] == ' ' ? t.substr(1) : t);
    }
    EXPECT_EQ(runs, want);
  }
}

TEST(GoldenPrompts, LegacyFalseAddsNoPrefixAfterSpecialTokens) {
  VADAPT_REQUIRE_SHARED();
  // The same tokenizer with legacy: false (Vicuna v1.5's tokenizer_config): after "</s>", "USER"
  // is one piece 11889 instead of "▁US" "ER" (3148, 1001). Reference: Hugging Face's recipe for
  // such text, encode("<unk>" + text) and drop the pieces of "<unk>" (529, 2960, 29958).
  test::TempDir tmp;
  namespace fs = std::filesystem;
  const std::string src = shared_dir() + "/models/llama2-tokenizer";
  fs::copy_file(src + "/tokenizer.model", tmp.file("tokenizer.model"));
  auto cfg = io::read_json(src + "/tokenizer_config.json");
  cfg["legacy"] = false;
  io::write_text_atomic(tmp.file("tokenizer_config.json"), cfg.dump());
  auto tok = text::load_tokenizer(tmp.path());
  ASSERT_FALSE(tok->legacy());
  text::Conversation conv;
  conv.turns = {{"user", "Hi"}, {"assistant", "Hello."}, {"user", "How are you?"}, {"assistant", "Fine, thanks."}};
  auto e = text::encode_segments(*tok, text::ChatTemplate::by_name("vicuna_v1").segments(conv, false), 1);
  const std::vector<int64_t> tail = {15043, 29889, 2, 11889, 29901, 1128, 526, 366, 29973, 319, 1799, 9047, 13566, 29901, 28896, 29892, 3969, 29889, 2};
  ASSERT_GE(e.ids.size(), tail.size());
  EXPECT_EQ(std::vector<int64_t>(e.ids.end() - static_cast<long>(tail.size()), e.ids.end()), tail);
  // The first run still gets its prefix ("A" -> 319), as Hugging Face prepends "▁" to the text.
  EXPECT_EQ(e.ids[1], 319);
}

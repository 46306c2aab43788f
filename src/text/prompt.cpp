// Chat templates (text as in LLaVA's conversation.py / Alpaca / ChatML) and segment encoding.
#include "text/prompt.h"

#include "common/error.h"

namespace vadapt::text {
namespace {

// Default system prompts, as in LLaVA's conversation.py / Stanford Alpaca.
const char* kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.";
const char* kLlavaSystem =
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the human's questions.";
const char* kLlama2System =
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe.  "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\nIf a question does not make "
    "any sense, or is not factually coherent, explain why instead of answering something not correct. If you don't "
    "know the answer to a question, please don't share false information.";
const char* kLlavaLlama2System =
    "You are a helpful language and vision assistant. You are able to understand the visual content that the user "
    "provides, and assist the user with a variety of tasks using natural language.";
const char* kMptSystem = "A conversation between a user and an LLM-based AI assistant. The assistant gives helpful and honest answers.";
const char* kChatmlDirectSystem = "Answer the questions.";
const char* kAlpacaSystem =
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.";

// Splits user text on "<image>" into text and image segments.
void push_user(std::vector<Segment>& out, const std::string& text) {
  size_t pos = 0;
  while (true) {
    size_t at = text.find(kImageTag, pos);
    std::string part = text.substr(pos, at == std::string::npos ? std::string::npos : at - pos);
    if (!part.empty()) out.push_back({Segment::kText, part, false});
    if (at == std::string::npos) break;
    out.push_back({Segment::kImage, "", false});
    pos = at + std::string(kImageTag).size();
  }
}

void check_roles(const Conversation& c, bool gen) {
  if (c.turns.empty()) throw VadaptError("conversation has no turns");
  for (size_t i = 0; i < c.turns.size(); ++i) {
    const char* want = i % 2 == 0 ? "user" : "assistant";
    if (c.turns[i].role != want)
      throw VadaptError(cat("conversation turn ", i, ": expected role '", want, "', got '", c.turns[i].role, "'"));
  }
  if (gen && c.turns.size() % 2 == 0) throw VadaptError("generation prompt: the last turn must be the user's");
}

}  // namespace

std::vector<std::string> template_names() {
  return {"plain",         "vicuna_v1", "llava_v1", "v0",  "llama_2", "llava_llama_2", "mistral_instruct",
          "chatml_direct", "mpt",       "chatml",   "alpaca",   "lavin",         "palm2_caption", "palm2_vqa"};
}

ChatTemplate ChatTemplate::by_name(const std::string& name, const std::optional<std::string>& system) {
  for (const auto& n : template_names())
    if (n == name) {
      if (system && !takes_system(name))
        throw VadaptError(cat("template '", name, "' has no system prompt (system_prompt is set to \"", *system, "\")"));
      ChatTemplate t;
      t.name_ = name;
      t.system_ = system;
      return t;
    }
  std::string all;
  for (const auto& n : template_names()) all += (all.empty() ? "" : ", ") + n;
  throw VadaptError(cat("unknown template '", name, "' (expected one of ", all, ")"));
}

bool ChatTemplate::takes_system(const std::string& name) {
  return !(name == "plain" || name == "lavin" || name == "palm2_caption" || name == "palm2_vqa");
}

std::vector<std::string> ChatTemplate::stop_strings() const {
  if (name_ == "v0") return {"###"};
  if (name_ == "chatml" || name_ == "chatml_direct" || name_ == "mpt") return {"<|im_end|>"};
  return {};
}

// Each template spells the text LLaVA's conversation.py (or Alpaca / ChatML) writes for it;
// the first kBos is the tokenizer's own BOS (added only when the tokenizer adds one), later
// ones are a literal "<s>" in the reference's prompt string.
std::vector<Segment> ChatTemplate::segments(const Conversation& c, bool gen) const {
  check_roles(c, gen);
  std::vector<Segment> s;
  auto text = [&](const std::string& t, bool train = false) { s.push_back({Segment::kText, t, train}); };
  auto eos = [&] { s.push_back({Segment::kEos, "", true}); };
  auto bos = [&] { s.push_back({Segment::kBos, "", false}); };
  auto sys = [&](const char* dflt) { return !c.system.empty() ? c.system : system_ ? *system_ : std::string(dflt); };
  // The system text and its separator, left out when the system prompt is empty.
  auto sys_text = [&](const char* dflt, const std::string& sep) {
    const std::string t = sys(dflt);
    if (!t.empty()) text(t + sep);
  };
  const size_t n = c.turns.size();
  if (name_ == "plain") {
    // LLaVA stage 1 (preprocess_plain): the image, then the caption; one exchange only.
    if (n > 2) throw VadaptError(cat("template 'plain' takes one user turn and one answer (LLaVA's stage-1 captions), got ", n, " turns"));
    bos();
    if (c.turns[0].text.find(kImageTag) != std::string::npos) s.push_back({Segment::kImage, "", false});
    if (n > 1) text(c.turns[1].text + "\n", true);
    return s;
  }
  if (name_ == "vicuna_v1" || name_ == "llava_v1") {  // SeparatorStyle.TWO, sep " ", sep2 "</s>"
    bos();
    sys_text(name_ == "vicuna_v1" ? kVicunaSystem : kLlavaSystem, " ");
    for (size_t i = 0; i < n; i += 2) {
      text("USER: ");
      push_user(s, c.turns[i].text);
      text(" ASSISTANT:");
      if (i + 1 < n) {
        text(" " + c.turns[i + 1].text, true);
        eos();
      }
    }
    return s;
  }
  if (name_ == "v0") {  // conv_llava_v0: SeparatorStyle.SINGLE, sep "###", roles Human / Assistant
    bos();
    sys_text(kLlavaSystem, "###");
    for (size_t i = 0; i < n; i += 2) {
      text("Human: ");
      push_user(s, c.turns[i].text);
      text("###Assistant:");
      if (i + 1 < n) text(" " + c.turns[i + 1].text + "###", true);
    }
    return s;
  }
  if (name_ == "llama_2" || name_ == "llava_llama_2" || name_ == "mistral_instruct") {  // SeparatorStyle.LLAMA_2
    const std::string system = sys(name_ == "llama_2" ? kLlama2System : name_ == "llava_llama_2" ? kLlavaLlama2System : "");
    for (size_t i = 0; i < n; i += 2) {
      if (i == 0 || name_ != "mistral_instruct") bos();  // sep "<s>" (mistral_instruct: sep "")
      std::string head = "[INST] ";
      if (i == 0 && !system.empty()) head += "<<SYS>>\n" + system + "\n<</SYS>>\n\n";
      text(head);
      push_user(s, c.turns[i].text);
      text(" [/INST]");
      if (i + 1 < n) {
        text(" " + c.turns[i + 1].text + " ", true);
        eos();
      }
    }
    return s;
  }
  if (name_ == "chatml_direct" || name_ == "mpt") {  // SeparatorStyle.MPT, sep "<|im_end|>", no newlines
    bos();
    const std::string system = sys(name_ == "mpt" ? kMptSystem : kChatmlDirectSystem);
    if (!system.empty()) text("<|im_start|>system\n" + system + "<|im_end|>");
    for (size_t i = 0; i < n; i += 2) {
      text("<|im_start|>user\n");
      push_user(s, c.turns[i].text);
      text("<|im_end|><|im_start|>assistant\n");
      if (i + 1 < n) text(c.turns[i + 1].text + "<|im_end|>", true);
    }
    return s;
  }
  if (name_ == "chatml") {  // ChatML as Hugging Face chat templates write it (a newline after each <|im_end|>)
    bos();
    const std::string system = sys("");
    if (!system.empty()) text("<|im_start|>system\n" + system + "<|im_end|>\n");
    for (size_t i = 0; i < n; i += 2) {
      text("<|im_start|>user\n");
      push_user(s, c.turns[i].text);
      text("<|im_end|>\n<|im_start|>assistant\n");
      if (i + 1 < n) {
        text(c.turns[i + 1].text + "<|im_end|>", true);
        text("\n");
      }
    }
    return s;
  }
  if (name_ == "lavin") {
    // LaVIN: BOS, the modality prefix "Image: " + the visual tokens, or "Image: N/A" for a
    // text-only sample (each encoded on its own, as engine.py does), then the example, encoded
    // as one string: "\n{question}\nResponse: {answer}</s>" (util/base_prompt.py's layout, a
    // question that ends in a newline keeps just that one).
    bool image = false;
    for (size_t i = 0; i < n; i += 2) image = image || c.turns[i].text.find(kImageTag) != std::string::npos;
    bos();
    if (image) {
      text("Image: ");
      s.push_back({Segment::kImage, "", false});
    } else {
      text("Image: N/A");
    }
    for (size_t i = 0; i < n; i += 2) {
      std::string q = c.turns[i].text;
      for (size_t at; (at = q.find(kImageTag)) != std::string::npos;) {
        size_t end = at + std::string(kImageTag).size();
        if (end < q.size() && q[end] == '\n') ++end;
        q.erase(at, end - at);
      }
      if (q.empty() || q.back() != '\n') q += "\n";
      s.push_back({Segment::kText, (i == 0 ? "\n" : "") + q + "Response:", false, i == 0});
      if (i + 1 < n) {
        text(" " + c.turns[i + 1].text, true);
        eos();
        if (i + 2 < n) text("\n");
      }
    }
    return s;
  }
  if (name_ == "palm2_caption" || name_ == "palm2_vqa") {
    // PaLM2-VAdapter's prompts (arXiv 2402.10896, Table 11): captioning "Describe the following:
    // <visual tokens> :" (the user's words are not used, one exchange, as `plain`); VQA "Answer
    // the question given the images. Given <visual tokens>. Question: <q>? Answer:" (turns
    // repeat "Question: .. Answer: .."; a text-only sample leaves out the "Given" sentence).
    // Answers follow after a space and end with EOS (greedy decoding stops there).
    bos();
    if (name_ == "palm2_caption") {
      if (n > 2) throw VadaptError(cat("template 'palm2_caption' takes one user turn and one caption, got ", n, " turns"));
      text("Describe the following: ");
      if (c.turns[0].text.find(kImageTag) != std::string::npos) s.push_back({Segment::kImage, "", false});
      text(" :");
      if (n > 1) {
        text(" " + c.turns[1].text, true);
        eos();
      }
      return s;
    }
    bool image = false;
    for (size_t i = 0; i < n; i += 2) image = image || c.turns[i].text.find(kImageTag) != std::string::npos;
    text("Answer the question given the images.");
    if (image) {
      text(" Given ");
      s.push_back({Segment::kImage, "", false});
      text(".");
    }
    for (size_t i = 0; i < n; i += 2) {
      std::string q = c.turns[i].text;
      for (size_t at; (at = q.find(kImageTag)) != std::string::npos;) q.erase(at, std::string(kImageTag).size());
      const auto b = q.find_first_not_of(" \n\t"), e = q.find_last_not_of(" \n\t");
      q = b == std::string::npos ? "" : q.substr(b, e - b + 1);
      if (q.empty() || q.back() != '?') q += "?";
      text(" Question: " + q + " Answer:");
      if (i + 1 < n) {
        text(" " + c.turns[i + 1].text, true);
        eos();
      }
    }
    return s;
  }
  // alpaca: single instruction / response pairs, repeated for multi-turn data.
  bos();
  sys_text(kAlpacaSystem, "\n\n");
  for (size_t i = 0; i < n; i += 2) {
    text("### Instruction:\n");
    push_user(s, c.turns[i].text);
    text("\n\n### Response:");
    if (i + 1 < n) {
      text(c.turns[i + 1].text, true);
      eos();
      if (i + 2 < n) text("\n\n");
    }
  }
  return s;
}

std::string ChatTemplate::render(const Conversation& c, bool gen) const {
  std::string out;
  for (const auto& seg : segments(c, gen)) {
    if (seg.kind == Segment::kText) out += seg.text;
    else if (seg.kind == Segment::kImage) out += kImageTag;
    else if (seg.kind == Segment::kEos) out += "</s>";
    else out += "<s>";
  }
  return out;
}

// The reference (LLaVA's tokenizer_image_token) tokenises the whole prompt string, split only at
// "<image>", each part in one tokenizer call, which in turn splits at special tokens ("<s>",
// "</s>"). So consecutive text segments are joined into one run and encoded at once; a run
// that starts a tokenizer call (the prompt's start, after an image) gets the SentencePiece
// dummy prefix, a run after a special token gets it only for `legacy` tokenizers. Labels come
// from the same encoding: a token is trained when the byte it starts at belongs to a trained
// segment, so ids and labels cannot drift apart.
EncodedPrompt encode_segments(const Tokenizer& tok, const std::vector<Segment>& segs_in, int64_t image_tokens) {
  EncodedPrompt e;
  std::vector<Segment> segs;
  segs.reserve(segs_in.size());
  bool drop_newline = false;
  for (const auto& seg : segs_in) {
    if (seg.kind == Segment::kImage && image_tokens == 0) {
      // A method that takes the image elsewhere (adapter prompts): no tag in the text, and no
      // "\n" the tag's placement added after it.
      drop_newline = true;
      ++e.num_images;
      continue;
    }
    Segment x = seg;
    if (drop_newline && x.kind == Segment::kText && !x.text.empty() && x.text[0] == '\n') x.text.erase(0, 1);
    drop_newline = false;
    segs.push_back(std::move(x));
  }

  auto push = [&](int64_t id, bool train) {
    e.ids.push_back(id);
    e.labels.push_back(train && id != kImageToken ? id : kIgnore);
  };
  std::string run;
  std::vector<std::pair<size_t, bool>> trained_from;  // (byte offset where a segment starts, trained)
  bool call_start = true;  // the next text starts a tokenizer call
  auto flush = [&] {
    if (run.empty()) return;
    auto enc = tok.encode_offsets(run, call_start || tok.legacy());
    for (size_t k = 0; k < enc.ids.size(); ++k) {
      const auto at = static_cast<size_t>(std::max<int64_t>(0, enc.begins[k]));
      bool train = false;
      for (const auto& [from, t] : trained_from)
        if (from <= at) train = t;
      push(enc.ids[k], train);
    }
    run.clear();
    trained_from.clear();
    call_start = false;
  };
  for (size_t i = 0; i < segs.size(); ++i) {
    const auto& seg = segs[i];
    switch (seg.kind) {
      case Segment::kText:
        if (seg.call) {
          flush();
          call_start = true;
        }
        if (!seg.text.empty()) {
          trained_from.emplace_back(run.size(), seg.train);
          run += seg.text;
        }
        break;
      case Segment::kBos:
        flush();
        // The first BOS is the tokenizer's own (tokenizer_config add_bos_token); later ones are
        // a literal "<s>" in the prompt string.
        if (tok.bos_id() >= 0 && (!e.ids.empty() || tok.add_bos_token())) push(tok.bos_id(), seg.train);
        break;
      case Segment::kEos:
        flush();
        if (tok.eos_id() < 0) throw VadaptError(cat(tok.source(), ": the template needs an EOS token and the tokenizer has none"));
        push(tok.eos_id(), seg.train);
        break;
      case Segment::kImage:
        flush();
        for (int64_t k = 0; k < image_tokens; ++k) push(kImageToken, false);
        ++e.num_images;
        call_start = true;
        break;
    }
  }
  flush();
  return e;
}

}  // namespace vadapt::text

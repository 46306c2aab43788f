// Chat templates (text as in LLaVA's conversation.py / Alpaca / ChatML) and segment encoding.
#include "text/prompt.h"

#include "common/error.h"

namespace vadapt::text {
namespace {

const char* kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.";
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

std::vector<std::string> template_names() { return {"plain", "vicuna_v1", "llama_2", "chatml", "alpaca"}; }

ChatTemplate ChatTemplate::by_name(const std::string& name) {
  for (const auto& n : template_names())
    if (n == name) {
      ChatTemplate t;
      t.name_ = name;
      return t;
    }
  std::string all;
  for (const auto& n : template_names()) all += (all.empty() ? "" : ", ") + n;
  throw VadaptError(cat("unknown template '", name, "' (expected one of ", all, ")"));
}

std::vector<Segment> ChatTemplate::segments(const Conversation& c, bool gen) const {
  check_roles(c, gen);
  std::vector<Segment> s;
  auto text = [&](const std::string& t, bool train = false) { s.push_back({Segment::kText, t, train}); };
  auto eos = [&] { s.push_back({Segment::kEos, "", true}); };
  const size_t n = c.turns.size();
  if (name_ == "plain") {
    // LLaVA stage 1: the image, then the caption; user text other than the image is dropped.
    s.push_back({Segment::kBos, "", false});
    for (size_t i = 0; i < n; i += 2) {
      if (c.turns[i].text.find(kImageTag) != std::string::npos) s.push_back({Segment::kImage, "", false});
      if (i + 1 < n) text(c.turns[i + 1].text + "\n", true);
    }
    return s;
  }
  if (name_ == "vicuna_v1") {
    s.push_back({Segment::kBos, "", false});
    text((c.system.empty() ? kVicunaSystem : c.system) + std::string(" "));
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
  if (name_ == "llama_2") {
    for (size_t i = 0; i < n; i += 2) {
      s.push_back({Segment::kBos, "", false});
      std::string head = "[INST] ";
      if (i == 0 && !c.system.empty()) head += "<<SYS>>\n" + c.system + "\n<</SYS>>\n\n";
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
  if (name_ == "chatml") {
    if (!c.system.empty()) text("<|im_start|>system\n" + c.system + "<|im_end|>\n");
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
  // alpaca: single instruction / response pairs, repeated for multi-turn data.
  s.push_back({Segment::kBos, "", false});
  text((c.system.empty() ? kAlpacaSystem : c.system) + std::string("\n\n"));
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

EncodedPrompt encode_segments(const Tokenizer& tok, const std::vector<Segment>& segs, int64_t image_tokens) {
  EncodedPrompt e;
  const bool dummy_prefix = tok.has_dummy_prefix();
  for (const auto& seg : segs) {
    std::vector<int64_t> ids;
    switch (seg.kind) {
      case Segment::kBos:
        if (tok.bos_id() >= 0) ids.push_back(tok.bos_id());
        break;
      case Segment::kEos:
        if (tok.eos_id() < 0) throw VadaptError(cat(tok.source(), ": the template needs an EOS token and the tokenizer has none"));
        ids.push_back(tok.eos_id());
        break;
      case Segment::kImage:
        ids.assign(static_cast<size_t>(image_tokens), kImageToken);
        ++e.num_images;
        break;
      case Segment::kText: {
        std::string t = seg.text;
        if (dummy_prefix && !t.empty() && t[0] == ' ') t.erase(0, 1);
        ids = tok.encode(t, false);
      }
    }
    e.ids.insert(e.ids.end(), ids.begin(), ids.end());
    for (auto id : ids) e.labels.push_back(seg.train && id != kImageToken ? id : kIgnore);
  }
  return e;
}

}  // namespace vadapt::text

// Conversation templates and the prompt builder. A prompt is built segment by segment (system,
// user turns, image, assistant turns), and input_ids, labels and image positions are produced
// together from the same segments, so labels can never drift from the tokens (LLaVA's
// "tokenization mismatch"). Loss only on assistant turns (labels elsewhere = kIgnore).
// Templates: see template_names(); LLaVA's are spelled as in its conversation.py.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "text/tokenizer.h"

namespace vadapt::text {

constexpr int64_t kIgnore = -100;
constexpr int64_t kImageToken = -200;  // placeholder id, replaced by projected image features
constexpr const char* kImageTag = "<image>";

struct Turn {
  std::string role;  // "user" | "assistant"
  std::string text;  // may contain one "<image>"
};

struct Conversation {
  std::string system;  // empty: the template's system prompt (its default, or the one set with by_name)
  std::vector<Turn> turns;
};

struct Segment {
  enum Kind { kText, kImage, kEos, kBos } kind = kText;
  std::string text;
  bool train = false;  // contributes to the loss
  bool call = false;   // kText: starts a tokenizer call of its own (the reference encodes it separately)
};

struct EncodedPrompt {
  std::vector<int64_t> ids;     // kImageToken at image positions
  std::vector<int64_t> labels;  // kIgnore outside assistant turns
  int64_t num_images = 0;
};

class ChatTemplate {
 public:
  // `system` replaces the template's default system prompt ("" leaves the system text out,
  // separator included); a conversation's own non-empty `system` still wins. Templates without
  // a system prompt (plain, lavin, palm2_*) refuse one.
  static ChatTemplate by_name(const std::string& name, const std::optional<std::string>& system = std::nullopt);
  static bool takes_system(const std::string& name);
  const std::string& name() const { return name_; }
  const std::optional<std::string>& system() const { return system_; }
  // Segments for a conversation; with add_generation_prompt the last turn must be the user's
  // and the segments end where the assistant's answer starts.
  std::vector<Segment> segments(const Conversation& c, bool add_generation_prompt) const;
  // The exact text those segments spell ("<image>" and "</s>" written out).
  std::string render(const Conversation& c, bool add_generation_prompt) const;
  // Text that ends an answer besides EOS ("###" for v0, "<|im_end|>" for the ChatML forms).
  std::vector<std::string> stop_strings() const;

 private:
  std::string name_;
  std::optional<std::string> system_;
};

// Tokenises the prompt as the reference does (the whole string, split only at images and
// special tokens); image segments become `image_tokens` copies of kImageToken (with
// image_tokens 0 the tag and the newline after it are left out).
EncodedPrompt encode_segments(const Tokenizer& tok, const std::vector<Segment>& segs, int64_t image_tokens);

std::vector<std::string> template_names();

}  // namespace vadapt::text

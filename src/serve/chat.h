// A multi-turn chat with one vision-language model (`vadapt chat`): the adapter's own template
// over the whole history, images attached to the next turn, answers streamed per token.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "generate/generator.h"
#include "vlm/vision_language_model.h"

namespace vadapt::serve {

class ChatSession {
 public:
  ChatSession(vlm::VisionLanguageModel& m, generate::GenerateOptions opts) : m_(m), opts_(std::move(opts)) {}
  // Attaches an image to the next user turn (checked now: it must decode). A second image of a
  // conversation is a frame of the first (multi-image methods) or an error.
  void attach_image(const std::string& path);
  // One user turn -> the answer (streamed piece by piece through on_piece), kept in the history.
  std::string turn(const std::string& text, const std::function<void(const std::string&)>& on_piece = {});
  void reset();
  // The conversation as JSON ({"system", "turns": [{"role", "text"}], "images": [...]}), written atomically.
  void save(const std::string& path) const;
  const text::Conversation& conversation() const { return conv_; }

 private:
  vlm::VisionLanguageModel& m_;
  generate::GenerateOptions opts_;
  text::Conversation conv_;
  std::vector<std::string> images_;  // of the whole conversation, in order
  bool pending_image_ = false;
};

}  // namespace vadapt::serve

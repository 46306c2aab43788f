// vadapt chat: history, images, streaming.
#include "serve/chat.h"

#include <filesystem>

#include "common/error.h"
#include "io/atomic_file.h"
#include "vision/image.h"
#include "vlm/pipeline.h"

namespace vadapt::serve {

void ChatSession::attach_image(const std::string& path) {
  if (!m_.has_vision()) throw VadaptError(cat(path, ": this adapter reads no images"));
  if (!images_.empty() && !m_.method().multi_image())
    throw VadaptError(cat(path, ": method ", m_.method().name(), " reads one image per conversation (/reset to start a new one)"));
  vision::decode_image_file(path);  // a clear error now rather than at the next turn
  images_.push_back(path);
  pending_image_ = images_.size() == 1;  // the first image places the <image> of the conversation
}

std::string ChatSession::turn(const std::string& text, const std::function<void(const std::string&)>& on_piece) {
  std::string user = text;
  if (pending_image_) user = std::string(text::kImageTag) + "\n" + user;
  conv_.turns.push_back({"user", user});
  try {
    vlm::Query q{"chat", conv_, images_.empty() ? "" : images_[0]};
    auto prompt = vlm::encode_query(m_, q);
    text::StreamDecoder stream(m_.tokenizer(), prompt.ids);
    auto res = vlm::answer(m_, {prompt}, std::vector<std::vector<std::string>>{images_}, opts_, [&](int64_t, int64_t id) {
      if (on_piece) on_piece(stream.push(id));
      return true;
    });
    const std::string answer = m_.tokenizer().decode(res.tokens[0]);
    conv_.turns.push_back({"assistant", answer});
    pending_image_ = false;
    return answer;
  } catch (...) {
    conv_.turns.pop_back();  // the history stays as it was
    throw;
  }
}

void ChatSession::reset() {
  conv_ = {};
  images_.clear();
  pending_image_ = false;
}

void ChatSession::save(const std::string& path) const {
  nlohmann::json turns = nlohmann::json::array();
  for (const auto& t : conv_.turns) turns.push_back({{"role", t.role}, {"text", t.text}});
  io::write_text_atomic(path, nlohmann::json{{"system", conv_.system}, {"turns", turns}, {"images", images_},
                                             {"template", m_.spec().template_name}}.dump(2) + "\n");
}

}  // namespace vadapt::serve

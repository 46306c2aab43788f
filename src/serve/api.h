// The OpenAI-compatible request / response schema of `vadapt serve`, without HTTP: parsing and
// validating /v1/chat/completions and /v1/completions bodies (every error an ApiError with the
// 4xx status, OpenAI's error type, and the field it names), images from data: URLs (base64,
// OpenSSL's decoder) or allowed local files, and the response / stream-chunk JSON.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "text/prompt.h"

namespace vadapt::serve {

// {"error": {"message", "type", "param", "code"}} with an HTTP status.
struct ApiError : std::runtime_error {
  int status;
  std::string type, param, code;
  ApiError(int status, std::string message, std::string param = "", std::string type = "invalid_request_error", std::string code = "")
      : std::runtime_error(std::move(message)), status(status), type(std::move(type)), param(std::move(param)), code(std::move(code)) {}
  nlohmann::json body() const;
};

struct Limits {
  size_t max_image_bytes = 20u << 20;         // decoded bytes of one image
  int64_t max_image_pixels = 89478485;        // Pillow's MAX_IMAGE_PIXELS
  int64_t max_images = 8;                     // per request
  int64_t max_tokens = 1024;                  // ceiling of max_tokens
  std::string allow_local_images;             // folder local image paths must be under ("" : none allowed)
  std::string image_dir;                      // where received images are stored (content-addressed)
};

struct Request {
  bool chat = true;             // /v1/chat/completions (false: /v1/completions)
  std::string model;
  text::Conversation conv;      // chat: the messages (the last one the user's)
  std::string prompt;           // completions: the raw prompt
  std::vector<std::string> images;  // stored image files, in order of appearance
  bool stream = false;
  float temperature = 1.0f, top_p = 1.0f;  // OpenAI's defaults
  int64_t top_k = 0, max_tokens = 256, num_beams = 1;
  uint64_t seed = 0;
  bool seeded = false;
  std::vector<std::string> stop;
};

// Parses a request body; `default_model` is used when `model` is absent. Throws ApiError.
Request parse_request(const std::string& body, bool chat, const Limits& limits, const std::string& default_model);

// A received image (data: URL or allowed local path) -> a stored, decodable file (path).
std::string store_image(const std::string& url, const std::string& field, const Limits& limits);

// JSON text of a response: invalid UTF-8 in generated text (a byte-level model can emit any
// bytes) becomes U+FFFD instead of an error.
std::string dump(const nlohmann::json& j);

// Response bodies.
nlohmann::json completion_json(const Request& r, const std::string& id, int64_t created, const std::string& text,
                               const std::string& finish_reason, int64_t prompt_tokens, int64_t completion_tokens);
// One server-sent event ("data: {...}\n\n") of a stream; `delta` is the new text (the first
// chunk of a chat stream carries the role), finish_reason empty until the last.
std::string stream_chunk(const Request& r, const std::string& id, int64_t created, const std::string& delta, bool first,
                         const std::string& finish_reason);

}  // namespace vadapt::serve

// OpenAI schema: request parsing and validation, images, response JSON.
#include "serve/api.h"

#include <openssl/evp.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "vision/feature_cache.h"
#include "vision/image.h"

namespace vadapt::serve {
namespace fs = std::filesystem;
using nlohmann::json;

json ApiError::body() const {
  return {{"error",
           {{"message", what()}, {"type", type}, {"param", param.empty() ? json(nullptr) : json(param)}, {"code", code.empty() ? json(nullptr) : json(code)}}}};
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

namespace {
[[noreturn]] void bad(const std::string& param, const std::string& msg) { throw ApiError(400, param + ": " + msg, param); }

const json* field(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& j, const char* key, double lo, double hi, double fallback) {
  const json* v = field(j, key);
  if (!v) return fallback;
  if (!v->is_number()) bad(key, "must be a number, got " + std::string(v->type_name()));
  const double x = v->get<double>();
  if (!(x >= lo && x <= hi)) bad(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + v->dump());
  return x;
}

int64_t integer(const json& j, const char* key, int64_t lo, int64_t hi, int64_t fallback) {
  const json* v = field(j, key);
  if (!v) return fallback;
  if (!v->is_number_integer()) bad(key, "must be an integer, got " + v->dump());
  const int64_t x = v->get<int64_t>();
  if (x < lo || x > hi) bad(key, "must be between " + std::to_string(lo) + " and " + std::to_string(hi) + ", got " + std::to_string(x));
  return x;
}

std::string base64_decode(const std::string& in, const std::string& field_name) {
  std::string clean;
  clean.reserve(in.size());
  for (char c : in)
    if (!std::isspace(static_cast<unsigned char>(c))) clean += c;
  if (clean.empty() || clean.size() % 4 != 0) bad(field_name, "the base64 data is empty or its length is not a multiple of 4");
  std::string out(clean.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(clean.data()),
                                static_cast<int>(clean.size()));
  if (n < 0) bad(field_name, "invalid base64 data");
  size_t pad = 0;
  if (clean.size() >= 1 && clean[clean.size() - 1] == '=') ++pad;
  if (clean.size() >= 2 && clean[clean.size() - 2] == '=') ++pad;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}
}  // namespace

std::string store_image(const std::string& url, const std::string& f, const Limits& limits) {
  std::string bytes;
  if (url.rfind("data:", 0) == 0) {
    const auto comma = url.find(',');
    if (comma == std::string::npos || url.substr(0, comma).find(";base64") == std::string::npos)
      bad(f, "a data: URL must be base64 (data:image/...;base64,...)");
    if ((url.size() - comma - 1) / 4 * 3 > limits.max_image_bytes + 3)
      throw ApiError(413, f + ": image larger than " + std::to_string(limits.max_image_bytes) + " bytes", f);
    bytes = base64_decode(url.substr(comma + 1), f);
  } else if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0) {
    bad(f, "remote image URLs are not fetched; send the image as a data: URL (base64)");
  } else {
    std::string path = url.rfind("file://", 0) == 0 ? url.substr(7) : url;
    if (limits.allow_local_images.empty()) bad(f, "local image paths are not allowed (start the server with --allow-local-images DIR)");
    std::error_code ec;
    const auto root = fs::weakly_canonical(limits.allow_local_images, ec);
    const auto p = fs::weakly_canonical(path, ec);
    const auto rel = p.lexically_relative(root);
    if (ec || rel.empty() || rel.native().rfind("..", 0) == 0) bad(f, "local image paths must be under the --allow-local-images folder");
    if (!fs::is_regular_file(p)) bad(f, "no such image file under the --allow-local-images folder");
    if (fs::file_size(p) > limits.max_image_bytes)
      throw ApiError(413, f + ": image larger than " + std::to_string(limits.max_image_bytes) + " bytes", f);
    std::ifstream in(p, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  if (bytes.size() > limits.max_image_bytes) throw ApiError(413, f + ": image larger than " + std::to_string(limits.max_image_bytes) + " bytes", f);
  // The size from the header first: a decompression bomb is refused before any pixel is decoded.
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  try {
    const auto [w, h] = vision::image_size(data, bytes.size(), f);
    if (w * h > limits.max_image_pixels)
      throw ApiError(413, f + ": image of " + std::to_string(w) + " x " + std::to_string(h) + " pixels exceeds the limit of " +
                              std::to_string(limits.max_image_pixels) + " pixels (refused before decoding)", f);
    vision::DecodeOptions o;
    o.max_pixels = limits.max_image_pixels;
    vision::decode_image_bytes(data, bytes.size(), f, o);  // whole and readable, so the worker never meets a bad image
  } catch (const ApiError&) {
    throw;
  } catch (const std::exception& e) {
    bad(f, std::string("not a readable image (JPEG, PNG, WebP, GIF, BMP): ") + e.what());
  }
  // Content-addressed: the same image is one file (and one feature-cache entry).
  fs::create_directories(limits.image_dir);
  const std::string path = limits.image_dir + "/" + vision::sha256_hex(bytes) + ".img";
  if (!fs::exists(path)) {
    const std::string tmp = path + ".tmp" + std::to_string(reinterpret_cast<uintptr_t>(&bytes));
    std::ofstream(tmp, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    fs::rename(tmp, path);
  }
  return path;
}

Request parse_request(const std::string& body, bool chat, const Limits& limits, const std::string& default_model) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400, std::string("the body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw ApiError(400, "the body must be a JSON object");
  Request r;
  r.chat = chat;
  if (const json* m = field(j, "model")) {
    if (!m->is_string()) bad("model", "must be a string");
    r.model = m->get<std::string>();
  } else {
    r.model = default_model;
  }
  if (const json* s = field(j, "stream")) {
    if (!s->is_boolean()) bad("stream", "must be true or false");
    r.stream = s->get<bool>();
  }
  r.temperature = static_cast<float>(number(j, "temperature", 0, 2, 1.0));
  r.top_p = static_cast<float>(number(j, "top_p", 0, 1, 1.0));
  if (field(j, "top_p") && r.top_p <= 0) bad("top_p", "must be above 0");
  r.top_k = integer(j, "top_k", 0, 1000000, 0);
  r.num_beams = integer(j, "num_beams", 1, 16, 1);
  const char* max_key = field(j, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  r.max_tokens = integer(j, max_key, 1, limits.max_tokens, std::min<int64_t>(256, limits.max_tokens));
  if (const json* s = field(j, "seed")) {
    if (!s->is_number_integer()) bad("seed", "must be an integer");
    r.seed = static_cast<uint64_t>(s->get<int64_t>()), r.seeded = true;
  }
  if (integer(j, "n", 1, 1000000, 1) != 1) bad("n", "only n = 1 is supported");
  if (const json* s = field(j, "stop")) {
    if (s->is_string()) r.stop.push_back(s->get<std::string>());
    else if (s->is_array() && s->size() <= 4) {
      for (const auto& e : *s) {
        if (!e.is_string() || e.get<std::string>().empty()) bad("stop", "must be a non-empty string or a list of up to 4");
        r.stop.push_back(e.get<std::string>());
      }
    } else {
      bad("stop", "must be a string or a list of up to 4 strings");
    }
  }
  if (r.stream && r.num_beams > 1) bad("num_beams", "beam search cannot stream (use stream: false)");
  if (!chat) {
    const json* p = field(j, "prompt");
    if (!p || !p->is_string()) bad("prompt", "must be a string");
    r.prompt = p->get<std::string>();
    if (r.prompt.empty()) bad("prompt", "is empty");
    return r;
  }
  const json* msgs = field(j, "messages");
  if (!msgs || !msgs->is_array()) bad("messages", "must be a list of messages");
  if (msgs->empty()) bad("messages", "is empty");
  for (size_t i = 0; i < msgs->size(); ++i) {
    const auto& m = (*msgs)[i];
    const std::string f = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) bad(f, "must be an object with role and content");
    const json* role = field(m, "role");
    if (!role || !role->is_string()) bad(f + ".role", "must be a string");
    const std::string rl = role->get<std::string>();
    if (rl != "system" && rl != "developer" && rl != "user" && rl != "assistant")
      bad(f + ".role", "expected system, user or assistant, got '" + rl + "'");
    const json* c = field(m, "content");
    if (!c) bad(f + ".content", "missing");
    std::string text;
    if (c->is_string()) {
      text = c->get<std::string>();
    } else if (c->is_array()) {
      for (size_t k = 0; k < c->size(); ++k) {
        const auto& part = (*c)[k];
        const std::string pf = f + ".content[" + std::to_string(k) + "]";
        const json* type = part.is_object() ? field(part, "type") : nullptr;
        if (!type || !type->is_string()) bad(pf + ".type", "must be \"text\" or \"image_url\"");
        if (type->get<std::string>() == "text") {
          const json* t = field(part, "text");
          if (!t || !t->is_string()) bad(pf + ".text", "must be a string");
          text += (text.empty() ? "" : "\n") + t->get<std::string>();
        } else if (type->get<std::string>() == "image_url") {
          if (rl != "user") bad(pf, "only user messages may carry images");
          const json* iu = field(part, "image_url");
          const json* url = iu && iu->is_object() ? field(*iu, "url") : (iu && iu->is_string() ? iu : nullptr);
          if (!url || !url->is_string()) bad(pf + ".image_url.url", "must be a string (a data: URL or an allowed local path)");
          if (static_cast<int64_t>(r.images.size()) >= limits.max_images)
            bad(pf, "more than " + std::to_string(limits.max_images) + " images in one request");
          r.images.push_back(store_image(url->get<std::string>(), pf + ".image_url.url", limits));
          if (r.images.size() == 1) text = std::string(text::kImageTag) + "\n" + text;  // one <image> per conversation
        } else {
          bad(pf + ".type", "expected \"text\" or \"image_url\", got '" + type->get<std::string>() + "'");
        }
      }
    } else {
      bad(f + ".content", "must be a string or a list of content parts");
    }
    if (text.find(text::kImageTag) != std::string::npos && (c->is_string() || r.images.empty()))
      bad(f + ".content", std::string("the text may not contain ") + text::kImageTag + " (send images as image_url parts)");
    if (rl == "system" || rl == "developer") {
      if (!r.conv.turns.empty()) bad(f + ".role", "a system message must come first");
      r.conv.system = text;
      continue;
    }
    const char* want = r.conv.turns.size() % 2 == 0 ? "user" : "assistant";
    if (rl != want) bad(f + ".role", std::string("messages must alternate user / assistant; expected ") + want);
    r.conv.turns.push_back({rl, text});
  }
  if (r.conv.turns.empty() || r.conv.turns.back().role != "user") bad("messages", "the last message must be the user's");
  return r;
}

json completion_json(const Request& r, const std::string& id, int64_t created, const std::string& text, const std::string& finish,
                     int64_t prompt_tokens, int64_t completion_tokens) {
  json choice = {{"index", 0}, {"finish_reason", finish}, {"logprobs", nullptr}};
  if (r.chat) choice["message"] = {{"role", "assistant"}, {"content", text}};
  else choice["text"] = text;
  return {{"id", id},
          {"object", r.chat ? "chat.completion" : "text_completion"},
          {"created", created},
          {"model", r.model},
          {"choices", json::array({choice})},
          {"usage", {{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion_tokens}, {"total_tokens", prompt_tokens + completion_tokens}}}};
}

std::string stream_chunk(const Request& r, const std::string& id, int64_t created, const std::string& delta, bool first,
                         const std::string& finish) {
  json choice = {{"index", 0}, {"finish_reason", finish.empty() ? json(nullptr) : json(finish)}, {"logprobs", nullptr}};
  if (r.chat) {
    json d = json::object();
    if (first) d["role"] = "assistant";
    if (!delta.empty() || (!first && finish.empty())) d["content"] = delta;
    choice["delta"] = d;
  } else {
    choice["text"] = delta;
  }
  json c = {{"id", id}, {"object", r.chat ? "chat.completion.chunk" : "text_completion"}, {"created", created}, {"model", r.model},
            {"choices", json::array({choice})}};
  return "data: " + dump(c) + "\n\n";
}

}  // namespace vadapt::serve

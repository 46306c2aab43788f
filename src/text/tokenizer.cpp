// Tokenizer loading (format detection, tokenizer_config.json) and streaming detokenization.
#include "text/tokenizer.h"

#include <cstdlib>
#include <filesystem>
#include <map>

#include "common/error.h"
#include "io/json_file.h"
#include "text/bpe_tokenizer.h"
#include "text/sentencepiece_tokenizer.h"

namespace vadapt::text {
namespace {
// tokenizer_config.json spells special tokens as "str" or {"content": "str", ...}.
std::string token_string(const nlohmann::json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.contains("content") && j["content"].is_string()) return j["content"].get<std::string>();
  return {};
}
}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  // A field of the wrong type somewhere in tokenizer.json / tokenizer_config.json (found by
  // fuzz_tokenizer_json: e.g. pre_tokenizer.add_prefix_space given a number) names the folder.
  try {
  namespace fs = std::filesystem;
  fs::path d(dir);
  std::unique_ptr<Tokenizer> tok;
  if (fs::is_regular_file(d)) {
    tok = d.extension() == ".json" ? std::unique_ptr<Tokenizer>(new BpeTokenizer(d.string()))
                                   : std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(d.string()));
    d = d.parent_path();
  } else if (fs::exists(d / "tokenizer.model")) {
    // A folder with both (Llama 2, Mistral, llava-hf) holds a SentencePiece model and its
    // fast-tokenizer twin; the SentencePiece model is the reference there.
    tok = std::make_unique<SentencePieceTokenizer>((d / "tokenizer.model").string());
  } else if (fs::exists(d / "tokenizer.json")) {
    tok = std::make_unique<BpeTokenizer>((d / "tokenizer.json").string());
  } else {
    raise(dir, "", "no tokenizer.json or tokenizer.model in this folder");
  }
  fs::path cfg = d / "tokenizer_config.json";
  if (fs::exists(cfg)) {
    auto j = io::read_json(cfg.string());
    if (j.contains("add_bos_token") && j["add_bos_token"].is_boolean()) tok->add_bos_token_ = j["add_bos_token"].get<bool>();
    if (j.contains("legacy") && j["legacy"].is_boolean()) tok->legacy_ = j["legacy"].get<bool>();
    // Tokens added on top of the model's vocabulary (llava-hf: <image> 32000, <pad> 32001).
    std::map<std::string, int64_t> added;
    if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object())
      for (const auto& [k, v] : j["added_tokens_decoder"].items()) {
        const std::string content = token_string(v);
        char* end = nullptr;
        const long long id = std::strtoll(k.c_str(), &end, 10);
        if (content.empty() || !end || *end || id < 0) raise(cfg.string(), "added_tokens_decoder." + k, "expected {\"content\": ...} under a token id");
        added[content] = id;
      }
    auto set_id = [&](const char* key, int64_t& slot) {
      if (!j.contains(key)) return;
      std::string s = token_string(j[key]);
      if (s.empty()) return;
      int64_t id = tok->token_to_id(s);
      if (id < 0 && added.count(s)) id = added[s];
      if (id < 0) raise(cfg.string(), key, "token '", s, "' is not in the vocabulary");
      slot = id;
    };
    set_id("bos_token", tok->bos_id_);
    set_id("eos_token", tok->eos_id_);
    set_id("pad_token", tok->pad_id_);
  }
  return tok;
  } catch (const nlohmann::json::exception& e) {
    raise(dir, "", "tokenizer files have a field of an unexpected type: ", e.what());
  }
}

StreamDecoder::StreamDecoder(const Tokenizer& tok, std::vector<int64_t> context) : tok_(tok), ids_(std::move(context)) {
  emitted_ = ids_.empty() ? 0 : tok_.decode(ids_).size();
}

std::string StreamDecoder::push(int64_t id) {
  ids_.push_back(id);
  std::string all = tok_.decode(ids_);
  // Hold back a trailing incomplete UTF-8 sequence or replacement character.
  size_t end = all.size();
  if (end >= 3 && all.compare(end - 3, 3, "\xEF\xBF\xBD") == 0) return {};
  size_t i = end;
  int back = 0;
  while (i > 0 && back < 4 && (static_cast<unsigned char>(all[i - 1]) & 0xC0) == 0x80) --i, ++back;
  if (i > 0) {
    unsigned char lead = static_cast<unsigned char>(all[i - 1]);
    int need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
    if (need > back + 1) end = i - 1;
  }
  if (end <= emitted_) return {};
  std::string out = all.substr(emitted_, end - emitted_);
  emitted_ = end;
  return out;
}

std::string StreamDecoder::flush() {
  std::string all = tok_.decode(ids_);
  std::string out = all.size() > emitted_ ? all.substr(emitted_) : std::string();
  emitted_ = all.size();
  return out;
}

}  // namespace vadapt::text

// Byte-level BPE over tokenizer.json.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/bpe_tokenizer.h"

#include <pcre2.h>

#include <algorithm>
#include <climits>

#include "common/error.h"
#include "io/json_file.h"

namespace vadapt::text {
namespace {

// GPT-2's pre-tokenizer pattern (ByteLevel with use_regex = true).
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

std::string utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) s += static_cast<char>(cp);
  else if (cp < 0x800) s += static_cast<char>(0xC0 | (cp >> 6)), s += static_cast<char>(0x80 | (cp & 0x3F));
  else s += static_cast<char>(0xE0 | (cp >> 12)), s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F)),
       s += static_cast<char>(0x80 | (cp & 0x3F));
  return s;
}

// Splits a UTF-8 string into code-point strings.
std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    n = std::min(n, s.size() - i);
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

}  // namespace

BpeTokenizer::BpeTokenizer(const std::string& path) {
  source_ = path;
  auto j = io::read_json(path);
  auto model = j.find("model");
  if (model == j.end() || !model->is_object()) raise(path, "model", "missing object");
  std::string type = io::json_get_or<std::string>(*model, "type", "BPE", path);
  if (type != "BPE") raise(path, "model.type", "unsupported tokenizer model '", type, "' (only BPE)");
  ignore_merges_ = io::json_get_or<bool>(*model, "ignore_merges", false, path);
  auto vocab = model->find("vocab");
  if (vocab == model->end() || !vocab->is_object()) raise(path, "model.vocab", "missing object");
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer()) raise(path, "model.vocab." + it.key(), "id must be an integer");
    int64_t id = it.value().get<int64_t>();
    if (id < 0 || id > (1 << 24)) raise(path, "model.vocab." + it.key(), "id out of range: ", id);
    vocab_[it.key()] = id;
    if (static_cast<size_t>(id) >= id_to_token_.size()) id_to_token_.resize(id + 1);
    id_to_token_[id] = it.key();
  }
  auto merges = model->find("merges");
  if (merges != model->end() && merges->is_array()) {
    int rank = 0;
    for (const auto& m : *merges) {
      std::string key;
      if (m.is_string()) key = m.get<std::string>();
      else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
        key = m[0].get<std::string>() + " " + m[1].get<std::string>();
      else raise(path, "model.merges", "entry ", rank, " must be \"a b\" or [\"a\", \"b\"]");
      merge_rank_.emplace(key, rank++);
    }
  }
  if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
    for (const auto& t : j["added_tokens"]) {
      int64_t id = io::json_get<int64_t>(t, "id", path + " added_tokens");
      std::string content = io::json_get<std::string>(t, "content", path + " added_tokens");
      if (id < 0 || id > (1 << 24)) raise(path, "added_tokens", "id out of range: ", id);
      added_.emplace_back(content, id);
      vocab_[content] = id;
      if (static_cast<size_t>(id) >= id_to_token_.size()) id_to_token_.resize(id + 1);
      id_to_token_[id] = content;
    }
    std::sort(added_.begin(), added_.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
  }
  is_added_.assign(id_to_token_.size(), false);
  for (const auto& a : added_) is_added_[a.second] = true;
  // byte <-> unicode map (GPT-2): printable bytes map to themselves, others to 256 + n.
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    uint32_t cp = printable ? b : 256 + n++;
    byte_to_unicode_[b] = utf8(cp);
    unicode_to_byte_[byte_to_unicode_[b]] = static_cast<unsigned char>(b);
  }
  // Pre-tokenizer regex: a Split with a Regex pattern inside a Sequence, or plain ByteLevel.
  std::string pattern = kGpt2Pattern;
  std::function<void(const nlohmann::json&)> scan = [&](const nlohmann::json& p) {
    if (!p.is_object()) return;
    std::string t = p.value("type", "");
    if (t == "Sequence" && p.contains("pretokenizers"))
      for (const auto& q : p["pretokenizers"]) scan(q);
    if (t == "Split" && p.contains("pattern") && p["pattern"].contains("Regex"))
      pattern = p["pattern"]["Regex"].get<std::string>();
    if (t == "ByteLevel") add_prefix_space_ = p.value("add_prefix_space", false);
  };
  if (j.contains("pre_tokenizer")) scan(j["pre_tokenizer"]);
  int err = 0;
  PCRE2_SIZE off = 0;
  regex_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err,
                         &off, nullptr);
  if (!regex_) raise(path, "pre_tokenizer", "cannot compile regex at offset ", off, ": ", pattern);
  // BOS from a TemplateProcessing post-processor (Llama 3 adds <|begin_of_text|> there).
  add_bos_token_ = false;
  if (j.contains("post_processor") && j["post_processor"].is_object()) {
    const auto& pp = j["post_processor"];
    std::function<void(const nlohmann::json&)> find_bos = [&](const nlohmann::json& p) {
      if (p.value("type", "") == "Sequence" && p.contains("processors"))
        for (const auto& q : p["processors"]) find_bos(q);
      if (p.value("type", "") == "TemplateProcessing" && p.contains("single") && p["single"].is_array() &&
          !p["single"].empty() && p["single"][0].contains("SpecialToken")) {
        std::string tok = p["single"][0]["SpecialToken"].value("id", "");
        if (vocab_.count(tok)) bos_id_ = vocab_[tok], add_bos_token_ = true;
      }
    };
    find_bos(pp);
  }
}

BpeTokenizer::~BpeTokenizer() {
  if (regex_) pcre2_code_free(static_cast<pcre2_code*>(regex_));
}

int64_t BpeTokenizer::token_to_id(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

std::vector<std::string> BpeTokenizer::pre_tokenize(const std::string& text) const {
  std::vector<std::string> out;
  auto* re = static_cast<pcre2_code*>(regex_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re, nullptr);
  size_t start = 0;
  while (start < text.size()) {
    int rc = pcre2_match(re, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), start, 0, md, nullptr);
    if (rc < 0) {
      out.push_back(text.substr(start));
      break;
    }
    PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    if (ov[0] > start) out.push_back(text.substr(start, ov[0] - start));  // Isolated: keep gaps too
    if (ov[1] == ov[0]) {
      out.push_back(text.substr(ov[0], 1));
      start = ov[0] + 1;
      continue;
    }
    out.push_back(text.substr(ov[0], ov[1] - ov[0]));
    start = ov[1];
  }
  pcre2_match_data_free(md);
  return out;
}

void BpeTokenizer::encode_piece(const std::string& piece, int64_t begin, Encoding& out) const {
  std::string mapped;
  for (unsigned char b : piece) mapped += byte_to_unicode_[b];
  if (ignore_merges_) {
    auto it = vocab_.find(mapped);
    if (it != vocab_.end()) {
      out.ids.push_back(it->second);
      out.begins.push_back(begin);
      return;
    }
  }
  std::vector<std::string> parts = utf8_chars(mapped);
  while (parts.size() > 1) {
    int best = INT_MAX;
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      auto it = merge_rank_.find(parts[i] + " " + parts[i + 1]);
      if (it != merge_rank_.end() && it->second < best) best = it->second, at = i;
    }
    if (best == INT_MAX) break;
    parts[at] += parts[at + 1];
    parts.erase(parts.begin() + static_cast<long>(at) + 1);
  }
  for (const auto& p : parts) {
    auto it = vocab_.find(p);
    if (it == vocab_.end()) raise(source_, "model.vocab", "no token for BPE piece '", p, "'");
    out.ids.push_back(it->second);
    out.begins.push_back(begin);
    begin += static_cast<int64_t>(utf8_chars(p).size());  // one mapped character per byte
  }
}

std::vector<int64_t> BpeTokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<int64_t> out;
  if (add_bos && add_bos_token_ && bos_id_ >= 0) out.push_back(bos_id_);
  auto e = encode_offsets(text, true);
  out.insert(out.end(), e.ids.begin(), e.ids.end());
  return out;
}

// Byte-level BPE has no dummy prefix; `add_prefix_space` of the ByteLevel pre-tokenizer plays
// that part (its inserted space is reported at offset 0).
Tokenizer::Encoding BpeTokenizer::encode_offsets(const std::string& text_in, bool dummy_prefix) const {
  Encoding out;
  const bool space = dummy_prefix && add_prefix_space_ && !text_in.empty() && text_in[0] != ' ';
  const std::string text = space ? " " + text_in : text_in;
  const int64_t shift = space ? 1 : 0;
  size_t pos = 0, seg = 0;
  auto flush = [&](size_t end) {
    if (end <= seg) return;
    int64_t at = static_cast<int64_t>(seg);
    for (const auto& p : pre_tokenize(text.substr(seg, end - seg))) {
      encode_piece(p, std::max<int64_t>(0, at - shift), out);
      at += static_cast<int64_t>(p.size());
    }
  };
  while (pos < text.size()) {
    bool matched = false;
    for (const auto& [content, id] : added_) {
      if (!content.empty() && text.compare(pos, content.size(), content) == 0) {
        flush(pos);
        out.ids.push_back(id);
        out.begins.push_back(std::max<int64_t>(0, static_cast<int64_t>(pos) - shift));
        pos += content.size();
        seg = pos;
        matched = true;
        break;
      }
    }
    if (!matched) ++pos;
  }
  flush(text.size());
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::string out;
  for (int64_t id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    if (is_added_[id]) {
      if (id == bos_id_ || id == eos_id_) continue;
      out += id_to_token_[id];
      continue;
    }
    for (const auto& ch : utf8_chars(id_to_token_[id])) {
      auto it = unicode_to_byte_.find(ch);
      if (it != unicode_to_byte_.end()) out += static_cast<char>(it->second);
      else out += ch;
    }
  }
  return out;
}

}  // namespace vadapt::text

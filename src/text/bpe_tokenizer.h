// Hugging Face tokenizer.json byte-level BPE (GPT-2 / Llama 3 / Qwen / SmolLM style): added and
// special tokens split first, then the pre-tokenizer regex (PCRE2, Unicode classes), the
// GPT-2 byte-to-unicode map, and rank-ordered merges.
#pragma once

#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "text/tokenizer.h"

namespace vadapt::text {

class BpeTokenizer : public Tokenizer {
 public:
  explicit BpeTokenizer(const std::string& path);
  ~BpeTokenizer() override;
  std::vector<int64_t> encode(const std::string& text, bool add_bos) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return static_cast<int64_t>(id_to_token_.size()); }
  int64_t token_to_id(const std::string& token) const override;
  Encoding encode_offsets(const std::string& text, bool dummy_prefix) const override;

 private:
  void encode_piece(const std::string& piece, int64_t begin, Encoding& out) const;
  std::vector<std::string> pre_tokenize(const std::string& text) const;

  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<std::string, int> merge_rank_;  // "left right" -> rank
  std::vector<std::pair<std::string, int64_t>> added_;  // longest first
  std::vector<bool> is_added_;
  std::string byte_to_unicode_[256];
  std::unordered_map<std::string, unsigned char> unicode_to_byte_;
  void* regex_ = nullptr;  // pcre2_code*
  bool ignore_merges_ = false;
  bool add_prefix_space_ = false;
};

}  // namespace vadapt::text

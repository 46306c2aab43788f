// SentencePiece tokenizer (tokenizer.model) through libsentencepiece, reached via the
// vadapt_sentencepiece plugin (see text/plugin/sentencepiece_plugin.cpp for why).
#pragma once

#include <memory>

#include "text/tokenizer.h"

namespace vadapt::text {

struct SentencePiecePlugin;

class SentencePieceTokenizer : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;
  std::vector<int64_t> encode(const std::string& text, bool add_bos) const override;
  std::string decode(const std::vector<int64_t>& ids) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  int64_t token_to_id(const std::string& token) const override;
  bool has_dummy_prefix() const override { return true; }
  Encoding encode_offsets(const std::string& text, bool dummy_prefix) const override;

 private:
  const SentencePiecePlugin* api_;
  void* handle_ = nullptr;
  int64_t vocab_size_ = 0;
};

}  // namespace vadapt::text

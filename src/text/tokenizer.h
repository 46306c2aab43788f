// Tokenizer interface and loader. A model folder holds either a SentencePiece tokenizer.model
// (Llama 1/2, TinyStories) or a Hugging Face tokenizer.json (byte-level BPE: Llama 3, Qwen,
// SmolLM); BOS/EOS and special tokens come from tokenizer_config.json when present.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace vadapt::text {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Text -> ids; `add_bos` prepends BOS when the tokenizer has one (and add_bos_token is set).
  virtual std::vector<int64_t> encode(const std::string& text, bool add_bos) const = 0;
  virtual std::string decode(const std::vector<int64_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  // Id of a token string (e.g. "<|eot_id|>"), or -1.
  virtual int64_t token_to_id(const std::string& token) const = 0;
  // SentencePiece prepends a space ("▁") to every encoded text.
  virtual bool has_dummy_prefix() const { return false; }

  // `text` alone (no BOS), with the byte offset in `text` where each token starts. With
  // `dummy_prefix` false, SentencePiece encodes without its dummy prefix: what a Hugging Face
  // `legacy: false` Llama tokenizer does for text that follows a special token.
  struct Encoding {
    std::vector<int64_t> ids;
    std::vector<int64_t> begins;
  };
  virtual Encoding encode_offsets(const std::string& text, bool dummy_prefix) const = 0;
  // tokenizer_config.json "legacy" (Hugging Face's default when absent: true): every piece of
  // text between special tokens gets the dummy prefix, "</s>USER" -> "</s>", "▁US", "ER".
  bool legacy() const { return legacy_; }

  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_ >= 0 ? pad_id_ : (eos_id_ >= 0 ? eos_id_ : 0); }
  bool add_bos_token() const { return add_bos_token_; }
  const std::string& source() const { return source_; }

 protected:
  int64_t bos_id_ = -1, eos_id_ = -1, pad_id_ = -1;
  bool add_bos_token_ = true;
  bool legacy_ = true;
  std::string source_;
  friend std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);
};

// Loads DIR/tokenizer.model (SentencePiece) or DIR/tokenizer.json (BPE) plus
// DIR/tokenizer_config.json; errors name the folder and what is missing.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

// Incremental detokenizer for streaming: feed ids one at a time, get the newly completed text
// (holding back an incomplete UTF-8 sequence).
class StreamDecoder {
 public:
  // `context`: ids already shown (the prompt), so that a leading space of the first new token
  // is kept (SentencePiece drops it at the start of a decode).
  explicit StreamDecoder(const Tokenizer& tok, std::vector<int64_t> context = {});
  std::string push(int64_t id);
  std::string flush();

 private:
  const Tokenizer& tok_;
  std::vector<int64_t> ids_;
  size_t emitted_ = 0;
};

}  // namespace vadapt::text

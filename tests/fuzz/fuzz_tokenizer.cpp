// libFuzzer target: tokenizer files. Built twice: VADAPT_FUZZ_TOKENIZER_FILE is "tokenizer.json"
// (Hugging Face byte-level BPE) or "tokenizer.model" (SentencePiece protobuf, parsed by Debian's
// libsentencepiece behind our plugin). The input up to the first "\0\0" is that file, the rest
// (if any) tokenizer_config.json. A tokenizer that loads then encodes, decodes (also ids it
// never produced) and streams a few texts. Every input must work or raise VadaptError.
#include <filesystem>

#include "common/error.h"
#include "fuzz_common.h"
#include "text/tokenizer.h"

using namespace vadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string in(reinterpret_cast<const char*>(data), size);
  const size_t cut = in.find(std::string("\0\0", 2));
  const std::string dir = fuzz::scratch_dir() + "/tok";
  fuzz::write_text(std::string("tok/") + VADAPT_FUZZ_TOKENIZER_FILE, in.substr(0, cut));
  if (cut != std::string::npos) fuzz::write_text("tok/tokenizer_config.json", in.substr(cut + 2));
  else std::filesystem::remove(dir + "/tokenizer_config.json");
  try {
    auto tok = text::load_tokenizer(dir);
    const int64_t vocab = tok->vocab_size();
    for (const std::string text : {"Hello world", " <s>a</s>\n\n", "\xc3\xa9\xe2\x96\x81 caf\xc3\xa9 \xf0\x9f\x98\x80", "\xff\xfe x", ""}) {
      auto ids = tok->encode(text, true);
      for (auto id : ids)
        if (id < 0 || id >= vocab) __builtin_trap();
      (void)tok->decode(ids);
      auto enc = tok->encode_offsets(text, false);
      if (enc.ids.size() != enc.begins.size()) __builtin_trap();
      text::StreamDecoder sd(*tok);
      for (auto id : ids) (void)sd.push(id);
      (void)sd.flush();
    }
    std::vector<int64_t> any;
    for (int64_t i = 0; i < std::min<int64_t>(vocab, 300); i += 7) any.push_back(i);
    any.push_back(vocab - 1);
    (void)tok->decode(any);
    (void)tok->token_to_id("</s>");
  } catch (const VadaptError&) {
  }
  return 0;
}

// Byte-level BPE over tokenizer.json (hand-worked expectations on a tiny vocabulary) and the
// streaming detokenizer.
#include <gtest/gtest.h>

#include "common/error.h"
#include "fixtures.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "text/tokenizer.h"

using namespace vadapt;
using vadapt::test::TempDir;

TEST(BpeTokenizer, MergesSpecialTokensAndRoundTrip) {
  TempDir tmp;
  vadapt::test::write_tiny_tokenizer(tmp.path(), 300);
  auto tok = text::load_tokenizer(tmp.path());
  EXPECT_EQ(tok->bos_id(), 256);
  EXPECT_EQ(tok->eos_id(), 257);
  // " the" -> "Ġ"+"t" (258), "h"+"e" (259), "Ġt"+"he" (260): one token.
  EXPECT_EQ(tok->encode(" the", false), (std::vector<int64_t>{260}));
  // "in the" -> pieces "in", " the"; "in" merges (261).
  EXPECT_EQ(tok->encode("in the", true), (std::vector<int64_t>{256, 261, 260}));
  // Special tokens are matched before the regex; bytes of "é" are two byte tokens.
  EXPECT_EQ(tok->encode("a</s>é", false), (std::vector<int64_t>{'a', 257, 0xC3, 0xA9}));
  for (std::string s : {"Hello, world! 123", "héllo 😀 naïve", "  spaces\n\ttabs", ""})
    EXPECT_EQ(tok->decode(tok->encode(s, true)), s) << s;
}

TEST(StreamDecoder, HoldsBackIncompleteUtf8) {
  TempDir tmp;
  vadapt::test::write_tiny_tokenizer(tmp.path(), 300);
  auto tok = text::load_tokenizer(tmp.path());
  text::StreamDecoder d(*tok);
  EXPECT_EQ(d.push('a'), "a");
  EXPECT_EQ(d.push(0xF0), "");  // first byte of a 4-byte emoji
  EXPECT_EQ(d.push(0x9F), "");
  EXPECT_EQ(d.push(0x98), "");
  EXPECT_EQ(d.push(0x80), "\xF0\x9F\x98\x80");
  EXPECT_EQ(d.flush(), "");
}

TEST(Tokenizer, MissingAndBadFilesAreNamed) {
  TempDir tmp;
  try {
    text::load_tokenizer(tmp.path());
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("no tokenizer.json or tokenizer.model"), std::string::npos);
  }
  io::write_text_atomic(tmp.file("tokenizer.json"), R"({"model": {"type": "Unigram", "vocab": []}})");
  EXPECT_THROW(text::load_tokenizer(tmp.path()), VadaptError);
  io::write_text_atomic(tmp.file("tokenizer.json"), "{not json");
  EXPECT_THROW(text::load_tokenizer(tmp.path()), VadaptError);
  // Found by fuzz_tokenizer_json: a field of the wrong type escaped as nlohmann's type_error.
  vadapt::test::write_tiny_tokenizer(tmp.path(), 300);
  auto j = io::read_json(tmp.file("tokenizer.json"));
  j["pre_tokenizer"]["add_prefix_space"] = 1;
  io::write_text_atomic(tmp.file("tokenizer.json"), j.dump());
  try {
    text::load_tokenizer(tmp.path());
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("field of an unexpected type"), std::string::npos) << e.what();
  }
}

// SentencePiece encode/decode through the dlopen'ed plugin; BOS/EOS ids from the model proto.
#include "text/sentencepiece_tokenizer.h"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>

#include "common/error.h"

#ifndef VADAPT_SP_PLUGIN_PATH
#define VADAPT_SP_PLUGIN_PATH "libvadapt_sentencepiece.so"
#endif

namespace vadapt::text {

struct SentencePiecePlugin {
  void* (*load)(const char*, char*, size_t);
  void (*free)(void*);
  int64_t (*encode)(void*, const char*, size_t);
  const int* (*ids)(void*);
  int64_t (*encode_offsets)(void*, const char*, size_t, int);
  const int64_t* (*begins)(void*);
  int64_t (*decode)(void*, const int*, size_t);
  const char* (*text)(void*);
  const char* (*error)(void*);
  int (*piece_size)(void*);
  int (*piece_to_id)(void*, const char*);
  int (*unk_id)(void*);
  int (*bos_id)(void*);
  int (*eos_id)(void*);
  int (*pad_id)(void*);
  const char* (*id_to_piece)(void*, int);
};

namespace {

// Candidate locations: $VADAPT_SENTENCEPIECE_PLUGIN, next to the running executable (and its
// parent, for build/tests), the build tree, then the loader's search path.
std::vector<std::string> plugin_candidates() {
  std::vector<std::string> c;
  if (const char* env = std::getenv("VADAPT_SENTENCEPIECE_PLUGIN")) c.push_back(env);
  std::error_code ec;
  auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    c.push_back((exe.parent_path() / "libvadapt_sentencepiece.so").string());
    c.push_back((exe.parent_path().parent_path() / "libvadapt_sentencepiece.so").string());
    c.push_back((exe.parent_path() / "../lib/libvadapt_sentencepiece.so").string());
  }
  c.push_back(VADAPT_SP_PLUGIN_PATH);
  c.push_back("libvadapt_sentencepiece.so");
  return c;
}

// RTLD_DEEPBIND keeps the plugin's protobuf apart from libtorch's copy. The sanitizer runtimes
// refuse it; the libFuzzer target that loads the plugin links no libtorch and defines this.
#ifdef VADAPT_SP_NO_DEEPBIND
constexpr int kDeepBind = 0;
#else
constexpr int kDeepBind = RTLD_DEEPBIND;
#endif

const SentencePiecePlugin& plugin() {
  static SentencePiecePlugin api{};
  static std::string failure;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = nullptr;
    std::string tried;
    for (const auto& path : plugin_candidates()) {
      lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | kDeepBind);
      if (lib) break;
      tried += "\n  " + path + ": " + dlerror();
    }
    if (!lib) {
      failure = "cannot load the SentencePiece plugin libvadapt_sentencepiece.so (set VADAPT_SENTENCEPIECE_PLUGIN):" + tried;
      return;
    }
    auto sym = [&](const char* name) {
      void* p = dlsym(lib, name);
      if (!p) failure = std::string("SentencePiece plugin lacks symbol ") + name;
      return p;
    };
    api.load = reinterpret_cast<decltype(api.load)>(sym("vadapt_sp_load"));
    api.free = reinterpret_cast<decltype(api.free)>(sym("vadapt_sp_free"));
    api.encode = reinterpret_cast<decltype(api.encode)>(sym("vadapt_sp_encode"));
    api.ids = reinterpret_cast<decltype(api.ids)>(sym("vadapt_sp_ids"));
    api.encode_offsets = reinterpret_cast<decltype(api.encode_offsets)>(sym("vadapt_sp_encode_offsets"));
    api.begins = reinterpret_cast<decltype(api.begins)>(sym("vadapt_sp_begins"));
    api.decode = reinterpret_cast<decltype(api.decode)>(sym("vadapt_sp_decode"));
    api.text = reinterpret_cast<decltype(api.text)>(sym("vadapt_sp_text"));
    api.error = reinterpret_cast<decltype(api.error)>(sym("vadapt_sp_error"));
    api.piece_size = reinterpret_cast<decltype(api.piece_size)>(sym("vadapt_sp_piece_size"));
    api.piece_to_id = reinterpret_cast<decltype(api.piece_to_id)>(sym("vadapt_sp_piece_to_id"));
    api.unk_id = reinterpret_cast<decltype(api.unk_id)>(sym("vadapt_sp_unk_id"));
    api.bos_id = reinterpret_cast<decltype(api.bos_id)>(sym("vadapt_sp_bos_id"));
    api.eos_id = reinterpret_cast<decltype(api.eos_id)>(sym("vadapt_sp_eos_id"));
    api.pad_id = reinterpret_cast<decltype(api.pad_id)>(sym("vadapt_sp_pad_id"));
    api.id_to_piece = reinterpret_cast<decltype(api.id_to_piece)>(sym("vadapt_sp_id_to_piece"));
  });
  if (!failure.empty()) throw VadaptError(failure);
  return api;
}

}  // namespace

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& path) : api_(&plugin()) {
  char err[512] = {0};
  handle_ = api_->load(path.c_str(), err, sizeof err);
  if (!handle_) raise(path, "", "cannot load SentencePiece model: ", err);
  source_ = path;
  vocab_size_ = api_->piece_size(handle_);
  bos_id_ = api_->bos_id(handle_);
  eos_id_ = api_->eos_id(handle_);
  pad_id_ = api_->pad_id(handle_);
}

SentencePieceTokenizer::~SentencePieceTokenizer() {
  if (handle_) api_->free(handle_);
}

std::vector<int64_t> SentencePieceTokenizer::encode(const std::string& text, bool add_bos) const {
  std::vector<int64_t> out;
  if (add_bos && add_bos_token_ && bos_id_ >= 0) out.push_back(bos_id_);
  if (text.empty()) return out;
  int64_t n = api_->encode(handle_, text.data(), text.size());
  if (n < 0) raise(source_, "", "encode failed: ", api_->error(handle_));
  const int* ids = api_->ids(handle_);
  out.insert(out.end(), ids, ids + n);
  return out;
}

Tokenizer::Encoding SentencePieceTokenizer::encode_offsets(const std::string& text, bool dummy_prefix) const {
  Encoding e;
  if (text.empty()) return e;
  int64_t n = api_->encode_offsets(handle_, text.data(), text.size(), dummy_prefix ? 1 : 0);
  if (n < 0) raise(source_, "", "encode failed: ", api_->error(handle_));
  const int* ids = api_->ids(handle_);
  const int64_t* begins = api_->begins(handle_);
  e.ids.assign(ids, ids + n);
  e.begins.assign(begins, begins + n);
  return e;
}

std::string SentencePieceTokenizer::decode(const std::vector<int64_t>& ids) const {
  std::vector<int> v;
  v.reserve(ids.size());
  for (auto id : ids)
    if (id >= 0 && id < vocab_size_ && id != bos_id_ && id != eos_id_) v.push_back(static_cast<int>(id));
  int64_t n = api_->decode(handle_, v.data(), v.size());
  if (n < 0) raise(source_, "", "decode failed: ", api_->error(handle_));
  return std::string(api_->text(handle_), static_cast<size_t>(n));
}

int64_t SentencePieceTokenizer::token_to_id(const std::string& token) const {
  int id = api_->piece_to_id(handle_, token.c_str());
  if (id == api_->unk_id(handle_) && token != api_->id_to_piece(handle_, id)) return -1;
  return id;
}

}  // namespace vadapt::text

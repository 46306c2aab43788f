// A thin C interface over libsentencepiece, built as its own shared object and loaded with
// dlopen(RTLD_LOCAL | RTLD_DEEPBIND). Debian's libsentencepiece exports its built-in copy of
// protobuf 3.14; in one symbol scope with libtorch's libprotobuf 3.21 either library binds to
// the other's functions and aborts. Loaded this way, each keeps its own.
#include <sentencepiece_processor.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {
struct Handle {
  sentencepiece::SentencePieceProcessor sp;
  std::string error;
  std::vector<int> ids;
  std::string text;
};
}  // namespace

extern "C" {

void* vadapt_sp_load(const char* path, char* err, size_t err_len) {
  auto* h = new Handle();
  auto st = h->sp.Load(path);
  if (!st.ok()) {
    std::snprintf(err, err_len, "%s", st.ToString().c_str());
    delete h;
    return nullptr;
  }
  return h;
}

void vadapt_sp_free(void* h) { delete static_cast<Handle*>(h); }

// Encodes; returns the number of ids (read them with vadapt_sp_ids) or -1 on error.
int64_t vadapt_sp_encode(void* hp, const char* text, size_t len) {
  auto* h = static_cast<Handle*>(hp);
  h->ids.clear();
  auto st = h->sp.Encode(std::string(text, len), &h->ids);
  if (!st.ok()) {
    h->error = st.ToString();
    return -1;
  }
  return static_cast<int64_t>(h->ids.size());
}

const int* vadapt_sp_ids(void* hp) { return static_cast<Handle*>(hp)->ids.data(); }

// Decodes; returns the byte length (read with vadapt_sp_text) or -1 on error.
int64_t vadapt_sp_decode(void* hp, const int* ids, size_t n) {
  auto* h = static_cast<Handle*>(hp);
  h->text.clear();
  auto st = h->sp.Decode(std::vector<int>(ids, ids + n), &h->text);
  if (!st.ok()) {
    h->error = st.ToString();
    return -1;
  }
  return static_cast<int64_t>(h->text.size());
}

const char* vadapt_sp_text(void* hp) { return static_cast<Handle*>(hp)->text.c_str(); }
const char* vadapt_sp_error(void* hp) { return static_cast<Handle*>(hp)->error.c_str(); }
int vadapt_sp_piece_size(void* hp) { return static_cast<Handle*>(hp)->sp.GetPieceSize(); }
int vadapt_sp_piece_to_id(void* hp, const char* piece) { return static_cast<Handle*>(hp)->sp.PieceToId(piece); }
int vadapt_sp_unk_id(void* hp) { return static_cast<Handle*>(hp)->sp.unk_id(); }
int vadapt_sp_bos_id(void* hp) { return static_cast<Handle*>(hp)->sp.bos_id(); }
int vadapt_sp_eos_id(void* hp) { return static_cast<Handle*>(hp)->sp.eos_id(); }
int vadapt_sp_pad_id(void* hp) { return static_cast<Handle*>(hp)->sp.pad_id(); }
const char* vadapt_sp_id_to_piece(void* hp, int id) {
  auto* h = static_cast<Handle*>(hp);
  h->text = h->sp.IdToPiece(id);
  return h->text.c_str();
}
}

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
  // The same model with normalizer_spec.add_dummy_prefix = false: what Hugging Face's
  // `legacy: false` LlamaTokenizer encodes text after a special token with.
  sentencepiece::SentencePieceProcessor sp_bare;
  bool bare_ok = false;
  std::string error;
  std::vector<int> ids;
  std::vector<int64_t> begins;
  std::string text;
};

// Protobuf wire format, just enough to set one bool: ModelProto field 3 is the NormalizerSpec
// (length-delimited), whose field 3 is add_dummy_prefix. Appending "field 3 = 0" to the
// NormalizerSpec overrides an earlier value (protobuf keeps the last one for scalars).
bool read_varint(const std::string& s, size_t& pos, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64 && pos < s.size(); shift += 7) {
    uint8_t b = static_cast<uint8_t>(s[pos++]);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return true;
  }
  return false;
}
void write_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}
bool without_dummy_prefix(const std::string& in, std::string& out) {
  size_t pos = 0;
  bool found = false;
  while (pos < in.size()) {
    size_t start = pos;
    uint64_t key = 0, len = 0;
    if (!read_varint(in, pos, key)) return false;
    const uint64_t field = key >> 3, wire = key & 7;
    if (wire == 0) {
      if (!read_varint(in, pos, len)) return false;
    } else if (wire == 1) {
      pos += 8;
    } else if (wire == 5) {
      pos += 4;
    } else if (wire == 2) {
      if (!read_varint(in, pos, len) || len > in.size() - pos) return false;
      if (field == 3) {
        std::string spec = in.substr(pos, len);
        spec += std::string("\x18\x00", 2);
        write_varint(out, key);
        write_varint(out, spec.size());
        out += spec;
        pos += len;
        found = true;
        continue;
      }
      pos += len;
    } else {
      return false;
    }
    if (pos > in.size()) return false;
    out.append(in, start, pos - start);
  }
  return found;
}
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
  std::string bare;
  if (without_dummy_prefix(h->sp.serialized_model_proto(), bare)) h->bare_ok = h->sp_bare.LoadFromSerializedProto(bare).ok();
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

// Encodes and records where each piece starts (byte offset into `text`); `dummy_prefix` 0 uses
// the model without its dummy prefix. Returns the number of pieces or -1.
int64_t vadapt_sp_encode_offsets(void* hp, const char* text, size_t len, int dummy_prefix) {
  auto* h = static_cast<Handle*>(hp);
  h->ids.clear();
  h->begins.clear();
  if (!dummy_prefix && !h->bare_ok) {
    h->error = "the model proto could not be rewritten without its dummy prefix";
    return -1;
  }
  const auto spt = (dummy_prefix ? h->sp : h->sp_bare).EncodeAsImmutableProto(std::string(text, len));
  for (const auto& p : spt.pieces()) {
    h->ids.push_back(static_cast<int>(p.id()));
    h->begins.push_back(static_cast<int64_t>(p.begin()));
  }
  return static_cast<int64_t>(h->ids.size());
}

const int64_t* vadapt_sp_begins(void* hp) { return static_cast<Handle*>(hp)->begins.data(); }

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

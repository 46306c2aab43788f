// safetensors reading (validated, mmap) and atomic writing.
#include "io/safetensors.h"
#include "io/torch_bin.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "io/atomic_file.h"
#include "io/json_file.h"

namespace vadapt::io {
namespace {

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // the format's own limit
constexpr int kMaxJsonDepth = 64;

struct DTypeRow {
  const char* name;
  torch::ScalarType type;
};
const DTypeRow kDTypes[] = {
    {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16}, {"F64", torch::kFloat64},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},     {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

// Rejects pathological nesting before handing the header to the JSON parser.
void check_json_depth(const char* p, size_t n, const std::string& file) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < n; ++i) {
    char c = p[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    else if (c == '{' || c == '[') {
      if (++depth > kMaxJsonDepth) raise(file, "header", "JSON nested deeper than ", kMaxJsonDepth, " levels");
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
}

bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > UINT64_MAX / a) return true;
  *out = a * b;
  return false;
}

}  // namespace

torch::ScalarType scalar_type_of(const std::string& st_dtype, const std::string& file, const std::string& key) {
  for (const auto& row : kDTypes)
    if (st_dtype == row.name) return row.type;
  std::string known;
  for (const auto& row : kDTypes) known += std::string(known.empty() ? "" : ", ") + row.name;
  raise(file, key, "unknown dtype '", st_dtype, "' (expected one of ", known, ")");
}

std::string st_dtype_name(torch::ScalarType t) {
  for (const auto& row : kDTypes)
    if (row.type == t) return row.name;
  throw VadaptError(cat("safetensors: no safetensors dtype for torch type ", c10::toString(t)));
}

std::shared_ptr<SafeTensorsFile> SafeTensorsFile::open(const std::string& path) {
  std::shared_ptr<SafeTensorsFile> f(new SafeTensorsFile());
  f->path_ = path;
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) raise(path, "", "cannot open safetensors file: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    raise(path, "", "cannot stat: ", std::strerror(errno));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    raise(path, "", "not a regular file");
  }
  f->size_ = static_cast<size_t>(st.st_size);
  if (f->size_ > 0) {
    void* p = ::mmap(nullptr, f->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      ::close(fd);
      raise(path, "", "mmap failed: ", std::strerror(errno));
    }
    f->base_ = static_cast<const uint8_t*>(p);
    f->mapped_ = true;
  }
  ::close(fd);
  f->self_ = f;
  f->parse();
  return f;
}

std::shared_ptr<SafeTensorsFile> SafeTensorsFile::from_buffer(const std::string& label, std::vector<uint8_t> bytes) {
  std::shared_ptr<SafeTensorsFile> f(new SafeTensorsFile());
  f->path_ = label;
  f->owned_ = std::move(bytes);
  f->base_ = f->owned_.data();
  f->size_ = f->owned_.size();
  f->self_ = f;
  f->parse();
  return f;
}

SafeTensorsFile::~SafeTensorsFile() {
  if (mapped_ && base_) ::munmap(const_cast<uint8_t*>(base_), size_);
}

void SafeTensorsFile::parse() {
  const std::string& file = path_;
  if (size_ < 8) raise(file, "", "file is ", size_, " bytes; a safetensors file starts with an 8-byte header length");
  uint64_t n = 0;
  std::memcpy(&n, base_, 8);  // little-endian hosts only (x86-64, aarch64)
  if (n > kMaxHeaderBytes) raise(file, "header", "header length ", n, " exceeds the 100 MiB limit");
  if (n > size_ - 8) raise(file, "header", "header length ", n, " runs past the end of the ", size_, "-byte file");
  if (n < 2) raise(file, "header", "header length ", n, " is too small for a JSON object");
  const char* h = reinterpret_cast<const char*>(base_ + 8);
  check_json_depth(h, n, file);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(h, h + n);
  } catch (const nlohmann::json::exception& e) {
    raise(file, "header", "header is not valid JSON: ", e.what());
  }
  if (!j.is_object()) raise(file, "header", "header must be a JSON object");
  data_start_ = 8 + n;
  const uint64_t data_size = size_ - data_start_;

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) raise(file, name, "must be an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) raise(file, "__metadata__." + m.key(), "metadata values must be strings");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (!v.is_object()) raise(file, name, "tensor entry must be an object with dtype, shape, data_offsets");
    TensorInfo ti;
    ti.name = name;
    auto dt = v.find("dtype");
    if (dt == v.end() || !dt->is_string()) raise(file, name, "missing string field 'dtype'");
    ti.dtype = dt->get<std::string>();
    torch::ScalarType st = scalar_type_of(ti.dtype, file, name);
    auto sh = v.find("shape");
    if (sh == v.end() || !sh->is_array()) raise(file, name, "missing array field 'shape'");
    if (sh->size() > 16) raise(file, name, "shape has ", sh->size(), " dimensions (at most 16 supported)");
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) raise(file, name, "shape entries must be non-negative integers");
      uint64_t dim = d.get<uint64_t>();
      if (dim > (1ull << 40) || mul_overflows(numel, dim, &numel))
        raise(file, name, "shape ", sh->dump(), " is too large");
      ti.shape.push_back(static_cast<int64_t>(dim));
    }
    auto off = v.find("data_offsets");
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      raise(file, name, "'data_offsets' must be [begin, end] with non-negative integers");
    ti.begin = (*off)[0].get<uint64_t>();
    ti.end = (*off)[1].get<uint64_t>();
    if (ti.begin > ti.end) raise(file, name, "data_offsets begin ", ti.begin, " > end ", ti.end);
    if (ti.end > data_size)
      raise(file, name, "data_offsets end ", ti.end, " is past the data section (", data_size, " bytes)");
    uint64_t nbytes = 0;
    if (mul_overflows(numel, c10::elementSize(st), &nbytes) || nbytes != ti.end - ti.begin)
      raise(file, name, "data_offsets span ", ti.end - ti.begin, " bytes but dtype ", ti.dtype, " and shape ",
            sh->dump(), " need ", numel * c10::elementSize(st));
    index_[name] = tensors_.size();
    tensors_.push_back(std::move(ti));
  }
  // No two tensors may share bytes.
  std::vector<const TensorInfo*> by_offset;
  for (const auto& t : tensors_) by_offset.push_back(&t);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorInfo* a, const TensorInfo* b) { return a->begin < b->begin || (a->begin == b->begin && a->end < b->end); });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const TensorInfo* a = by_offset[i - 1];
    const TensorInfo* b = by_offset[i];
    if (b->begin < a->end && b->end > b->begin)
      raise(file, b->name, "data_offsets [", b->begin, ", ", b->end, ") overlap tensor '", a->name, "' [", a->begin,
            ", ", a->end, ")");
  }
}

const TensorInfo& SafeTensorsFile::info(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) raise(path_, name, "no such tensor");
  return tensors_[it->second];
}

torch::Tensor SafeTensorsFile::tensor(const std::string& name) const {
  const TensorInfo& ti = info(name);
  torch::ScalarType st = scalar_type_of(ti.dtype, path_, name);
  auto opts = torch::TensorOptions().dtype(st).device(torch::kCPU);
  const uint8_t* p = base_ + data_start_ + ti.begin;
  if (ti.end == ti.begin) return torch::empty(ti.shape, opts);
  if (reinterpret_cast<uintptr_t>(p) % c10::elementSize(st) != 0) {
    auto t = torch::empty(ti.shape, opts);
    std::memcpy(t.data_ptr(), p, ti.end - ti.begin);
    return t;
  }
  auto keep = self_.lock();  // the view keeps the mapping alive
  return torch::from_blob(const_cast<uint8_t*>(p), ti.shape, [keep](void*) {}, opts);
}

TensorSource TensorSource::from_file(std::shared_ptr<SafeTensorsFile> file) {
  TensorSource s;
  s.description_ = file->path();
  for (const auto& t : file->tensors()) s.where_[t.name] = 0;
  s.files_.push_back(std::move(file));
  return s;
}

namespace {
// A safetensors file, or a PyTorch .bin / .pt / .pth (read without pickle code execution and
// held in memory in safetensors form).
std::shared_ptr<SafeTensorsFile> open_weights_file(const std::string& path) {
  const std::string ext = std::filesystem::path(path).extension().string();
  if (ext == ".bin" || ext == ".pt" || ext == ".pth") return SafeTensorsFile::from_buffer(path, safetensors_bytes(read_torch_bin(path)));
  return SafeTensorsFile::open(path);
}
}  // namespace

TensorSource TensorSource::open(const std::string& path_or_dir) {
  namespace fs = std::filesystem;
  fs::path p(path_or_dir);
  if (!fs::is_directory(p)) return from_file(open_weights_file(path_or_dir));
  if (fs::exists(p / "model.safetensors")) return from_file(SafeTensorsFile::open((p / "model.safetensors").string()));
  fs::path index = p / "model.safetensors.index.json";
  if (!fs::exists(index) && fs::exists(p / "pytorch_model.bin")) return from_file(open_weights_file((p / "pytorch_model.bin").string()));
  if (!fs::exists(index)) index = p / "pytorch_model.bin.index.json";
  if (!fs::exists(index))
    raise(path_or_dir, "", "no model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json in this folder");
  nlohmann::json j = read_json(index.string());
  auto wm = j.find("weight_map");
  if (wm == j.end() || !wm->is_object()) raise(index.string(), "weight_map", "missing object 'weight_map'");
  TensorSource s;
  s.description_ = index.string();
  std::map<std::string, size_t> file_ids;
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it.value().is_string()) raise(index.string(), "weight_map." + it.key(), "must be a file name");
    std::string shard = it.value().get<std::string>();
    if (shard.find('/') != std::string::npos || shard.find("..") != std::string::npos)
      raise(index.string(), "weight_map." + it.key(), "shard name '", shard, "' must be a plain file name");
    auto fit = file_ids.find(shard);
    if (fit == file_ids.end()) {
      fit = file_ids.emplace(shard, s.files_.size()).first;
      s.files_.push_back(open_weights_file((p / shard).string()));
    }
    if (!s.files_[fit->second]->contains(it.key()))
      raise(index.string(), "weight_map." + it.key(), "shard '", shard, "' does not hold this tensor");
    s.where_[it.key()] = fit->second;
  }
  return s;
}

std::vector<std::string> TensorSource::names() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const TensorInfo& TensorSource::info(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) raise(description_, name, "no such tensor");
  return files_[it->second]->info(name);
}

torch::Tensor TensorSource::tensor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) raise(description_, name, "no such tensor");
  return files_[it->second]->tensor(name);
}

const std::string& TensorSource::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) return description_;
  return files_[it->second]->path();
}

namespace {
// The padded JSON header and the CPU tensors in file order.
std::string header_of(const std::string& label, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata, std::vector<torch::Tensor>& cpu) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (header.contains(name)) raise(label, name, "duplicate tensor name");
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    uint64_t nbytes = static_cast<uint64_t>(c.numel()) * c.element_size();
    header[name] = {{"dtype", st_dtype_name(c.scalar_type())},
                    {"shape", c.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    cpu.push_back(c);
  }
  std::string h = header.dump();
  while ((h.size() + 8) % 8 != 0) h.push_back(' ');
  return h;
}
}  // namespace

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> cpu;
  const std::string h = header_of(path, tensors, metadata, cpu);
  uint64_t n = h.size();
  write_file_atomic(path, [&](int fd) {
    write_all(fd, &n, 8, path);
    write_all(fd, h.data(), h.size(), path);
    for (const auto& c : cpu) write_all(fd, c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size(), path);
  });
}

std::vector<uint8_t> safetensors_bytes(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  std::vector<torch::Tensor> cpu;
  const std::string h = header_of("safetensors buffer", tensors, {}, cpu);
  uint64_t n = h.size();
  std::vector<uint8_t> out(8 + h.size());
  std::memcpy(out.data(), &n, 8);
  std::memcpy(out.data() + 8, h.data(), h.size());
  for (const auto& c : cpu) {
    const auto* b = static_cast<const uint8_t*>(c.data_ptr());
    out.insert(out.end(), b, b + static_cast<size_t>(c.numel()) * c.element_size());
  }
  return out;
}

}  // namespace vadapt::io

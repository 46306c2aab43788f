// safetensors reader (mmap, zero-copy views where alignment allows) and atomic writer.
// Format: https://github.com/huggingface/safetensors — u64 LE header length, JSON header
// {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {str: str}}, then raw data.
// Every field of an untrusted header is validated before any byte of data is touched.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace vadapt::io {

struct TensorInfo {
  std::string name;
  std::string dtype;  // safetensors spelling: F32, F16, BF16, F64, I64, I32, I16, I8, U8, BOOL
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets relative to the data section
  uint64_t end = 0;
};

// The torch dtype and byte size for a safetensors dtype name; throws for an unknown name.
torch::ScalarType scalar_type_of(const std::string& st_dtype, const std::string& file, const std::string& key);
std::string st_dtype_name(torch::ScalarType t);

class SafeTensorsFile {
 public:
  // Maps the file read-only (copy-on-write) and validates its header.
  static std::shared_ptr<SafeTensorsFile> open(const std::string& path);
  // Parses an in-memory buffer (used by the fuzz tests); `label` names it in errors.
  static std::shared_ptr<SafeTensorsFile> from_buffer(const std::string& label, std::vector<uint8_t> bytes);
  ~SafeTensorsFile();
  SafeTensorsFile(const SafeTensorsFile&) = delete;
  SafeTensorsFile& operator=(const SafeTensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  // A CPU tensor over the mapped bytes (zero-copy when aligned; a copy otherwise). The tensor
  // keeps the mapping alive.
  torch::Tensor tensor(const std::string& name) const;

 private:
  SafeTensorsFile() = default;
  void parse();

  std::string path_;
  const uint8_t* base_ = nullptr;  // whole file
  size_t size_ = 0;
  bool mapped_ = false;
  std::vector<uint8_t> owned_;
  uint64_t data_start_ = 0;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
  std::weak_ptr<SafeTensorsFile> self_;
};

// A checkpoint made of one or more safetensors files: a single file, a folder with
// model.safetensors, or a folder with model.safetensors.index.json (sharded). PyTorch .bin /
// .pt files (and pytorch_model.bin[.index.json] folders) are read through io/torch_bin.h.
class TensorSource {
 public:
  static TensorSource open(const std::string& path_or_dir);
  static TensorSource from_file(std::shared_ptr<SafeTensorsFile> file);

  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const TensorInfo& info(const std::string& name) const;
  torch::Tensor tensor(const std::string& name) const;
  // The file a tensor lives in (for error messages).
  const std::string& file_of(const std::string& name) const;
  const std::string& description() const { return description_; }

 private:
  std::vector<std::shared_ptr<SafeTensorsFile>> files_;
  std::map<std::string, size_t> where_;
  std::string description_;
};

// The bytes of a safetensors file holding these tensors (in memory).
std::vector<uint8_t> safetensors_bytes(const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

// Writes tensors (any device/dtype; made contiguous on CPU) atomically: temp file, fsync, rename.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace vadapt::io

// Cache of frozen vision features. The tower never trains, so its output for an image is
// computed once and reused across epochs and runs. The key is the SHA-256 of the image file's
// bytes together with the encoder identity (tower folder, its config.json and weights file
// sizes/hashes of the config), the preprocessing, the feature layer and the dtype: change any
// of them and the entry is simply not found. Entries live in memory and, with a folder, on disk
// as <key>.safetensors (written atomically, with the SHA-256 of the feature bytes in its
// metadata: an entry that is truncated or does not match its checksum is recomputed, never used).
#pragma once

#include <torch/torch.h>

#include <functional>
#include <string>
#include <unordered_map>
#include <vector>

namespace vadapt::vision {

std::string sha256_hex(const std::string& bytes);
std::string sha256_file(const std::string& path);

class FeatureCache {
 public:
  // `encoder_key`: a string identifying encoder + preprocessing + layer + dtype.
  FeatureCache(std::string dir, std::string encoder_key, int64_t max_memory_bytes = int64_t(2) << 30);

  // Features (M, N, C) for the images, computing the misses in one call of
  // `compute(paths) -> (K, N, C)`.
  torch::Tensor get(const std::vector<std::string>& image_paths,
                    const std::function<torch::Tensor(const std::vector<std::string>&)>& compute);
  int64_t hits() const { return hits_; }
  int64_t misses() const { return misses_; }
  int64_t damaged() const { return damaged_; }  // disk entries found damaged and recomputed

 private:
  std::string key_for(const std::string& path);
  std::string dir_, encoder_key_;
  int64_t max_memory_, memory_ = 0;
  std::unordered_map<std::string, torch::Tensor> mem_;
  std::unordered_map<std::string, std::string> path_keys_;  // path -> key, per process (content assumed stable)
  int64_t hits_ = 0, misses_ = 0, damaged_ = 0;
};

}  // namespace vadapt::vision

// Content-keyed vision feature cache (memory + safetensors on disk).
#include "vision/feature_cache.h"

#include <openssl/evp.h>

#include <filesystem>

#include "common/error.h"
#include "io/atomic_file.h"
#include "common/log.h"
#include "io/safetensors.h"

namespace vadapt::vision {

std::string sha256_hex(const std::string& bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr)) throw VadaptError("sha256 failed");
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) out += hex[md[i] >> 4], out += hex[md[i] & 15];
  return out;
}

std::string sha256_file(const std::string& path) { return sha256_hex(io::read_text_file(path)); }

namespace {
// SHA-256 of a contiguous CPU tensor's bytes (the checksum a disk entry carries).
std::string bytes_sha256(const torch::Tensor& t) {
  auto c = t.contiguous();
  return sha256_hex(std::string(static_cast<const char*>(c.data_ptr()), c.nbytes()));
}
}  // namespace

FeatureCache::FeatureCache(std::string dir, std::string encoder_key, int64_t max_memory_bytes)
    : dir_(std::move(dir)), encoder_key_(std::move(encoder_key)), max_memory_(max_memory_bytes) {
  if (!dir_.empty()) std::filesystem::create_directories(dir_);
}

std::string FeatureCache::key_for(const std::string& path) {
  auto it = path_keys_.find(path);
  if (it != path_keys_.end()) return it->second;
  std::string key = sha256_hex(sha256_file(path) + "|" + encoder_key_);
  path_keys_[path] = key;
  return key;
}

torch::Tensor FeatureCache::get(const std::vector<std::string>& paths,
                                const std::function<torch::Tensor(const std::vector<std::string>&)>& compute) {
  std::vector<torch::Tensor> out(paths.size());
  std::vector<std::string> miss_paths;
  std::vector<size_t> miss_idx;
  std::vector<std::string> miss_keys;
  for (size_t i = 0; i < paths.size(); ++i) {
    std::string key = key_for(paths[i]);
    auto m = mem_.find(key);
    if (m != mem_.end()) {
      out[i] = m->second;
      ++hits_;
      continue;
    }
    std::string file = dir_.empty() ? "" : dir_ + "/" + key + ".safetensors";
    if (!file.empty() && std::filesystem::exists(file)) {
      std::string why;
      try {
        auto st = io::SafeTensorsFile::open(file);
        auto t = st->tensor("features").clone();
        auto sum = st->metadata().find("sha256");
        if (sum == st->metadata().end()) why = "no checksum";
        else if (sum->second != bytes_sha256(t)) why = "checksum mismatch";
        if (why.empty()) {
          out[i] = t;
          ++hits_;
          if (memory_ < max_memory_) mem_[key] = out[i], memory_ += out[i].numel() * out[i].element_size();
          continue;
        }
      } catch (const VadaptError& e) {
        why = e.what();
      }
      // A damaged entry (truncated, flipped bits, written by a build without checksums) is never
      // used: it is recomputed and rewritten.
      log_warn(cat("feature cache: ", file, " is damaged (", why, "); recomputing it"));
      ++damaged_;
    }
    miss_paths.push_back(paths[i]);
    miss_idx.push_back(i);
    miss_keys.push_back(key);
  }
  if (!miss_paths.empty()) {
    auto feats = compute(miss_paths).to(torch::kCPU).contiguous();  // (K, N, C)
    for (size_t j = 0; j < miss_paths.size(); ++j) {
      auto f = feats[static_cast<int64_t>(j)].clone();
      out[miss_idx[j]] = f;
      ++misses_;
      if (memory_ < max_memory_) mem_[miss_keys[j]] = f, memory_ += f.numel() * f.element_size();
      if (!dir_.empty()) io::write_safetensors(dir_ + "/" + miss_keys[j] + ".safetensors", {{"features", f}}, {{"sha256", bytes_sha256(f)}});
    }
  }
  return torch::stack(out);  // (M, N, C)
}

}  // namespace vadapt::vision

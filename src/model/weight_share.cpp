// Shared frozen weights: registry keyed by folder / dtype / device.
#include "model/weight_share.h"

#include <filesystem>
#include <map>
#include <mutex>
#include <set>

#include "common/error.h"

namespace vadapt::model {
namespace {
struct Registry {
  std::mutex mu;
  bool on = false;
  std::map<std::string, std::map<std::string, torch::Tensor>> by_key;  // detached views: set_data on a model never reaches them
  std::set<const void*> storages;
};
Registry& reg() {
  static Registry r;
  return r;
}
}  // namespace

void WeightShare::enable(bool on) {
  std::lock_guard<std::mutex> l(reg().mu);
  reg().on = on;
}

bool WeightShare::enabled() {
  std::lock_guard<std::mutex> l(reg().mu);
  return reg().on;
}

std::string WeightShare::key(const std::string& dir, const std::string& prefix, torch::ScalarType dtype, torch::Device device) {
  std::error_code ec;
  auto canon = std::filesystem::weakly_canonical(dir, ec);
  return cat(ec ? dir : canon.string(), "|", prefix, "|", c10::toString(dtype), "|", device.str());
}

bool WeightShare::attach(torch::nn::Module& m, const std::string& key) {
  std::lock_guard<std::mutex> l(reg().mu);
  if (!reg().on) return false;
  auto it = reg().by_key.find(key);
  if (it == reg().by_key.end()) return false;
  torch::NoGradGuard ng;
  for (auto& p : m.named_parameters()) {
    auto t = it->second.find(p.key());
    if (t == it->second.end() || t->second.sizes() != p.value().sizes())
      throw VadaptError(cat("shared weights of ", key, ": no tensor ", p.key(), " of shape ", p.value().sizes()));
    p.value().set_data(t->second);
  }
  return true;
}

void WeightShare::add(const torch::nn::Module& m, const std::string& key) {
  std::lock_guard<std::mutex> l(reg().mu);
  if (!reg().on || reg().by_key.count(key)) return;
  auto& dst = reg().by_key[key];
  for (const auto& p : m.named_parameters()) {
    dst[p.key()] = p.value().detach();
    reg().storages.insert(p.value().storage().data());
  }
}

void WeightShare::unshare(torch::Tensor& t) {
  std::lock_guard<std::mutex> l(reg().mu);
  if (!t.defined() || !t.has_storage() || !reg().storages.count(t.storage().data())) return;
  torch::NoGradGuard ng;
  t.set_data(t.detach().clone());
}

int64_t WeightShare::bytes() {
  std::lock_guard<std::mutex> l(reg().mu);
  int64_t n = 0;
  for (const auto& [k, ts] : reg().by_key)
    for (const auto& [name, t] : ts) n += t.numel() * static_cast<int64_t>(t.element_size());
  return n;
}

void WeightShare::clear() {
  std::lock_guard<std::mutex> l(reg().mu);
  reg().by_key.clear();
  reg().storages.clear();
}

}  // namespace vadapt::model

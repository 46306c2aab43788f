// Frozen base weights held once for several models loaded from the same folder (serving several
// adapters on one base). Off unless enabled (`vadapt serve` turns it on; training never shares).
// The first load of a folder / dtype / device registers its parameters; later loads of the same
// key point their parameters at those tensors (no file read, no copy). A tensor that a method
// trains or overwrites (LLaVA full tuning, V2's norms, a PaLM2-VAdapter decoder, loaded adapter
// weights) is given its own storage first (unshare), so no model ever writes into shared weights.
#pragma once

#include <torch/torch.h>

#include <string>

namespace vadapt::model {

class WeightShare {
 public:
  static void enable(bool on);
  static bool enabled();
  static std::string key(const std::string& dir, const std::string& prefix, torch::ScalarType dtype, torch::Device device);
  // True when `key` is registered: `m`'s parameters now alias the registered tensors.
  static bool attach(torch::nn::Module& m, const std::string& key);
  // Registers a freshly loaded module's parameters under `key`.
  static void add(const torch::nn::Module& m, const std::string& key);
  // Gives `t` (a parameter handle) its own storage when it shares the registered storage.
  static void unshare(torch::Tensor& t);
  static int64_t bytes();  // registered bytes (held once)
  static void clear();     // forget everything registered (tests)
};

}  // namespace vadapt::model

// Registers a child under a dotted HF path ("attention.attention.query"), creating plain
// namespace modules for the intermediate names, so parameter names equal checkpoint names.
#pragma once

#include <torch/torch.h>

#include <string>

namespace vadapt::model {

torch::nn::Module& namespace_module(torch::nn::Module& root, const std::string& dotted_path);

template <typename ModuleHolder>
ModuleHolder register_at(torch::nn::Module& root, const std::string& dotted_path, ModuleHolder child) {
  auto dot = dotted_path.rfind('.');
  if (dot == std::string::npos) return root.register_module(dotted_path, child);
  return namespace_module(root, dotted_path.substr(0, dot)).register_module(dotted_path.substr(dot + 1), child);
}

}  // namespace vadapt::model

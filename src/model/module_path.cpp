// Dotted-path registration of child modules.
#include "model/module_path.h"

namespace vadapt::model {

torch::nn::Module& namespace_module(torch::nn::Module& root, const std::string& path) {
  torch::nn::Module* cur = &root;
  size_t start = 0;
  while (start <= path.size()) {
    size_t dot = path.find('.', start);
    std::string name = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    auto children = cur->named_children();
    auto* found = children.find(name);
    if (found) {
      cur = found->get();
    } else {
      cur = cur->register_module(name, std::make_shared<torch::nn::Module>()).get();
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return *cur;
}

}  // namespace vadapt::model

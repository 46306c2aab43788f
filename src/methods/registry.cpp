// Method registry: one line per method.
#include "methods/registry.h"

#include <functional>
#include <map>

#include "common/error.h"
#include "methods/llama_adapter_v1.h"
#include "methods/lavin.h"
#include "methods/llama_adapter_v2.h"
#include "methods/llava.h"
#include "methods/palm2_vadapter.h"

namespace vadapt::methods {
namespace {
const std::vector<std::pair<std::string, std::function<std::unique_ptr<Method>()>>>& table() {
  static const std::vector<std::pair<std::string, std::function<std::unique_ptr<Method>()>>> t = {
      {"llava", [] { return std::make_unique<Llava>(); }},
      {"llama_adapter_v1", [] { return std::make_unique<LlamaAdapterV1>(); }},
      {"llama_adapter_v2", [] { return std::make_unique<LlamaAdapterV2>(); }},
      {"lavin", [] { return std::make_unique<Lavin>(); }},
      {"palm2_vadapter", [] { return std::make_unique<Palm2VAdapter>(); }},
  };
  return t;
}
}  // namespace

std::unique_ptr<Method> create(const std::string& name, const std::string& where) {
  for (const auto& [n, make] : table())
    if (n == name) return make();
  std::string all;
  for (const auto& n : names()) all += (all.empty() ? "" : ", ") + n;
  throw VadaptError(cat(where, ": unknown method '", name, "' (implemented: ", all, ")"));
}

std::optional<ReleaseFolder> read_release(const std::string& dir, const FolderOverrides& o) {
  for (const auto& e : table())
    if (auto r = e.second()->read_release(dir, o)) return r;
  return std::nullopt;
}

void check_images_per_input(const Method& m, size_t images, const std::string& what, const std::string& unit) {
  if (images <= 1 || m.multi_image()) return;
  std::string multi;
  for (const auto& e : table())
    if (e.second()->multi_image()) multi += (multi.empty() ? "" : ", ") + e.first;
  throw VadaptError(cat(what, ": ", images, " images for one <image>, but method ", m.name(), " reads one image per ", unit,
                        " (multi-image methods: ", multi, ")"));
}

std::vector<std::string> names() {
  std::vector<std::string> out;
  for (const auto& e : table()) out.push_back(e.first);
  return out;
}

}  // namespace vadapt::methods

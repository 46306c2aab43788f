// Strict one-to-one loading of safetensors into modules registered under the HF names.
#include "model/load.h"

#include <set>
#include <sstream>

#include "common/error.h"

namespace vadapt::model {
namespace {
bool ignored(const std::string& name, const std::vector<std::string>& ignore) {
  for (const auto& pat : ignore) {
    if (!pat.empty() && pat.back() == '.' && name.rfind(pat, 0) == 0) return true;
    if (name.size() >= pat.size() && name.compare(name.size() - pat.size(), pat.size(), pat) == 0) return true;
  }
  return false;
}
std::string shape_str(c10::IntArrayRef s) {
  std::ostringstream os;
  os << s;
  return os.str();
}
}  // namespace

void load_strict(torch::nn::Module& m, const io::TensorSource& src, const std::vector<std::string>& ignore,
                 const std::string& prefix, const std::set<std::string>& skip) {
  torch::NoGradGuard ng;
  std::vector<std::string> missing, unexpected, bad;
  std::set<std::string> wanted;
  auto params = m.named_parameters(true);
  auto buffers = m.named_buffers(true);
  auto visit = [&](const std::string& local, torch::Tensor& dst) {
    if (skip.count(local)) return;
    std::string name = prefix + local;
    wanted.insert(name);
    if (!src.contains(name)) {
      missing.push_back(name);
      return;
    }
    const auto& info = src.info(name);
    torch::ScalarType st = io::scalar_type_of(info.dtype, src.file_of(name), name);
    if (c10::IntArrayRef(info.shape) != dst.sizes()) {
      bad.push_back(name + ": shape " + shape_str(info.shape) + " in file, expected " + shape_str(dst.sizes()));
      return;
    }
    if (c10::isFloatingType(dst.scalar_type()) != c10::isFloatingType(st)) {
      bad.push_back(name + ": dtype " + info.dtype + " in file, expected a " +
                    (c10::isFloatingType(dst.scalar_type()) ? "floating-point" : "integer") + " tensor");
      return;
    }
    dst.copy_(src.tensor(name));
  };
  for (auto& p : params) visit(p.key(), p.value());
  for (auto& b : buffers) visit(b.key(), b.value());
  for (const auto& n : src.names())
    if (!wanted.count(n) && !ignored(n, ignore)) unexpected.push_back(n);
  if (missing.empty() && unexpected.empty() && bad.empty()) return;
  std::ostringstream os;
  os << "checkpoint does not match the model";
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << "\n  " << what << " (" << v.size() << "):";
    for (size_t i = 0; i < v.size() && i < 20; ++i) os << "\n    " << v[i];
    if (v.size() > 20) os << "\n    ... and " << v.size() - 20 << " more";
  };
  list("missing tensors", missing);
  list("unexpected tensors", unexpected);
  list("mismatched tensors", bad);
  throw VadaptError(src.description(), "", os.str());
}

ParamCount count_parameters(const torch::nn::Module& m) {
  ParamCount c;
  for (const auto& p : m.parameters(true)) {
    c.total += p.numel();
    c.bytes += p.numel() * p.element_size();
    if (p.requires_grad()) c.trainable += p.numel();
  }
  return c;
}

}  // namespace vadapt::model

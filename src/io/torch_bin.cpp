// torch.save files through libtorch's unpickler (no Python, no code execution).
#include "io/torch_bin.h"

#include <torch/serialize.h>

#include <fstream>
#include <iterator>

#include "common/error.h"
#include "io/atomic_file.h"

namespace vadapt::io {

std::vector<std::pair<std::string, torch::Tensor>> read_torch_bin_bytes(const std::string& label, const std::vector<char>& bytes) {
  if (bytes.size() < 4 || bytes[0] != 'P' || bytes[1] != 'K')
    raise(label, "", "not a zip archive: PyTorch weights are read in torch.save's zip format (PyTorch >= 1.6); re-save with "
                     "torch.save(state_dict, path) from a recent PyTorch, or as safetensors");
  c10::IValue v;
  try {
    v = torch::pickle_load(bytes);
  } catch (const std::exception& e) {  // c10::Error, and std::out_of_range etc. on corrupt data
    const auto* ce = dynamic_cast<const c10::Error*>(&e);
    std::string what = ce ? ce->what_without_backtrace() : e.what();
    if (what.size() > 300) what = what.substr(0, 300) + "...";
    raise(label, "", "cannot read it as a torch.save state dict (truncated, corrupt, or a pickle of something other than tensors): ",
          what);
  }
  if (!v.isGenericDict()) raise(label, "", "expected a mapping of names to tensors (a state dict), found ", v.tagKind());
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& e : v.toGenericDict()) {
    if (!e.key().isString()) raise(label, "", "a state-dict key is a ", e.key().tagKind(), ", expected a string");
    const std::string name = e.key().toStringRef();
    if (!e.value().isTensor()) raise(label, name, "expected a tensor, found ", e.value().tagKind());
    out.emplace_back(name, e.value().toTensor());
  }
  return out;
}

std::vector<std::pair<std::string, torch::Tensor>> read_torch_bin(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) raise(path, "", "cannot open");
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return read_torch_bin_bytes(path, bytes);
}

void write_torch_bin(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  c10::Dict<std::string, at::Tensor> d;
  for (const auto& [name, t] : tensors) {
    if (d.contains(name)) raise(path, name, "duplicate tensor name");
    d.insert(name, t.detach().to(torch::kCPU).contiguous());
  }
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(d));
  write_file_atomic(path, [&](int fd) { write_all(fd, bytes.data(), bytes.size(), path); });
}

}  // namespace vadapt::io

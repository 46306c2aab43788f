// PyTorch `.bin` / `.pt` weight files (torch.save of a state dict, the zip format of PyTorch >=
// 1.6): read with libtorch's own unpickler, which knows only tensor and container types and
// never runs code from the file; anything but a mapping of names to tensors is refused.
// Written with torch::pickle_save, which torch.load reads.
#pragma once

#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

namespace vadapt::io {

// Tensors of a torch.save'd state dict, in file order. Errors name the file: not a zip archive
// (including the pre-1.6 format), truncated or corrupt, a pickle that needs anything beyond
// tensors and dicts (e.g. a callable), or a value that is not a tensor.
std::vector<std::pair<std::string, torch::Tensor>> read_torch_bin(const std::string& path);
// Same, from bytes; `label` names them in errors.
std::vector<std::pair<std::string, torch::Tensor>> read_torch_bin_bytes(const std::string& label, const std::vector<char>& bytes);

// Writes a state dict torch.load reads (atomically: temp file, fsync, rename).
void write_torch_bin(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors);

}  // namespace vadapt::io

// Atomic file writes: data goes to a temp file beside the target, is fsync'ed, then renamed
// over the target, so a crash or kill never leaves a half-written file under the real name.
#pragma once

#include <functional>
#include <string>

namespace vadapt::io {

// Calls `write(fd)` on a fresh temp file next to `path`, then fsyncs and renames it to `path`.
void write_file_atomic(const std::string& path, const std::function<void(int fd)>& write);
void write_text_atomic(const std::string& path, const std::string& text);
void write_all(int fd, const void* data, size_t n, const std::string& path);
// Removes a file or folder tree (no error when absent); returns false if something could not be
// removed. POSIX nftw, not std::filesystem::remove_all: pip's CUDA libtorch exports its own
// std::filesystem::remove_all, which crashes when called from code built with another libstdc++.
bool remove_tree(const std::string& path);
std::string read_text_file(const std::string& path);

}  // namespace vadapt::io

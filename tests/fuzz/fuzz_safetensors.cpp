// libFuzzer target: safetensors files (header JSON, dtypes, shapes, data offsets against the
// file's size), read from memory and from a file (mmap); every tensor that opens is read whole.
// Every input must load or raise VadaptError; ASan + UBSan catch memory errors.
#include "common/error.h"
#include "fuzz_common.h"
#include "io/safetensors.h"

namespace {
void read_all(const vadapt::io::SafeTensorsFile& f) {
  for (const auto& t : f.tensors()) (void)f.tensor(t.name).sum().item<double>();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    read_all(*vadapt::io::SafeTensorsFile::from_buffer("input", std::vector<uint8_t>(data, data + size)));
  } catch (const vadapt::VadaptError&) {
  }
  try {
    read_all(*vadapt::io::SafeTensorsFile::open(vadapt::fuzz::write_input("model.safetensors", data, size)));
  } catch (const vadapt::VadaptError&) {
  }
  return 0;
}

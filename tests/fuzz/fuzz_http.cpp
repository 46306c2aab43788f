// libFuzzer target: the request bodies of `vadapt serve` (/v1/chat/completions and
// /v1/completions: JSON, messages, content parts, sampling fields, images as data: URLs) and the
// response JSON of text a model may emit (any bytes). Every body must parse or raise ApiError
// with a 4xx status; ASan + UBSan catch memory errors.
#include <filesystem>

#include "common/error.h"
#include "fuzz_common.h"
#include "serve/api.h"

using namespace vadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static int runs = 0;
  serve::Limits limits;
  limits.max_image_bytes = 64 << 10;
  limits.max_image_pixels = 1 << 16;
  limits.image_dir = fuzz::scratch_dir() + "/images";
  if (++runs % 1000 == 0) std::filesystem::remove_all(limits.image_dir);  // received images are stored; bound the disk
  const std::string body(reinterpret_cast<const char*>(data), size);
  for (const bool chat : {true, false}) {
    try {
      auto r = serve::parse_request(body, chat, limits, "default");
      (void)serve::dump(serve::completion_json(r, "id", 0, body, "stop", 1, 2));
      (void)serve::stream_chunk(r, "id", 0, body, true, "");
    } catch (const serve::ApiError& e) {
      if (e.status < 400 || e.status >= 500) __builtin_trap();
      (void)serve::dump(e.body());
    }
  }
  return 0;
}

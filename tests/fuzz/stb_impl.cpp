// stb's decoders and PNG writer compiled into the fuzz target (from Debian's libstb-dev headers),
// so libFuzzer's coverage and the sanitizers see inside them.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>

// Writes the image fuzz seeds in tests/fuzz/seeds/image (tiny PNG / BMP / JPEG / WebP images of
// 1, 3 and 4 channels made by stb_image_write and libwebp); kept for regenerating them:
//   g++ -I/usr/include/stb tests/fuzz/make_image_seeds.cpp -o /tmp/seeds -lwebp && /tmp/seeds tests/fuzz/seeds/image
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image_write.h>
#include <webp/encode.h>
#include <cstdio>
#include <vector>
#include <string>
int main(int, char** argv) {
  std::string d = argv[1];
  for (int k = 0; k < 2; ++k) {
    int w = k ? 13 : 8, h = k ? 7 : 8;
    for (int c : {1, 3, 4}) {
      std::vector<unsigned char> px(w * h * c);
      for (size_t i = 0; i < px.size(); ++i) px[i] = (unsigned char)(i * 37 + k * 11);
      std::string b = d + "/s" + std::to_string(k) + "c" + std::to_string(c);
      stbi_write_png((b + ".png").c_str(), w, h, c, px.data(), w * c);
      if (c != 4) stbi_write_bmp((b + ".bmp").c_str(), w, h, c, px.data());
      stbi_write_jpg((b + ".jpg").c_str(), w, h, c, px.data(), 60);
      if (c == 3) {
        uint8_t* out = nullptr;
        size_t n = WebPEncodeRGB(px.data(), w, h, w * 3, 60, &out);
        FILE* f = fopen((b + ".webp").c_str(), "wb"); fwrite(out, 1, n, f); fclose(f); WebPFree(out);
        n = WebPEncodeLosslessRGB(px.data(), w, h, w * 3, &out);
        f = fopen((b + "l.webp").c_str(), "wb"); fwrite(out, 1, n, f); fclose(f); WebPFree(out);
      }
    }
  }
}

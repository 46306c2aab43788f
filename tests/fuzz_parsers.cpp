// Randomized fuzzing of the parsers of untrusted files (safetensors headers, config.json) built
// with AddressSanitizer + UBSan: every mutated input must parse or raise VadaptError, with no
// memory error, crash or hang.
#include <gtest/gtest.h>

#include <random>

#include "common/error.h"
#include "io/hf_config.h"
#include "io/safetensors.h"

extern "C" const char* __asan_default_options() { return "detect_leaks=0:allocator_may_return_null=1"; }

using namespace vadapt;

namespace {
std::vector<uint8_t> mutate(std::vector<uint8_t> bytes, std::mt19937& rng) {
  int edits = 1 + static_cast<int>(rng() % 6);
  for (int e = 0; e < edits && !bytes.empty(); ++e) {
    size_t pos = rng() % bytes.size();
    switch (rng() % 5) {
      case 0: bytes[pos] = static_cast<uint8_t>(rng()); break;
      case 1: bytes.resize(pos); break;
      case 2: bytes.insert(bytes.begin() + static_cast<long>(pos), static_cast<uint8_t>("{}[]\",:-0123456789eE."[rng() % 22])); break;
      case 3: bytes.erase(bytes.begin() + static_cast<long>(pos)); break;
      default: {
        size_t len = std::min<size_t>(rng() % 16, bytes.size() - pos);
        bytes.insert(bytes.end(), bytes.begin() + static_cast<long>(pos), bytes.begin() + static_cast<long>(pos + len));
      }
    }
  }
  return bytes;
}
}  // namespace

TEST(FuzzParsers, SafetensorsHeaders) {
  std::string header =
      R"({"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("b":{"dtype":"BF16","shape":[4],"data_offsets":[24,32]},"c":{"dtype":"I64","shape":[],"data_offsets":[32,40]}})";
  std::vector<uint8_t> base(8 + header.size() + 40, 0);
  uint64_t n = header.size();
  std::memcpy(base.data(), &n, 8);
  std::memcpy(base.data() + 8, header.data(), header.size());
  std::mt19937 rng(7);
  int ok = 0, rejected = 0;
  for (int it = 0; it < 20000; ++it) {
    auto bytes = mutate(base, rng);
    try {
      auto f = io::SafeTensorsFile::from_buffer("fuzz", bytes);
      for (const auto& t : f->tensors()) (void)f->tensor(t.name).sum();
      ++ok;
    } catch (const VadaptError&) {
      ++rejected;
    }
  }
  EXPECT_EQ(ok + rejected, 20000);
  EXPECT_GT(rejected, 1000);
}

TEST(FuzzParsers, ModelConfigs) {
  std::string cfg =
      R"({"model_type":"llama","hidden_size":64,"intermediate_size":172,"num_hidden_layers":5,"num_attention_heads":8,)"
      R"("num_key_value_heads":4,"vocab_size":512,"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,)"
      R"("high_freq_factor":4.0,"original_max_position_embeddings":8192},"eos_token_id":[2,3]})";
  std::string vit = R"({"model_type":"vit","architectures":["ViTForImageClassification"],"hidden_size":192,"id2label":{"0":"a"}})";
  std::string clip = R"({"model_type":"clip","projection_dim":512,"vision_config":{"hidden_size":64,"patch_size":8,"image_size":32}})";
  std::mt19937 rng(11);
  int parsed = 0;
  for (const std::string& base_s : {cfg, vit, clip}) {
    std::vector<uint8_t> base(base_s.begin(), base_s.end());
    for (int it = 0; it < 5000; ++it) {
      auto bytes = mutate(base, rng);
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(bytes.begin(), bytes.end());
      } catch (const nlohmann::json::exception&) {
        continue;
      }
      try {
        switch (io::detect_model_kind(j, "fuzz.json")) {
          case io::ModelKind::kLlama: (void)io::LlamaConfig::from_json(j, "fuzz.json").parameter_count(); break;
          case io::ModelKind::kViT: (void)io::ViTConfig::from_json(j, "fuzz.json"); break;
          case io::ModelKind::kClipVision: (void)io::ClipVisionConfig::from_json(j, "fuzz.json"); break;
        }
        ++parsed;
      } catch (const VadaptError&) {
      }
    }
  }
  EXPECT_GT(parsed, 0);
}

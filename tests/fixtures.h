// Test fixtures: tiny random models written by the project itself in the real Hugging Face
// formats (config.json + model.safetensors + tokenizer.json), temp folders, shared/ lookup and
// a tensor comparison that reports the max abs diff and the first bad index.
#pragma once

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <string>

#include "data/dataset.h"
#include "io/hf_config.h"
#include "vlm/vision_language_model.h"
#include "vlm/vlm_spec.h"

namespace vadapt::test {

// A fresh temp folder, removed at destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

io::LlamaConfig tiny_llama_config(bool gqa = true, bool tied = false, bool bias = false);
// Writes config.json, model.safetensors and a byte-level tokenizer.json into `dir`.
void write_tiny_llama(const std::string& dir, const io::LlamaConfig& cfg, uint64_t seed = 1);
void write_tiny_vit(const std::string& dir, uint64_t seed = 2);
void write_tiny_clip(const std::string& dir, uint64_t seed = 3);
// A byte-level BPE tokenizer.json: 256 byte tokens, a few merges, <s> and </s> added tokens.
void write_tiny_tokenizer(const std::string& dir, int64_t vocab_size);

// A tiny LLaVA world: LLM + CLIP fixtures, 8 solid-colour 40 px images (red, green, blue,
// white), a LLaVA JSON dataset asking their colour.
struct TinyVlmWorld {
  TempDir dir;
  std::string llm, clip, data;
  TinyVlmWorld();
  // LLaVA spec over the fixtures: mlp2x_gelu, clip32 preprocessing, vicuna_v1, LoRA r 4 alpha 8.
  vlm::VlmSpec spec(const std::string& tune) const;
};

// The world's image questions followed by 4 text-only samples ("Say red." -> "red", ...).
std::vector<data::Sample> mixed_samples(const TinyVlmWorld& w);
// Samples `idx` through the model's template as one right-padded training batch.
vlm::Batch batch_of(vlm::VisionLanguageModel& m, const std::vector<data::Sample>& s, const std::vector<size_t>& idx);
// Logits of a batch through the method's inputs (adapter state, key mask when padded), no grad.
torch::Tensor logits_of(vlm::VisionLanguageModel& m, const vlm::Batch& b);

// Path of ../shared (from VADAPT_SHARED_DIR, or found next to the source tree); empty if absent.
std::string shared_dir();
#define VADAPT_REQUIRE_SHARED()                                                                        \
  do {                                                                                                 \
    if (::vadapt::test::shared_dir().empty())                                                          \
      GTEST_SKIP() << "../shared (real models, data, golden values) is absent; set VADAPT_SHARED_DIR"; \
  } while (0)

// Compares with |a - b| <= atol + rtol * |b|; on failure reports max abs diff and first bad index.
::testing::AssertionResult tensors_close(const torch::Tensor& a, const torch::Tensor& b, double atol, double rtol = 0.0);
::testing::AssertionResult tensors_equal(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace vadapt::test

// LLaMA-Adapter V1 against the official code (../shared/golden/llama_adapter, see its README):
// the base model alone, the training form (tanh gate, full forward) and the inference form (raw
// gate, prefill + 4 KV-cache steps), with the official adapter file loaded through the
// official-key loader. Tolerance 1e-4 (the README's).
#include <gtest/gtest.h>

#include <map>

#include "fixtures.h"
#include "io/safetensors.h"
#include "methods/llama_adapter_v1.h"
#include "methods/llama_adapter_v2.h"
#include "model/llama.h"
#include "vlm/vision_language_model.h"

using namespace vadapt;
using vadapt::test::shared_dir;
using vadapt::test::tensors_close;
using vadapt::test::tensors_equal;

namespace {
std::string G(const std::string& rel) { return shared_dir() + "/golden/llama_adapter/" + rel; }

// Asserts closeness and prints the measured difference (docs/results.md quotes it).
void expect_close(const char* what, const torch::Tensor& got, const torch::Tensor& want, double atol) {
  auto r = tensors_close(got, want, atol);
  std::printf("[ golden   ] %s: %s\n", what, r.message());
  EXPECT_TRUE(r);
}

struct V1 {
  model::LlamaForCausalLM lm{nullptr};
  methods::LlamaAdapterV1 method;
  explicit V1(const std::string& gate) {
    lm = model::load_llama(G("tiny-llama-hf"), torch::kFloat32, torch::kCPU);
    method.configure({{"adapter_len", 3}, {"adapter_layer", 2}, {"gate_form", gate}}, "golden");
    method.build(methods::Frozen{lm, nullptr, torch::kCPU}, 0);
    method.load_official(G("v1.adapter.official.safetensors"));
  }
};
}  // namespace

TEST(GoldenLlamaAdapter, BaseModelMatchesTheOfficialCode) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::SafeTensorsFile::open(G("base.golden.safetensors"));
  auto lm = model::load_llama(G("tiny-llama-hf"), torch::kFloat32, torch::kCPU);
  torch::NoGradGuard ng;
  model::ForwardContext ctx;
  expect_close("base logits", lm->forward(g->tensor("input_ids"), ctx), g->tensor("logits"), 1e-4);
}

TEST(GoldenLlamaAdapter, V1TrainingFormTanhGateMatchesTheOfficialCode) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::SafeTensorsFile::open(G("v1_train.golden.safetensors"));
  V1 v("tanh");
  torch::NoGradGuard ng;
  auto in = v.method.prepare(g->tensor("input_ids"), {}, {});
  model::ForwardContext ctx;
  auto logits = v.lm->logits(v.lm->forward_embeds(in.embeds, ctx));
  expect_close("V1 training form (tanh) logits", logits, g->tensor("logits"), 1e-4);
  auto base = io::SafeTensorsFile::open(G("base.golden.safetensors"));
  EXPECT_FALSE(tensors_close(logits, base->tensor("logits"), 1e-2));  // the adapter matters
}

TEST(GoldenLlamaAdapter, V1InferenceFormRawGateWithKvCacheMatchesTheOfficialCode) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::SafeTensorsFile::open(G("v1_infer.golden.safetensors"));
  V1 v("raw");
  torch::NoGradGuard ng;
  auto ids = g->tensor("input_ids");  // (2, 9)
  auto in = v.method.prepare(ids, {}, {});
  // Twice: prompt K/V recomputed at every step (no adapter state, as the official code), and
  // computed at prefill and kept in the adapter state (as vadapt's generator runs it).
  for (bool keep : {false, true}) {
    auto cache = v.lm->make_cache(2, ids.size(1));
    model::ForwardContext ctx;
    ctx.cache = &cache;
    model::AdapterState state;
    if (keep) ctx.adapter_state = &state;
    std::vector<torch::Tensor> steps{v.lm->logits(v.lm->forward_embeds(in.embeds.narrow(1, 0, 5), ctx)).select(1, 4)};  // (2, V)
    for (int64_t p = 5; p < 9; ++p) steps.push_back(v.lm->logits(v.lm->forward_embeds(in.embeds.narrow(1, p, 1), ctx)).select(1, 0));
    if (keep) EXPECT_EQ(state.kept.size(), 4u);  // K and V of the 2 adapted layers
    expect_close(keep ? "V1 inference form (raw, KV cache, kept prompt K/V) step logits" : "V1 inference form (raw, KV cache) step logits",
                 torch::stack(steps), g->tensor("step_logits"), 1e-4);
  }
}

// methods.md's golden count from the shared config-only folders (no weights): K = 10 prompts in
// the top L = 30 layers of LLaMA-7B.
TEST(GoldenLlamaAdapter, V1ParameterCountOnLlama7bConfigIs1229760) {
  VADAPT_REQUIRE_SHARED();
  vlm::VlmSpec s;
  s.method = "llama_adapter_v1";
  s.llm = shared_dir() + "/reference/configs/llama-7b";
  s.options = {{"adapter_len", 10}, {"adapter_layer", 30}, {"gate_form", "tanh"}};
  auto c = vlm::VisionLanguageModel::count_from_configs(s);
  EXPECT_EQ(c["trainable_parameters"].get<int64_t>(), 1229760);
  EXPECT_EQ(c["llm_parameters"].get<int64_t>(), 6738415616);
}

// LLaMA-Adapter V2 (released multimodal code, `LLaMA_adapter.forward` / `forward_inference` /
// `forward_visual`) with the official adapter files in the Meta layout, loaded through the
// official-key loader (which permutes q/k rows to the HF layout): visual branch alone, full
// forward, prefill + 4 KV-cache steps, with and without LoRA (rank 4, new_gate, no scaling).
namespace {
struct V2 {
  model::LlamaForCausalLM lm{nullptr};
  methods::LlamaAdapterV2 method;
  explicit V2(int64_t lora) {
    lm = model::load_llama(G("tiny-llama-hf"), torch::kFloat32, torch::kCPU);
    method.configure({{"adapter_len", 3},    {"adapter_layer", 3}, {"visual", true},     {"visual_in", 32},  {"visual_width", 32},
                      {"visual_queries", 3}, {"visual_blocks", 2}, {"visual_heads", 4},  {"bias_form", "bias"}, {"lora_r", lora}},
                     "golden");
    method.build(methods::Frozen{lm, nullptr, torch::kCPU}, 0);
    method.load_official(G(lora ? "v2_lora.adapter.official.safetensors" : "v2.adapter.official.safetensors"));
  }
  methods::Inputs inputs(const torch::Tensor& ids, const torch::Tensor& feats) {
    return method.prepare(ids, feats, torch::arange(ids.size(0), torch::kInt64));
  }
};

void check_v2(const std::string& golden, int64_t lora) {
  auto g = io::SafeTensorsFile::open(G(golden));
  V2 v(lora);
  torch::NoGradGuard ng;
  auto ids = g->tensor("input_ids");
  auto in = v.inputs(ids, g->tensor("clip_feats"));
  const std::string tag = lora ? "V2+LoRA" : "V2";
  expect_close((tag + " visual tokens").c_str(), in.state.condition, g->tensor("visual_tokens"), 1e-4);
  model::ForwardContext ctx;
  ctx.adapter_state = &in.state;
  auto logits = v.lm->logits(v.lm->forward_embeds(in.embeds, ctx));
  expect_close((tag + " logits (full forward)").c_str(), logits, g->tensor("logits"), 1e-4);
  auto base = io::SafeTensorsFile::open(G("base.golden.safetensors"));
  EXPECT_FALSE(tensors_close(logits, base->tensor("logits"), 1e-2));
  for (bool keep : {false, true}) {
    auto cache = v.lm->make_cache(2, ids.size(1));
    model::ForwardContext c;
    c.cache = &cache;
    model::AdapterState st = in.state;  // per-sample visual tokens; kept prompt K/V when `keep`
    if (!keep) st.kept.clear();
    c.adapter_state = &st;
    std::vector<torch::Tensor> steps{v.lm->logits(v.lm->forward_embeds(in.embeds.narrow(1, 0, 5), c)).select(1, 4)};
    for (int64_t p = 5; p < 9; ++p) {
      if (!keep) st.kept.clear();  // recomputed every step, as the official code
      steps.push_back(v.lm->logits(v.lm->forward_embeds(in.embeds.narrow(1, p, 1), c)).select(1, 0));
    }
    expect_close((tag + (keep ? " KV-cache step logits (kept prompt K/V)" : " KV-cache step logits")).c_str(), torch::stack(steps),
                 g->tensor("step_logits"), 1e-4);
  }
}
}  // namespace

TEST(GoldenLlamaAdapter, V2VisualBranchMatchesTheOfficialCode) {
  VADAPT_REQUIRE_SHARED();
  auto g = io::SafeTensorsFile::open(G("v2_visual.golden.safetensors"));
  V2 v(0);
  torch::NoGradGuard ng;
  expect_close("V2 visual branch", v.method.visual_tokens(g->tensor("clip_feats")), g->tensor("visual_tokens"), 1e-4);
}

TEST(GoldenLlamaAdapter, V2BiasNormsPromptsMatchTheOfficialCode) {
  VADAPT_REQUIRE_SHARED();
  check_v2("v2.golden.safetensors", 0);
}

TEST(GoldenLlamaAdapter, V2WithLoraAndNewGateMatchesTheOfficialCode) {
  VADAPT_REQUIRE_SHARED();
  check_v2("v2_lora.golden.safetensors", 4);
}

// The loader's Meta -> HF permutation gives exactly the HF-layout copies of the golden folder.
TEST(GoldenLlamaAdapter, V2OfficialLoaderPermutesQkRowsLikeTheHfLayoutFiles) {
  VADAPT_REQUIRE_SHARED();
  V2 v(4);
  auto hf = io::SafeTensorsFile::open(G("v2_lora.adapter.hf_layout.safetensors"));
  std::map<std::string, torch::Tensor> ours;
  for (const auto& [k, t] : v.method.state()) ours[k] = t;
  for (int l = 0; l < 4; ++l) {
    const std::string o = "llama.layers." + std::to_string(l) + ".attention.", h = "model.layers." + std::to_string(l) + ".self_attn.";
    EXPECT_TRUE(tensors_equal(ours.at(h + "q_proj.adapter_bias"), hf->tensor(o + "wq.bias")));
    EXPECT_TRUE(tensors_equal(ours.at(h + "q_proj.lora_B.weight"), hf->tensor(o + "lora_wq_l2.weight")));
    EXPECT_TRUE(tensors_equal(ours.at(h + "k_proj.lora_B.weight"), hf->tensor(o + "lora_wk_l2.weight")));
    EXPECT_TRUE(tensors_equal(ours.at(h + "v_proj.lora_B.weight"), hf->tensor(o + "lora_wv_l2.weight")));
  }
}

// methods.md's counts of the released 7B forms from the shared config-only folders.
TEST(GoldenLlamaAdapter, V2ParameterCountsOnLlama7bAndClipL14Configs) {
  VADAPT_REQUIRE_SHARED();
  vlm::VlmSpec s;
  s.method = "llama_adapter_v2";
  s.llm = shared_dir() + "/reference/configs/llama-7b";
  s.vision = shared_dir() + "/reference/configs/clip-vit-large-patch14";
  s.options = {{"adapter_len", 10}, {"adapter_layer", 31}, {"visual", true}, {"visual_width", 768}, {"visual_queries", 10},
               {"visual_blocks", 8}, {"visual_heads", 16}, {"bias_form", "bias"}, {"lora_r", 16}};
  auto c = vlm::VisionLanguageModel::count_from_configs(s);
  EXPECT_EQ(c["official_pretrain_phase_parameters"].get<int64_t>(), 61731584);
  EXPECT_EQ(c["finetune_phase_parameters"].get<int64_t>() - c["lora_parameters"].get<int64_t>() - c["new_gate_parameters"].get<int64_t>(), 1363968);
  EXPECT_EQ(c["lora_parameters"].get<int64_t>(), 39976960);
}

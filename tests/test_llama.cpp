// Llama decoder invariants on tiny random fixtures written in HF format: strict load,
// KV-cache decode = full recompute, left-padded batch = single runs, bf16 ~ f32, empty seams
// are the identity, config parsing and parameter counts.
#include <gtest/gtest.h>

#include "common/error.h"
#include "fixtures.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "model/fast_decode.h"
#include "model/llama.h"
#include "model/load.h"

using namespace vadapt;
using vadapt::test::TempDir;
using vadapt::test::tensors_close;

namespace {

model::LlamaForCausalLM load_fixture(const TempDir& tmp, const io::LlamaConfig& cfg,
                                     torch::ScalarType dtype = torch::kFloat32) {
  vadapt::test::write_tiny_llama(tmp.path(), cfg);
  return model::load_llama(tmp.path(), dtype, torch::kCPU);
}

torch::Tensor full_logits(model::LlamaForCausalLM& lm, const torch::Tensor& ids) {
  model::ForwardContext ctx;
  return lm->forward(ids, ctx);  // (B, T, V)
}

}  // namespace

class LlamaVariants : public ::testing::TestWithParam<std::tuple<bool, bool, bool>> {};

TEST_P(LlamaVariants, KVCacheDecodeEqualsFullRecompute) {
  auto [gqa, tied, bias] = GetParam();
  TempDir tmp;
  auto lm = load_fixture(tmp, vadapt::test::tiny_llama_config(gqa, tied, bias));
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, 300, {2, 12}, torch::kInt64);
  auto full = full_logits(lm, ids);  // (2, 12, V)
  auto cache = lm->make_cache(2, 12);
  model::ForwardContext ctx;
  ctx.cache = &cache;
  std::vector<torch::Tensor> steps;
  steps.push_back(lm->forward(ids.narrow(1, 0, 5), ctx));  // prefill 5
  for (int64_t t = 5; t < 12; ++t) steps.push_back(lm->forward(ids.narrow(1, t, 1), ctx));
  EXPECT_TRUE(tensors_close(torch::cat(steps, 1), full, 1e-5));
  EXPECT_EQ(cache.length(), 12);
}

// The fast decode step (cblas + loops, no per-op dispatch) = the module path: the same logits
// within 1e-4 at every step and the same cache, for one row and for a left-padded batch of three
// (per-row positions and key mask), and = the full recompute.
TEST_P(LlamaVariants, FastDecodeStepEqualsTheModulePath) {
  auto [gqa, tied, bias] = GetParam();
  TempDir tmp;
  auto lm = load_fixture(tmp, vadapt::test::tiny_llama_config(gqa, tied, bias));
  torch::NoGradGuard ng;
  std::string why;
  auto fast = model::FastDecoder::make(*lm, &why);
  ASSERT_TRUE(fast) << why;
  for (int64_t b : {1, 3, 9, 17}) {  // one row (sgemv), passes of 8 rows over the weights (3, 9 = 8 + 1), sgemm (17)
    auto ids = torch::randint(0, 300, {b, 12}, torch::kInt64);
    auto key_mask = torch::ones({b, 12}, torch::kInt64);
    if (b > 1) key_mask[1].narrow(0, 0, 3).zero_(), key_mask[2].narrow(0, 0, 1).zero_();  // left padding
    auto pos = (key_mask.cumsum(1) - 1).clamp_min(0);
    auto ref_cache = lm->make_cache(b, 12), fast_cache = lm->make_cache(b, 12);
    model::ForwardContext ref, fst;
    ref.cache = &ref_cache, fst.cache = &fast_cache;
    for (auto* c : {&ref, &fst}) {
      c->attention_mask = key_mask.narrow(1, 0, 5);
      c->position_ids = pos.narrow(1, 0, 5);
      lm->forward(ids.narrow(1, 0, 5), *c);  // prefill 5 through the modules
    }
    std::vector<torch::Tensor> steps;
    for (int64_t t = 5; t < 12; ++t) {
      for (auto* c : {&ref, &fst}) c->attention_mask = key_mask.narrow(1, 0, t + 1), c->position_ids = pos.narrow(1, t, 1);
      auto want = lm->forward(ids.narrow(1, t, 1), ref).select(1, 0);  // (B, V)
      auto got = fast->step(ids.select(1, t), fst);                      // (B, V)
      EXPECT_TRUE(tensors_close(got, want, 1e-4)) << "b " << b << " step " << t << ": " << (got - want).abs().max().item<double>();
      steps.push_back(got.unsqueeze(1));
    }
    EXPECT_EQ(fast_cache.length(), 12);
    for (int64_t l = 0; l < lm->config().num_hidden_layers; ++l)
      EXPECT_TRUE(tensors_close(fast_cache.keys(l), ref_cache.keys(l), 1e-5) && tensors_close(fast_cache.values(l), ref_cache.values(l), 1e-5));
    if (b == 1) EXPECT_TRUE(tensors_close(torch::cat(steps, 1), full_logits(lm, ids).narrow(1, 5, 7), 1e-4));
  }
}

// bf16 weights on the fast path: float32 arithmetic on the bf16 weights (widened as read), the
// KV cache in bf16 as on the module path. Against float32 modules on the same (bf16-valued)
// weights it differs only by the rounding of the cached keys and values, less than the bf16
// module path does (which rounds every activation); the cache holds the same entries.
TEST_P(LlamaVariants, FastDecodeWithBf16WeightsIsTheFloat32MathOnThoseWeights) {
  auto [gqa, tied, bias] = GetParam();
  TempDir tmp;
  auto lm16 = load_fixture(tmp, vadapt::test::tiny_llama_config(gqa, tied, bias), torch::kBFloat16);
  auto ref = model::load_llama(tmp.path(), torch::kBFloat16, torch::kCPU);
  ref->to(torch::kFloat32);  // the same bf16 values, computed in float32
  torch::NoGradGuard ng;
  auto fast = model::FastDecoder::make(*lm16);
  ASSERT_TRUE(fast);
  for (int64_t b : {1, 3}) {
    auto ids = torch::randint(0, 300, {b, 12}, torch::kInt64);
    auto c16 = lm16->make_cache(b, 12), c32 = ref->make_cache(b, 12), cmod = lm16->make_cache(b, 12);
    model::ForwardContext f16, f32, mod;
    f16.cache = &c16, f32.cache = &c32, mod.cache = &cmod;
    ref->forward(ids.narrow(1, 0, 5), f32);
    lm16->forward(ids.narrow(1, 0, 5), mod);
    lm16->forward(ids.narrow(1, 0, 5), f16);
    for (int64_t t = 5; t < 12; ++t) {
      auto want = ref->forward(ids.narrow(1, t, 1), f32).select(1, 0);
      auto modules = lm16->forward(ids.narrow(1, t, 1), mod).select(1, 0).to(torch::kFloat32);
      auto got = fast->step(ids.select(1, t), f16);
      ASSERT_EQ(got.scalar_type(), torch::kFloat32);
      const double err = (got - want).abs().max().item<double>(), err_mod = (modules - want).abs().max().item<double>();
      const double scale = want.abs().max().item<double>();
      EXPECT_LT(err, 2e-2 * scale) << "b " << b << " step " << t;
      EXPECT_LE(err, err_mod + 1e-6) << "b " << b << " step " << t << ": fast " << err << ", bf16 modules " << err_mod;
    }
    for (int64_t l = 0; l < lm16->config().num_hidden_layers; ++l)
      EXPECT_TRUE(tensors_close(c16.keys(l).narrow(2, 5, 7).to(torch::kFloat32), cmod.keys(l).narrow(2, 5, 7).to(torch::kFloat32), 2e-2, 5e-2));
  }
}

// Products of large weights (here the head, 8191 x 32, and the MLP, 8192 x 32) are split over the
// decode threads; the logits stay those of the modules (f32) / of the float32 math (bf16).
TEST(Llama, FastDecodeOfLargeWeightsOverThreadsEqualsTheModulePath) {
  TempDir tmp;
  auto cfg = vadapt::test::tiny_llama_config(true, false, true);
  cfg.vocab_size = 8191;
  cfg.intermediate_size = 8192;
  auto lm = load_fixture(tmp, cfg);
  torch::NoGradGuard ng;
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    auto fast_lm = model::load_llama(tmp.path(), dtype, torch::kCPU);
    auto ref = model::load_llama(tmp.path(), dtype, torch::kCPU);
    ref->to(torch::kFloat32);
    auto fast = model::FastDecoder::make(*fast_lm);
    ASSERT_TRUE(fast);
    for (int64_t b : {1, 3}) {
      auto ids = torch::randint(0, cfg.vocab_size, {b, 8}, torch::kInt64);
      auto cf = fast_lm->make_cache(b, 8), cr = ref->make_cache(b, 8);
      model::ForwardContext f, r;
      f.cache = &cf, r.cache = &cr;
      fast_lm->forward(ids.narrow(1, 0, 4), f);
      ref->forward(ids.narrow(1, 0, 4), r);
      for (int64_t t = 4; t < 8; ++t) {
        auto want = ref->forward(ids.narrow(1, t, 1), r).select(1, 0);
        auto got = fast->step(ids.select(1, t), f);
        const double tol = dtype == torch::kFloat32 ? 1e-4 : 2e-2 * want.abs().max().item<double>();
        EXPECT_TRUE(tensors_close(got, want, tol)) << c10::toString(dtype) << " b " << b << " step " << t << ": "
                                                   << (got - want).abs().max().item<double>();
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Configs, LlamaVariants,
                         ::testing::Values(std::make_tuple(true, false, false), std::make_tuple(false, true, false),
                                           std::make_tuple(true, true, true)));

TEST(Llama, LeftPaddedBatchEqualsSingleRuns) {
  TempDir tmp;
  auto lm = load_fixture(tmp, vadapt::test::tiny_llama_config());
  torch::NoGradGuard ng;
  auto a = torch::randint(0, 300, {1, 9}, torch::kInt64);
  auto b = torch::randint(0, 300, {1, 4}, torch::kInt64);
  auto ids = torch::zeros({2, 9}, torch::kInt64);
  ids[0].copy_(a[0]);
  ids[1].narrow(0, 5, 4).copy_(b[0]);
  auto mask = torch::ones({2, 9}, torch::kInt64);
  mask[1].narrow(0, 0, 5).zero_();
  model::ForwardContext ctx;
  ctx.attention_mask = mask;
  ctx.position_ids = (mask.cumsum(1) - 1).clamp_min(0);
  auto batched = lm->forward(ids, ctx);  // (2, 9, V)
  EXPECT_TRUE(tensors_close(batched[0], full_logits(lm, a)[0], 1e-5));
  EXPECT_TRUE(tensors_close(batched[1].narrow(0, 5, 4), full_logits(lm, b)[0], 1e-5));
}

TEST(Llama, Bf16IsCloseToF32) {
  TempDir tmp;
  auto cfg = vadapt::test::tiny_llama_config();
  auto lm32 = load_fixture(tmp, cfg);
  auto lm16 = model::load_llama(tmp.path(), torch::kBFloat16, torch::kCPU);
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, 300, {1, 10}, torch::kInt64);
  auto a = full_logits(lm32, ids);
  auto b = full_logits(lm16, ids).to(torch::kFloat32);
  EXPECT_EQ(lm16->dtype(), torch::kBFloat16);
  EXPECT_TRUE(tensors_close(b, a, 0.1, 0.05));
  EXPECT_EQ(b.argmax(-1).eq(a.argmax(-1)).to(torch::kFloat32).mean().item<float>() >= 0.8f, true);
}

namespace {
struct IdentityProjection : model::ProjectionAdapter {
  int calls = 0;
  torch::Tensor apply(const torch::Tensor&, torch::Tensor y) override { return ++calls, y; }
};
struct ZeroPrefix : model::AttentionPrefix {
  torch::Tensor attend(const torch::Tensor& q, const model::AttentionView&, const model::ForwardContext&) override {
    return torch::zeros_like(q);
  }
};
struct IdentitySublayer : model::SublayerAdapter {
  torch::Tensor apply(const torch::Tensor& x, model::Sublayer, int64_t, const model::ForwardContext&) override { return x; }
};
}  // namespace

// The fast path declines what it does not compute (the modules run those).
TEST(Llama, FastDecodeDeclinesAdaptersOtherDtypesAndTheSwitch) {
  TempDir tmp;
  auto lm = load_fixture(tmp, vadapt::test::tiny_llama_config());
  std::string why;
  lm->layer(1).self_attn->v_proj->add_adapter(nullptr);
  EXPECT_FALSE(model::FastDecoder::make(*lm, &why));
  EXPECT_NE(why.find("adapter"), std::string::npos) << why;
  lm->layer(1).self_attn->v_proj->clear_adapters();
  EXPECT_TRUE(model::FastDecoder::make(*lm));
  setenv("VADAPT_FAST_DECODE", "0", 1);
  EXPECT_FALSE(model::FastDecoder::make(*lm, &why));
  unsetenv("VADAPT_FAST_DECODE");
  EXPECT_TRUE(model::FastDecoder::make(*model::load_llama(tmp.path(), torch::kBFloat16, torch::kCPU)));
  auto lm16 = model::load_llama(tmp.path(), torch::kFloat16, torch::kCPU);
  EXPECT_FALSE(model::FastDecoder::make(*lm16, &why));
  EXPECT_NE(why.find("float32 nor bfloat16"), std::string::npos) << why;
  model::AdapterState st;
  st.position_offset = 1;
  model::ForwardContext ctx;
  model::KVCache cache = lm->make_cache(1, 4);
  ctx.cache = &cache;
  EXPECT_TRUE(model::FastDecoder::applies(ctx));
  ctx.adapter_state = &st;
  EXPECT_FALSE(model::FastDecoder::applies(ctx));
}

TEST(Llama, EmptyOrIdentitySeamsLeaveLogitsUnchanged) {
  TempDir tmp;
  auto lm = load_fixture(tmp, vadapt::test::tiny_llama_config());
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, 300, {1, 7}, torch::kInt64);
  auto base = full_logits(lm, ids);
  auto proj = std::make_shared<IdentityProjection>();
  for (int64_t l = 0; l < lm->config().num_hidden_layers; ++l) {
    lm->layer(l).self_attn->q_proj->add_adapter(proj);
    lm->layer(l).self_attn->prefix = std::make_shared<ZeroPrefix>();
    lm->layer(l).hooks.adapters.push_back(std::make_shared<IdentitySublayer>());
  }
  EXPECT_TRUE(tensors_close(full_logits(lm, ids), base, 0.0));
  EXPECT_EQ(proj->calls, 2);
}

TEST(Llama, LoadIsStrictAndFrozen) {
  TempDir tmp;
  auto lm = load_fixture(tmp, vadapt::test::tiny_llama_config());
  auto pc = model::count_parameters(*lm);
  EXPECT_EQ(pc.total, vadapt::test::tiny_llama_config().parameter_count());
  EXPECT_EQ(pc.trainable, 0);
  // A config that disagrees with the weights is reported by name.
  auto j = io::read_json(tmp.file("config.json"));
  j["intermediate_size"] = 65;
  io::write_text_atomic(tmp.file("config.json"), j.dump());
  try {
    model::load_llama(tmp.path(), torch::kFloat32, torch::kCPU);
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("model.layers.0.mlp.gate_proj.weight: shape [64, 32] in file, expected [65, 32]"),
              std::string::npos) << e.what();
  }
}

TEST(LlamaConfig, MissingKeysAndUnknownTypesAreNamed) {
  nlohmann::json j = vadapt::test::tiny_llama_config().to_json();
  j.erase("hidden_size");
  try {
    io::LlamaConfig::from_json(j, "cfg.json");
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_EQ(std::string(e.what()), "cfg.json: 'hidden_size': missing required key");
  }
  nlohmann::json k = {{"model_type", "gpt_neox"}};
  try {
    io::detect_model_kind(k, "cfg.json");
    FAIL();
  } catch (const VadaptError& e) {
    EXPECT_NE(std::string(e.what()).find("supported: llama"), std::string::npos) << e.what();
  }
  nlohmann::json bad = vadapt::test::tiny_llama_config().to_json();
  bad["num_key_value_heads"] = 3;
  EXPECT_THROW(io::LlamaConfig::from_json(bad, "cfg.json"), VadaptError);
  bad = vadapt::test::tiny_llama_config().to_json();
  bad["hidden_size"] = "big";
  EXPECT_THROW(io::LlamaConfig::from_json(bad, "cfg.json"), VadaptError);
}

TEST(LlamaConfig, Llama3RopeScalingMatchesTheReferenceFormula) {
  // Llama 3.1 8B: theta 500000, head_dim 128, factor 8, low 1, high 4, original 8192.
  io::LlamaConfig c = vadapt::test::tiny_llama_config();
  c.head_dim = 128;
  c.rope_theta = 500000.0;
  c.rope_scaling = io::RopeScaling{"llama3", 8.0, 1.0, 4.0, 8192};
  auto inv = model::Rope::inv_freq(c);
  // High-frequency dims are unchanged, low-frequency dims are divided by the factor.
  EXPECT_NEAR(inv[0].item<float>(), 1.0f, 1e-7);
  double base_last = 1.0 / std::pow(500000.0, 126.0 / 128.0);
  EXPECT_NEAR(inv[63].item<double>(), base_last / 8.0, 1e-12);
  // A medium band dim is interpolated: wavelen between 2048 and 8192.
  for (int64_t i = 0; i < 64; ++i) {
    double f = 1.0 / std::pow(500000.0, 2.0 * i / 128.0), w = 2 * M_PI / f;
    if (w >= 2048 && w <= 8192) {
      double s = (8192.0 / w - 1.0) / 3.0;
      EXPECT_NEAR(inv[i].item<double>(), (1 - s) * f / 8 + s * f, 1e-6 * f) << i;
    }
  }
}

TEST(Llama, SequenceLongerThanMaxPositionsIsAnError) {
  TempDir tmp;
  auto lm = load_fixture(tmp, vadapt::test::tiny_llama_config());
  auto ids = torch::zeros({1, 513}, torch::kInt64);
  EXPECT_THROW(full_logits(lm, ids), VadaptError);
  EXPECT_THROW(full_logits(lm, torch::full({1, 2}, 300, torch::kInt64)), VadaptError);  // id out of range
}

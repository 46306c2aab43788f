// The perceiver resampler (PaLM2-VAdapter's baseline and adapter front): shapes for one and
// several frames, an independent re-statement of the layer equations (per sample, per head,
// from the named parameters), batch-row equivariance, key-order invariance without the time
// embedding (and frame-order sensitivity with it), parameter counts of every Table-1 option,
// and the errors.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "common/error.h"
#include "connectors/perceiver_resampler.h"
#include "fixtures.h"

using namespace vadapt;
using vadapt::test::tensors_close;

namespace {
connectors::PerceiverOptions small(const std::string& norms = "separate", bool final_norm = false, bool ffn = true, bool time = true) {
  connectors::PerceiverOptions o;
  o.in = 12, o.width = 16, o.queries = 5, o.layers = 2, o.heads = 4, o.ffn_mult = 2, o.max_frames = 3;
  o.norms = norms, o.final_norm = final_norm, o.ffn = ffn, o.time_embedding = time;
  return o;
}

// The equations of the header, written out per sample and per head.
torch::Tensor restated(connectors::PerceiverResampler& r, const torch::Tensor& feats) {
  const auto& o = r->options();
  std::map<std::string, torch::Tensor> p;
  for (const auto& kv : r->named_parameters()) p[kv.key()] = kv.value().detach();
  auto ln = [&](const torch::Tensor& x, const std::string& name) {
    if (!p.count(name + ".weight")) return x;
    auto mu = x.mean(-1, true), var = (x - mu).pow(2).mean(-1, true);
    return (x - mu) / torch::sqrt(var + o.eps) * p[name + ".weight"] + p[name + ".bias"];
  };
  std::vector<torch::Tensor> outs;
  for (int64_t bi = 0; bi < feats.size(0); ++bi) {
    auto f = feats[bi];                                                                  // (F, S, in)
    auto x = torch::matmul(f, p["input_proj.weight"].t()) + p["input_proj.bias"];      // (F, S, w)
    if (o.time_embedding)
      for (int64_t t = 0; t < f.size(0); ++t) x[t] = x[t] + p["time_embedding"][t];
    x = x.reshape({-1, o.width});
    auto l = p["queries"].clone();                                                        // (N, w)
    for (int64_t li = 0; li < o.layers; ++li) {
      const std::string pre = "layers." + std::to_string(li) + ".";
      auto lq = ln(l, pre + "norm_queries");
      auto xf = o.norms == "shared" ? ln(x, pre + "norm_queries") : ln(x, pre + "norm_features");
      auto kv = torch::cat({xf, lq}, 0);
      auto q = torch::matmul(lq, p[pre + "attn.q.weight"].t()), k = torch::matmul(kv, p[pre + "attn.k.weight"].t()),
           v = torch::matmul(kv, p[pre + "attn.v.weight"].t());
      const int64_t hd = o.width / o.heads;
      std::vector<torch::Tensor> hs;
      for (int64_t h = 0; h < o.heads; ++h) {
        auto qh = q.narrow(1, h * hd, hd), kh = k.narrow(1, h * hd, hd), vh = v.narrow(1, h * hd, hd);
        hs.push_back(torch::matmul(torch::softmax(torch::matmul(qh, kh.t()) / std::sqrt(double(hd)), -1), vh));
      }
      l = l + torch::matmul(torch::cat(hs, 1), p[pre + "attn.o.weight"].t());
      if (o.ffn) {
        auto h1 = torch::gelu(torch::matmul(ln(l, pre + "ffn.norm"), p[pre + "ffn.fc1.weight"].t()) + p[pre + "ffn.fc1.bias"]);
        l = l + torch::matmul(h1, p[pre + "ffn.fc2.weight"].t()) + p[pre + "ffn.fc2.bias"];
      }
    }
    outs.push_back(o.final_norm ? ln(l, "final_norm") : l);
  }
  return torch::stack(outs);
}
}  // namespace

TEST(Perceiver, MatchesTheRestatedEquationsInEveryTable1Form) {
  torch::NoGradGuard ng;
  torch::manual_seed(0);
  auto feats = torch::randn({2, 3, 7, 12});  // 2 samples, 3 frames of 7 tokens
  for (const char* norms : {"separate", "shared", "none"})
    for (bool fin : {false, true})
      for (bool ffn : {false, true})
        for (bool time : {false, true}) {
          connectors::PerceiverResampler r(small(norms, fin, ffn, time), 1);
          auto out = r(feats);
          ASSERT_EQ(out.sizes(), torch::IntArrayRef({2, 5, 16}));
          EXPECT_TRUE(tensors_close(out, restated(r, feats), 1e-5)) << norms << fin << ffn << time;
          int64_t n = 0;
          for (const auto& p : r->parameters()) n += p.numel();
          EXPECT_EQ(n, connectors::PerceiverResamplerImpl::parameter_count(r->options())) << norms << fin << ffn << time;
        }
}

TEST(Perceiver, BatchRowsAreIndependentAndKeyOrderOnlyMattersThroughTime) {
  torch::NoGradGuard ng;
  torch::manual_seed(1);
  auto feats = torch::randn({3, 2, 5, 12});
  connectors::PerceiverResampler with_time(small(), 2), no_time(small("separate", false, true, false), 2);
  auto out = with_time(feats);
  auto perm = torch::tensor({2, 0, 1}, torch::kInt64);
  EXPECT_TRUE(tensors_close(with_time(feats.index_select(0, perm)), out.index_select(0, perm), 1e-6));
  EXPECT_TRUE(tensors_close(with_time(feats.narrow(0, 1, 1)), out.narrow(0, 1, 1), 1e-6));
  // Attention is order-free over its keys: shuffling tokens within and across frames changes
  // nothing without the time embedding; swapping frames changes the output with it.
  auto flat = feats.reshape({3, 1, 10, 12});
  auto shuffled = flat.index_select(2, torch::randperm(10, torch::kInt64));
  EXPECT_TRUE(tensors_close(no_time(shuffled), no_time(flat), 1e-5));
  EXPECT_TRUE(tensors_close(no_time(feats.flip(1)), no_time(feats), 1e-5));
  EXPECT_FALSE(tensors_close(with_time(feats.flip(1)), out, 1e-4));
  // One frame given as (B, S, C) is frame 0.
  EXPECT_TRUE(tensors_close(with_time(feats.select(1, 0)), with_time(feats.narrow(1, 0, 1)), 0));
}

TEST(Perceiver, PaperBaselineSizeAndErrors) {
  connectors::PerceiverOptions o;  // 256 queries, 6 layers, width 768, 12 heads, FFN x4, 8 frames
  o.in = 1024;                     // a ViT-L feature width
  const int64_t w = 768;
  const int64_t per = 4 * w * w + 4 * w + (2 * w + w * 4 * w + 4 * w + 4 * w * w + w);
  EXPECT_EQ(connectors::PerceiverResamplerImpl::parameter_count(o), 256 * w + 1024 * w + w + 6 * per + 8 * w);
  connectors::PerceiverResampler r(small(), 3);
  EXPECT_THROW(r(torch::randn({1, 4, 11})), VadaptError);        // wrong feature width
  EXPECT_THROW(r(torch::randn({1, 4, 2, 4, 12})), VadaptError);  // 5-D
  EXPECT_THROW(r(torch::randn({1, 4, 2, 12})), VadaptError);     // 4 frames > max_frames 3
  auto bad = small();
  bad.heads = 3;
  EXPECT_THROW(connectors::PerceiverResampler(bad, 0), VadaptError);
  bad = small();
  bad.norms = "tied";
  EXPECT_THROW(connectors::PerceiverResampler(bad, 0), VadaptError);
}

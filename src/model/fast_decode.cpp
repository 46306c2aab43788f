// Decode step of a plain f32 Llama on the CPU: cblas products and plain loops (see the header).
#include "model/fast_decode.h"

#include <cblas.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/error.h"

namespace vadapt::model {
namespace {

bool plain(const ProjectionImpl& p) {
  return p.adapters().empty() && !p.is_nf4() && p.weight.defined() && p.weight.is_contiguous() &&
         p.weight.scalar_type() == torch::kFloat32 && (!p.bias.defined() || p.bias.is_contiguous());
}

// y (B, out) = x (B, in) W^T + bias, W (out, in) row-major.
void linear(const float* x, int64_t b, const ProjectionImpl& p, float* y) {
  const int64_t in = p.in_features, out = p.out_features;
  const float* w = p.weight.data_ptr<float>();
  if (b == 1)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(out), static_cast<int>(in), 1.0f, w, static_cast<int>(in), x, 1, 0.0f, y, 1);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(b), static_cast<int>(out), static_cast<int>(in), 1.0f, x,
                static_cast<int>(in), w, static_cast<int>(in), 0.0f, y, static_cast<int>(out));
  if (p.bias.defined()) {
    const float* bias = p.bias.data_ptr<float>();
    for (int64_t r = 0; r < b; ++r)
      for (int64_t i = 0; i < out; ++i) y[r * out + i] += bias[i];
  }
}

// out = weight * x / sqrt(mean(x^2) + eps), per row of d.
void rms_norm(const float* x, int64_t b, int64_t d, const RMSNormImpl& n, float* out) {
  const float* w = n.weight.data_ptr<float>();
  for (int64_t r = 0; r < b; ++r) {
    const float* xr = x + r * d;
    float ss = 0.0f;
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + static_cast<float>(n.eps));
    for (int64_t i = 0; i < d; ++i) out[r * d + i] = w[i] * (xr[i] * inv);
  }
}

// Rotate-half RoPE of `heads` vectors of dim d in place, with the tables' row for the position.
void rope(float* v, int64_t heads, int64_t d, const float* cos, const float* sin) {
  const int64_t half = d / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* x = v + h * d;
    for (int64_t i = 0; i < half; ++i) {
      const float a = x[i], c = x[i + half];
      x[i] = a * cos[i] - c * sin[i];
      x[i + half] = c * cos[i + half] + a * sin[i + half];
    }
  }
}

}  // namespace

bool FastDecoder::applies(const ForwardContext& ctx) {
  return ctx.cache != nullptr && (!ctx.adapter_state || ctx.adapter_state->empty());
}

std::unique_ptr<FastDecoder> FastDecoder::make(LlamaForCausalLMImpl& lm, std::string* why_not) {
  auto no = [&](const std::string& why) {
    if (why_not) *why_not = why;
    return std::unique_ptr<FastDecoder>();
  };
  if (const char* env = std::getenv("VADAPT_FAST_DECODE"); env && std::string(env) == "0") return no("VADAPT_FAST_DECODE=0");
  if (!lm.device().is_cpu()) return no("not on the CPU");
  if (lm.dtype() != torch::kFloat32) return no("weights are not float32");
  const auto& c = lm.config();
  if (c.head_dim % 2 != 0) return no("odd head_dim");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto& l = lm.layer(i);
    if (!l.hooks.adapters.empty()) return no("a sub-layer adapter");
    if (l.self_attn->prefix) return no("an attention prefix");
    for (const auto* p : {&*l.self_attn->q_proj, &*l.self_attn->k_proj, &*l.self_attn->v_proj, &*l.self_attn->o_proj, &*l.mlp->gate_proj,
                          &*l.mlp->up_proj, &*l.mlp->down_proj})
      if (!plain(*p)) return no("a projection with an adapter, NF4 or non-contiguous weights");
    for (const auto* n : {&*l.input_layernorm, &*l.post_attention_layernorm})
      if (n->weight.scalar_type() != torch::kFloat32 || !n->weight.is_contiguous()) return no("norm weights not float32");
  }
  if (lm.lm_head && !plain(*lm.lm_head)) return no("lm_head has an adapter");
  if (!lm.model->embed_tokens->weight.is_contiguous() || lm.model->norm->weight.scalar_type() != torch::kFloat32)
    return no("embedding or final norm not float32 / contiguous");
  return std::unique_ptr<FastDecoder>(new FastDecoder(lm));
}

FastDecoder::FastDecoder(LlamaForCausalLMImpl& lm) : lm_(lm) {}

torch::Tensor decode_logits(LlamaForCausalLMImpl& lm, FastDecoder* fast, const torch::Tensor& ids, ForwardContext& ctx) {
  if (fast && FastDecoder::applies(ctx)) return fast->step(ids, ctx);
  auto x = lm.embed(ids.view({-1, 1}).to(lm.device()));        // (B, 1, d)
  return lm.logits(lm.forward_embeds(x, ctx)).select(1, 0);    // (B, V)
}

torch::Tensor FastDecoder::step(const torch::Tensor& ids_in, ForwardContext& ctx) {
  const auto& c = lm_.config();
  KVCache& cache = *ctx.cache;
  const int64_t b = ids_in.size(0), d = c.hidden_size, nh = c.num_attention_heads, nkv = c.num_key_value_heads, hd = c.head_dim,
                rep = nh / nkv, ff = c.intermediate_size, vocab = c.vocab_size, past = cache.length(), s = past + 1,
                cap = cache.capacity();
  if (b != cache.batch()) throw VadaptError(cat("decode: ", b, " ids for a KV cache of batch ", cache.batch()));
  if (s > cap)
    throw VadaptError(cat("KV cache full: ", past, " + 1 tokens exceed its capacity of ", cap, " (raise --max-seq-len or shorten the prompt)"));
  if (s > c.max_position_embeddings)
    throw VadaptError(cat("sequence of ", s, " tokens exceeds max_position_embeddings ", c.max_position_embeddings, " (", c.source, ")"));
  const auto ids = ids_in.to(torch::kCPU, torch::kInt64).contiguous();
  const int64_t* id = ids.data_ptr<int64_t>();
  std::vector<int64_t> pos(static_cast<size_t>(b), past);
  if (ctx.position_ids.defined()) {
    auto p = ctx.position_ids.to(torch::kCPU, torch::kInt64).contiguous().view({-1});
    TORCH_CHECK(p.numel() == b, "decode: position_ids must be (", b, ", 1)");
    for (int64_t r = 0; r < b; ++r) pos[static_cast<size_t>(r)] = p.data_ptr<int64_t>()[r];
  }
  torch::Tensor key_mask;
  if (ctx.attention_mask.defined()) {
    key_mask = ctx.attention_mask.to(torch::kCPU, torch::kInt64).contiguous();
    TORCH_CHECK(key_mask.dim() == 2 && key_mask.size(0) == b && key_mask.size(1) == s, "attention_mask must be (", b, ", ", s, "), got ",
                key_mask.sizes());
  }
  auto [cos_t, sin_t] = lm_.rope_tables();
  const float* cos = cos_t.data_ptr<float>();
  const float* sin = sin_t.data_ptr<float>();
  for (int64_t r = 0; r < b; ++r)
    if (pos[static_cast<size_t>(r)] < 0 || pos[static_cast<size_t>(r)] >= cos_t.size(0))
      throw VadaptError(cat("decode: position ", pos[static_cast<size_t>(r)], " outside the RoPE table of ", cos_t.size(0)));

  x_.resize(static_cast<size_t>(b * d));
  h_.resize(static_cast<size_t>(b * d));
  q_.resize(static_cast<size_t>(b * nh * hd));
  k_.resize(static_cast<size_t>(b * nkv * hd));
  v_.resize(static_cast<size_t>(b * nkv * hd));
  att_.resize(static_cast<size_t>(b * nh * hd));
  gate_.resize(static_cast<size_t>(b * ff));
  up_.resize(static_cast<size_t>(b * ff));
  scores_.resize(static_cast<size_t>(s));
  const float* emb = lm_.model->embed_tokens->weight.data_ptr<float>();
  for (int64_t r = 0; r < b; ++r) {
    if (id[r] < 0 || id[r] >= vocab) throw VadaptError(cat("token id out of range [0, ", vocab, "): got ", id[r]));
    std::memcpy(x_.data() + r * d, emb + id[r] * d, static_cast<size_t>(d) * sizeof(float));
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  for (int64_t li = 0; li < c.num_hidden_layers; ++li) {
    auto& l = lm_.layer(li);
    auto& at = *l.self_attn;
    rms_norm(x_.data(), b, d, *l.input_layernorm, h_.data());
    linear(h_.data(), b, *at.q_proj, q_.data());
    linear(h_.data(), b, *at.k_proj, k_.data());
    linear(h_.data(), b, *at.v_proj, v_.data());
    TORCH_CHECK(cache.keys(li).is_contiguous() && cache.values(li).is_contiguous() && cache.keys(li).scalar_type() == torch::kFloat32,
                "decode: KV cache buffers must be contiguous float32");
    float* kc = cache.keys(li).data_ptr<float>();    // (B, KV, cap, D)
    float* vc = cache.values(li).data_ptr<float>();  // (B, KV, cap, D)
    for (int64_t r = 0; r < b; ++r) {
      const int64_t p = pos[static_cast<size_t>(r)];
      rope(q_.data() + r * nh * hd, nh, hd, cos + p * hd, sin + p * hd);
      rope(k_.data() + r * nkv * hd, nkv, hd, cos + p * hd, sin + p * hd);
      for (int64_t g = 0; g < nkv; ++g) {
        const int64_t at_row = ((r * nkv + g) * cap + past) * hd;
        std::memcpy(kc + at_row, k_.data() + (r * nkv + g) * hd, static_cast<size_t>(hd) * sizeof(float));
        std::memcpy(vc + at_row, v_.data() + (r * nkv + g) * hd, static_cast<size_t>(hd) * sizeof(float));
      }
      const int64_t* km = key_mask.defined() ? key_mask.data_ptr<int64_t>() + r * s : nullptr;
      for (int64_t hh = 0; hh < nh; ++hh) {
        const int64_t g = hh / rep;
        const float* q = q_.data() + (r * nh + hh) * hd;
        const float* keys = kc + (r * nkv + g) * cap * hd;
        const float* vals = vc + (r * nkv + g) * cap * hd;
        float mx = -INFINITY;
        for (int64_t t = 0; t < s; ++t) {
          if (km && km[t] == 0) continue;
          float dot = 0.0f;
          for (int64_t i = 0; i < hd; ++i) dot += q[i] * keys[t * hd + i];
          scores_[static_cast<size_t>(t)] = dot * scale;
          mx = std::max(mx, scores_[static_cast<size_t>(t)]);
        }
        float sum = 0.0f;
        for (int64_t t = 0; t < s; ++t) {
          if (km && km[t] == 0) continue;
          scores_[static_cast<size_t>(t)] = std::exp(scores_[static_cast<size_t>(t)] - mx);
          sum += scores_[static_cast<size_t>(t)];
        }
        float* o = att_.data() + (r * nh + hh) * hd;
        std::fill(o, o + hd, 0.0f);
        for (int64_t t = 0; t < s; ++t) {
          if (km && km[t] == 0) continue;
          const float w = scores_[static_cast<size_t>(t)] / sum;
          for (int64_t i = 0; i < hd; ++i) o[i] += w * vals[t * hd + i];
        }
      }
    }
    linear(att_.data(), b, *at.o_proj, h_.data());
    for (int64_t i = 0; i < b * d; ++i) x_[static_cast<size_t>(i)] += h_[static_cast<size_t>(i)];
    rms_norm(x_.data(), b, d, *l.post_attention_layernorm, h_.data());
    linear(h_.data(), b, *l.mlp->gate_proj, gate_.data());
    linear(h_.data(), b, *l.mlp->up_proj, up_.data());
    for (int64_t i = 0; i < b * ff; ++i) {
      const float g = gate_[static_cast<size_t>(i)];
      gate_[static_cast<size_t>(i)] = g / (1.0f + std::exp(-g)) * up_[static_cast<size_t>(i)];
    }
    linear(gate_.data(), b, *l.mlp->down_proj, h_.data());
    for (int64_t i = 0; i < b * d; ++i) x_[static_cast<size_t>(i)] += h_[static_cast<size_t>(i)];
  }
  cache.advance(1);
  rms_norm(x_.data(), b, d, *lm_.model->norm, h_.data());
  auto logits = torch::empty({b, vocab}, torch::kFloat32);
  if (lm_.lm_head) {
    linear(h_.data(), b, *lm_.lm_head, logits.data_ptr<float>());
  } else if (b == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(vocab), static_cast<int>(d), 1.0f, emb, static_cast<int>(d), h_.data(), 1,
                0.0f, logits.data_ptr<float>(), 1);
  } else {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(b), static_cast<int>(vocab), static_cast<int>(d), 1.0f, h_.data(),
                static_cast<int>(d), emb, static_cast<int>(d), 0.0f, logits.data_ptr<float>(), static_cast<int>(vocab));
  }
  return logits;
}

}  // namespace vadapt::model

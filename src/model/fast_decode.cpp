// Decode step of a plain f32 or bf16 Llama on the CPU: cblas products, a few-rows kernel and
// plain loops (see the header).
#include "model/fast_decode.h"

#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>

#include "common/error.h"

namespace vadapt::model {
namespace {

using bf16 = c10::BFloat16;
using v16 = float __attribute__((vector_size(64), aligned(4)));

inline float to_f(float v) { return v; }
inline float to_f(bf16 v) { return static_cast<float>(v); }

// 16 consecutive weights as floats (a bf16 widens exactly: its bits are a float's upper half).
template <typename W>
__attribute__((always_inline)) inline void load16(const W* p, v16& v) {
  if constexpr (std::is_same_v<W, float>) {
    std::memcpy(&v, p, sizeof(v16));
  } else {
    using u16x16 = uint16_t __attribute__((vector_size(32), aligned(2)));
    using u32x16 = uint32_t __attribute__((vector_size(64)));
    u16x16 h;
    std::memcpy(&h, p, sizeof(h));
    const u32x16 w = __builtin_convertvector(h, u32x16) << 16;
    std::memcpy(&v, &w, sizeof(v16));
  }
}

// The sum of the 16 lanes as a tree (4 dependent adds, not 16: with 8 rows and 2 weight rows
// the sums are as many adds as the products of a 768-wide row).
__attribute__((always_inline)) inline float hsum(const v16& v) {
  float t[16];
  std::memcpy(t, &v, sizeof(t));
  for (int w = 8; w >= 1; w /= 2)
    for (int k = 0; k < w; ++k) t[k] += t[k + w];
  return t[0];
}

// A few rows times a weight matrix, reading the weight once: y[r, j] = x[r, :] . w[j, :] for
// rows r < B <= kRowsPerPass and outputs j in [j0, j1), in f32 whatever the weights' type.
// Why not BLAS: OpenBLAS 0.3.21's sgemm with 8 rows packs the whole weight on every call and ran
// at 4.4 GB/s here (its sgemv at 20.8, one core), and it has no bf16 product (Debian builds it
// without sbgemm). A decode step with 8 rows is one read of the weights, as with one row, plus
// 8x the arithmetic, which stays in registers: two weight rows stream once against the B rows of
// x (in L1).
constexpr int64_t kRowsPerPass = 8;

template <int B, typename W>
__attribute__((always_inline)) inline void rows_times_weight(const W* w, const float* x, int64_t in, int64_t out, int64_t j0, int64_t j1,
                                                             float* y) {
  int64_t j = j0;
  for (; j + 2 <= j1; j += 2) {
    const W* w0 = w + j * in;
    const W* w1 = w0 + in;
    v16 a0[B], a1[B];
    for (int r = 0; r < B; ++r) a0[r] = a1[r] = v16{};
    int64_t i = 0;
    for (; i + 16 <= in; i += 16) {
      v16 p0, p1, xv;
      load16(w0 + i, p0);
      load16(w1 + i, p1);
      for (int r = 0; r < B; ++r) {
        load16(x + r * in + i, xv);
        a0[r] += p0 * xv;
        a1[r] += p1 * xv;
      }
    }
    for (int r = 0; r < B; ++r) {
      float s0 = hsum(a0[r]), s1 = hsum(a1[r]);
      for (int64_t k = i; k < in; ++k) s0 += to_f(w0[k]) * x[r * in + k], s1 += to_f(w1[k]) * x[r * in + k];
      y[r * out + j] = s0;
      y[r * out + j + 1] = s1;
    }
  }
  for (; j < j1; ++j)
    for (int r = 0; r < B; ++r) {
      float s = 0.0f;
      for (int64_t k = 0; k < in; ++k) s += to_f(w[j * in + k]) * x[r * in + k];
      y[r * out + j] = s;
    }
}

template <typename W>
__attribute__((always_inline)) inline void rows_times_weight_any(const W* w, const float* x, int64_t b, int64_t in, int64_t out, int64_t j0,
                                                                 int64_t j1, float* y) {
  switch (b) {
    case 1: return rows_times_weight<1>(w, x, in, out, j0, j1, y);
    case 2: return rows_times_weight<2>(w, x, in, out, j0, j1, y);
    case 3: return rows_times_weight<3>(w, x, in, out, j0, j1, y);
    case 4: return rows_times_weight<4>(w, x, in, out, j0, j1, y);
    case 5: return rows_times_weight<5>(w, x, in, out, j0, j1, y);
    case 6: return rows_times_weight<6>(w, x, in, out, j0, j1, y);
    case 7: return rows_times_weight<7>(w, x, in, out, j0, j1, y);
    default: return rows_times_weight<8>(w, x, in, out, j0, j1, y);
  }
}

// The kernel compiled for AVX-512, AVX2 and baseline x86-64, picked at load time (GCC's function
// multi-versioning), so one binary runs everywhere at the machine's best width.
#if defined(__x86_64__) && defined(__GNUC__)
#define VADAPT_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VADAPT_CLONES
#endif
VADAPT_CLONES void rows_times_weight(const float* w, const float* x, int64_t b, int64_t in, int64_t out, int64_t j0, int64_t j1, float* y) {
  rows_times_weight_any(w, x, b, in, out, j0, j1, y);
}
VADAPT_CLONES void rows_times_weight(const bf16* w, const float* x, int64_t b, int64_t in, int64_t out, int64_t j0, int64_t j1, float* y) {
  rows_times_weight_any(w, x, b, in, out, j0, j1, y);
}

// Worker threads for the few-rows kernel: libtorch's intra-op pool is single-threaded here
// (inference leaves it at its default so that it does not spin against OpenBLAS's pool), and a
// decode step is ~90 products of a few hundred microseconds each, too short to start threads
// for. The workers spin a little after each product (the next follows within microseconds),
// then sleep; the calling thread takes a share itself. VADAPT_DECODE_THREADS overrides the count
// (default: the hardware threads).
class DecodePool {
 public:
  static DecodePool& get() {
    static DecodePool pool;
    return pool;
  }
  int64_t threads() const { return static_cast<int64_t>(workers_.size()) + 1; }
  // Runs fn(part) for part in [0, threads()), in parallel; returns when all are done.
  void run(const std::function<void(int64_t)>& fn) {
    if (workers_.empty()) return fn(0);
    std::lock_guard<std::mutex> one_caller(call_);
    {
      std::lock_guard<std::mutex> l(m_);
      fn_ = &fn;
      pending_.store(static_cast<int>(workers_.size()));
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    fn(0);
    while (pending_.load(std::memory_order_acquire) > 0) std::this_thread::yield();
  }
  ~DecodePool() {
    {
      std::lock_guard<std::mutex> l(m_);
      stop_ = true;
      generation_.fetch_add(1);
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
  }

 private:
  DecodePool() {
    int64_t n = std::max<int64_t>(1, std::thread::hardware_concurrency());
    if (const char* e = std::getenv("VADAPT_DECODE_THREADS"); e && std::atoi(e) > 0) n = std::atoi(e);
    for (int64_t i = 1; i < n; ++i) workers_.emplace_back([this, i] { work(i); });
  }
  void work(int64_t part) {
    uint64_t seen = 0;
    for (;;) {
      // Spin briefly for the next product of this step, then sleep.
      for (int spin = 0; spin < 2000 && generation_.load() == seen; ++spin) std::this_thread::yield();
      std::unique_lock<std::mutex> l(m_);
      cv_.wait(l, [&] { return generation_.load() != seen; });
      seen = generation_.load();
      if (stop_) return;
      const auto* fn = fn_;
      l.unlock();
      (*fn)(part);
      pending_.fetch_sub(1, std::memory_order_release);
    }
  }
  std::vector<std::thread> workers_;
  std::mutex m_, call_;
  std::condition_variable cv_;
  const std::function<void(int64_t)>* fn_ = nullptr;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};  // changed only under m_
  bool stop_ = false;
};

// y (B, out) = x (B, in) W^T, W (out, in) row-major. f32: OpenBLAS's sgemv for one row of a
// large weight, its sgemm beyond 16 rows; otherwise passes of up to 8 rows over the weight in
// the kernel above, split by outputs over the decode pool when the weight is large (a small
// model's products are a few microseconds: threads would cost more than they save; OpenBLAS's
// threaded sgemv made stories260K 2.4x slower than one thread).
constexpr int64_t kParallelFrom = 1 << 18;  // weight elements

template <typename W>
void matmul_rows(const float* x, int64_t b, const W* w, int64_t in, int64_t out, float* y) {
  const bool large = in * out >= kParallelFrom;
  if constexpr (std::is_same_v<W, float>) {
    if (b == 1 && large) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, static_cast<int>(out), static_cast<int>(in), 1.0f, w, static_cast<int>(in), x, 1, 0.0f, y, 1);
      return;
    }
    if (b > 2 * kRowsPerPass) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(b), static_cast<int>(out), static_cast<int>(in), 1.0f, x,
                  static_cast<int>(in), w, static_cast<int>(in), 0.0f, y, static_cast<int>(out));
      return;
    }
  }
  auto rows = [&](int64_t j0, int64_t j1) {
    for (int64_t r = 0; r < b; r += kRowsPerPass) rows_times_weight(w, x + r * in, std::min(kRowsPerPass, b - r), in, out, j0, j1, y + r * out);
  };
  auto& pool = DecodePool::get();
  if (!large || pool.threads() == 1) return rows(0, out);
  const int64_t n = pool.threads(), per = (out / n + 1) & ~int64_t{1};  // even splits keep the kernel's row pairs
  pool.run([&](int64_t part) { rows(std::min(out, part * per), std::min(out, (part + 1) * per)); });
}

template <typename W>
bool plain(const ProjectionImpl& p) {
  return p.adapters().empty() && !p.is_nf4() && p.weight.defined() && p.weight.is_contiguous() &&
         p.weight.scalar_type() == c10::CppTypeToScalarType<W>::value &&
         (!p.bias.defined() || (p.bias.is_contiguous() && p.bias.scalar_type() == p.weight.scalar_type()));
}

// y (B, out) = x (B, in) W^T + bias.
template <typename W>
void linear(const float* x, int64_t b, const ProjectionImpl& p, float* y) {
  const int64_t in = p.in_features, out = p.out_features;
  matmul_rows(x, b, p.weight.data_ptr<W>(), in, out, y);
  if (p.bias.defined()) {
    const W* bias = p.bias.data_ptr<W>();
    for (int64_t r = 0; r < b; ++r)
      for (int64_t i = 0; i < out; ++i) y[r * out + i] += to_f(bias[i]);
  }
}

// out = weight * x / sqrt(mean(x^2) + eps), per row of d (weight: the norm's, as float32).
void rms_norm(const float* x, int64_t b, int64_t d, const float* w, double eps, float* out) {
  for (int64_t r = 0; r < b; ++r) {
    const float* xr = x + r * d;
    float ss = 0.0f;
    for (int64_t i = 0; i < d; ++i) ss += xr[i] * xr[i];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(d) + static_cast<float>(eps));
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
  const auto dt = lm.dtype();
  if (dt != torch::kFloat32 && dt != torch::kBFloat16) return no("weights are neither float32 nor bfloat16");
  auto plain_proj = [&](const ProjectionImpl& p) { return dt == torch::kFloat32 ? plain<float>(p) : plain<bf16>(p); };
  const auto& c = lm.config();
  if (c.head_dim % 2 != 0) return no("odd head_dim");
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    auto& l = lm.layer(i);
    if (!l.hooks.adapters.empty()) return no("a sub-layer adapter");
    if (l.self_attn->prefix) return no("an attention prefix");
    for (const auto* p : {&*l.self_attn->q_proj, &*l.self_attn->k_proj, &*l.self_attn->v_proj, &*l.self_attn->o_proj, &*l.mlp->gate_proj,
                          &*l.mlp->up_proj, &*l.mlp->down_proj})
      if (!plain_proj(*p)) return no("a projection with an adapter, NF4, non-contiguous weights or weights of another dtype");
    for (const auto* n : {&*l.input_layernorm, &*l.post_attention_layernorm})
      if (!n->weight.is_floating_point()) return no("norm weights not floating point");
  }
  if (lm.lm_head && !plain_proj(*lm.lm_head)) return no("lm_head has an adapter or another dtype");
  if (!lm.model->embed_tokens->weight.is_contiguous() || !lm.model->norm->weight.is_floating_point())
    return no("embedding not contiguous or final norm not floating point");
  return std::unique_ptr<FastDecoder>(new FastDecoder(lm));
}

FastDecoder::FastDecoder(LlamaForCausalLMImpl& lm) : lm_(lm) {
  // The norms' weights as float32 (a trained norm may be float32 beside bf16 weights).
  auto f32 = [](const torch::Tensor& w) { return w.detach().to(torch::kFloat32).contiguous(); };
  for (int64_t i = 0; i < lm.config().num_hidden_layers; ++i) {
    norms_.push_back(f32(lm.layer(i).input_layernorm->weight));
    norms_.push_back(f32(lm.layer(i).post_attention_layernorm->weight));
  }
  norms_.push_back(f32(lm.model->norm->weight));
}

torch::Tensor decode_logits(LlamaForCausalLMImpl& lm, FastDecoder* fast, const torch::Tensor& ids, ForwardContext& ctx) {
  if (fast && FastDecoder::applies(ctx)) return fast->step(ids, ctx);
  auto x = lm.embed(ids.view({-1, 1}).to(lm.device()));        // (B, 1, d)
  return lm.logits(lm.forward_embeds(x, ctx)).select(1, 0);    // (B, V)
}

torch::Tensor FastDecoder::step(const torch::Tensor& ids, ForwardContext& ctx) {
  if (lm_.dtype() == torch::kBFloat16) return step_as<c10::BFloat16>(ids, ctx);
  return step_as<float>(ids, ctx);
}

template <typename W>
torch::Tensor FastDecoder::step_as(const torch::Tensor& ids_in, ForwardContext& ctx) {
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
  pos_.assign(static_cast<size_t>(b), past);
  if (ctx.position_ids.defined()) {
    auto p = ctx.position_ids.to(torch::kCPU, torch::kInt64).contiguous().view({-1});
    TORCH_CHECK(p.numel() == b, "decode: position_ids must be (", b, ", 1)");
    for (int64_t r = 0; r < b; ++r) pos_[static_cast<size_t>(r)] = p.data_ptr<int64_t>()[r];
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
    if (pos_[static_cast<size_t>(r)] < 0 || pos_[static_cast<size_t>(r)] >= cos_t.size(0))
      throw VadaptError(cat("decode: position ", pos_[static_cast<size_t>(r)], " outside the RoPE table of ", cos_t.size(0)));

  x_.resize(static_cast<size_t>(b * d));
  h_.resize(static_cast<size_t>(b * d));
  q_.resize(static_cast<size_t>(b * nh * hd));
  k_.resize(static_cast<size_t>(b * nkv * hd));
  v_.resize(static_cast<size_t>(b * nkv * hd));
  att_.resize(static_cast<size_t>(b * nh * hd));
  gate_.resize(static_cast<size_t>(b * ff));
  up_.resize(static_cast<size_t>(b * ff));
  scores_.resize(static_cast<size_t>(s));
  const W* emb = lm_.model->embed_tokens->weight.template data_ptr<W>();
  for (int64_t r = 0; r < b; ++r) {
    if (id[r] < 0 || id[r] >= vocab) throw VadaptError(cat("token id out of range [0, ", vocab, "): got ", id[r]));
    for (int64_t i = 0; i < d; ++i) x_[static_cast<size_t>(r * d + i)] = to_f(emb[id[r] * d + i]);
  }
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(hd)));
  for (int64_t li = 0; li < c.num_hidden_layers; ++li) {
    auto& l = lm_.layer(li);
    auto& at = *l.self_attn;
    rms_norm(x_.data(), b, d, norms_[static_cast<size_t>(2 * li)].data_ptr<float>(), l.input_layernorm->eps, h_.data());
    linear<W>(h_.data(), b, *at.q_proj, q_.data());
    linear<W>(h_.data(), b, *at.k_proj, k_.data());
    linear<W>(h_.data(), b, *at.v_proj, v_.data());
    auto& kt = cache.keys(li);
    auto& vt = cache.values(li);
    TORCH_CHECK(kt.is_contiguous() && vt.is_contiguous() && kt.scalar_type() == lm_.dtype() && vt.scalar_type() == lm_.dtype(),
                "decode: KV cache buffers must be contiguous and of the weights' dtype");
    W* kc = kt.template data_ptr<W>();  // (B, KV, cap, D)
    W* vc = vt.template data_ptr<W>();  // (B, KV, cap, D)
    for (int64_t r = 0; r < b; ++r) {
      const int64_t p = pos_[static_cast<size_t>(r)];
      rope(q_.data() + r * nh * hd, nh, hd, cos + p * hd, sin + p * hd);
      rope(k_.data() + r * nkv * hd, nkv, hd, cos + p * hd, sin + p * hd);
      for (int64_t g = 0; g < nkv; ++g) {
        const int64_t at_row = ((r * nkv + g) * cap + past) * hd;
        for (int64_t i = 0; i < hd; ++i) {
          kc[at_row + i] = W(k_[static_cast<size_t>((r * nkv + g) * hd + i)]);
          vc[at_row + i] = W(v_[static_cast<size_t>((r * nkv + g) * hd + i)]);
        }
      }
      const int64_t* km = key_mask.defined() ? key_mask.data_ptr<int64_t>() + r * s : nullptr;
      for (int64_t hh = 0; hh < nh; ++hh) {
        const int64_t g = hh / rep;
        const float* q = q_.data() + (r * nh + hh) * hd;
        const W* keys = kc + (r * nkv + g) * cap * hd;
        const W* vals = vc + (r * nkv + g) * cap * hd;
        float mx = -INFINITY;
        for (int64_t t = 0; t < s; ++t) {
          if (km && km[t] == 0) continue;
          float dot = 0.0f;
          for (int64_t i = 0; i < hd; ++i) dot += q[i] * to_f(keys[t * hd + i]);
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
          for (int64_t i = 0; i < hd; ++i) o[i] += w * to_f(vals[t * hd + i]);
        }
      }
    }
    linear<W>(att_.data(), b, *at.o_proj, h_.data());
    for (int64_t i = 0; i < b * d; ++i) x_[static_cast<size_t>(i)] += h_[static_cast<size_t>(i)];
    rms_norm(x_.data(), b, d, norms_[static_cast<size_t>(2 * li + 1)].data_ptr<float>(), l.post_attention_layernorm->eps, h_.data());
    linear<W>(h_.data(), b, *l.mlp->gate_proj, gate_.data());
    linear<W>(h_.data(), b, *l.mlp->up_proj, up_.data());
    for (int64_t i = 0; i < b * ff; ++i) {
      const float g = gate_[static_cast<size_t>(i)];
      gate_[static_cast<size_t>(i)] = g / (1.0f + std::exp(-g)) * up_[static_cast<size_t>(i)];
    }
    linear<W>(gate_.data(), b, *l.mlp->down_proj, h_.data());
    for (int64_t i = 0; i < b * d; ++i) x_[static_cast<size_t>(i)] += h_[static_cast<size_t>(i)];
  }
  cache.advance(1);
  rms_norm(x_.data(), b, d, norms_.back().data_ptr<float>(), lm_.model->norm->eps, h_.data());
  auto logits = torch::empty({b, vocab}, torch::kFloat32);
  if (lm_.lm_head) linear<W>(h_.data(), b, *lm_.lm_head, logits.data_ptr<float>());
  else matmul_rows(h_.data(), b, emb, d, vocab, logits.data_ptr<float>());
  return logits;
}

}  // namespace vadapt::model

// The seams through which adapters act on the frozen models. Base models call these hooks
// and never name an adapter class; an empty hook list means the plain model.
//  - projection output (LoRA, QLoRA, bias/scale):      y = base(x); for a in adapters: y = a(x, y)
//  - attention prefix (LLaMA-Adapter gated prompts):    out += prefix.attend(q, view, ctx)
//  - sub-layer input (LaVIN MMA, bottleneck adapters):  x = adapter(x, where, layer, ctx)
//  - input embeddings (projectors, resamplers):         CausalLM::forward_embeds(x, ctx)
#pragma once

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace vadapt::model {

class KVCache;
class ProjectionImpl;

// Per-sample state of the adapters for one sequence batch, alive from prefill to the last decode
// step. Every tensor has the batch as its first dimension, so beam search can reorder it.
struct AdapterState {
  torch::Tensor condition;  // (B, ...) per-sample conditioning (LLaMA-Adapter V1: the visual token (B, d))
  torch::Tensor modality;   // (B,) per-sample modality flags for routed adapters
  // State an adapter computes at prefill and reuses at decode ("layer.3.route" -> (B, ...)).
  std::map<std::string, torch::Tensor> kept;
  // Added to the RoPE positions of a forward without past keys (training, prefill) and of one
  // with past keys (decode steps). LaVIN: 1 and 1, its modality token holds position 0 outside
  // the sequence; the official decode's positions are reproduced with 1 and 0.
  int64_t position_offset = 0, decode_position_offset = 0;
  bool empty() const {
    return !condition.defined() && !modality.defined() && kept.empty() && position_offset == 0 && decode_position_offset == 0;
  }
  // Keeps the rows in `index` (B',) of every tensor (beam search; expanding one prompt to n beams).
  void select_rows(const torch::Tensor& index) {
    auto pick = [&](torch::Tensor& t) {
      if (t.defined()) t = t.index_select(0, index.to(t.device()));
    };
    pick(condition);
    pick(modality);
    for (auto& kv : kept) pick(kv.second);
  }
  // Whether rows with state `b` can run in one batch with rows with state `a` (continuous
  // batching): the same fields and kept keys, of the same shapes but for the rows, and the same
  // position offsets.
  static bool stackable(const AdapterState& a, const AdapterState& b) {
    auto same = [](const torch::Tensor& x, const torch::Tensor& y) {
      if (x.defined() != y.defined()) return false;
      if (!x.defined()) return true;
      return x.dim() == y.dim() && x.dim() > 0 && x.sizes().slice(1) == y.sizes().slice(1) && x.scalar_type() == y.scalar_type();
    };
    if (!same(a.condition, b.condition) || !same(a.modality, b.modality) || a.kept.size() != b.kept.size()) return false;
    for (const auto& [k, t] : a.kept) {
      auto it = b.kept.find(k);
      if (it == b.kept.end() || !same(t, it->second)) return false;
    }
    return a.position_offset == b.position_offset && a.decode_position_offset == b.decode_position_offset;
  }
  // a's rows then b's (stackable(a, b) must hold).
  static AdapterState stack(const AdapterState& a, const AdapterState& b) {
    AdapterState out = a;
    auto cat = [](const torch::Tensor& x, const torch::Tensor& y) { return x.defined() ? torch::cat({x, y.to(x.device())}, 0) : x; };
    out.condition = cat(a.condition, b.condition);
    out.modality = cat(a.modality, b.modality);
    for (auto& [k, t] : out.kept) t = cat(t, b.kept.at(k));
    return out;
  }
};

// Per-call state threaded through a forward pass.
struct ForwardContext {
  KVCache* cache = nullptr;      // null: no cache; keys are exactly this call's tokens
  torch::Tensor position_ids;    // (B, T) int64; undefined: past_length + arange(T)
  torch::Tensor attention_mask;  // (B, S) 1 = real token over past + current keys; undefined: all real
  AdapterState* adapter_state = nullptr;  // null: no per-sample adapter state
};

class ProjectionAdapter {
 public:
  virtual ~ProjectionAdapter() = default;
  // x: the projection's input (..., in); y: the output so far (..., out). Returns the new output.
  virtual torch::Tensor apply(const torch::Tensor& x, torch::Tensor y) = 0;
};

// What an attention-prefix adapter may see of the frozen attention layer.
struct AttentionView {
  ProjectionImpl& k_proj;  // the frozen projections (adapters on them run in forward(), not in base_forward())
  ProjectionImpl& v_proj;
  int64_t num_heads;
  int64_t num_kv_heads;
  int64_t head_dim;
  int64_t layer;
};

class AttentionPrefix {
 public:
  virtual ~AttentionPrefix() = default;
  // q: (B, H, T, D) queries after RoPE. Returns (B, H, T, D), added to the attention output
  // before o_proj.
  virtual torch::Tensor attend(const torch::Tensor& q, const AttentionView& view, const ForwardContext& ctx) = 0;
};

enum class Sublayer { kAttention, kMlp };

class SublayerAdapter {
 public:
  virtual ~SublayerAdapter() = default;
  // x: the (B, T, d) input of the sub-layer (after its norm). Returns the input to use.
  virtual torch::Tensor apply(const torch::Tensor& x, Sublayer where, int64_t layer, const ForwardContext& ctx) = 0;
};

// Hook lists live in the blocks; the adapters themselves are owned elsewhere (AdapterSet).
struct SublayerHooks {
  std::vector<std::shared_ptr<SublayerAdapter>> adapters;
  torch::Tensor run(torch::Tensor x, Sublayer where, int64_t layer, const ForwardContext& ctx) const {
    for (const auto& a : adapters) x = a->apply(x, where, layer, ctx);
    return x;
  }
};

}  // namespace vadapt::model

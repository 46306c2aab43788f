// LaVIN's router adapter and its per-block attachment.
#include "adapters/router_adapter.h"

#include <cmath>

#include "common/error.h"
#include "connectors/linear_init.h"
#include "model/module_path.h"

namespace vadapt::adapters {

GroupedLinearImpl::GroupedLinearImpl(int64_t in_, int64_t out_, int64_t groups_) : in(in_), out(out_), groups(groups_) {
  if (groups <= 0 || in % groups != 0 || out % groups != 0)
    throw VadaptError(cat("router adapter: hidden ", in, " and width ", out, " must both divide into ", groups, " groups"));
  weight = register_parameter("weight", torch::zeros({out, in / groups}));  // zero init: the adapter starts as the identity
  bias = register_parameter("bias", torch::zeros({out}));
}

torch::Tensor GroupedLinearImpl::forward(const torch::Tensor& x) {
  auto lead = x.sizes().vec();
  lead.pop_back();
  auto xg = x.reshape({-1, groups, in / groups});                         // (N, g, in/g)
  auto wg = weight.view({groups, out / groups, in / groups});             // (g, out/g, in/g)
  auto y = torch::einsum("ngi,goi->ngo", {xg, wg}).reshape({-1, out});    // (N, out)
  lead.push_back(out);
  return (y + bias).view(lead);                                           // (..., out)
}

RouterAdapterImpl::RouterAdapterImpl(int64_t dim, const RouterOptions& o, at::Generator& gen) : o_(o) {
  conv_A = register_module("conv_A", connectors::trainable_linear(dim, o.hidden, "xavier", gen));
  conv_B = register_module("conv_B", GroupedLinear(o.hidden, dim, o.groups));
  conv_D = register_module("conv_D", GroupedLinear(o.hidden, dim, o.groups));
  expert_weights = register_module("expert_weights", connectors::trainable_linear(dim, 2, "default", gen));
}

// The adapter computes in its own dtype (fp32 trainables) whatever the frozen model's (bf16 / fp16
// weights without autocast); the residual stays in the model's.
torch::Tensor RouterAdapterImpl::route(const torch::Tensor& r) {
  return torch::softmax(expert_weights(r.to(expert_weights->weight.scalar_type())) / o_.temperature, -1);  // (..., 2)
}

torch::Tensor RouterAdapterImpl::forward(const torch::Tensor& x, const torch::Tensor& w) {
  auto a = conv_A(x.to(conv_A->weight.scalar_type()));                    // (B, S, hidden)
  if (is_training() && o_.dropout > 0) a = torch::dropout(a, o_.dropout, true);
  auto wt = w.to(a.scalar_type());
  auto mix = wt.select(-1, 0).unsqueeze(-1) * conv_B(a) + wt.select(-1, 1).unsqueeze(-1) * conv_D(a);  // (B, S, dim)
  return x + (o_.scale * mix).to(x.scalar_type());
}

RouterSetImpl::RouterSetImpl(int64_t dim, int64_t blocks, bool before_mlp, const RouterOptions& o, Routing routing, std::string key,
                             uint64_t seed, torch::Device device)
    : before_mlp_(before_mlp), o_(o), routing_(routing), key_(std::move(key)) {
  auto gen = at::detail::createCPUGenerator(seed);
  for (int64_t i = 0; i < blocks; ++i) {
    attn_.push_back(model::register_at(*this, cat(i, ".adapter_attn"), RouterAdapter(dim, o, gen)));
    if (before_mlp) mlp_.push_back(model::register_at(*this, cat(i, ".adapter_mlp"), RouterAdapter(dim, o, gen)));
  }
  to(device);
}

RouterAdapter& RouterSetImpl::at(int64_t block, bool mlp) { return mlp ? mlp_.at(block) : attn_.at(block); }

std::string RouterSetImpl::kept_key(int64_t block, bool mlp) const { return cat(key_, ".", block, mlp ? ".mlp" : ".attn"); }

torch::Tensor RouterSetImpl::apply(const torch::Tensor& x, model::Sublayer where, int64_t layer, const model::ForwardContext& ctx) {
  const bool mlp = where == model::Sublayer::kMlp;
  if (mlp && !before_mlp_) return x;
  auto& r = at(layer, mlp);
  torch::Tensor w;
  switch (routing_) {
    case Routing::kKept: {
      auto* st = ctx.adapter_state;
      const std::string k = kept_key(layer, mlp);
      if (st && st->kept.count(k)) {
        w = st->kept.at(k).unsqueeze(1);  // (B, 1, 2)
      } else {
        auto computed = r->route(x.select(1, 0));  // (B, 2) from position 0
        if (st) st->kept[k] = computed;
        w = computed.unsqueeze(1);
      }
      break;
    }
    case Routing::kPerImage: w = r->route(x.select(1, 0)).unsqueeze(1); break;           // (B, 1, 2): each image's CLS
    case Routing::kPerToken: w = r->route(x); break;                                   // (B, S, 2)
    case Routing::kOfficialBatch0: w = r->route(x.select(0, 0)).unsqueeze(0); break;     // (1, S, 2): image 0's tokens
  }
  return r->forward(x, w);
}

}  // namespace vadapt::adapters

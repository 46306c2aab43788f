// LLaMA-Adapter V2 visual branch: parameters under the official names and the forward.
#include "connectors/visual_branch.h"

#include <cmath>

#include "common/error.h"
#include "model/module_path.h"

namespace vadapt::connectors {
namespace {
namespace F = torch::nn::functional;
// nn.Linear's init (kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(in)), bias U(+-1/sqrt(in))) under `path`.
std::pair<torch::Tensor, torch::Tensor> linear(torch::nn::Module& root, const std::string& path, int64_t in, int64_t out, at::Generator& gen) {
  auto& m = model::namespace_module(root, path);
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  auto w = torch::empty({out, in}).uniform_(-bound, bound, gen);
  auto b = torch::empty({out}).uniform_(-bound, bound, gen);
  return {m.register_parameter("weight", w), m.register_parameter("bias", b)};
}
std::pair<torch::Tensor, torch::Tensor> layer_norm(torch::nn::Module& root, const std::string& path, int64_t dim) {
  auto& m = model::namespace_module(root, path);
  return {m.register_parameter("weight", torch::ones({dim})), m.register_parameter("bias", torch::zeros({dim}))};
}
}  // namespace

VisualBranchImpl::VisualBranchImpl(const VisualBranchOptions& o, uint64_t seed) : o_(o) {
  if (o.in <= 0 || o.width <= 0 || o.queries <= 0 || o.depth < 0 || o.heads <= 0 || o.out <= 0 || o.mlp_ratio <= 0)
    throw VadaptError(cat("visual branch: sizes must be positive (in ", o.in, ", width ", o.width, ", queries ", o.queries, ", depth ", o.depth,
                          ", heads ", o.heads, ", mlp_ratio ", o.mlp_ratio, ")"));
  if (o.width % o.heads != 0) throw VadaptError(cat("visual branch: width ", o.width, " is not divisible by heads ", o.heads));
  auto gen = at::detail::createCPUGenerator(seed);
  std::tie(clip_proj_w, clip_proj_b) = linear(*this, "clip_proj", o.in, o.width, gen);
  std::tie(clip_norm_w, clip_norm_b) = layer_norm(*this, "clip_proj_norm", o.width);
  query = model::namespace_module(*this, "visual_query").register_parameter("weight", torch::empty({o.queries, o.width}).normal_(0.0, 1.0, gen));
  const int64_t hidden = static_cast<int64_t>(static_cast<double>(o.width) * o.mlp_ratio);
  for (int64_t i = 0; i < o.depth; ++i) {
    const std::string p = cat("visual_blocks.", i, ".");
    Block b;
    std::tie(b.n1w, b.n1b) = layer_norm(*this, p + "norm1", o.width);
    std::tie(b.qkv_w, b.qkv_b) = linear(*this, p + "attn.qkv", o.width, 3 * o.width, gen);
    std::tie(b.proj_w, b.proj_b) = linear(*this, p + "attn.proj", o.width, o.width, gen);
    std::tie(b.n2w, b.n2b) = layer_norm(*this, p + "norm2", o.width);
    std::tie(b.fc1_w, b.fc1_b) = linear(*this, p + "mlp.fc1", o.width, hidden, gen);
    std::tie(b.fc2_w, b.fc2_b) = linear(*this, p + "mlp.fc2", hidden, o.width, gen);
    blocks_.push_back(b);
  }
  std::tie(vproj_w, vproj_b) = linear(*this, "visual_proj", o.width, o.out, gen);
  std::tie(vnorm_w, vnorm_b) = layer_norm(*this, "visual_proj_norm", o.out);
}

torch::Tensor VisualBranchImpl::block(const Block& b, const torch::Tensor& x) const {
  const int64_t m = x.size(0), n = x.size(1), h = o_.heads, hd = o_.width / o_.heads;
  auto y = torch::layer_norm(x, {o_.width}, b.n1w, b.n1b, o_.eps);                             // (M, S, w)
  auto qkv = F::linear(y, b.qkv_w, b.qkv_b).view({m, n, 3, h, hd}).permute({2, 0, 3, 1, 4});   // (3, M, h, S, hd)
  auto att = torch::softmax(torch::matmul(qkv[0], qkv[1].transpose(-1, -2)) * (1.0 / std::sqrt(static_cast<double>(hd))), -1);  // (M, h, S, S)
  auto a = torch::matmul(att, qkv[2]).transpose(1, 2).reshape({m, n, o_.width});              // (M, S, w)
  auto x1 = x + F::linear(a, b.proj_w, b.proj_b);                                               // (M, S, w)
  y = torch::layer_norm(x1, {o_.width}, b.n2w, b.n2b, o_.eps);
  return x1 + F::linear(torch::gelu(F::linear(y, b.fc1_w, b.fc1_b)), b.fc2_w, b.fc2_b);         // (M, S, w)
}

torch::Tensor VisualBranchImpl::forward(const torch::Tensor& feats) {
  if (feats.dim() != 3 || feats.size(2) != o_.in)
    throw VadaptError(cat("visual branch: expected features (M, N, ", o_.in, "), got ", feats.sizes()));
  auto x = feats.to(clip_proj_w.dtype());
  x = torch::layer_norm(F::linear(x, clip_proj_w, clip_proj_b), {o_.width}, clip_norm_w, clip_norm_b, o_.eps);  // (M, N, w)
  x = torch::cat({query.unsqueeze(0).expand({x.size(0), o_.queries, o_.width}), x}, 1);                      // (M, Q+N, w)
  for (const auto& b : blocks_) x = block(b, x);
  x = x.narrow(1, 0, o_.queries);                                                                             // (M, Q, w)
  return torch::layer_norm(F::linear(x, vproj_w, vproj_b), {o_.out}, vnorm_w, vnorm_b, o_.eps);             // (M, Q, out)
}

int64_t VisualBranchImpl::parameter_count(const VisualBranchOptions& o) {
  const int64_t w = o.width, hidden = static_cast<int64_t>(static_cast<double>(w) * o.mlp_ratio);
  const int64_t block = 4 * w + (3 * w * w + 3 * w) + (w * w + w) + (w * hidden + hidden) + (hidden * w + w);
  return (o.in * w + w) + 2 * w + o.queries * w + o.depth * block + (w * o.out + o.out) + 2 * o.out;
}

}  // namespace vadapt::connectors

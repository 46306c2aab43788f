// NF4 quantisation / dequantisation with torch ops (vectorised, device-agnostic).
#include "model/nf4.h"

#include <cmath>

namespace vadapt::model {

const std::vector<float>& nf4_levels() {
  static const std::vector<float> levels = {
      -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,
      0.7229568362236023f, 1.0f};
  return levels;
}

int64_t Nf4Weight::bytes() const {
  return codes.numel() + absmax_q.numel() + absmax_scale.numel() * 4 + 8;
}

const torch::Tensor& dynamic8_code() {
  // create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for exponent i = 0..6,
  // 2^i means of linspace(0.1, 1, 2^i + 1), scaled by 10^(i-6), with both signs; then 0 and 1.
  // float32 throughout, as bitsandbytes builds it with torch.
  static const torch::Tensor code = [] {
    std::vector<torch::Tensor> parts;
    for (int64_t i = 0; i < 7; ++i) {
      auto b = torch::linspace(0.1, 1.0, (int64_t{1} << i) + 1, torch::kFloat32);
      auto means = (b.narrow(0, 0, b.size(0) - 1) + b.narrow(0, 1, b.size(0) - 1)) / 2.0;
      const double scale = std::pow(10.0, static_cast<double>(i - 6));
      parts.push_back(means * scale);
      parts.push_back(means * -scale);
    }
    parts.push_back(torch::tensor({0.0f, 1.0f}));
    return std::get<0>(torch::cat(parts).sort());
  }();
  return code;
}

Nf4Weight nf4_quantize(const torch::Tensor& w, Nf4DoubleQuant dq) {
  torch::NoGradGuard ng;
  Nf4Weight q;
  q.double_quant = dq;
  q.shape = w.sizes().vec();
  q.numel = w.numel();
  auto dev = w.device();
  auto flat = w.detach().to(torch::kFloat32).reshape({-1});
  const int64_t blocks = (q.numel + kNf4Block - 1) / kNf4Block;
  flat = torch::nn::functional::pad(flat, torch::nn::functional::PadFuncOptions({0, blocks * kNf4Block - q.numel}));
  auto b = flat.view({blocks, kNf4Block});                                   // (blocks, 64)
  auto absmax = b.abs().amax(1);                                             // (blocks,)
  auto levels = torch::tensor(nf4_levels(), torch::TensorOptions().dtype(torch::kFloat32)).to(dev);
  auto mid = (levels.narrow(0, 0, 15) + levels.narrow(0, 1, 15)) / 2;        // (15,)
  // Double quantisation of absmax: int8 around the mean, one scale per 256 blocks.
  q.absmax_offset = absmax.mean().item<double>();
  const int64_t groups = (blocks + kNf4ScaleBlock - 1) / kNf4ScaleBlock;
  auto centered = torch::nn::functional::pad(absmax - q.absmax_offset,
                                             torch::nn::functional::PadFuncOptions({0, groups * kNf4ScaleBlock - blocks}))
                      .view({groups, kNf4ScaleBlock});                       // (groups, 256)
  if (dq == Nf4DoubleQuant::kLinear8) {
    q.absmax_scale = (centered.abs().amax(1) / 127.0).clamp_min(1e-12);      // (groups,)
    q.absmax_q = torch::round(centered / q.absmax_scale.unsqueeze(1)).clamp(-127, 127).to(torch::kInt8).view({-1}).narrow(0, 0, blocks);
  } else {
    // quantize_blockwise(absmax - mean, code, blocksize 256): nearest code value of x / block absmax.
    q.absmax_scale = centered.abs().amax(1);                                 // (groups,)
    auto norm = centered / q.absmax_scale.clamp_min(1e-30).unsqueeze(1);     // (groups, 256)
    const auto& code = dynamic8_code().to(dev);
    auto cmid = (code.narrow(0, 0, 255) + code.narrow(0, 1, 255)) / 2;       // (255,)
    q.absmax_q = torch::bucketize(norm.clamp(-1, 1), cmid).to(torch::kUInt8).view({-1}).narrow(0, 0, blocks).contiguous();
  }
  auto absmax_deq = nf4_block_absmax(q);                                     // (blocks,)
  auto norm = b / absmax_deq.clamp_min(1e-12).unsqueeze(1);                  // (blocks, 64)
  auto codes = torch::bucketize(norm.clamp(-1, 1), mid).to(torch::kUInt8).view({-1});  // (blocks*64,)
  auto pairs = codes.view({-1, 2});
  q.codes = (pairs.select(1, 0).bitwise_left_shift(4) | pairs.select(1, 1)).contiguous();  // (blocks*32,)
  return q;
}

torch::Tensor nf4_block_absmax(const Nf4Weight& q) {
  const int64_t blocks = q.absmax_q.size(0);
  auto scale = q.absmax_scale.repeat_interleave(kNf4ScaleBlock).narrow(0, 0, blocks);  // (blocks,)
  if (q.double_quant == Nf4DoubleQuant::kDynamic8)  // dequantize_blockwise, then += offset (float32)
    return dynamic8_code().to(q.absmax_q.device()).index_select(0, q.absmax_q.to(torch::kInt64)) * scale +
           static_cast<float>(q.absmax_offset);
  return q.absmax_q.to(torch::kFloat32) * scale + q.absmax_offset;                     // (blocks,)
}

torch::Tensor nf4_dequantize(const Nf4Weight& q, torch::ScalarType dtype) {
  auto hi = q.codes.bitwise_right_shift(4).to(torch::kInt64);
  auto lo = q.codes.bitwise_and(15).to(torch::kInt64);
  auto codes = torch::stack({hi, lo}, 1).view({-1});                                    // (blocks*64,)
  auto levels = torch::tensor(nf4_levels(), torch::TensorOptions().dtype(torch::kFloat32)).to(q.codes.device());
  auto vals = levels.index_select(0, codes).view({-1, kNf4Block});                      // (blocks, 64)
  auto w = (vals * nf4_block_absmax(q).unsqueeze(1)).view({-1}).narrow(0, 0, q.numel);  // (numel,)
  return w.view(q.shape).to(dtype);
}

}  // namespace vadapt::model

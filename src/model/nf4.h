// NF4 4-bit weight storage with double-quantised block scales (QLoRA, Dettmers et al. 2023,
// arXiv 2305.14314): weights in blocks of 64 are scaled by their absmax and rounded to the
// nearest of the 16 NormalFloat levels (two codes per byte); the fp32 absmax values are
// themselves stored as int8 around their mean with one fp32 scale per 256 blocks (kLinear8,
// the default), or as bitsandbytes stores them (kDynamic8: an index into its signed dynamic
// 8-bit code, create_dynamic_map(signed=True), times the absmax of each 256 block, plus the
// mean), so that bitsandbytes-quantised weights dequantise exactly.
// Dequantisation is exact given the stored codes; the round-trip error of an element is at
// most absmax' * 0.152 (half the widest gap between levels) + |absmax - absmax'|.
#pragma once

#include <torch/torch.h>

#include <vector>

namespace vadapt::model {

enum class Nf4DoubleQuant { kLinear8, kDynamic8 };

struct Nf4Weight {
  Nf4DoubleQuant double_quant = Nf4DoubleQuant::kLinear8;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  torch::Tensor codes;         // (ceil(numel / 2),) uint8, two 4-bit codes per byte
  torch::Tensor absmax_q;      // (blocks,) int8 (kLinear8) or uint8 code indices (kDynamic8)
  torch::Tensor absmax_scale;  // (ceil(blocks / 256),) float32: step (kLinear8) or block absmax (kDynamic8)
  double absmax_offset = 0;
  int64_t bytes() const;
};

constexpr int64_t kNf4Block = 64;
constexpr int64_t kNf4ScaleBlock = 256;
const std::vector<float>& nf4_levels();

// bitsandbytes' signed dynamic 8-bit code (256 sorted float32 values in [-1, 1]).
const torch::Tensor& dynamic8_code();

Nf4Weight nf4_quantize(const torch::Tensor& w, Nf4DoubleQuant dq = Nf4DoubleQuant::kLinear8);
torch::Tensor nf4_dequantize(const Nf4Weight& q, torch::ScalarType dtype);
// The absmax of every block after double quantisation (for error bounds).
torch::Tensor nf4_block_absmax(const Nf4Weight& q);

}  // namespace vadapt::model

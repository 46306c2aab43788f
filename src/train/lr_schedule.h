// Learning-rate schedules as multipliers of the base lr at optimizer step s of S:
//   cosine      linear warmup, then 0.5 (1 + cos(pi p))        (HF get_cosine_schedule_with_warmup; LLaVA)
//   linear      linear warmup, then linear decay to 0          (LLaVA scaling study, stage 1)
//   half_cosine per-iteration warmup + half-cycle cosine       (MAE rule used by LLaMA-Adapter / LaVIN;
//               with lr = blr * global_batch / 256 set by the trainer)
//   constant    warmup, then 1
#pragma once

#include <cstdint>
#include <string>

namespace vadapt::train {

double lr_multiplier(const std::string& schedule, int64_t step, int64_t total_steps, int64_t warmup_steps);

}  // namespace vadapt::train

// Learning-rate schedule multipliers.
#include "train/lr_schedule.h"

#include <algorithm>
#include <cmath>

#include "common/error.h"

namespace vadapt::train {

double lr_multiplier(const std::string& schedule, int64_t s, int64_t total, int64_t warmup) {
  if (warmup > 0 && s < warmup) return static_cast<double>(s) / static_cast<double>(warmup);
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  const double p = std::min(1.0, static_cast<double>(s - warmup) / span);
  if (schedule == "cosine" || schedule == "half_cosine") return 0.5 * (1.0 + std::cos(M_PI * p));
  if (schedule == "linear") return std::max(0.0, 1.0 - p);
  if (schedule == "constant") return 1.0;
  throw VadaptError(cat("unknown lr schedule '", schedule, "' (cosine, linear, half_cosine, constant)"));
}

}  // namespace vadapt::train

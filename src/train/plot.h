// A PNG of a training curve (train loss per log step, validation loss points), drawn with
// stb_image_write + stb_truetype so that no plotting stack is needed.
#pragma once

#include <string>
#include <vector>

namespace vadapt::train {

struct CurvePoint {
  double step, value;
};

// Writes `path` atomically: 800x480, log-free linear axes with tick labels, train loss as a blue
// line, validation loss as red dots. Labels are skipped when the font file is missing.
void write_curve_png(const std::string& path, const std::vector<CurvePoint>& train, const std::vector<CurvePoint>& val,
                     const std::string& title);

}  // namespace vadapt::train

// The chat page `vadapt serve` answers GET / with: one self-contained HTML file (no external
// scripts, styles or fonts): pick a model, attach an image (thumbnail), type, watch the answer
// stream in from /v1/chat/completions.
#pragma once

#include <string>

namespace vadapt::serve {

const std::string& web_page();

}  // namespace vadapt::serve

// Expert models at inference (LLaMA-Adapter V2, paper §3.4): an image-to-text system whose text
// is put into the prompt as context before the question. Two experts:
//   ocr      Tesseract through its C++ API (Debian libtesseract-dev + tesseract-ocr-eng): the
//            words read in the image;
//   caption  any trained caption adapter of ours (a vadapt adapter folder), run first with a
//            caption instruction.
// `--expert ocr|caption|none` (+ `--expert-model DIR` for the captioner) on generate / eval; the
// context each expert adds is logged (stderr).
#pragma once

#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "data/dataset.h"

namespace vadapt::experts {

class Expert {
 public:
  virtual ~Expert() = default;
  virtual std::string name() const = 0;
  // The expert's text for one image file ("" when it finds nothing).
  virtual std::string read(const std::string& image) = 0;
  // The context line put before the question (empty when the expert found nothing).
  std::string context(const std::string& image);
};

// `kind`: none (null), ocr, caption (needs `model`: a caption adapter folder).
std::unique_ptr<Expert> make_expert(const std::string& kind, const std::string& model, torch::Device device = torch::kCPU);

// The question with the expert's context for `image` before it (unchanged without an expert,
// an image, or context). Logs what was added, naming `id`.
std::string with_context(Expert* expert, const std::string& image, const std::string& question, const std::string& id);

// Puts the expert's context before the first question of every sample with an image (training
// with the context the model will see at inference; each image is read once). Logs a summary
// naming `what`.
void add_context(Expert& expert, std::vector<data::Sample>& samples, const std::string& what);

// Tesseract OCR of an image file: the words recognised with confidence >= 70 (at least two
// letters or digits each), separated by single spaces; "" when nothing readable is found.
std::string ocr_text(const std::string& image);

}  // namespace vadapt::experts

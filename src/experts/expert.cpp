// Experts: Tesseract OCR through its C++ API, and a caption adapter run through the pipeline.
#include "experts/expert.h"

#include <tesseract/baseapi.h>

#include <cctype>
#include <map>
#include <mutex>

#include "common/error.h"
#include "common/log.h"
#include "text/prompt.h"
#include "vision/image.h"
#include "vision/resample.h"
#include "vlm/pipeline.h"
#include "vlm/vision_language_model.h"

namespace vadapt::experts {
namespace {

std::string squash(const std::string& s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    out += c, space = false;
  }
  return out;
}

// On natural photos Tesseract (a document OCR) turns foliage and edges into confident-looking
// junk ("3%", "nh", "-"): a word is kept only with confidence >= 70 and at least two letters or
// digits making up at least half of it, so the LLM is not fed noise as "text in the image".
bool readable_word(const std::string& w, float confidence) {
  if (confidence < 70.f || w.empty()) return false;
  size_t alnum = 0;
  for (unsigned char c : w) alnum += std::isalnum(c) ? 1 : 0;
  return alnum >= 2 && 2 * alnum >= w.size();
}

class OcrExpert : public Expert {
 public:
  std::string name() const override { return "ocr"; }
  std::string read(const std::string& image) override { return ocr_text(image); }
};

class CaptionExpert : public Expert {
 public:
  CaptionExpert(const std::string& dir, torch::Device device) : m_(vlm::load_vlm_checkpoint(dir, device)) {
    if (!m_->has_vision()) throw VadaptError(cat("--expert caption: ", dir, " is a text-only adapter (a captioner needs images)"));
  }
  std::string name() const override { return "caption"; }
  std::string read(const std::string& image) override {
    torch::NoGradGuard ng;
    m_->train_mode(false);
    vlm::Query q{"caption expert", {}, image};
    q.conv.turns.push_back({"user", std::string(text::kImageTag) + "\nDescribe the image briefly."});
    generate::GenerateOptions go;
    go.max_new_tokens = 48;
    go.sampling.temperature = 0;
    if (m_->tokenizer().eos_id() >= 0) go.stop_ids.push_back(m_->tokenizer().eos_id());
    auto res = vlm::answer(*m_, {vlm::encode_query(*m_, q)}, {image}, go);
    return squash(m_->tokenizer().decode(res.tokens[0]));
  }

 private:
  std::unique_ptr<vlm::VisionLanguageModel> m_;
};

}  // namespace

std::string Expert::context(const std::string& image) {
  const std::string t = read(image);
  if (t.empty()) return "";
  return name() == "ocr" ? "Text in the image: \"" + t + "\"" : "Image caption: " + t;
}

std::unique_ptr<Expert> make_expert(const std::string& kind, const std::string& model, torch::Device device) {
  if (kind.empty() || kind == "none") {
    if (!model.empty()) throw VadaptError("--expert-model is for --expert caption");
    return nullptr;
  }
  if (kind == "ocr") {
    if (!model.empty()) throw VadaptError("--expert-model is for --expert caption (the OCR expert is Tesseract)");
    return std::make_unique<OcrExpert>();
  }
  if (kind == "caption") {
    if (model.empty()) throw VadaptError("--expert caption: give --expert-model, a caption adapter folder (e.g. a trained COCO captioner)");
    return std::make_unique<CaptionExpert>(model, device);
  }
  throw VadaptError(cat("--expert: expected ocr, caption or none, got '", kind, "'"));
}

namespace {
// After a leading <image> tag (the tag stays where the data put it), before the question.
std::string insert_context(const std::string& question, const std::string& ctx) {
  if (ctx.empty()) return question;
  const std::string tag = std::string(text::kImageTag) + "\n";
  if (question.rfind(tag, 0) == 0) return tag + ctx + "\n" + question.substr(tag.size());
  return ctx + "\n" + question;
}
}  // namespace

std::string with_context(Expert* expert, const std::string& image, const std::string& question, const std::string& id) {
  if (!expert || image.empty()) return question;
  const std::string ctx = expert->context(image);
  log_info(cat("expert ", expert->name(), " [", id, "]: ", ctx.empty() ? "(nothing found)" : ctx));
  return insert_context(question, ctx);
}

void add_context(Expert& expert, std::vector<data::Sample>& samples, const std::string& what) {
  std::map<std::string, std::string> seen;  // image -> context
  int64_t with = 0, images = 0;
  for (auto& s : samples) {
    if (s.image.empty() || s.conv.turns.empty()) continue;
    ++images;
    auto it = seen.find(s.image);
    if (it == seen.end()) it = seen.emplace(s.image, expert.context(s.image)).first;
    if (it->second.empty()) continue;
    s.conv.turns[0].text = insert_context(s.conv.turns[0].text, it->second);
    ++with;
  }
  log_info(cat("expert ", expert.name(), ": context before ", with, " of ", images, " ", what, " questions with an image (",
               seen.size(), " images read)"));
}

std::string ocr_text(const std::string& path) {
  auto img = vision::decode_image_file(path);
  // Tesseract reads text of about 20-40 px best: small images (synthetic cards) are upscaled.
  const int side = std::min(img.width, img.height);
  if (side > 0 && side < 600) {
    const int f = (600 + side - 1) / side;
    img = vision::resize_pil(img, img.width * f, img.height * f, vision::Filter::kBicubic);
  }
  static std::mutex mu;  // one engine, initialised once (loading eng.traineddata takes ~0.2 s)
  static std::unique_ptr<tesseract::TessBaseAPI> api;
  std::lock_guard<std::mutex> lock(mu);
  if (!api) {
    api = std::make_unique<tesseract::TessBaseAPI>();
    if (api->Init(nullptr, "eng", tesseract::OEM_LSTM_ONLY) != 0) {
      api.reset();
      throw VadaptError("--expert ocr: Tesseract could not load its English model (install tesseract-ocr-eng, or set TESSDATA_PREFIX)");
    }
    api->SetVariable("debug_file", "/dev/null");
  }
  api->SetPageSegMode(tesseract::PSM_SPARSE_TEXT);  // words anywhere (scene text, cards)
  api->SetImage(img.rgb.data(), img.width, img.height, 3, img.width * 3);
  api->SetSourceResolution(300);
  std::string out;
  if (api->Recognize(nullptr) == 0) {
    std::unique_ptr<tesseract::ResultIterator> it(api->GetIterator());
    if (it) do {
        std::unique_ptr<char[]> w(it->GetUTF8Text(tesseract::RIL_WORD));
        if (!w) continue;
        const std::string word = squash(w.get());
        if (!readable_word(word, it->Confidence(tesseract::RIL_WORD))) continue;
        if (!out.empty()) out += ' ';
        out += word;
      } while (it->Next(tesseract::RIL_WORD));
  }
  api->Clear();
  return out;
}

}  // namespace vadapt::experts

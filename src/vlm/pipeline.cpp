// Inference pipeline: encode, features, method inputs, generate.
#include "vlm/pipeline.h"

#include "common/error.h"

namespace vadapt::vlm {

text::EncodedPrompt encode_query(const VisionLanguageModel& m, const Query& q) {
  auto enc = text::encode_segments(m.tokenizer(), m.chat_template().segments(q.conv, true), m.image_tokens());
  if (enc.num_images != (q.image.empty() ? 0 : 1))
    throw VadaptError(cat("sample ", q.id, ": the prompt must hold exactly one <image> when the sample has an image (and none without), found ",
                          enc.num_images));
  return enc;
}

generate::GenerateResult answer(VisionLanguageModel& m, const std::vector<text::EncodedPrompt>& prompts,
                                const std::vector<std::string>& images, const generate::GenerateOptions& opts,
                                const generate::TokenCallback& on_token) {
  torch::NoGradGuard ng;
  if (images.size() != prompts.size()) throw VadaptError("answer: one image entry (possibly empty) per prompt");
  std::vector<std::vector<int64_t>> ids;
  for (const auto& p : prompts) ids.push_back(p.ids);
  auto [batch_ids, mask] = generate::left_pad(ids, m.tokenizer().pad_id());
  std::vector<std::string> paths;
  std::vector<int64_t> rows;
  for (size_t i = 0; i < images.size(); ++i)
    if (!images[i].empty()) paths.push_back(images[i]), rows.push_back(static_cast<int64_t>(i));
  torch::Tensor feats, image_rows;
  if (!paths.empty()) {
    feats = m.image_features(paths).to(m.device());                        // (M, N, C)
    image_rows = torch::tensor(rows, torch::kInt64).to(m.device());        // (M,)
  }
  auto in = m.method().prepare(batch_ids.to(m.device()), feats, image_rows);
  const bool padded = mask.min().item<int64_t>() == 0;
  generate::Generator gen(m.lm());
  return gen.generate_embeds(in.embeds, padded ? mask : torch::Tensor(), opts, on_token, &in.state);
}

}  // namespace vadapt::vlm

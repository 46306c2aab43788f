// Inference pipeline: encode, features, method inputs, generate.
#include "vlm/pipeline.h"

#include "common/error.h"
#include "methods/registry.h"

namespace vadapt::vlm {

text::EncodedPrompt encode_query(const VisionLanguageModel& m, const Query& q) {
  auto enc = text::encode_segments(m.tokenizer(), m.chat_template().segments(q.conv, true), m.image_tokens());
  if (enc.num_images != (q.image.empty() ? 0 : 1))
    throw VadaptError(cat("sample ", q.id, ": the prompt must hold exactly one <image> when the sample has an image (and none without), found ",
                          enc.num_images));
  return enc;
}

namespace {

// Prompts and images -> the method's inputs -> generation.
generate::GenerateResult generate_for(VisionLanguageModel& m, const std::vector<text::EncodedPrompt>& prompts,
                                      const std::vector<std::vector<std::string>>& images, const generate::GenerateOptions& opts,
                                      const generate::TokenCallback& on_token) {
  torch::NoGradGuard ng;
  if (images.size() != prompts.size()) throw VadaptError("answer: one list of images (possibly empty) per prompt");
  std::vector<std::vector<int64_t>> ids;
  for (const auto& p : prompts) ids.push_back(p.ids);
  auto [batch_ids, mask] = generate::left_pad(ids, m.tokenizer().pad_id());
  std::vector<std::string> paths;
  std::vector<int64_t> rows;
  for (size_t i = 0; i < images.size(); ++i) {
    methods::check_images_per_input(m.method(), images[i].size(), cat("prompt ", i), "prompt");
    for (const auto& p : images[i]) paths.push_back(p), rows.push_back(static_cast<int64_t>(i));
  }
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

// Where the first stop string starts in the decoded ids, or npos.
size_t stop_at(const text::Tokenizer& tok, const std::vector<int64_t>& ids, const std::vector<std::string>& stops) {
  const std::string t = tok.decode(ids);
  size_t best = std::string::npos;
  for (const auto& s : stops) best = std::min(best, t.find(s));
  return best;
}
}  // namespace

generate::GenerateResult answer(VisionLanguageModel& m, const std::vector<text::EncodedPrompt>& prompts,
                                const std::vector<std::string>& images, const generate::GenerateOptions& opts,
                                const generate::TokenCallback& on_token) {
  std::vector<std::vector<std::string>> per_row;
  for (const auto& i : images) per_row.push_back(i.empty() ? std::vector<std::string>{} : std::vector<std::string>{i});
  return answer(m, prompts, per_row, opts, on_token);
}

generate::GenerateResult answer(VisionLanguageModel& m, const std::vector<text::EncodedPrompt>& prompts,
                                const std::vector<std::vector<std::string>>& images, const generate::GenerateOptions& opts_in,
                                const generate::TokenCallback& on_token_in) {
  torch::NoGradGuard ng;
  // The template's stop strings ("###" for v0, "<|im_end|>" for the ChatML forms): one that is a
  // single token of the vocabulary is a stop id; the others end a row once its text holds them,
  // and the answer is cut before them.
  generate::GenerateOptions opts = opts_in;
  std::vector<std::string> text_stops;
  auto stops = m.chat_template().stop_strings();
  stops.insert(stops.end(), opts_in.stop_strings.begin(), opts_in.stop_strings.end());
  for (const auto& s : stops) {
    const int64_t id = m.tokenizer().token_to_id(s);
    if (id >= 0) opts.stop_ids.push_back(id);
    else text_stops.push_back(s);
  }
  // Each row's text so far, decoded incrementally (one token per step, not the whole row).
  std::vector<text::StreamDecoder> decoders(prompts.size(), text::StreamDecoder(m.tokenizer()));
  std::vector<std::string> so_far(prompts.size());
  generate::TokenCallback on_token = on_token_in;
  if (!text_stops.empty() && opts.num_beams <= 1)
    on_token = [&](int64_t row, int64_t id) {
      const bool go_on = !on_token_in || on_token_in(row, id);
      auto& t = so_far[static_cast<size_t>(row)];
      t += decoders[static_cast<size_t>(row)].push(id);
      for (const auto& s : text_stops)
        if (t.find(s) != std::string::npos) return false;
      return go_on;
    };
  auto res = generate_for(m, prompts, images, opts, on_token);
  for (auto& row : res.tokens) {
    const size_t at = text_stops.empty() ? std::string::npos : stop_at(m.tokenizer(), row, text_stops);
    if (at == std::string::npos) continue;
    size_t j = row.size();
    while (j > 0 && m.tokenizer().decode(std::vector<int64_t>(row.begin(), row.begin() + static_cast<long>(j))).size() > at) --j;
    row.resize(j);
  }
  return res;
}

}  // namespace vadapt::vlm

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

GenerationInputs prepare_inputs(VisionLanguageModel& m, const std::vector<text::EncodedPrompt>& prompts,
                                const std::vector<std::vector<std::string>>& images) {
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
  return {in.embeds, padded ? mask : torch::Tensor(), std::move(in.state)};
}

StopRules stop_rules(const VisionLanguageModel& m, const std::vector<std::string>& extra) {
  StopRules r;
  auto stops = m.chat_template().stop_strings();
  stops.insert(stops.end(), extra.begin(), extra.end());
  for (const auto& s : stops) {
    const int64_t id = m.tokenizer().token_to_id(s);
    if (id >= 0) r.ids.push_back(id);
    else r.texts.push_back(s);
  }
  return r;
}

void cut_at_stop_text(const text::Tokenizer& tok, std::vector<int64_t>& ids, const std::vector<std::string>& texts) {
  if (texts.empty()) return;
  const std::string t = tok.decode(ids);
  size_t at = std::string::npos;
  for (const auto& s : texts) at = std::min(at, t.find(s));
  if (at == std::string::npos) return;
  size_t j = ids.size();
  while (j > 0 && tok.decode(std::vector<int64_t>(ids.begin(), ids.begin() + static_cast<long>(j))).size() > at) --j;
  ids.resize(j);
}

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
  const StopRules rules = stop_rules(m, opts_in.stop_strings);
  const auto& text_stops = rules.texts;
  opts.stop_ids.insert(opts.stop_ids.end(), rules.ids.begin(), rules.ids.end());
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
  auto in = prepare_inputs(m, prompts, images);
  generate::Generator gen(m.lm());
  auto res = gen.generate_embeds(in.embeds, in.key_mask, opts, on_token, &in.state);
  for (auto& row : res.tokens) cut_at_stop_text(m.tokenizer(), row, text_stops);
  return res;
}

}  // namespace vadapt::vlm

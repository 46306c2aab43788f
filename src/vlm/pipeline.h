// The one inference pipeline of every method, used by generate and eval (and chat / serve):
// template -> ids -> frozen image features (through the feature cache) -> the method's inputs
// (embeddings + adapter state) -> batched generation or beam search over the KV cache.
#pragma once

#include <string>
#include <vector>

#include "generate/generator.h"
#include "vlm/vision_language_model.h"

namespace vadapt::vlm {

struct Query {
  std::string id;              // for error messages
  text::Conversation conv;     // ends with the user's turn
  std::string image;           // image file, or empty
};

// The generation prompt of a query; throws, naming the query, when its <image> count does not
// match its image (one <image> with an image, none without).
text::EncodedPrompt encode_query(const VisionLanguageModel& m, const Query& q);

// The method's inputs for a batch of encoded prompts with their images (left-padded): what the
// generator takes. key_mask is undefined when no row is padded.
struct GenerationInputs {
  torch::Tensor embeds;    // (B, T, d)
  torch::Tensor key_mask;  // (B, T) 1 = real, or undefined
  model::AdapterState state;
};
GenerationInputs prepare_inputs(VisionLanguageModel& m, const std::vector<text::EncodedPrompt>& prompts,
                                const std::vector<std::vector<std::string>>& images);

// The template's stop strings and the request's: those that are one token of the vocabulary
// become stop ids, the others stay text (a row ends once its text holds one; the answer is cut
// before it).
struct StopRules {
  std::vector<int64_t> ids;
  std::vector<std::string> texts;
};
StopRules stop_rules(const VisionLanguageModel& m, const std::vector<std::string>& extra);
// Cuts generated ids before the first of the text stops (ids whose text holds none are kept).
void cut_at_stop_text(const text::Tokenizer& tok, std::vector<int64_t>& ids, const std::vector<std::string>& texts);

// Generates for encoded prompts (left-padded into one batch) with their images (empty: none).
// Stops at EOS, the stop ids, and the template's and the options' stop strings (the answer is
// cut before a stop string).
generate::GenerateResult answer(VisionLanguageModel& m, const std::vector<text::EncodedPrompt>& prompts,
                                const std::vector<std::string>& images, const generate::GenerateOptions& opts,
                                const generate::TokenCallback& on_token = {});
// Same with any number of images per prompt (a multi-image prompt's frames, in order; more than
// one only for methods with multi_image()).
generate::GenerateResult answer(VisionLanguageModel& m, const std::vector<text::EncodedPrompt>& prompts,
                                const std::vector<std::vector<std::string>>& images, const generate::GenerateOptions& opts,
                                const generate::TokenCallback& on_token = {});

}  // namespace vadapt::vlm

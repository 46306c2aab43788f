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

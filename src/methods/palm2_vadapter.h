// PaLM2-VAdapter (Xiao et al. 2024, arXiv 2402.10896): a progressively aligned tiny language
// model as the vision-language adapter. No official code exists; this follows the paper's text
// and ablations (methods.md §1.5, §1.7).
//
// role: adapter (stage 2, default) — frozen vision features -> connector (a 1-layer perceiver
//   resampler, or the attentional pooler of Table 4) -> fc_in -> the tiny LM (a trainable Llama
//   copy, run as a causal encoder over the resampled tokens; its token embeddings and LM head are
//   not used) -> its final-normed hidden states -> fc_out -> the visual prefix of the frozen
//   large LLM at the <image> placeholder. Without a tiny LM (`tiny_lm` left out) it is the
//   paper's perceiver-resampler baseline: connector -> fc_out (6 layers in the paper).
// role: decoder (stage 1) — the tiny LM is the recipe's model.llm, trained fully as a captioning
//   decoder on top of the frozen vision encoder through connector (default: the 1-layer
//   attentional pooler) -> fc_in into its input sequence.
// Stage 2 takes the tiny LM (model.layers.*, model.norm) and fc_in from stage 1 by init_from
// (checkpoint names tiny_lm.<Hugging Face name>); the connector and fc_out start fresh.
//
// The tiny LM is any Llama-family folder: initialised from its weights (`init: pretrained`) or
// randomly (`init: random`, N(0, 0.02), norms 1: the paper's ablation). Its config.json is copied
// into adapter_config.json, so a checkpoint rebuilds without the folder. Several images of one
// sample (frames) are resampled together, with the time embedding per frame.
//
// Recipe keys: role, connector (perceiver | pooler), resampler {queries, layers, width, heads,
// norms, final_norm, ffn, time_embedding, max_frames} (width 0 = the tiny LM's width, else the
// LLM's), tiny_lm {path, init, config}, feature_layer.
#pragma once

#include "connectors/perceiver_resampler.h"
#include "methods/method.h"
#include "model/layers.h"

namespace vadapt::methods {

class Palm2VAdapter : public Method {
 public:
  struct Options {
    std::string role = "adapter";        // adapter | decoder
    std::string connector = "perceiver";  // perceiver | pooler
    connectors::PerceiverOptions resampler;  // in / width resolved at build (width 0: auto)
    std::string tiny_lm_path;            // adapter role: the tiny LM's folder ("" : perceiver baseline)
    std::string tiny_lm_init = "pretrained";  // pretrained | random
    nlohmann::json tiny_lm_config;       // its config.json (null without a tiny LM)
    int64_t feature_layer = -1;
  };

  std::string name() const override { return "palm2_vadapter"; }
  nlohmann::json parse_recipe(const nlohmann::json& section, const std::string& where) const override;
  void configure(const nlohmann::json& config, const std::string& source) override;
  nlohmann::json config() const override;
  std::string describe() const override;
  void build(const Frozen& f, uint64_t seed) override;
  vision::FeatureSelect feature_select() const override { return vision::FeatureSelect::patch(o_.feature_layer); }
  int64_t image_tokens() const override { return o_.resampler.queries; }
  bool multi_image() const override { return true; }
  Inputs prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) override;
  std::vector<ParamGroup> groups() const override;
  std::vector<std::pair<std::string, torch::Tensor>> state() const override;
  void train_mode(bool on) override;
  int64_t trained_base_parameters() const override;
  // Carries every tensor of this stage the earlier one has (the tiny LM and fc_in from stage 1)
  // and says what starts fresh.
  void init_from(const std::string& dir) override;
  // Fresh runs: the tiny LM's weights from its folder (init pretrained) or a random init.
  void prepare_training(vlm::VisionLanguageModel& m, const std::vector<data::Sample>& train) override;
  nlohmann::json count(const io::LlamaConfig& llm, const VisionDims& vision) const override;

  // (M, N, C) features of the batch's images with image_rows (M,) -> (R, queries, d) visual
  // tokens, one block per row that has images (rows ascending; a row's images are its frames).
  torch::Tensor visual_tokens(const torch::Tensor& features, const torch::Tensor& image_rows);
  const Options& options() const { return o_; }
  bool has_tiny_lm() const { return o_.role == "decoder" || !o_.tiny_lm_path.empty() || !o_.tiny_lm_config.is_null(); }
  model::LlamaForCausalLMImpl& tiny_lm();

 private:
  torch::Tensor connect(const torch::Tensor& frames);  // (R, F, N, C) -> (R, queries, d)
  Options o_;
  Frozen f_;
  connectors::PerceiverResampler resampler_{nullptr};
  connectors::AttentionalPooler pooler_{nullptr};
  model::Projection fc_in_{nullptr}, fc_out_{nullptr};
  model::LlamaForCausalLM tiny_{nullptr};  // adapter role (decoder role: f_.lm)
};

}  // namespace vadapt::methods

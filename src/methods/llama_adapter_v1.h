// LLaMA-Adapter V1 (Zhang et al. 2023, arXiv 2303.16199) as a method: gated adaption prompts in
// the top L decoder layers (adapters/gated_prefix.h), and for the multimodal form (paper,
// ScienceQA) the CLS tokens of chosen vision layers ("multi-scale global features"),
// concatenated and projected by a small MLP to one visual token that is added to every prompt
// of every adapted layer. Images enter only through the prompts (no image tokens in the
// sequence). Recipe keys: adapter {prompt_len, layers, gate: tanh|raw}, visual {taps, hidden}
// (no visual section: text-only). Prompts cannot be folded into the weights (merge refuses).
#pragma once

#include "adapters/gated_prefix.h"
#include "connectors/bottleneck_mlp.h"
#include "methods/method.h"

namespace vadapt::methods {

class LlamaAdapterV1 : public Method {
 public:
  struct Options {
    adapters::GatedPrefixOptions prefix;
    std::vector<int64_t> visual_taps;  // hidden-state layers whose CLS tokens are used; empty: text-only
    int64_t visual_hidden = 128;       // width of the projection MLP's hidden layer
  };

  std::string name() const override { return "llama_adapter_v1"; }
  nlohmann::json parse_recipe(const nlohmann::json& section, const std::string& where) const override;
  void configure(const nlohmann::json& config, const std::string& source) override;
  nlohmann::json config() const override;
  std::string describe() const override;
  void build(const Frozen& f, uint64_t seed) override;
  vision::FeatureSelect feature_select() const override;
  bool needs_vision() const override { return multimodal(); }
  int64_t image_tokens() const override { return 0; }
  Inputs prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) override;
  std::vector<ParamGroup> groups() const override;
  std::vector<std::pair<std::string, torch::Tensor>> state() const override;
  void train_mode(bool on) override;
  nlohmann::json count(const io::LlamaConfig& llm, const VisionDims& vision) const override;
  // The official checkpoint (`adapter_query.weight` (L*K, d), `layers.N.attention.gate` for every
  // layer, as extract_adapter_from_checkpoint.py writes it): gates of layers below the top L are
  // checked for shape and ignored, as the official code ignores them.
  void load_official(const std::string& file) override;

  const Options& options() const { return o_; }
  adapters::GatedPrefix& prefix() { return prefix_; }
  bool multimodal() const { return !o_.visual_taps.empty(); }

 private:
  Options o_;
  Frozen f_;
  adapters::GatedPrefix prefix_{nullptr};
  connectors::BottleneckMlp visual_proj_{nullptr};
};

}  // namespace vadapt::methods

// LLaVA (Liu et al. 2023, "Visual Instruction Tuning"; v1.5 "Improved Baselines") as a method:
// patch tokens of a frozen vision layer (default -2) -> projector (linear / mlp2x_gelu /
// identity; optional grid pooling and feature standardisation) spliced into the LLM input
// sequence at the <image> placeholders; the LLM frozen (tune: projector), with LoRA / QLoRA
// (PEFT names), or fully tuned. Recipe keys: connector, feature_layer, pool, feature_norm,
// tune, lora {r, alpha, dropout, target_modules}, nf4_double_quant (qlora).
#pragma once

#include "adapters/adapter_set.h"
#include "connectors/projector.h"
#include "methods/method.h"

namespace vadapt::methods {

class Llava : public Method {
 public:
  struct Options {
    std::string connector = "mlp2x_gelu";  // linear | mlp2x_gelu | identity
    int64_t feature_layer = -2;            // mm_vision_select_layer
    std::string feature_norm;              // "" | "standardize"
    int64_t pool = 0;                      // > 0: average-pool the patch grid to pool x pool tokens
    std::string tune = "projector";        // projector | lora | qlora | full
    std::string nf4_double_quant = "linear8";  // qlora block scales: linear8 | bitsandbytes (its dynamic code)
    adapters::LoraTargetOptions lora;
  };

  std::string name() const override { return "llava"; }
  nlohmann::json parse_recipe(const nlohmann::json& section, const std::string& where) const override;
  void configure(const nlohmann::json& config, const std::string& source) override;
  nlohmann::json config() const override;
  std::string describe() const override;
  void build(const Frozen& f, uint64_t seed) override;
  vision::FeatureSelect feature_select() const override { return vision::FeatureSelect::patch(o_.feature_layer); }
  int64_t image_tokens() const override { return o_.pool > 0 ? o_.pool * o_.pool : patches_; }
  Inputs prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) override;
  std::vector<ParamGroup> groups() const override;
  std::vector<std::pair<std::string, torch::Tensor>> state() const override;
  void train_mode(bool on) override;
  int64_t trained_base_parameters() const override;
  void init_from(const std::string& dir) override;
  void prepare_training(vlm::VisionLanguageModel& m, const std::vector<data::Sample>& train) override;
  nlohmann::json count(const io::LlamaConfig& llm, const VisionDims& vision) const override;
  // LLaVA's own layouts (llava_release.cpp): merged LlavaLlamaForCausalLM folders, LoRA folders
  // with non_lora_trainables.bin, stage-1 mm_projector.bin.
  Rest merge_into(const vlm::VisionLanguageModel& m) override;
  void load_official(const std::string& path) override;
  std::optional<ReleaseFolder> read_release(const std::string& dir, const FolderOverrides& o) const override;
  std::vector<std::string> export_formats() const override { return {"llava", "llava-hf"}; }
  void export_release(vlm::VisionLanguageModel& m, const std::string& format, const std::string& out) override;
  // Hugging Face's LlavaForConditionalGeneration folder (LoRA folded into the LLM).
  void export_llava_hf(vlm::VisionLanguageModel& m, const std::string& out);
  // LLaVA's config.json for this model: the LLM's config + mm_* fields (LlavaConfig).
  nlohmann::json release_config(const vlm::VisionLanguageModel& m) const;

  // (M, N, C) frozen features -> (M, image_tokens, d): optional grid pooling, then the projector.
  torch::Tensor project(const torch::Tensor& features);
  // feature_norm standardize: per-channel mean / std over all patch tokens of these images.
  void init_feature_stats(vlm::VisionLanguageModel& m, const std::vector<std::string>& images);
  adapters::AdapterSet& adapters() { return adapters_; }
  const Options& options() const { return o_; }

 private:
  Options o_;
  Frozen f_;
  int64_t patches_ = 0;
  connectors::Projector projector_{nullptr};
  adapters::AdapterSet adapters_;
};

}  // namespace vadapt::methods

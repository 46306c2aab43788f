// LLaMA-Adapter V2 (Gao et al. 2023, arXiv 2304.15010) as a method, in the paper's form and in
// the released multimodal code's form, chosen by switches (methods.md §1.2, §1.6 rows 5-8):
//  - bias / scale on linear layers (adapters/bias_scale.h): `scale_bias` s*(Wx+b) (paper),
//    `input_scale` W(x*s)+b (chat-65B code), `bias` (released multimodal code: q, o and the three
//    MLP linears), `none`;
//  - unfrozen RMSNorms (every layer's two and the final one, under their HF names);
//  - adaption prompts with zero-init tanh gates in the top L layers (adapters/gated_prefix.h);
//  - visual tokens from the visual branch (connectors/visual_branch.h) over all final CLIP tokens:
//    `fusion: late` (released) adds them to the prompts of every adapted layer; `fusion: early`
//    (paper) gives them their own zero-init gated prompt in the first `early_layers` layers,
//    which must not overlap the L prompt layers;
//  - optional LoRA on all seven linears without alpha/r scaling, with the per-layer new_gate;
//  - `phase` says what trains: all, pretrain / finetune (the released two phases), or joint
//    (paper: caption samples train the visual side, text-only samples the language side).
// Images enter only through prompts (no image tokens in the sequence).
#pragma once

#include <string>
#include <vector>

#include "adapters/adapter_set.h"
#include "adapters/bias_scale.h"
#include "adapters/gated_prefix.h"
#include "connectors/visual_branch.h"
#include "methods/method.h"

namespace vadapt::methods {

class LlamaAdapterV2 : public Method {
 public:
  struct Options {
    adapters::GatedPrefixOptions prefix;  // the instruction prompts (top L layers)
    std::string fusion = "late";          // late | early
    int64_t early_layers = 1;
    bool visual = false;                  // a visual branch (else text-only)
    connectors::VisualBranchOptions branch;  // branch.in 0: the vision tower's output width
    std::string bias_form = "bias";       // scale_bias | input_scale | bias | none
    std::vector<std::string> bias_targets;  // empty: the form's default
    bool norms = true;
    int64_t lora_r = 0;                   // 0: no LoRA
    std::string phase = "all";            // all | pretrain | finetune | joint
  };

  std::string name() const override { return "llama_adapter_v2"; }
  nlohmann::json parse_recipe(const nlohmann::json& section, const std::string& where) const override;
  void configure(const nlohmann::json& config, const std::string& source) override;
  nlohmann::json config() const override;
  std::string describe() const override;
  void build(const Frozen& f, uint64_t seed) override;
  vision::FeatureSelect feature_select() const override { return vision::FeatureSelect::final_tokens(); }
  bool needs_vision() const override { return o_.visual; }
  int64_t image_tokens() const override { return 0; }
  Inputs prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) override;
  std::vector<ParamGroup> groups() const override;
  std::vector<std::pair<std::string, torch::Tensor>> state() const override;
  void train_mode(bool on) override;
  int64_t trained_base_parameters() const override;
  nlohmann::json count(const io::LlamaConfig& llm, const VisionDims& vision) const override;
  // Folds bias / scale, LoRA and the trained norms into the LLM (a Hugging Face folder with
  // attention_bias / mlp_bias where biases were added). Refused while prompts are live (a gate
  // is nonzero): prompts cannot be expressed as weights.
  Rest merge_into(const vlm::VisionLanguageModel& m) override;
  // The released adapter file (Meta layout; `extract_adapter_from_checkpoint.py` keys:
  // adapter_query, llama.layers.N.attention.{gate,new_gate,wq.bias,wo.bias,lora_*},
  // llama.layers.N.feed_forward.*, the norms, clip_proj*, visual_*): q/k rows are permuted into
  // the Hugging Face rotate-half layout; gates / new_gates of layers without prompts are checked
  // and ignored, as the official forward ignores them.
  void load_official(const std::string& path) override;

  const Options& options() const { return o_; }
  adapters::GatedPrefix& prefix() { return prefix_; }
  adapters::GatedPrefix& early() { return early_; }
  connectors::VisualBranch& visual_branch() { return visual_; }
  // The visual tokens (M, Q, d) of features (M, N, C).
  torch::Tensor visual_tokens(const torch::Tensor& features);

 private:
  std::vector<std::string> bias_targets() const;
  bool trains(const std::string& group) const;

  Options o_;
  Frozen f_;
  adapters::GatedPrefix prefix_{nullptr}, early_{nullptr};
  connectors::VisualBranch visual_{nullptr};
  std::vector<std::pair<std::string, adapters::BiasScale>> biases_;  // module path -> adapter
  adapters::AdapterSet loras_{nullptr};
  std::vector<std::pair<std::string, torch::Tensor>> norms_;        // HF name -> the LLM's norm weight
};

}  // namespace vadapt::methods

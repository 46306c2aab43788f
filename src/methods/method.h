// A method (LLaVA, LLaMA-Adapter V1, ...) as one part: its recipe section, what it attaches to
// the frozen models through the seams (model/seams.h), its connector, its parameter groups and
// checkpoint names, how a batch becomes model inputs (embeddings + adapter state), its
// adapter_config.json fields and its parameter count from configs alone. The trainer, the
// generator, eval and the CLI only talk to this interface; a method is registered by name in
// methods/registry.cpp.
#pragma once

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "io/hf_config.h"
#include "io/json_file.h"
#include "model/llama.h"
#include "model/seams.h"
#include "vision/feature_select.h"
#include "vision/vision_tower.h"

namespace vadapt::vlm {
class VisionLanguageModel;
}
namespace vadapt::data {
struct Sample;
}

namespace vadapt::methods {

// Which samples a parameter group learns from (LLaMA-Adapter V2's joint training with disjoint
// parameters: caption data trains the visual side, text-only instructions the language side).
enum class DataKind { kAny, kImage, kText };

struct ParamGroup {
  std::string name;                  // "projector", "lora", "llm", "prompts", ...
  std::vector<torch::Tensor> params;
  bool connector = false;            // takes train.lr_projector when that is set
  DataKind data = DataKind::kAny;    // kImage / kText: only samples with / without an image give it gradients
};

// What a method hands the frozen LLM for one forward pass.
struct Inputs {
  torch::Tensor embeds;       // (B, T, d)
  model::AdapterState state;  // per-sample conditioning / state for the adapters
};

// The frozen models a method attaches to.
struct Frozen {
  model::LlamaForCausalLM lm{nullptr};
  std::shared_ptr<vision::VisionTower> tower;
  torch::Device device = torch::kCPU;
};

// A folder in a method's own published layout (e.g. a LLaVA release), read without conversion:
// the adapter_config.json fields vadapt would have written for it and the tensors of state().
struct ReleaseFolder {
  nlohmann::json config;                // generic keys (base_model_name_or_path, vision_tower, ...) + the method's
  io::FolderPart llm_part, vision_part;  // where the LLM / the vision tower sit in their folders
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  // under state() names
};
// What the user says beside such a folder (paths it names may be hub ids or other machines').
struct FolderOverrides {
  std::string llm, vision, template_name;
};

// Vision tower dimensions from its config alone.
struct VisionDims {
  int64_t hidden_size = 0, num_layers = 0, num_patches = 0;
  int64_t output_size = 0;  // width of the final tokens: projection_dim where the config has one, else hidden_size
  static VisionDims from_config_dir(const std::string& dir);
};

class Method {
 public:
  virtual ~Method() = default;
  virtual std::string name() const = 0;

  // The method's own recipe keys (merged from the recipe's top level, its model section and the
  // stage; unknown keys are errors naming `where`) -> its adapter_config.json fields.
  virtual nlohmann::json parse_recipe(const nlohmann::json& section, const std::string& where) const = 0;
  // adapter_config.json fields (as parse_recipe returns them) -> options. Errors name `source`.
  virtual void configure(const nlohmann::json& config, const std::string& source) = 0;
  virtual nlohmann::json config() const = 0;
  virtual std::string describe() const = 0;  // one line for logs

  // Attaches adapters / connector to the frozen models (and unfreezes what trains).
  virtual void build(const Frozen& f, uint64_t seed) = 0;
  virtual vision::FeatureSelect feature_select() const = 0;
  // Whether the method reads images at all (false: model.vision may be left out).
  virtual bool needs_vision() const { return true; }
  // Whether it trains adapters inside the vision tower (LaVIN): the tower then runs with
  // gradients and its features cannot be cached.
  virtual bool adapts_vision() const { return false; }
  // Whether a sample may carry several images (frames of a video, a multi-image sample) for its
  // one <image> placeholder: prepare() then sees a row's images as consecutive entries with the
  // same image_rows value. Methods that read one image per placeholder refuse such samples.
  virtual bool multi_image() const { return false; }
  // Tokens one image occupies in the LLM input sequence (0: images enter through adapters only).
  virtual int64_t image_tokens() const = 0;
  // ids (B, T) with text::kImageToken placeholders; features (M, N, C) of the batch's M images
  // (undefined when none), image_rows (M,) the batch row of each image.
  virtual Inputs prepare(const torch::Tensor& ids, const torch::Tensor& features, const torch::Tensor& image_rows) = 0;

  virtual std::vector<ParamGroup> groups() const = 0;
  // Everything that trains, under checkpoint names.
  virtual std::vector<std::pair<std::string, torch::Tensor>> state() const = 0;
  virtual void train_mode(bool on) = 0;
  // Frozen base parameters that this method trains (so totals count them once).
  virtual int64_t trained_base_parameters() const { return 0; }

  // Initialises from an earlier stage's adapter folder (recipe init_from). Default: every
  // tensor of state() the folder holds (at least one).
  virtual void init_from(const std::string& dir);
  // Once before the first step of a fresh run (not on resume or init_from).
  virtual void prepare_training(vlm::VisionLanguageModel& m, const std::vector<data::Sample>& train) {}
  // Parameter counts from configs alone: at least trainable_parameters.
  virtual nlohmann::json count(const io::LlamaConfig& llm, const VisionDims& vision) const = 0;
  // Folds the method into the LLM's weights (vadapt merge); returns what stays outside the LLM
  // (LLaVA: the projector), written into the merged folder's weights under these names, and
  // fields for its config.json. Default: refused with the reason.
  struct Rest {
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    nlohmann::json config = nlohmann::json::object();
  };
  virtual Rest merge_into(const vlm::VisionLanguageModel& m);
  // Loads the official release's adapter file (or folder) into this method's parameters
  // (vadapt import).
  virtual void load_official(const std::string& path);
  // Recognises a folder in one of the method's release layouts (nullopt: not one of them).
  virtual std::optional<ReleaseFolder> read_release(const std::string& dir, const FolderOverrides& o) const { return std::nullopt; }
  // Writes this (built, loaded) model in a release layout `format` (vadapt export); a layout
  // without a place for the adapter may fold it into the loaded model's weights first.
  virtual std::vector<std::string> export_formats() const { return {}; }
  virtual void export_release(vlm::VisionLanguageModel& m, const std::string& format, const std::string& out);
};

// ids with placeholders + image embeddings (M, n, d) -> (B, T, d) input embeddings.
torch::Tensor splice_image_embeds(model::LlamaForCausalLMImpl& lm, const torch::Tensor& ids, const torch::Tensor& image_embeds,
                                  int64_t image_tokens);
// Strict copy of `want` from a safetensors file: every tensor present with its shape, nothing
// unexpected (the errors name the file and the tensor).
void load_tensors_strict(const std::string& file, const std::vector<std::pair<std::string, torch::Tensor>>& want);
// Same from tensors in memory; `label` names their source in errors.
void copy_tensors_strict(const std::string& label, const std::vector<std::pair<std::string, torch::Tensor>>& have,
                         const std::vector<std::pair<std::string, torch::Tensor>>& want);
// Reads j[key] into `out` when present and not null (errors name `where` and the key).
template <typename T>
void read_option(const nlohmann::json& j, const char* key, T& out, const std::string& where) {
  if (j.contains(key) && !j[key].is_null()) out = io::json_get<T>(j, key, where);
}
// Keys of `j` not in `allowed` are errors naming `where` and the key.
void check_keys(const nlohmann::json& j, const std::vector<std::string>& allowed, const std::string& where);

}  // namespace vadapt::methods

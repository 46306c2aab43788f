// libFuzzer target: the JSON configs a user's folders hold. The input is read as
//  - a model config.json (Llama, ViT, CLIP: kind detection, fields, parameter count),
//  - a vadapt adapter_config.json (the generic keys, then the named method's own options),
//  - a PEFT adapter_config.json (LoRA rank, alpha, target modules).
// Every input must be accepted or raise VadaptError; ASan + UBSan catch memory errors.
#include "adapters/peft.h"
#include "common/error.h"
#include "fuzz_common.h"
#include "io/hf_config.h"
#include "io/json_file.h"
#include "methods/registry.h"
#include "vlm/vlm_spec.h"

using namespace vadapt;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = fuzz::write_input("adapter/adapter_config.json", data, size);
  nlohmann::json j;
  try {
    j = io::read_json(path);
  } catch (const VadaptError&) {
    return 0;
  }
  try {
    switch (io::detect_model_kind(j, path)) {
      case io::ModelKind::kLlama: (void)io::LlamaConfig::from_json(j, path).parameter_count(); break;
      case io::ModelKind::kViT: (void)io::ViTConfig::from_json(j, path).to_json(); break;
      case io::ModelKind::kClipVision: (void)io::ClipVisionConfig::from_json(j, path).to_json(); break;
    }
  } catch (const VadaptError&) {
  }
  try {
    auto spec = vlm::VlmSpec::from_json(j, path);
    auto method = methods::create(spec.method, path + ": method");
    method->configure(spec.options, path);
    (void)method->describe();
    (void)spec.to_json().dump();
  } catch (const VadaptError&) {
  }
  try {
    (void)adapters::read_peft_lora_config(fuzz::scratch_dir() + "/adapter");
  } catch (const VadaptError&) {
  }
  return 0;
}

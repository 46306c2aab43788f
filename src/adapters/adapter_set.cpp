// Attaching LoRA by module-name matching, and merging it back into the base weights.
#include "adapters/adapter_set.h"

#include <algorithm>
#include <regex>

#include "common/error.h"
#include "model/module_path.h"

namespace vadapt::adapters {
namespace {
bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0 &&
         (s.size() == suffix.size() || s[s.size() - suffix.size() - 1] == '.');
}
}  // namespace

int64_t AdapterSetImpl::attach_lora(model::LlamaForCausalLMImpl& lm, const LoraTargetOptions& o) {
  if (o.lora.r <= 0) throw VadaptError(cat("lora r must be positive, got ", o.lora.r));
  std::regex re, layer_re("(?:^|\\.)layers\\.(\\d+)\\.");
  if (!o.target_regex.empty()) {
    try {
      re = std::regex(o.target_regex);
    } catch (const std::regex_error& e) {
      throw VadaptError(cat("lora target_modules: '", o.target_regex, "' is not a valid regular expression: ", e.what()));
    }
  }
  int64_t n = 0;
  for (const auto& item : lm.named_modules("", false)) {
    auto* proj = item.value()->as<model::ProjectionImpl>();
    if (!proj || item.key() == "lm_head") continue;
    bool hit = false;
    if (!o.target_regex.empty()) hit = std::regex_match(item.key(), re);
    else
      for (const auto& t : o.target_modules) hit = hit || ends_with(item.key(), t);
    if (hit && !o.layers.empty()) {
      std::smatch m;
      hit = std::regex_search(item.key(), m, layer_re) &&
            std::find(o.layers.begin(), o.layers.end(), std::stoll(m[1].str())) != o.layers.end();
    }
    if (!hit) continue;
    Lora lora(proj->in_features, proj->out_features, o.lora, proj->weight.options());
    model::register_at(*this, item.key(), lora);
    proj->add_adapter(lora.ptr());
    loras_.emplace_back(item.key(), lora);
    ++n;
  }
  if (n == 0) throw VadaptError(cat("lora: no module of the language model matches target_modules"));
  return n;
}

void AdapterSetImpl::merge_into(model::LlamaForCausalLMImpl& lm) {
  torch::NoGradGuard ng;
  for (const auto& item : lm.named_modules("", false)) {
    auto* proj = item.value()->as<model::ProjectionImpl>();
    if (!proj) continue;
    for (const auto& [name, lora] : loras_) {
      if (name != item.key()) continue;
      proj->dequantize();  // QLoRA: merge into the dequantised weight
      proj->weight.add_(lora->delta().to(proj->weight.scalar_type()));
    }
    proj->clear_adapters();
  }
}

}  // namespace vadapt::adapters

// Shared pieces of the method interface: the image-embedding splice, strict tensor loading,
// key checks, vision dimensions from configs, and the defaults of the optional hooks.
#include "methods/method.h"

#include <map>
#include <set>

#include "common/error.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "text/prompt.h"

namespace vadapt::methods {

VisionDims VisionDims::from_config_dir(const std::string& dir) {
  const std::string path = io::config_path_of(dir);
  auto j = io::read_json(path);
  VisionDims d;
  int64_t image = 0, patch = 0;
  if (io::detect_model_kind(j, path) == io::ModelKind::kViT) {
    auto c = io::ViTConfig::from_json(j, path);
    d.hidden_size = c.hidden_size, d.num_layers = c.num_hidden_layers, image = c.image_size, patch = c.patch_size;
  } else {
    auto c = io::ClipVisionConfig::from_json(j, path);
    d.hidden_size = c.hidden_size, d.num_layers = c.num_hidden_layers, image = c.image_size, patch = c.patch_size;
  }
  d.num_patches = (image / patch) * (image / patch);
  d.output_size = j.contains("projection_dim") && j["projection_dim"].is_number_integer() ? j["projection_dim"].get<int64_t>() : d.hidden_size;
  return d;
}

torch::Tensor splice_image_embeds(model::LlamaForCausalLMImpl& lm, const torch::Tensor& ids_in, const torch::Tensor& image_embeds,
                                  int64_t image_tokens) {
  auto ids = ids_in.to(lm.device());
  auto is_img = ids.eq(text::kImageToken);              // (B, T)
  auto x = lm.embed(ids.masked_fill(is_img, 0));        // (B, T, d)
  const int64_t n_img = is_img.sum().item<int64_t>();
  if (n_img == 0) return x;
  if (!image_embeds.defined() || image_embeds.size(0) * image_embeds.size(1) != n_img)
    throw VadaptError(cat("prompt has ", n_img, " image positions but ", image_embeds.defined() ? image_embeds.size(0) : 0,
                          " image(s) of ", image_tokens, " tokens were given"));
  auto flat = image_embeds.reshape({-1, image_embeds.size(-1)}).to(x.scalar_type());  // (M*N, d)
  auto pos = is_img.view({-1}).nonzero().squeeze(1);                                  // (M*N,)
  return x.view({-1, x.size(-1)}).index_put({pos}, flat).view(x.sizes());             // (B, T, d)
}

void copy_tensors_strict(const std::string& label, const std::vector<std::pair<std::string, torch::Tensor>>& have,
                         const std::vector<std::pair<std::string, torch::Tensor>>& want) {
  torch::NoGradGuard ng;
  std::map<std::string, torch::Tensor> by_name;
  for (const auto& [n, t] : have) by_name[n] = t;
  std::vector<std::string> missing, unexpected;
  std::set<std::string> names;
  for (const auto& [name, t] : want) {
    names.insert(name);
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      missing.push_back(name);
      continue;
    }
    if (it->second.sizes() != t.sizes()) raise(label, name, "shape ", it->second.sizes(), " in file, expected ", t.sizes());
    t.copy_(it->second);
  }
  for (const auto& [n, t] : have)
    if (!names.count(n)) unexpected.push_back(n);
  if (!missing.empty() || !unexpected.empty())
    raise(label, missing.empty() ? unexpected[0] : missing[0], "adapter checkpoint does not match the recipe: ", missing.size(),
          " missing and ", unexpected.size(), " unexpected tensors");
}

void load_tensors_strict(const std::string& file, const std::vector<std::pair<std::string, torch::Tensor>>& want) {
  auto src = io::TensorSource::open(file);
  std::vector<std::pair<std::string, torch::Tensor>> have;
  for (const auto& n : src.names()) have.emplace_back(n, src.tensor(n));
  copy_tensors_strict(src.description(), have, want);
}

void check_keys(const nlohmann::json& j, const std::vector<std::string>& allowed, const std::string& where) {
  if (!j.is_object()) raise(where, "", "must be a mapping");
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end()) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      raise(where, it.key(), "unknown key (expected one of: ", list, ")");
    }
}

void Method::init_from(const std::string& dir) {
  const std::string file = dir + "/adapter_model.safetensors";
  auto src = io::TensorSource::open(file);
  torch::NoGradGuard ng;
  int64_t n = 0;
  for (const auto& [name, t] : state()) {
    if (!src.contains(name)) continue;
    auto v = src.tensor(name);
    if (v.sizes() != t.sizes()) raise(src.description(), name, "shape ", v.sizes(), " in file, expected ", t.sizes());
    t.copy_(v);
    ++n;
  }
  if (n == 0) raise(file, "", "init_from: the earlier stage has none of this stage's ", name(), " tensors");
}

Method::Rest Method::merge_into(const vlm::VisionLanguageModel&) {
  throw VadaptError(cat("merge: method ", name(), " (", describe(), ") cannot be folded into the LLM's weights"));
}

void Method::load_official(const std::string& file) {
  throw VadaptError(cat(file, ": method ", name(), " has no loader for an official release's adapter file"));
}

void Method::export_release(vlm::VisionLanguageModel&, const std::string& format, const std::string&) {
  std::string all;
  for (const auto& f : export_formats()) all += (all.empty() ? "" : ", ") + f;
  throw VadaptError(cat("export: method ", name(), " writes ", all.empty() ? std::string("no release formats") : "only " + all,
                        " (asked for '", format, "')"));
}

}  // namespace vadapt::methods

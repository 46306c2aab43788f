// vadapt: one binary, subcommands. stdout carries only results (generated text, JSON);
// logs, progress and speed go to stderr. Errors exit non-zero with a message naming the file,
// key or field.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <filesystem>
#include <iostream>

#include "common/error.h"
#include "common/log.h"
#include "generate/generator.h"
#include "io/hf_config.h"
#include "io/json_file.h"
#include "model/llama.h"
#include "model/load.h"
#include "text/tokenizer.h"
#include "vision/image.h"
#include "vision/preprocess.h"
#include "vision/vision_tower.h"

namespace {

using namespace vadapt;

torch::Device parse_device(const std::string& s) {
  if (s == "cpu") return torch::kCPU;
  if (s.rfind("cuda", 0) == 0) {
    if (!torch::cuda::is_available()) throw VadaptError(cat("--device ", s, ": CUDA is not available in this libtorch build or machine"));
    return torch::Device(s);
  }
  throw VadaptError(cat("--device: expected cpu or cuda[:N], got '", s, "'"));
}

struct GenerateArgs {
  std::string model, tokenizer, device = "cpu", dtype = "float32";
  std::vector<std::string> prompts;
  int64_t max_new_tokens = 128, top_k = 0;
  float temperature = 0.0f, top_p = 1.0f;
  uint64_t seed = 0;
  bool no_bos = false;
};

int run_generate(const GenerateArgs& a) {
  auto dtype = io::dtype_from_name(a.dtype, "--dtype");
  auto device = parse_device(a.device);
  Stopwatch load_sw;
  auto lm = model::load_llama(a.model, dtype, device);
  auto tok = text::load_tokenizer(a.tokenizer.empty() ? a.model : a.tokenizer);
  log_info(cat("loaded ", a.model, " in ", load_sw.seconds(), " s"));
  std::vector<std::vector<int64_t>> ids;
  for (size_t i = 0; i < a.prompts.size(); ++i) {
    auto p = tok->encode(a.prompts[i], !a.no_bos);
    if (p.empty()) throw VadaptError(cat("--prompt ", i, ": the prompt is empty (no tokens); give some text"));
    ids.push_back(std::move(p));
  }
  generate::GenerateOptions opts;
  opts.max_new_tokens = a.max_new_tokens;
  opts.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  if (tok->eos_id() >= 0) opts.stop_ids.push_back(tok->eos_id());
  generate::Generator gen(lm);
  generate::GenerateResult res;
  if (ids.size() == 1) {
    text::StreamDecoder stream(*tok, ids[0]);
    res = gen.generate(ids, opts, [&](int64_t, int64_t id) {
      std::cout << stream.push(id) << std::flush;
      return true;
    });
    std::cout << stream.flush() << std::endl;
  } else {
    res = gen.generate(ids, opts);
    for (size_t i = 0; i < res.tokens.size(); ++i) {
      text::StreamDecoder d(*tok, ids[i]);
      for (auto id : res.tokens[i]) std::cout << d.push(id);
      std::cout << d.flush() << "\n";
    }
    std::cout.flush();
  }
  const double prefill_tps = res.prefill_seconds > 0 ? res.prompt_tokens / res.prefill_seconds : 0;
  const double decode_tps = res.decode_seconds > 0 ? (res.generated_tokens - static_cast<int64_t>(ids.size())) / res.decode_seconds : 0;
  log_info(cat("prefill: ", res.prompt_tokens, " tokens, ", prefill_tps, " tok/s | decode: ", res.generated_tokens,
               " tokens, ", decode_tps, " tok/s"));
  return 0;
}

int run_inspect(const std::string& dir) {
  std::string cfg_path = io::config_path_of(dir);
  auto j = io::read_json(cfg_path);
  nlohmann::json out;
  out["path"] = dir;
  switch (io::detect_model_kind(j, cfg_path)) {
    case io::ModelKind::kLlama: {
      auto cfg = io::LlamaConfig::from_json(j, cfg_path);
      out["kind"] = "llama";
      out["config"] = cfg.to_json();
      out["parameters_from_config"] = cfg.parameter_count();
      auto lm = model::load_llama(dir, torch::kFloat32, torch::kCPU);
      auto pc = model::count_parameters(*lm);
      out["parameters"] = pc.total;
      out["memory_bytes_f32"] = pc.bytes;
      out["memory_bytes_bf16"] = pc.total * 2;
      out["kv_cache_bytes_per_token_f32"] = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4;
      break;
    }
    default: {
      auto tower = vision::load_vision_tower(dir, torch::kFloat32, torch::kCPU);
      out["kind"] = "vision";
      out["architecture"] = tower->architecture();
      out["hidden_size"] = tower->hidden_size();
      out["num_layers"] = tower->num_layers();
      out["image_size"] = tower->image_size();
      out["num_patches"] = tower->num_patches();
      auto pc = model::count_parameters(tower->module());
      out["parameters"] = pc.total;
      out["memory_bytes_f32"] = pc.bytes;
    }
  }
  log_info(cat("parameters: ", human_count(static_cast<double>(out["parameters"].get<int64_t>())), ", memory (f32): ",
               human_bytes(static_cast<double>(out["memory_bytes_f32"].get<int64_t>()))));
  std::cout << out.dump(2) << std::endl;
  return 0;
}

struct EncodeArgs {
  std::string model, image, preprocess, device = "cpu", dtype = "float32";
  int64_t layer = -2;
};

// Runs the vision tower on one image and prints a JSON summary of its features.
int run_encode(const EncodeArgs& a) {
  auto device = parse_device(a.device);
  auto tower = vision::load_vision_tower(a.model, io::dtype_from_name(a.dtype, "--dtype"), device);
  auto pre = a.preprocess.empty() ? vision::PreprocessConfig::from_hf(a.model) : vision::PreprocessConfig::named(a.preprocess);
  if (pre.crop != tower->image_size())
    throw VadaptError(cat("--preprocess ", pre.describe(), " gives ", pre.crop, " px images but the model expects ",
                          tower->image_size(), " px"));
  Stopwatch sw;
  auto px = vision::preprocess(vision::decode_image_file(a.image), pre).unsqueeze(0).to(device);  // (1, 3, H, W)
  torch::NoGradGuard ng;
  auto out = tower->encode(px);
  auto feats = vision::select_patch_features(out, a.layer);  // (1, N, C)
  nlohmann::json j;
  j["image"] = a.image;
  j["preprocess"] = pre.describe();
  j["hidden_states"] = out.hidden_states.size();
  j["patch_features_shape"] = feats.sizes().vec();
  j["patch_features_layer"] = a.layer;
  j["patch_features_mean"] = feats.mean().item<double>();
  if (out.pooled.defined()) j["pooled_norm"] = out.pooled.norm().item<double>();
  if (out.head.defined()) {
    auto [vals, idx] = out.head[0].to(torch::kFloat32).topk(std::min<int64_t>(5, out.head.size(1)));
    idx = idx.to(torch::kCPU).contiguous();
    vals = vals.to(torch::kCPU).contiguous();
    j["head_top5"] = std::vector<int64_t>(idx.data_ptr<int64_t>(), idx.data_ptr<int64_t>() + idx.numel());
    j["head_top5_values"] = std::vector<float>(vals.data_ptr<float>(), vals.data_ptr<float>() + vals.numel());
  }
  log_info(cat("encoded ", a.image, " in ", sw.seconds(), " s"));
  std::cout << j.dump(2) << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vadapt: frozen vision + language models, small trainable adapters"};
  app.require_subcommand(1);
  bool quiet = false, verbose = false;
  app.add_flag("-q,--quiet", quiet, "only errors on stderr");
  app.add_flag("-v,--verbose", verbose, "debug logging");

  GenerateArgs ga;
  auto* gen = app.add_subcommand("generate", "generate text from a prompt with a Llama-family model");
  gen->add_option("--model", ga.model, "Hugging Face model folder (config.json + safetensors)")->required();
  gen->add_option("--tokenizer", ga.tokenizer, "tokenizer folder or file (default: the model folder)");
  gen->add_option("--prompt", ga.prompts, "prompt text (repeat for a batch)")->required();
  gen->add_option("--max-new-tokens", ga.max_new_tokens, "tokens to generate")->check(CLI::NonNegativeNumber);
  gen->add_option("--temperature", ga.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-k", ga.top_k, "0 = off")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", ga.top_p, "1 = off")->check(CLI::Range(0.0, 1.0));
  gen->add_option("--seed", ga.seed, "sampling seed");
  gen->add_option("--dtype", ga.dtype, "float32 | bfloat16 | float16");
  gen->add_option("--device", ga.device, "cpu | cuda[:N]");
  gen->add_flag("--no-bos", ga.no_bos, "do not prepend BOS");

  EncodeArgs ea;
  auto* enc = app.add_subcommand("encode", "run a vision tower on an image and print its features as JSON");
  enc->add_option("--model", ea.model, "ViT or CLIP vision folder")->required();
  enc->add_option("--image", ea.image, "image file (JPEG, PNG, WebP, GIF, BMP)")->required();
  enc->add_option("--preprocess", ea.preprocess, "clipN | llava_padN | imagenetN | vitN (default: preprocessor_config.json)");
  enc->add_option("--layer", ea.layer, "hidden-state layer for patch features (negative from the end)");
  enc->add_option("--dtype", ea.dtype, "float32 | bfloat16 | float16");
  enc->add_option("--device", ea.device, "cpu | cuda[:N]");

  std::string inspect_dir;
  auto* insp = app.add_subcommand("inspect", "print a model's config, parameter count and memory as JSON");
  insp->add_option("dir", inspect_dir, "model folder")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  set_log_level(quiet ? LogLevel::kQuiet : verbose ? LogLevel::kDebug : LogLevel::kInfo);
  try {
    if (*gen) return run_generate(ga);
    if (*insp) return run_inspect(inspect_dir);
    if (*enc) return run_encode(ea);
  } catch (const VadaptError& e) {
    std::cerr << "vadapt: error: " << e.what() << std::endl;
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "vadapt: error: " << e.what_without_backtrace() << std::endl;
    return 3;
  } catch (const std::exception& e) {
    std::cerr << "vadapt: error: " << e.what() << std::endl;
    return 3;
  }
  return 0;
}

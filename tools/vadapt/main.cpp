// vadapt: one binary, subcommands. stdout carries only results (generated text, JSON);
// logs, progress and speed go to stderr. Errors exit non-zero with a message naming the file,
// key or field.
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <csignal>
#include <filesystem>
#include <unistd.h>
#include <iomanip>
#include <iostream>

#include "adapters/peft.h"
#include "common/error.h"
#include "common/log.h"
#include "common/runtime.h"
#include "data/synth.h"
#include "eval/eval_runner.h"
#include "experts/expert.h"
#include "generate/generator.h"
#include "io/hf_config.h"
#include "io/atomic_file.h"
#include "io/json_file.h"
#include "io/safetensors.h"
#include "model/llama.h"
#include "model/load.h"
#include "model/weight_share.h"
#include "text/prompt.h"
#include "text/tokenizer.h"
#include "train/distributed.h"
#include "train/recipe.h"
#include "train/run_recipe.h"
#include "serve/chat.h"
#include "serve/engine.h"
#include "serve/server.h"
#include "vlm/pipeline.h"
#include "vlm/vision_language_model.h"
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
  std::string adapter, image, lora, vision, template_name;
  std::vector<std::string> frames;
  std::string expert = "none", expert_model;
  int64_t max_new_tokens = 128, top_k = 0;
  float temperature = 0.0f, top_p = 1.0f;
  uint64_t seed = 0;
  int64_t num_beams = 1;
  bool no_bos = false;
};

void print_speed(const generate::GenerateResult& res, size_t rows) {
  const double prefill_tps = res.prefill_seconds > 0 ? res.prompt_tokens / res.prefill_seconds : 0;
  const double decode_tps = res.decode_seconds > 0 ? (res.generated_tokens - static_cast<int64_t>(rows)) / res.decode_seconds : 0;
  log_info(cat("prefill: ", res.prompt_tokens, " tokens, ", prefill_tps, " tok/s | decode: ", res.generated_tokens,
               " tokens, ", decode_tps, " tok/s"));
}

generate::GenerateOptions make_options(const GenerateArgs& a, const text::Tokenizer& tok) {
  generate::GenerateOptions opts;
  opts.max_new_tokens = a.max_new_tokens;
  opts.sampling = {a.temperature, a.top_k, a.top_p, a.seed};
  opts.num_beams = a.num_beams;
  if (tok.eos_id() >= 0) opts.stop_ids.push_back(tok.eos_id());
  return opts;
}

// With an adapter: the vision-language model answers about an image through its template.
int run_generate_vlm(const GenerateArgs& a) {
  auto device = parse_device(a.device);
  auto m = vlm::load_vlm_checkpoint(a.adapter, device, {a.model, a.vision, a.template_name});
  if (a.prompts.size() != 1) throw VadaptError("--adapter: give exactly one --prompt");
  auto expert = experts::make_expert(a.expert, a.expert_model, device);
  if (expert && a.image.empty()) throw VadaptError("--expert reads the image: give --image");
  vlm::Query q{"--prompt", {}, a.image};
  q.conv.turns.push_back({"user", (a.image.empty() ? "" : std::string(text::kImageTag) + "\n") +
                                      experts::with_context(expert.get(), a.image, a.prompts[0], "--prompt")});
  text::StreamDecoder stream(m->tokenizer());
  if (!a.frames.empty() && a.image.empty()) throw VadaptError("--frame adds images after --image: give --image first");
  std::vector<std::string> images;
  if (!a.image.empty()) images.push_back(a.image);
  images.insert(images.end(), a.frames.begin(), a.frames.end());
  auto res = vlm::answer(*m, {vlm::encode_query(*m, q)}, std::vector<std::vector<std::string>>{images}, make_options(a, m->tokenizer()),
                         [&](int64_t, int64_t id) {
    std::cout << stream.push(id) << std::flush;
    return true;
  });
  std::cout << stream.flush() << std::endl;
  print_speed(res, 1);
  return 0;
}

int run_generate(const GenerateArgs& a) {
  if (!a.adapter.empty()) return run_generate_vlm(a);
  if (!a.image.empty() || !a.frames.empty()) throw VadaptError("--image needs --adapter (a trained vision-language adapter)");
  if (!a.lora.empty() && a.model.empty()) throw VadaptError("--lora needs --model (the base model the LoRA was trained on)");
  if (a.model.empty()) throw VadaptError("--model is required without --adapter");
  auto dtype = io::dtype_from_name(a.dtype, "--dtype");
  auto device = parse_device(a.device);
  Stopwatch load_sw;
  auto lm = model::load_llama(a.model, dtype, device);
  auto tok = text::load_tokenizer(a.tokenizer.empty() ? a.model : a.tokenizer);
  adapters::AdapterSet lora_set;  // a PEFT LoRA on the model, alive while it generates
  if (!a.lora.empty()) log_info(cat("LoRA from ", a.lora, ": ", adapters::load_peft_lora(*lm, *lora_set, a.lora), " modules adapted"));
  log_info(cat("loaded ", a.model, " in ", load_sw.seconds(), " s"));
  std::vector<std::vector<int64_t>> ids;
  for (size_t i = 0; i < a.prompts.size(); ++i) {
    auto p = tok->encode(a.prompts[i], !a.no_bos);
    if (p.empty()) throw VadaptError(cat("--prompt ", i, ": the prompt is empty (no tokens); give some text"));
    ids.push_back(std::move(p));
  }
  auto opts = make_options(a, *tok);
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
  print_speed(res, ids.size());
  return 0;
}

struct TrainArgs {
  std::string recipe, out, stage, resume, device = "cpu", precision;
  std::vector<std::string> overrides;
  int nproc = 1;
  bool plot = false, verbose = false, skip_bad = false;
};

int run_train(const TrainArgs& a) {
  auto recipe = train::load_recipe(a.recipe, a.overrides);  // a bad recipe fails before workers start
  train::RunOptions ro;
  ro.comm = train::communicator_from_env();
  const int rank = ro.comm ? ro.comm->rank() : 0;
  if (rank != 0 && !a.verbose) set_log_level(LogLevel::kQuiet);  // rank 0 reports for everyone
  if (ro.comm && a.nproc > 1 && ro.comm->world_size() != a.nproc)
    throw VadaptError(cat("--nproc ", a.nproc, " but WORLD_SIZE is ", ro.comm->world_size()));
  std::string dev = a.device;
  if (ro.comm && dev == "cuda") dev = cat("cuda:", std::getenv("LOCAL_RANK") ? std::getenv("LOCAL_RANK") : "0");  // one GPU per local worker
  ro.device = parse_device(dev);
  ro.only_stage = a.stage;
  ro.resume = a.resume;
  ro.precision = a.precision;
  ro.plot = a.plot;
  ro.skip_bad = a.skip_bad;
  Stopwatch sw;
  auto results = train::run_recipe(recipe, a.out, ro);
  if (rank != 0) return 0;  // stdout carries one result
  std::string table =
      "\n| stage | steps | trainable params | val loss before | val loss after | seconds | peak RSS MB |\n|---|---|---|---|---|---|---|\n";
  for (const auto& r : results) {
    char line[256];
    std::snprintf(line, sizeof line, "| %s | %ld | %ld | %.3f | %.3f | %.0f | %.0f |\n", r.name.c_str(), static_cast<long>(r.result.steps),
                  static_cast<long>(r.result.trainable), r.result.val_loss_before, r.result.val_loss_after, r.result.seconds,
                  r.result.peak_rss_mb);
    table += line;
  }
  log_info(table + cat("wall time: ", static_cast<int64_t>(sw.seconds()), " s"));
  nlohmann::json j = nlohmann::json::array();
  for (const auto& r : results)
    j.push_back({{"stage", r.name}, {"adapter", r.out_dir}, {"steps", r.result.steps}, {"last_loss", r.result.last_loss},
                 {"val_loss_before", r.result.val_loss_before}, {"val_loss_after", r.result.val_loss_after},
                 {"trainable_parameters", r.result.trainable}, {"total_parameters", r.result.total},
                 {"seconds", r.result.seconds}, {"peak_rss_mb", r.result.peak_rss_mb}});
  std::cout << j.dump(2) << std::endl;
  return 0;
}

int run_inspect_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  auto recipe = train::load_recipe(path, overrides);
  nlohmann::json j = nlohmann::json::array();
  for (const auto& st : recipe.stages) {
    auto c = vlm::VisionLanguageModel::count_from_configs(st.spec);
    c["stage"] = st.name;
    j.push_back(c);
  }
  std::cout << j.dump(2) << std::endl;
  return 0;
}

// Folds a PEFT LoRA into a Hugging Face Llama folder.
int run_merge_peft(const std::string& model_dir, const std::string& lora, const std::string& out) {
  auto lm = model::load_llama(model_dir, torch::kFloat32, torch::kCPU);
  adapters::AdapterSet set;
  const auto n = adapters::load_peft_lora(*lm, *set, lora);
  set->merge_into(*lm);
  model::save_hf_llama(*lm, model_dir, out);
  log_info(cat("merged ", n, " LoRA modules of ", lora, " into ", out));
  std::cout << nlohmann::json{{"merged", out}}.dump() << std::endl;
  return 0;
}

// Folds a trained adapter into the LLM and writes a Hugging Face folder; what stays outside the
// LLM (LLaVA's projector) goes into the same weights with the method's config fields (a merged
// LLaVA checkpoint). Methods that cannot be folded say why.
int run_merge(const std::string& adapter, const std::string& out, const methods::FolderOverrides& o) {
  auto m = vlm::load_vlm_checkpoint(adapter, torch::kCPU, o);
  methods::Method::Rest rest;
  try {
    rest = m->method().merge_into(*m);
  } catch (const VadaptError& e) {
    throw VadaptError(cat(adapter, ": ", e.what()));
  }
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  if (!rest.tensors.empty()) {
    for (const auto& p : m->lm()->named_parameters()) tensors.emplace_back(p.key(), p.value());
    tensors.insert(tensors.end(), rest.tensors.begin(), rest.tensors.end());
  }
  model::save_hf_llama(*m->lm(), m->spec().llm, out, tensors, rest.config.empty() ? nlohmann::json(nullptr) : rest.config);
  log_info(cat("merged ", adapter, " into ", out));
  std::cout << nlohmann::json{{"merged", out}}.dump() << std::endl;
  return 0;
}

struct ImportArgs {
  std::string recipe, stage, weights, out;
  std::vector<std::string> overrides;
};

// Reads an official release's adapter file into the method of a recipe stage (which says the
// frozen models and the method's options) and writes a vadapt adapter folder.
int run_import(const ImportArgs& a) {
  auto recipe = train::load_recipe(a.recipe, a.overrides);
  const train::Stage* st = nullptr;
  for (const auto& s : recipe.stages)
    if (a.stage.empty() || s.name == a.stage) st = &s;
  if (!st) throw VadaptError(cat(a.recipe, ": no stage named '", a.stage, "'"));
  vlm::VisionLanguageModel m(st->spec);
  m.method().load_official(a.weights);
  m.save_adapter(a.out);
  log_info(cat("imported ", a.weights, " as a ", st->spec.method, " adapter in ", a.out));
  std::cout << nlohmann::json{{"adapter", a.out}, {"method", st->spec.method}}.dump() << std::endl;
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

struct EvalArgs {
  eval::EvalOptions opts;
  std::string adapter, recipe, stage, device = "cpu";
  std::vector<std::string> overrides;
  std::string baseline;  // an earlier summary.json to compare with
  std::string expert = "none", expert_model;
  bool no_cache = false;
  methods::FolderOverrides folder;  // with --adapter
};

// "| type | n | before | after |" from two exact_match / vqa summaries.
std::string compare_table(const nlohmann::json& before, const nlohmann::json& after) {
  std::string t = "| question type | n | accuracy before | accuracy after |\n|---|---|---|---|\n";
  for (const auto& [type, m] : after["metrics"].items()) {
    const auto& b = before["metrics"];
    char line[256];
    std::snprintf(line, sizeof line, "| %s | %lld | %s | %.3f |\n", type.c_str(), static_cast<long long>(m["n"].get<double>()),
                  b.contains(type) ? cat(std::fixed, std::setprecision(3), b[type]["accuracy"].get<double>()).c_str() : "-",
                  m["accuracy"].get<double>());
    t += line;
  }
  return t;
}

// Scores a trained adapter (--adapter) or, for a "before training" baseline, the untrained
// model a recipe stage starts from (--recipe, --stage).
struct PromptArgs {
  std::string tokenizer, template_name = "vicuna_v1", system;
  std::vector<std::string> user, assistant;
  int64_t image_tokens = 1;
};

// One conversation through a template and a tokenizer, as the trainer sees it: input_ids (the
// image as -200, as LLaVA writes it) and labels (-100 where masked), plus the prompt string.
int run_prompt(const PromptArgs& a) {
  if (a.user.empty()) throw VadaptError("prompt: give at least one --user TEXT");
  if (a.assistant.size() != a.user.size() && a.assistant.size() + 1 != a.user.size())
    throw VadaptError(cat("prompt: turns alternate user, assistant, ...: ", a.user.size(), " --user need ", a.user.size(), " or ",
                          a.user.size() - 1, " --assistant, got ", a.assistant.size()));
  if (a.image_tokens < 0) throw VadaptError("prompt: --image-tokens must be >= 0");
  auto tok = text::load_tokenizer(a.tokenizer);
  const auto tmpl = text::ChatTemplate::by_name(a.template_name);
  text::Conversation c;
  c.system = a.system;
  for (size_t i = 0; i < a.user.size(); ++i) {
    c.turns.push_back({"user", a.user[i]});
    if (i < a.assistant.size()) c.turns.push_back({"assistant", a.assistant[i]});
  }
  const bool gen = a.assistant.size() < a.user.size();  // ends with the assistant's cue
  auto e = text::encode_segments(*tok, tmpl.segments(c, gen), a.image_tokens);
  std::vector<std::string> pieces;
  for (auto id : e.ids) pieces.push_back(id == text::kImageToken ? "<image>" : tok->decode({id}));
  std::cout << nlohmann::json{{"template", a.template_name}, {"text", tmpl.render(c, gen)}, {"input_ids", e.ids},
                              {"labels", e.labels}, {"tokens", pieces}, {"legacy", tok->legacy()}}.dump()
            << std::endl;
  return 0;
}

int run_eval(const EvalArgs& a) {
  auto device = parse_device(a.device);
  nlohmann::json before;  // read first, so a bad --baseline fails before the evaluation runs
  if (!a.baseline.empty()) {
    if (a.opts.task != "exact_match" && a.opts.task != "vqa") throw VadaptError("--baseline: only for exact_match and vqa");
    before = io::read_json(a.baseline);
    if (!before.contains("metrics") || !before["metrics"].is_object()) raise(a.baseline, "metrics", "not an eval summary.json");
  }
  std::unique_ptr<vlm::VisionLanguageModel> m;
  if (!a.adapter.empty() == !a.recipe.empty()) throw VadaptError("eval: give exactly one of --adapter DIR or --recipe FILE");
  if (!a.adapter.empty()) {
    m = vlm::load_vlm_checkpoint(a.adapter, device, a.folder);
  } else {
    auto recipe = train::load_recipe(a.recipe, a.overrides);
    const train::Stage* st = nullptr;
    for (const auto& s : recipe.stages)
      if (a.stage.empty() || s.name == a.stage) st = &s;
    if (!st) throw VadaptError(cat(a.recipe, ": no stage named '", a.stage, "'"));
    log_info(cat("eval: untrained model of stage ", st->name, " (projector initialised with seed ", st->spec.seed, ")"));
    m = std::make_unique<vlm::VisionLanguageModel>(st->spec, device);
  }
  if (!a.no_cache) m->enable_feature_cache(train::default_feature_cache_dir());
  auto expert = experts::make_expert(a.expert, a.expert_model, device);
  auto opts = a.opts;
  opts.expert = expert.get();
  auto rep = eval::run_eval(*m, opts);
  if (!a.baseline.empty()) rep.table = compare_table(before, rep.summary);
  log_info(cat("\n", rep.table, "(", rep.summary["n"].get<int64_t>(), " samples, ", static_cast<int64_t>(rep.summary["seconds"].get<double>()), " s)"));
  std::cout << rep.summary.dump(2) << std::endl;
  return 0;
}


// vadapt chat: a multi-turn conversation with an adapter on stdin / stdout (one turn per line
// when stdin is not a terminal); /image PATH, /reset, /save FILE, /exit (or Ctrl-D).
int run_chat(const GenerateArgs& a) {
  if (a.adapter.empty()) throw VadaptError("chat: give --adapter DIR (a trained adapter or a LLaVA folder)");
  auto device = parse_device(a.device);
  auto m = vlm::load_vlm_checkpoint(a.adapter, device, {a.model, a.vision, a.template_name});
  serve::ChatSession chat(*m, make_options(a, m->tokenizer()));
  if (!a.image.empty()) chat.attach_image(a.image);
  for (const auto& f : a.frames) chat.attach_image(f);
  const bool tty = ::isatty(0);
  if (tty) std::cerr << "vadapt chat (" << m->spec().method << ", template " << m->spec().template_name
                     << "): /image PATH, /reset, /save FILE, /exit" << std::endl;
  int rc = 0;
  for (std::string line;;) {
    if (tty) std::cerr << "> " << std::flush;
    if (!std::getline(std::cin, line)) break;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty()) continue;
    try {
      if (line == "/exit" || line == "/quit") break;
      if (line == "/reset") {
        chat.reset();
        log_info("chat: new conversation");
      } else if (line.rfind("/image ", 0) == 0) {
        chat.attach_image(line.substr(7));
        log_info(cat("chat: ", line.substr(7), " goes with the next turn"));
      } else if (line.rfind("/save ", 0) == 0) {
        chat.save(line.substr(6));
        log_info(cat("chat: conversation saved to ", line.substr(6)));
      } else if (line[0] == '/') {
        throw VadaptError(cat("unknown command ", line, " (/image PATH, /reset, /save FILE, /exit)"));
      } else {
        chat.turn(line, [](const std::string& piece) { std::cout << piece << std::flush; });
        std::cout << std::endl;
      }
    } catch (const VadaptError& e) {
      std::cerr << "vadapt: error: " << e.what() << std::endl;
      rc = 2;
    }
  }
  return rc;
}

struct ServeArgs {
  std::vector<std::string> adapters;
  std::string model, vision, template_name, device = "cpu", host = "127.0.0.1", api_key, allow_local_images;
  int port = 8080;
  size_t max_queue = 64;
  int64_t max_batch = 8, max_tokens = 1024;
  double timeout = 600;
  size_t max_body_mb = 32;
  bool no_cache = false;
};

serve::Server* g_server = nullptr;
extern "C" void stop_server(int) {
  if (g_server) g_server->stop();
}

// vadapt serve: several adapters on one base, OpenAI-compatible HTTP.
int run_serve(const ServeArgs& a) {
  if (a.adapters.empty()) throw VadaptError("serve: give at least one --adapter NAME=DIR");
  auto device = parse_device(a.device);
  std::vector<std::pair<std::string, std::unique_ptr<vlm::VisionLanguageModel>>> models;
  model::WeightShare::enable(true);  // one copy of the frozen base for all adapters
  for (const auto& spec : a.adapters) {
    const auto eq = spec.find('=');
    std::string name = eq == std::string::npos ? std::filesystem::path(spec).filename().string() : spec.substr(0, eq);
    const std::string dir = eq == std::string::npos ? spec : spec.substr(eq + 1);
    if (name.empty() || dir.empty()) throw VadaptError(cat("--adapter ", spec, ": expected NAME=DIR"));
    for (const auto& [n, m] : models)
      if (n == name) throw VadaptError(cat("--adapter ", spec, ": the name '", name, "' is given twice"));
    auto m = vlm::load_vlm_checkpoint(dir, device, {a.model, a.vision, a.template_name});
    if (!a.no_cache) m->enable_feature_cache(train::default_feature_cache_dir());
    if (!models.empty()) {  // one base for all
      const auto& first = *models[0].second;
      auto same = [](const std::string& x, const std::string& y) {
        return x == y || (!x.empty() && !y.empty() && std::filesystem::weakly_canonical(x) == std::filesystem::weakly_canonical(y));
      };
      if (!same(first.spec().llm, m->spec().llm))
        throw VadaptError(cat("--adapter ", spec, ": its base LLM ", m->spec().llm, " is not the base of '", models[0].first, "' (",
                              first.spec().llm, "); one server serves adapters of one base"));
      if (m->has_vision() && first.has_vision() && !same(first.spec().vision, m->spec().vision))
        throw VadaptError(cat("--adapter ", spec, ": its vision tower ", m->spec().vision, " is not the one of '", models[0].first, "' (",
                              first.spec().vision, ")"));
    }
    log_info(cat("serve: model '", name, "' = ", dir, " (", m->spec().method, ", template ", m->spec().template_name, ")"));
    models.emplace_back(name, std::move(m));
  }
  std::vector<std::string> names;
  for (const auto& [n, m] : models) names.push_back(n);
  log_info(cat("serve: frozen base weights held once: ", model::WeightShare::bytes() / (1 << 20), " MiB shared by ", models.size(), " model(s)"));
  serve::Engine engine(std::move(models), {a.max_queue, a.max_batch});
  serve::ServerOptions so;
  so.host = a.host, so.port = a.port, so.api_key = a.api_key, so.request_timeout_s = a.timeout;
  so.max_body_bytes = a.max_body_mb << 20;
  so.limits.max_tokens = a.max_tokens;
  so.limits.max_image_pixels = vision::default_decode_options().max_pixels > 0 ? vision::default_decode_options().max_pixels : INT64_MAX;
  so.limits.allow_local_images = a.allow_local_images;
  char tmpl[] = "/tmp/vadapt-serve-XXXXXX";
  if (!::mkdtemp(tmpl)) throw VadaptError("serve: cannot create a folder for received images under /tmp");
  so.limits.image_dir = tmpl;
  serve::Server server(engine, so);
  server.bind();
  g_server = &server;
  std::signal(SIGINT, stop_server);
  std::signal(SIGTERM, stop_server);
  const std::string url = cat("http://", a.host, ":", server.port());
  log_info(cat("serve: listening on ", url, " (", names.size(), " model(s); POST /v1/chat/completions, GET /v1/models, /health, /metrics, /)"));
  std::cout << nlohmann::json{{"url", url}, {"port", server.port()}, {"models", names}}.dump() << std::endl;
  server.listen();
  g_server = nullptr;
  std::error_code ec;
  std::filesystem::remove_all(so.limits.image_dir, ec);
  log_info("serve: stopped");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"vadapt: frozen vision + language models, small trainable adapters"};
  app.require_subcommand(1);
  app.fallthrough();  // the global options (-q, --max-image-pixels, ...) also after the subcommand
  bool quiet = false, verbose = false;
  app.add_flag("-q,--quiet", quiet, "only errors on stderr");
  auto& decode = vision::default_decode_options();
  app.add_option("--max-image-pixels", decode.max_pixels,
                 "refuse images with more pixels than this, read from the header before decoding (0: no limit; Pillow's default)")
      ->capture_default_str();
  app.add_flag("--allow-truncated-images", decode.allow_truncated,
               "accept truncated JPEGs with a warning (the missing part grey), as Pillow's LOAD_TRUNCATED_IMAGES; default: an error");
  app.add_flag("-v,--verbose", verbose, "debug logging");

  GenerateArgs ga;
  auto* gen = app.add_subcommand("generate", "generate text from a prompt with a Llama-family model");
  gen->add_option("--model", ga.model, "Hugging Face model folder (config.json + safetensors); with --adapter: the base LLM in place of the one it names");
  gen->add_option("--adapter", ga.adapter, "vision-language adapter folder (vadapt train) or a LLaVA checkpoint folder");
  gen->add_option("--vision", ga.vision, "with --adapter: the vision tower folder in place of the one it names");
  gen->add_option("--template", ga.template_name, "with --adapter: the chat template in place of the one it names")
      ->check(CLI::IsMember(text::template_names()));
  gen->add_option("--image", ga.image, "image to ask about (with --adapter)");
  gen->add_option("--frame", ga.frames, "a further image of the same prompt, after --image (repeatable; multi-image methods: palm2_vadapter)");
  gen->add_option("--expert", ga.expert, "with --adapter: put an expert's text about the image before the prompt (LLaMA-Adapter V2)")
      ->check(CLI::IsMember({"none", "ocr", "caption"}));
  gen->add_option("--expert-model", ga.expert_model, "with --expert caption: the caption adapter folder");
  gen->add_option("--lora", ga.lora, "a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors) on --model");
  gen->add_option("--tokenizer", ga.tokenizer, "tokenizer folder or file (default: the model folder)");
  gen->add_option("--prompt", ga.prompts, "prompt text (repeat for a batch)")->required();
  gen->add_option("--max-new-tokens", ga.max_new_tokens, "tokens to generate")->check(CLI::NonNegativeNumber);
  gen->add_option("--temperature", ga.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-k", ga.top_k, "0 = off")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", ga.top_p, "1 = off")->check(CLI::Range(0.0, 1.0));
  gen->add_option("--seed", ga.seed, "sampling seed");
  gen->add_option("--num-beams", ga.num_beams, "beam search width (1 = greedy / sampling; one prompt)")->check(CLI::PositiveNumber);
  gen->add_option("--dtype", ga.dtype, "float32 | bfloat16 | float16");
  gen->add_option("--device", ga.device, "cpu | cuda[:N]");
  gen->add_flag("--no-bos", ga.no_bos, "do not prepend BOS");

  GenerateArgs ca;
  auto* chat = app.add_subcommand("chat", "multi-turn chat with an adapter (answers on stdout; /image PATH, /reset, /save FILE, /exit)");
  chat->add_option("--adapter", ca.adapter, "adapter folder (vadapt train) or a LLaVA checkpoint folder")->required();
  chat->add_option("--model", ca.model, "the base LLM in place of the one the adapter names");
  chat->add_option("--vision", ca.vision, "the vision tower folder in place of the one it names");
  chat->add_option("--template", ca.template_name, "the chat template in place of the one it names")->check(CLI::IsMember(text::template_names()));
  chat->add_option("--image", ca.image, "an image for the first turn");
  chat->add_option("--frame", ca.frames, "further images of the first turn (multi-image methods)");
  chat->add_option("--max-new-tokens", ca.max_new_tokens, "tokens per answer")->check(CLI::NonNegativeNumber);
  chat->add_option("--temperature", ca.temperature, "0 = greedy")->check(CLI::NonNegativeNumber);
  chat->add_option("--top-k", ca.top_k, "0 = off")->check(CLI::NonNegativeNumber);
  chat->add_option("--top-p", ca.top_p, "1 = off")->check(CLI::Range(0.0, 1.0));
  chat->add_option("--seed", ca.seed, "sampling seed");
  chat->add_option("--num-beams", ca.num_beams, "beam search width")->check(CLI::PositiveNumber);
  chat->add_option("--device", ca.device, "cpu | cuda[:N]");

  ServeArgs sa;
  auto* srv = app.add_subcommand("serve", "OpenAI-compatible HTTP server: several adapters on one base, a chat page at /");
  srv->add_option("--adapter", sa.adapters, "NAME=DIR (repeatable; the request's model field picks one)")->required();
  srv->add_option("--model", sa.model, "the base LLM in place of the one the adapters name");
  srv->add_option("--vision", sa.vision, "the vision tower in place of the one the adapters name");
  srv->add_option("--template", sa.template_name, "the chat template in place of the adapters' own")->check(CLI::IsMember(text::template_names()));
  srv->add_option("--host", sa.host, "address to bind (default 127.0.0.1)");
  srv->add_option("--port", sa.port, "port (0: any free one; the chosen URL is printed as JSON)")->check(CLI::Range(0, 65535));
  srv->add_option("--api-key", sa.api_key, "require Authorization: Bearer KEY");
  srv->add_option("--allow-local-images", sa.allow_local_images, "image_url may name files under this folder");
  srv->add_option("--max-queue", sa.max_queue, "queued requests before 429")->check(CLI::PositiveNumber);
  srv->add_option("--max-batch", sa.max_batch, "requests generated together")->check(CLI::PositiveNumber);
  srv->add_option("--max-tokens", sa.max_tokens, "ceiling of a request's max_tokens")->check(CLI::PositiveNumber);
  srv->add_option("--max-body-mb", sa.max_body_mb, "request body limit (413 beyond)")->check(CLI::PositiveNumber);
  srv->add_option("--timeout", sa.timeout, "seconds a request may take (504 beyond)")->check(CLI::PositiveNumber);
  srv->add_option("--device", sa.device, "cpu | cuda[:N]");
  srv->add_flag("--no-cache", sa.no_cache, "do not cache vision features");

  EncodeArgs ea;
  auto* enc = app.add_subcommand("encode", "run a vision tower on an image and print its features as JSON");
  enc->add_option("--model", ea.model, "ViT or CLIP vision folder")->required();
  enc->add_option("--image", ea.image, "image file (JPEG, PNG, WebP, GIF, BMP)")->required();
  enc->add_option("--preprocess", ea.preprocess, "clipN | llava_padN | imagenetN | vitN (default: preprocessor_config.json)");
  enc->add_option("--layer", ea.layer, "hidden-state layer for patch features (negative from the end)");
  enc->add_option("--dtype", ea.dtype, "float32 | bfloat16 | float16");
  enc->add_option("--device", ea.device, "cpu | cuda[:N]");

  std::string inspect_dir, inspect_recipe;
  std::vector<std::string> inspect_overrides;
  auto* insp = app.add_subcommand("inspect", "print a model's (or a recipe's) config, parameter counts and memory as JSON");
  insp->add_option("dir", inspect_dir, "model folder");
  insp->add_option("--recipe", inspect_recipe, "recipe YAML: parameter counts from configs alone, no weights");
  insp->add_option("--set", inspect_overrides, "recipe override key.path=value");

  TrainArgs ta;
  auto* tr = app.add_subcommand("train", "train adapters with a recipe (all stages, or one)");
  tr->add_option("--recipe", ta.recipe, "recipe YAML under recipes/")->required();
  tr->add_option("--out", ta.out, "output folder (one subfolder per stage)")->required();
  tr->add_option("--set", ta.overrides, "override key.path=value (repeatable)");
  tr->add_option("--stage", ta.stage, "run only this stage");
  tr->add_option("--resume", ta.resume, "checkpoint folder or 'latest'");
  tr->add_option("--device", ta.device, "cpu | cuda[:N]");
  tr->add_option("--precision", ta.precision, "fp32 | bf16 | fp16 autocast (trainable weights stay fp32); default: the recipe's");
  tr->add_option("--nproc", ta.nproc, "data-parallel workers on this machine (c10d Gloo); RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT "
                 "in the environment join a multi-machine group instead")->check(CLI::PositiveNumber);
  tr->add_flag("--plot", ta.plot, "write loss.png beside metrics.csv");
  tr->add_flag("--skip-bad", ta.skip_bad, "drop malformed records, missing images and samples that cannot be trained (counted and "
               "listed with file and record) instead of stopping before training; every stage, as data.skip_bad: true");

  data::SynthOptions so;
  auto* sy = app.add_subcommand("synth", "render the synthetic shapes-and-words dataset (deterministic by seed)");
  sy->add_option("--out", so.out, "output folder")->required();
  sy->add_option("--seed", so.seed, "random seed");
  sy->add_option("--n", so.n, "number of images")->check(CLI::PositiveNumber);
  sy->add_option("--image-size", so.image_size, "image side in pixels");
  sy->add_option("--word-fraction", so.word_fraction, "share of images that show a written word")->check(CLI::Range(0.0, 1.0));
  sy->add_option("--val-fraction", so.val_fraction, "share of images in the val split")->check(CLI::Range(0.0, 1.0));
  sy->add_option("--test-fraction", so.test_fraction, "share of images in the test split")->check(CLI::Range(0.0, 1.0));
  sy->add_option("--font", so.font, "TrueType font for the words");

  EvalArgs va;
  auto* ev = app.add_subcommand("eval", "score a model on a dataset: predictions JSONL + summary JSON (stdout) + table (stderr)");
  ev->add_option("--task", va.opts.task, "exact_match | vqa | scienceqa | captions | loss")->required();
  ev->add_option("--data", va.opts.data, "dataset file (LLaVA JSON, COCO captions, problems.json, JSONL)")->required();
  ev->add_option("--adapter", va.adapter, "adapter folder (vadapt train) or a LLaVA checkpoint folder");
  ev->add_option("--model", va.folder.llm, "with --adapter: the base LLM in place of the one it names");
  ev->add_option("--vision", va.folder.vision, "with --adapter: the vision tower folder in place of the one it names");
  ev->add_option("--template", va.folder.template_name, "with --adapter: the chat template in place of the one it names")
      ->check(CLI::IsMember(text::template_names()));
  ev->add_option("--recipe", va.recipe, "recipe YAML: score the untrained model of a stage (a baseline)");
  ev->add_option("--stage", va.stage, "recipe stage (default: the last)");
  ev->add_option("--set", va.overrides, "recipe override key.path=value");
  ev->add_option("--format", va.opts.format, "llava | coco | jsonl | scienceqa (default: from the file)");
  ev->add_option("--image-root", va.opts.image_root, "folder that relative image paths start from");
  ev->add_option("--problems", va.opts.problems, "ScienceQA problems.json for per-subject / grade scores");
  ev->add_option("--split", va.opts.split, "ScienceQA pid split with problems.json (default: test)");
  ev->add_option("--prompt", va.opts.prompt, "captions: the instruction");
  ev->add_option("--prompt-suffix", va.opts.prompt_suffix, "appended to every question");
  ev->add_option("--limit", va.opts.limit, "at most this many samples");
  ev->add_option("--batch-size", va.opts.batch_size, "prompts per generation batch")->check(CLI::PositiveNumber);
  ev->add_option("--max-new-tokens", va.opts.max_new_tokens, "answer length limit (default: per task)");
  ev->add_option("--out", va.opts.out_dir, "folder for predictions.jsonl and summary.json");
  ev->add_option("--device", va.device, "cpu | cuda[:N]");
  ev->add_option("--baseline", va.baseline, "an earlier summary.json: the table shows before / after per type");
  ev->add_flag("--skip-bad", va.opts.skip_bad, "skip malformed records (counted) instead of failing");
  ev->add_flag("--no-feature-cache", va.no_cache, "recompute frozen vision features");
  ev->add_option("--expert", va.expert, "put an expert's text about each image before its question (LLaMA-Adapter V2)")
      ->check(CLI::IsMember({"none", "ocr", "caption"}));
  ev->add_option("--expert-model", va.expert_model, "with --expert caption: the caption adapter folder");

  std::string merge_adapter, merge_out, merge_model, merge_lora;
  auto* mg = app.add_subcommand("merge", "fold a LoRA adapter into the LLM and write a Hugging Face folder");
  mg->add_option("--adapter", merge_adapter, "vadapt LoRA adapter folder (from vadapt train)");
  mg->add_option("--model", merge_model, "with --lora: the Hugging Face base model folder");
  mg->add_option("--lora", merge_lora, "a PEFT LoRA folder to fold into --model");
  mg->add_option("--out", merge_out, "output folder")->required();
  methods::FolderOverrides merge_folder;
  mg->add_option("--vision", merge_folder.vision, "with --adapter: the vision tower folder in place of the one it names");

  std::string export_adapter, export_format = "llava", export_out;
  methods::FolderOverrides export_folder;
  auto* ex = app.add_subcommand("export", "write an adapter in a method's own release layout (LLaVA: the files its code loads)");
  ex->add_option("--adapter", export_adapter, "adapter folder (vadapt train)")->required();
  ex->add_option("--format", export_format, "release layout: llava (mm_projector.bin / LoRA + non_lora_trainables.bin / merged)");
  ex->add_option("--out", export_out, "output folder")->required();
  ex->add_option("--model", export_folder.llm, "the base LLM in place of the one the adapter names");
  ex->add_option("--vision", export_folder.vision, "the vision tower folder in place of the one the adapter names");

  PromptArgs pa;
  auto* pr = app.add_subcommand("prompt", "print a conversation's input_ids and labels as the trainer builds them (JSON)");
  pr->add_option("--tokenizer", pa.tokenizer, "tokenizer folder (tokenizer.model or tokenizer.json + tokenizer_config.json)")->required();
  pr->add_option("--template", pa.template_name, "chat template")->check(CLI::IsMember(text::template_names()));
  pr->add_option("--system", pa.system, "system prompt (default: the template's)");
  pr->add_option("--user", pa.user, "a user turn (repeat for more turns; '<image>' marks the image)")->required();
  pr->add_option("--assistant", pa.assistant, "an assistant turn (repeat; turns alternate starting with --user)");
  pr->add_option("--image-tokens", pa.image_tokens, "placeholders per image (LLaVA's input_ids hold one -200)");

  ImportArgs ia;
  auto* im = app.add_subcommand("import", "turn an official release's adapter file into a vadapt adapter folder");
  im->add_option("--recipe", ia.recipe, "recipe YAML naming the method, its options and the frozen models")->required();
  im->add_option("--stage", ia.stage, "recipe stage (default: the last)");
  im->add_option("--set", ia.overrides, "recipe override key.path=value");
  im->add_option("--weights", ia.weights, "the official adapter file (safetensors)")->required();
  im->add_option("--out", ia.out, "output adapter folder")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  set_log_level(quiet ? LogLevel::kQuiet : verbose ? LogLevel::kDebug : LogLevel::kInfo);
  configure_runtime(*tr ? Workload::kTraining : Workload::kInference);
  try {
    if (*gen) return run_generate(ga);
    if (*chat) return run_chat(ca);
    if (*srv) return run_serve(sa);
    if (*insp) {
      if (!inspect_recipe.empty()) return run_inspect_recipe(inspect_recipe, inspect_overrides);
      if (inspect_dir.empty()) throw VadaptError("inspect: give a model folder or --recipe FILE");
      return run_inspect(inspect_dir);
    }
    if (*tr) {
      ta.verbose = verbose;
      if (ta.nproc > 1 && !std::getenv("RANK")) return train::launch_local_workers(ta.nproc, std::vector<std::string>(argv, argv + argc));
      return run_train(ta);
    }
    if (*mg) {
      if (!merge_lora.empty() || !merge_model.empty()) {
        if (merge_lora.empty() || merge_model.empty() || !merge_adapter.empty())
          throw VadaptError("merge: give --adapter DIR, or --model DIR with --lora DIR");
        return run_merge_peft(merge_model, merge_lora, merge_out);
      }
      if (merge_adapter.empty()) throw VadaptError("merge: give --adapter DIR, or --model DIR with --lora DIR");
      return run_merge(merge_adapter, merge_out, merge_folder);
    }
    if (*enc) return run_encode(ea);
    if (*im) return run_import(ia);
    if (*pr) return run_prompt(pa);
    if (*ex) {
      auto m = vlm::load_vlm_checkpoint(export_adapter, torch::kCPU, export_folder);
      m->method().export_release(*m, export_format, export_out);
      log_info(cat("wrote ", export_adapter, " as ", export_format, " in ", export_out));
      std::cout << nlohmann::json{{"exported", export_out}, {"format", export_format}}.dump() << std::endl;
      return 0;
    }
    if (*ev) return run_eval(va);
    if (*sy) {
      auto rep = data::write_synthetic_dataset(so);
      std::cout << nlohmann::json{{"out", so.out}, {"images", rep.images}, {"train", rep.train}, {"val", rep.val}, {"test", rep.test},
                                  {"example_image", rep.example_image}, {"example_question", rep.example_question},
                                  {"example_answer", rep.example_answer}}.dump()
                << std::endl;
      return 0;
    }
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

// The vadapt binary end to end on tiny fixtures: stdout carries only results, errors exit
// non-zero with a message naming the problem.
#include <gtest/gtest.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <sstream>
#include <thread>

#include "fixtures.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "train/recipe.h"

using vadapt::test::TempDir;

namespace {
struct Run {
  int rc;
  std::string out, err;
};
// A shell command line; its stderr is captured.
Run run_shell(const std::string& command) {
  TempDir tmp;
  std::string cmd = command + " 2>" + tmp.file("err");
  Run r{};
  FILE* p = popen(cmd.c_str(), "r");
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int status = pclose(p);
  r.rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128;
  FILE* e = fopen(tmp.file("err").c_str(), "r");
  while ((n = fread(buf.data(), 1, buf.size(), e)) > 0) r.err.append(buf.data(), n);
  fclose(e);
  return r;
}
Run run_cli(const std::string& args) { return run_shell(std::string(VADAPT_BINARY) + " " + args); }
}  // namespace

TEST(Cli, GenerateStreamsOnlyTheContinuationToStdout) {
  TempDir model;
  vadapt::test::write_tiny_llama(model.path(), vadapt::test::tiny_llama_config());
  auto r = run_cli("generate --model " + model.path() + " --prompt 'in the' --max-new-tokens 5 --temperature 0");
  EXPECT_EQ(r.rc, 0) << r.err;
  EXPECT_FALSE(r.out.empty());
  EXPECT_EQ(r.out.find("[vadapt]"), std::string::npos) << "logs leaked into stdout";
  EXPECT_NE(r.err.find("tok/s"), std::string::npos) << r.err;
  auto again = run_cli("generate --model " + model.path() + " --prompt 'in the' --max-new-tokens 5");
  EXPECT_EQ(again.out, r.out);
}

TEST(Cli, BadInputsExitNonZeroWithAClearMessage) {
  auto r = run_cli("generate --model /nonexistent/model --prompt hi");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("/nonexistent/model"), std::string::npos) << r.err;
  TempDir model;
  vadapt::test::write_tiny_llama(model.path(), vadapt::test::tiny_llama_config());
  r = run_cli("generate --model " + model.path() + " --prompt '' --no-bos");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("empty"), std::string::npos) << r.err;
  r = run_cli("generate --model " + model.path() + " --prompt hi --dtype float8");
  EXPECT_NE(r.rc, 0);
  EXPECT_NE(r.err.find("float8"), std::string::npos) << r.err;
  r = run_cli("frobnicate");
  EXPECT_NE(r.rc, 0);
}

TEST(Cli, InspectPrintsJsonWithParameterCounts) {
  TempDir model;
  vadapt::test::write_tiny_llama(model.path(), vadapt::test::tiny_llama_config());
  auto r = run_cli("inspect " + model.path());
  ASSERT_EQ(r.rc, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["parameters"].get<int64_t>(), vadapt::test::tiny_llama_config().parameter_count());
  EXPECT_EQ(j["kind"], "llama");
}

namespace {
// A one-stage LoRA recipe over the tiny world, as JSON (recipes read YAML or JSON).
std::string write_lora_recipe(const vadapt::test::TinyVlmWorld& w, const std::string& path, int batch_size, const std::string& data) {
  nlohmann::json r = {{"method", "llava"},
                      {"model", {{"llm", w.llm}, {"vision", w.clip}, {"connector", "mlp2x_gelu"}, {"preprocess", "clip32"}}},
                      {"feature_cache", "none"},
                      {"stages",
                       {{{"name", "s"},
                         {"tune", "lora"},
                         {"template", "vicuna_v1"},
                         {"lora", {{"r", 4}, {"alpha", 8}, {"dropout", 0.0}}},
                         {"data", {{"train", data}, {"format", "llava"}}},
                         {"train", {{"max_steps", 3}, {"batch_size", batch_size}, {"lr", 5e-3}, {"warmup_ratio", 0.0}, {"log_every", 1}}}}}}};
  std::FILE* f = std::fopen(path.c_str(), "w");
  std::fputs(r.dump(2).c_str(), f);
  std::fclose(f);
  return path;
}
}  // namespace

// c10d data parallel: 2 workers on loopback with batch B each end at the parameters of 1 worker
// with batch 2B (the same global batch), and only rank 0 writes to stdout.
TEST(Cli, TwoDataParallelWorkersEqualOneWorkerWithTheSameGlobalBatch) {
  vadapt::test::TinyVlmWorld w;
  TempDir out;
  auto one = run_cli("train --recipe " + write_lora_recipe(w, out.file("one.json"), 4, w.data) + " --out " + out.file("one"));
  ASSERT_EQ(one.rc, 0) << one.err;
  auto two = run_cli("train --nproc 2 --recipe " + write_lora_recipe(w, out.file("two.json"), 2, w.data) + " --out " + out.file("two"));
  ASSERT_EQ(two.rc, 0) << two.err;
  EXPECT_NE(two.err.find("2 data-parallel workers"), std::string::npos) << two.err;
  auto j = nlohmann::json::parse(two.out);  // one JSON document: rank 1 printed nothing
  ASSERT_EQ(j.size(), 1u);
  EXPECT_EQ(j[0]["steps"].get<int64_t>(), 3);
  auto a = vadapt::io::SafeTensorsFile::open(out.file("one/s/adapter_model.safetensors"));
  auto b = vadapt::io::SafeTensorsFile::open(out.file("two/s/adapter_model.safetensors"));
  ASSERT_EQ(a->tensors().size(), b->tensors().size());
  int changed = 0;
  for (const auto& info : a->tensors()) {
    const auto& name = info.name;
    EXPECT_TRUE(vadapt::test::tensors_close(b->tensor(name), a->tensor(name), 1e-5, 1e-4)) << name;
    changed += name.find("lora_B") != std::string::npos && a->tensor(name).abs().max().item<double>() > 0;
  }
  EXPECT_GT(changed, 0);  // it trained
  EXPECT_NEAR(j[0]["last_loss"].get<double>(), nlohmann::json::parse(one.out)[0]["last_loss"].get<double>(), 1e-4);
  // A failing worker stops the run with its error and a non-zero status, without a hang.
  auto bad = run_cli("train --nproc 2 --recipe " + write_lora_recipe(w, out.file("bad.json"), 2, out.file("missing.json")) + " --out " +
                     out.file("bad"));
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("missing.json"), std::string::npos) << bad.err;
}

// Every command with method: llama_adapter_v1 and no method-specific code outside its files:
// train (JSON result on stdout), generate --adapter with an image, eval, inspect --recipe,
// import of the official key layout, and merge refusing with the reason.
TEST(Cli, LlamaAdapterV1WorksWithEveryCommand) {
  vadapt::test::TinyVlmWorld w;
  TempDir tmp;
  nlohmann::json r = {{"method", "llama_adapter_v1"},
                      {"model", {{"llm", w.llm}, {"vision", w.clip}, {"preprocess", "clip32"}}},
                      {"adapter", {{"prompt_len", 3}, {"layers", 2}, {"gate", "tanh"}}},
                      {"visual", {{"taps", {1, 3}}, {"hidden", 16}}},
                      {"feature_cache", "none"},
                      {"stages",
                       {{{"name", "sft"},
                         {"template", "alpaca"},
                         {"data", {{"train", w.data}, {"format", "llava"}}},
                         {"train", {{"max_steps", 3}, {"batch_size", 4}, {"blr", 0.5}, {"beta2", 0.95}, {"schedule", "half_cosine"},
                                    {"warmup_epochs", 0.5}, {"log_every", 1}}}}}}};
  const std::string recipe = tmp.file("v1.json");
  std::FILE* f = std::fopen(recipe.c_str(), "w");
  std::fputs(r.dump(2).c_str(), f);
  std::fclose(f);
  auto t = run_cli("train --recipe " + recipe + " --out " + tmp.file("run"));
  ASSERT_EQ(t.rc, 0) << t.err;
  auto res = nlohmann::json::parse(t.out);
  EXPECT_EQ(res[0]["trainable_parameters"].get<int64_t>(), 2 * 3 * 32 + 2 * 4 + (2 * 32 * 16 + 16 + 16 * 32 + 32));
  EXPECT_NE(t.err.find("prompts K 3 in the top 2 layers"), std::string::npos) << t.err;
  const std::string adapter = tmp.file("run/sft");
  auto g = run_cli("generate --adapter " + adapter + " --image " + w.dir.file("img0.png") + " --prompt 'What colour?' --max-new-tokens 4");
  EXPECT_EQ(g.rc, 0) << g.err;
  auto gb = run_cli("generate --adapter " + adapter + " --image " + w.dir.file("img0.png") + " --prompt 'What colour?' --max-new-tokens 4 --num-beams 2");
  EXPECT_EQ(gb.rc, 0) << gb.err;
  auto e = run_cli("eval --task exact_match --data " + w.data + " --adapter " + adapter + " --limit 4 --no-feature-cache");
  EXPECT_EQ(e.rc, 0) << e.err;
  EXPECT_EQ(nlohmann::json::parse(e.out)["n"].get<int64_t>(), 4);
  auto i = run_cli("inspect --recipe " + recipe);
  ASSERT_EQ(i.rc, 0) << i.err;
  EXPECT_EQ(nlohmann::json::parse(i.out)[0]["prompt_parameters"].get<int64_t>(), 2 * 3 * 32 + 2 * 4);
  auto m = run_cli("merge --adapter " + adapter + " --out " + tmp.file("merged"));
  EXPECT_NE(m.rc, 0);
  EXPECT_NE(m.err.find("cannot be folded"), std::string::npos) << m.err;
  // The trained file is in the official key layout: import reads it back as a new adapter.
  auto im = run_cli("import --recipe " + recipe + " --weights " + adapter + "/adapter_model.safetensors --out " + tmp.file("imported"));
  ASSERT_EQ(im.rc, 0) << im.err;
  auto g2 = run_cli("generate --adapter " + tmp.file("imported") + " --image " + w.dir.file("img0.png") + " --prompt 'What colour?' --max-new-tokens 4");
  EXPECT_EQ(g2.out, g.out);
  // A max_seq_len that cuts every answer away stops the run before its first step, each sample
  // listed by file and record, never trained on silently.
  auto cut = run_cli("train --recipe " + recipe + " --out " + tmp.file("cut") + " --set stages.0.train.max_seq_len=12");
  EXPECT_NE(cut.rc, 0);
  EXPECT_NE(cut.err.find("would cut away every answer token"), std::string::npos) << cut.err;
  EXPECT_NE(cut.err.find("record 0"), std::string::npos) << cut.err;
  auto bad = run_cli("train --recipe " + recipe + " --out " + tmp.file("x") + " --set adapter.layers=7");
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("layers"), std::string::npos) << bad.err;
}

// Every recipe shipped in recipes/ parses, validates (unknown keys are errors) and gives its
// parameter counts from configs alone; the 7B / 13B ones against the reference configs.
TEST(Cli, EveryShippedRecipeInspects) {
  VADAPT_REQUIRE_SHARED();
  const std::string shared = vadapt::test::shared_dir(), refs = shared + "/reference/configs/";
  // ${shared} in a recipe defaults to ../shared beside the working directory, which is not
  // where ctest runs: name it, as a user running from elsewhere would.
  ::setenv("VADAPT_SHARED_DIR", shared.c_str(), 1);
  TempDir tmp;
  int n = 0;
  for (const auto& e : std::filesystem::directory_iterator(std::string(VADAPT_SOURCE_DIR) + "/recipes")) {
    const std::string path = e.path().string(), name = e.path().filename().string();
    std::string sets;
    const bool b13 = name.find("-13b") != std::string::npos;
    if (name.find("-7b") != std::string::npos || b13) {
      sets = " --set model.llm=" + refs + (b13 ? "llama-13b" : "llama-7b");
      const bool vision = vadapt::train::yaml_file_to_json(path)["model"].contains("vision");
      if (name.rfind("llava", 0) == 0) sets += " --set model.vision=" + refs + "clip-vit-large-patch14-336";
      else if (vision) sets += " --set model.vision=" + refs + "clip-vit-large-patch14";
      // A stage with its own models (PaLM2-VAdapter's stage 1 decodes with the tiny LM): the
      // tiny LM's config as the recipe gives it inline, in a folder of its own.
      const auto raw = vadapt::train::yaml_file_to_json(path);
      for (size_t i = 0; i < raw["stages"].size(); ++i) {
        if (!raw["stages"][i].contains("model")) continue;
        nlohmann::json cfg;
        for (const auto& st : raw["stages"])
          if (st.contains("tiny_lm") && st["tiny_lm"].contains("config")) cfg = st["tiny_lm"]["config"];
        ASSERT_FALSE(cfg.is_null()) << name << ": stage " << i << " has its own model and no config to inspect it from";
        const std::string dir = tmp.file("stage" + std::to_string(i) + "-" + name);
        std::filesystem::create_directories(dir);
        std::ofstream(dir + "/config.json") << cfg.dump();
        sets += " --set stages." + std::to_string(i) + ".model.llm=" + dir + " --set stages." + std::to_string(i) + ".model.vision=" + refs +
                "clip-vit-large-patch14";
      }
    }
    auto r = run_cli("inspect --recipe " + path + sets);
    ASSERT_EQ(r.rc, 0) << name << ": " << r.err;
    auto j = nlohmann::json::parse(r.out);
    ASSERT_TRUE(j.is_array() && !j.empty()) << name;
    for (const auto& stage : j) EXPECT_GT(stage["trainable_parameters"].get<int64_t>(), 0) << name;
    ++n;
  }
  EXPECT_GE(n, 12);
}

// Every command with method: lavin: train (end to end through the vision tower, the feature
// cache refused with a log line), generate with and without an image, beam search, eval,
// inspect, import of its own (official-layout) file, and merge refusing with the reason.
TEST(Cli, LavinWorksWithEveryCommand) {
  vadapt::test::TinyVlmWorld w;
  TempDir tmp;
  nlohmann::json r = {{"method", "lavin"},
                      {"model", {{"llm", w.llm}, {"vision", w.clip}, {"preprocess", "imagenet32"}}},
                      {"adapter", {{"dim", 4}, {"temperature", 5}}},
                      {"visual", {{"tap_every", 1}, {"hidden", 16}}},
                      {"stages",
                       {{{"name", "sft"},
                         {"template", "lavin"},
                         {"data", {{"train", w.data}, {"format", "llava"}}},
                         {"train", {{"max_steps", 3}, {"batch_size", 4}, {"blr", 0.5}, {"beta2", 0.95}, {"schedule", "half_cosine"},
                                    {"warmup_epochs", 0.5}, {"log_every", 1}}}}}}};
  const std::string recipe = tmp.file("lavin.json");
  std::FILE* f = std::fopen(recipe.c_str(), "w");
  std::fputs(r.dump(2).c_str(), f);
  std::fclose(f);
  auto t = run_cli("train --recipe " + recipe + " --out " + tmp.file("run"));
  ASSERT_EQ(t.rc, 0) << t.err;
  EXPECT_NE(t.err.find("not cached"), std::string::npos) << t.err;
  auto res = nlohmann::json::parse(t.out);
  // LLM: 2 layers x router(32, dim 4); vision: 3 blocks x router(32); neck 32 -> 16 -> 32; modality 2 x 32.
  const int64_t router = 32 * 4 + 4 + 2 * (32 * 2 + 32) + 2 * 32 + 2;
  EXPECT_EQ(res[0]["trainable_parameters"].get<int64_t>(), 5 * router + (32 * 16 + 16 + 16 * 32 + 32) + 64);
  const std::string adapter = tmp.file("run/sft");
  for (const std::string extra : {" --image " + w.dir.file("img0.png") + " --prompt 'What colour?'", std::string(" --prompt 'Say red.'"),
                                  " --image " + w.dir.file("img0.png") + " --prompt 'What colour?' --num-beams 2"}) {
    auto g = run_cli("generate --adapter " + adapter + extra + " --max-new-tokens 4");
    EXPECT_EQ(g.rc, 0) << extra << ": " << g.err;
  }
  auto e = run_cli("eval --task exact_match --data " + w.data + " --adapter " + adapter + " --limit 4");
  EXPECT_EQ(e.rc, 0) << e.err;
  auto i = run_cli("inspect --recipe " + recipe);
  ASSERT_EQ(i.rc, 0) << i.err;
  EXPECT_EQ(nlohmann::json::parse(i.out)[0]["trainable_parameters"].get<int64_t>(), res[0]["trainable_parameters"].get<int64_t>());
  auto im = run_cli("import --recipe " + recipe + " --weights " + adapter + "/adapter_model.safetensors --out " + tmp.file("imported"));
  ASSERT_EQ(im.rc, 0) << im.err;
  auto a = run_cli("generate --adapter " + adapter + " --image " + w.dir.file("img0.png") + " --prompt 'What colour?' --max-new-tokens 4");
  auto b = run_cli("generate --adapter " + tmp.file("imported") + " --image " + w.dir.file("img0.png") + " --prompt 'What colour?' --max-new-tokens 4");
  EXPECT_EQ(a.out, b.out);
  auto m = run_cli("merge --adapter " + adapter + " --out " + tmp.file("merged"));
  EXPECT_NE(m.rc, 0);
  EXPECT_NE(m.err.find("cannot be folded"), std::string::npos) << m.err;
  auto bad = run_cli("train --recipe " + recipe + " --out " + tmp.file("x") + " --set compat.vision_routing=first");
  EXPECT_NE(bad.rc, 0);
  EXPECT_NE(bad.err.find("vision_routing"), std::string::npos) << bad.err;
}

// Every command with method: palm2_vadapter, progressive: stage 1 trains the tiny LM as a
// captioning decoder (model.llm of that stage), stage 2 takes it (init_from) as the adapter in
// front of the frozen LLM; generate (one image, two frames, beam search), eval, inspect, merge
// refusing, and a one-image method refusing --frame.
TEST(Cli, Palm2VAdapterProgressiveWithEveryCommand) {
  vadapt::test::TinyVlmWorld w;
  TempDir tmp;
  auto c = vadapt::test::tiny_llama_config();
  c.hidden_size = 24, c.intermediate_size = 40, c.num_hidden_layers = 3, c.num_attention_heads = 3, c.num_key_value_heads = 3;
  const std::string tiny = tmp.file("tiny");
  vadapt::test::write_tiny_llama(tiny, c, 11);
  const nlohmann::json train = {{"max_steps", 3}, {"batch_size", 4}, {"lr", 3e-3}, {"schedule", "linear"}, {"log_every", 1}};
  nlohmann::json r = {{"method", "palm2_vadapter"},
                      {"model", {{"llm", w.llm}, {"vision", w.clip}, {"preprocess", "clip32"}}},
                      {"resampler", {{"queries", 3}, {"heads", 2}}},
                      {"data", {{"train", w.data}, {"format", "llava"}}},
                      {"stages",
                       {{{"name", "stage1"}, {"role", "decoder"}, {"template", "palm2_vqa"},
                         {"model", {{"llm", tiny}, {"vision", w.clip}, {"preprocess", "clip32"}}}, {"train", train}},
                        {{"name", "stage2"}, {"tiny_lm", {{"path", tiny}}}, {"template", "palm2_vqa"}, {"init_from", "stage1"},
                         {"train", train}}}}};
  const std::string recipe = tmp.file("palm2.json");
  std::ofstream(recipe) << r.dump(2);
  auto t = run_cli("train --recipe " + recipe + " --out " + tmp.file("run"));
  ASSERT_EQ(t.rc, 0) << t.err;
  EXPECT_NE(t.err.find("carried fc_in (2), tiny_lm (28); fresh: fc_out, resampler"), std::string::npos) << t.err;
  auto res = nlohmann::json::parse(t.out);
  auto i = run_cli("inspect --recipe " + recipe);
  ASSERT_EQ(i.rc, 0) << i.err;
  for (int s = 0; s < 2; ++s)
    EXPECT_EQ(nlohmann::json::parse(i.out)[s]["trainable_parameters"].get<int64_t>(), res[s]["trainable_parameters"].get<int64_t>()) << s;
  const std::string adapter = tmp.file("run/stage2"), img = " --image " + w.dir.file("img0.png");
  for (const std::string extra : {img, img + " --frame " + w.dir.file("img1.png") + " --frame " + w.dir.file("img2.png"), img + " --num-beams 2",
                                  std::string("")}) {
    auto g = run_cli("generate --adapter " + adapter + extra + " --prompt 'What colour?' --max-new-tokens 4");
    EXPECT_EQ(g.rc, 0) << extra << ": " << g.err;
  }
  auto g1 = run_cli("generate --adapter " + tmp.file("run/stage1") + img + " --prompt 'What colour?' --max-new-tokens 4");
  EXPECT_EQ(g1.rc, 0) << "the stage-1 captioner answers too: " << g1.err;
  auto e = run_cli("eval --task exact_match --data " + w.data + " --adapter " + adapter + " --limit 4");
  EXPECT_EQ(e.rc, 0) << e.err;
  auto m = run_cli("merge --adapter " + adapter + " --out " + tmp.file("merged"));
  EXPECT_NE(m.rc, 0);
  EXPECT_NE(m.err.find("cannot be folded"), std::string::npos) << m.err;
  // LLaVA reads one image per prompt.
  nlohmann::json lr = {{"method", "llava"}, {"model", {{"llm", w.llm}, {"vision", w.clip}, {"preprocess", "clip32"}}},
                       {"stages", {{{"name", "s"}, {"tune", "projector"}, {"data", {{"train", w.data}, {"format", "llava"}}}, {"train", train}}}}};
  std::ofstream(tmp.file("llava.json")) << lr.dump();
  ASSERT_EQ(run_cli("train --recipe " + tmp.file("llava.json") + " --out " + tmp.file("lrun")).rc, 0);
  auto f = run_cli("generate --adapter " + tmp.file("lrun/s") + img + " --frame " + w.dir.file("img1.png") + " --prompt 'What colour?'");
  EXPECT_NE(f.rc, 0);
  EXPECT_NE(f.err.find("reads one image per prompt"), std::string::npos) << f.err;
}

namespace {
// Starts `vadapt args` in the background (its own process, stdout/stderr to files); returns its pid.
pid_t spawn_cli(const std::string& args, const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string cmd = "exec " + std::string(VADAPT_BINARY) + " " + args + " >/dev/null 2>" + log;
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  return pid;
}
// The loss column of metrics.csv by step.
std::map<int64_t, std::string> losses_of(const std::string& csv) {
  std::map<int64_t, std::string> out;
  std::ifstream in(csv);
  std::string line;
  std::getline(in, line);  // header
  while (std::getline(in, line)) {
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string x; std::getline(ss, x, ',');) f.push_back(x);
    if (f.size() >= 3) out[std::stoll(f[0])] = f[2];
  }
  return out;
}
int64_t rows_of(const std::string& csv) {
  std::ifstream in(csv);
  return std::max<int64_t>(0, static_cast<int64_t>(std::count(std::istreambuf_iterator<char>(in), {}, '\n')) - 1);
}
// Sets keys of the first stage's train section of a recipe file; returns its path.
std::string with_train(const std::string& recipe, const nlohmann::json& train) {
  auto j = nlohmann::json::parse(vadapt::io::read_text_file(recipe));
  for (const auto& [k, v] : train.items()) j["stages"][0]["train"][k] = v;
  vadapt::io::write_text_atomic(recipe, j.dump(2));
  return recipe;
}
}  // namespace

// kill -9 at several moments of a run that saves a checkpoint every step (so most kills land in
// a step or in a save), then `--resume latest`: the run ends with the uninterrupted run's loss at
// every step (each step logged once) and its final adapter bitwise; no partial checkpoint is
// ever picked up.
TEST(Cli, KilledRunsResumeToTheUninterruptedRun) {
  vadapt::test::TinyVlmWorld w;
  TempDir out;
  auto recipe = [&](const std::string& name) {
    return with_train(write_lora_recipe(w, out.file(name + ".json"), 2, w.data), {{"max_steps", 30}, {"save_every", 1}, {"keep_last", 2}});
  };
  auto ref = run_cli("train --recipe " + recipe("ref") + " --out " + out.file("ref"));
  ASSERT_EQ(ref.rc, 0) << ref.err;
  const auto want = losses_of(out.file("ref/s/metrics.csv"));
  ASSERT_EQ(want.size(), 30u);
  for (int64_t kill_after : {2, 9, 17, 26}) {
    SCOPED_TRACE(kill_after);
    const std::string dir = out.file("k" + std::to_string(kill_after));
    const std::string r = recipe("k" + std::to_string(kill_after));
    const pid_t pid = spawn_cli("train --recipe " + r + " --out " + dir, dir + ".log");
    const std::string csv = dir + "/s/metrics.csv";
    bool killed = false;
    for (int i = 0; i < 200000 && !killed; ++i) {
      if (rows_of(csv) >= kill_after) killed = kill(pid, SIGKILL) == 0;
      else std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    int status = 0;
    waitpid(pid, &status, 0);
    ASSERT_TRUE(killed && WIFSIGNALED(status)) << "the run ended before the kill: " << vadapt::io::read_text_file(dir + ".log");
    auto resumed = run_cli("train --recipe " + r + " --out " + dir + " --resume latest");
    ASSERT_EQ(resumed.rc, 0) << resumed.err;
    EXPECT_EQ(losses_of(csv), want) << "every step once, with the uninterrupted run's loss";
    EXPECT_EQ(rows_of(csv), 30);
    auto a = vadapt::io::SafeTensorsFile::open(out.file("ref/s/adapter_model.safetensors"));
    auto b = vadapt::io::SafeTensorsFile::open(dir + "/s/adapter_model.safetensors");
    for (const auto& info : a->tensors()) EXPECT_TRUE(torch::equal(a->tensor(info.name), b->tensor(info.name))) << info.name;
  }
}

// A full disk while a checkpoint is written (a file-size limit: every write past it fails with
// EFBIG, as on a full disk): the run stops with an error naming the file, leaves nothing
// partial, the earlier checkpoint stays loadable, and resuming from it (with room again) gives
// the uninterrupted run.
TEST(Cli, FullDiskWhileSavingStopsNamingTheFileAndKeepsTheLastCheckpoint) {
  if (std::system("command -v prlimit > /dev/null 2>&1") != 0) GTEST_SKIP() << "needs prlimit (util-linux)";
  vadapt::test::TinyVlmWorld w;
  TempDir out;
  const std::string r = with_train(write_lora_recipe(w, out.file("r.json"), 2, w.data), {{"save_every", 4}, {"keep_last", 0}});
  // Both runs: 4 steps (checkpoint-4), then resumed to 8 steps (checkpoint-8).
  auto train = [&](const std::string& dir, int64_t steps, const std::string& prefix = "") {
    return run_shell(prefix + VADAPT_BINARY + " train --recipe " + r + " --out " + dir + " --set stages.0.train.max_steps=" +
                     std::to_string(steps) + (steps > 4 ? " --resume latest" : ""));
  };
  const std::string ref = out.file("ref"), dir = out.file("full");
  for (const auto& d : {ref, dir}) ASSERT_EQ(train(d, 4).rc, 0);
  ASSERT_EQ(train(ref, 8).rc, 0);
  const auto want = losses_of(ref + "/s/metrics.csv");
  ASSERT_EQ(want.size(), 8u);
  const auto limit = std::filesystem::file_size(ref + "/s/checkpoint-4/adapter_model.safetensors") - 1;
  ASSERT_LT(std::filesystem::file_size(ref + "/s/metrics.csv"), limit);
  auto full = train(dir, 8, "trap '' XFSZ; exec prlimit --fsize=" + std::to_string(limit) + " ");
  EXPECT_NE(full.rc, 0);
  EXPECT_NE(full.err.find("File too large"), std::string::npos) << full.err;
  EXPECT_NE(full.err.find(dir + "/s/.tmp-checkpoint-8/"), std::string::npos) << "the error names the file: " << full.err;
  EXPECT_EQ(full.err.find("terminate"), std::string::npos) << full.err;
  EXPECT_FALSE(std::filesystem::exists(dir + "/s/checkpoint-8"));
  EXPECT_FALSE(std::filesystem::exists(dir + "/s/.tmp-checkpoint-8")) << "nothing partial stays behind";
  EXPECT_TRUE(std::filesystem::exists(dir + "/s/checkpoint-4/trainer_state.json"));
  // With room again the run resumes from the intact checkpoint and ends as the other one.
  auto resumed = train(dir, 8);
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_EQ(losses_of(dir + "/s/metrics.csv"), want);
}

// A data-parallel worker killed by SIGKILL mid-run: the launcher names it and stops the other
// within a bounded time, and `--resume latest` ends as the run that was never interrupted.
TEST(Cli, KilledDataParallelWorkerStopsTheRunAndItResumes) {
  vadapt::test::TinyVlmWorld w;
  TempDir out;
  const std::string r =
      with_train(write_lora_recipe(w, out.file("r.json"), 2, w.data), {{"max_steps", 30}, {"save_every", 1}, {"keep_last", 2}});
  auto ref = run_cli("train --nproc 2 --recipe " + r + " --out " + out.file("ref"));
  ASSERT_EQ(ref.rc, 0) << ref.err;
  const auto want = losses_of(out.file("ref/s/metrics.csv"));
  ASSERT_EQ(want.size(), 30u);
  const std::string dir = out.file("run"), csv = dir + "/s/metrics.csv";
  const pid_t launcher = spawn_cli("train --nproc 2 --recipe " + r + " --out " + dir, dir + ".log");
  pid_t victim = -1;
  for (int i = 0; i < 200000 && victim < 0; ++i) {
    if (rows_of(csv) >= 6) {
      std::ifstream children("/proc/" + std::to_string(launcher) + "/task/" + std::to_string(launcher) + "/children");
      std::vector<pid_t> kids;
      for (pid_t p; children >> p;) kids.push_back(p);
      if (kids.size() == 2 && kill(kids[1], SIGKILL) == 0) victim = kids[1];  // the second one forked: rank 1
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }
  ASSERT_GT(victim, 0) << "no worker to kill: " << vadapt::io::read_text_file(dir + ".log");
  int status = 0;
  bool ended = false;
  for (int i = 0; i < 600 && !ended; ++i) {  // bounded: 60 s
    ended = waitpid(launcher, &status, WNOHANG) == launcher;
    if (!ended) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!ended) kill(launcher, SIGKILL), waitpid(launcher, &status, 0);
  ASSERT_TRUE(ended) << "the run did not stop within 60 s of a worker's death";
  const std::string log = vadapt::io::read_text_file(dir + ".log");
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0) << log;
  EXPECT_NE(log.find("worker 1 exited with status 137"), std::string::npos) << log;
  auto resumed = run_cli("train --nproc 2 --recipe " + r + " --out " + dir + " --resume latest");
  ASSERT_EQ(resumed.rc, 0) << resumed.err;
  EXPECT_EQ(losses_of(csv), want) << "every step once, with the uninterrupted run's loss";
}

// Bad training data stops `vadapt train` before the first step with every problem named by file
// and record (a malformed record, a missing image; then, once those are dropped, a sample whose
// answer max_seq_len would cut away); `--skip-bad` trains on the rest and says what it dropped.
TEST(Cli, BadTrainingDataIsNamedBeforeTrainingAndSkipBadTrainsOnTheRest) {
  vadapt::test::TinyVlmWorld w;
  TempDir out;
  auto records = nlohmann::json::parse(vadapt::io::read_text_file(w.data));
  const size_t n = records.size();
  std::string long_text;
  for (int i = 0; i < 300; ++i) long_text += "red blue ";
  records.push_back({{"id", "broken"}, {"conversations", {{{"from", "robot"}, {"value", "x"}}}}});
  auto missing = records[0];
  missing["id"] = "missing";
  missing["image"] = "no-such-image.png";
  records.push_back(missing);
  records.push_back({{"id", "too_long"}, {"conversations", {{{"from", "human"}, {"value", long_text}}, {{"from", "gpt"}, {"value", "red"}}}}});
  const std::string data = (std::filesystem::path(w.data).parent_path() / "bad.json").string();
  vadapt::io::write_text_atomic(data, records.dump());
  const std::string r = with_train(write_lora_recipe(w, out.file("r.json"), 2, data), {{"max_steps", 2}, {"max_seq_len", 256}});
  auto a = run_cli("train --recipe " + r + " --out " + out.file("a"));
  EXPECT_NE(a.rc, 0);
  EXPECT_NE(a.err.find("bad.json"), std::string::npos) << a.err;
  EXPECT_NE(a.err.find("record " + std::to_string(n)), std::string::npos) << a.err;  // the malformed one
  EXPECT_FALSE(std::filesystem::exists(out.file("a/s/checkpoint-1")));
  auto b = run_cli("train --skip-bad --recipe " + r + " --out " + out.file("b"));
  ASSERT_EQ(b.rc, 0) << b.err;
  EXPECT_NE(b.err.find("bad training records skipped"), std::string::npos) << b.err;
  EXPECT_NE(b.err.find("bad.json record " + std::to_string(n + 2) + " (id too_long)"), std::string::npos) << b.err;
  EXPECT_NE(b.err.find("would cut away every answer token"), std::string::npos) << b.err;
  EXPECT_EQ(nlohmann::json::parse(b.out)[0]["steps"].get<int64_t>(), 2);
}

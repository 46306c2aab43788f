// Training benchmark on the real frozen models (ViT-Tiny + stories260K, LLaVA recipe data):
// ms/step, tokens/s and images/s with and without the vision feature cache, and peak resident
// memory per tuning mode (projector / LoRA / full). Each configuration runs in its own child
// process so that its peak RSS is its own. Prints a Markdown table to stdout.
//   VADAPT_SHARED_DIR=../shared build/bench/bench_train [--steps N]
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <iostream>

#include "common/log.h"
#include "io/atomic_file.h"
#include "common/runtime.h"
#include "data/dataset.h"
#include "train/recipe.h"
#include "train/trainer.h"

using namespace vadapt;

namespace {

struct Result {
  double ms_per_step, tokens_per_s, images_per_s;
};

Result run_once(const train::Stage& st, bool cache, int64_t steps, const std::string& out) {
  vlm::VisionLanguageModel m(st.spec);
  if (cache) m.enable_feature_cache("");
  data::LoadOptions lo;
  lo.format = st.data.format;
  lo.image_root = st.data.image_root;
  auto samples = data::load_dataset(st.data.train.at(0), lo);
  train::TrainConfig cfg = st.train;
  cfg.out_dir = out;
  cfg.log_every = 1000;
  cfg.eval_every = 0;
  cfg.save_every = 0;
  cfg.warmup_ratio = 0;
  // Warm-up pass over the images the timed steps will see (fills the cache when it is on).
  cfg.max_steps = steps;
  {
    train::Trainer warm(m, samples, {}, cfg);
    warm.fit();
  }
  Stopwatch sw;
  train::Trainer t(m, samples, {}, cfg);
  t.fit();
  double secs = sw.seconds();
  double imgs = static_cast<double>(steps * cfg.batch_size * cfg.grad_accum);
  double tokens = imgs * (m.image_tokens() + 24);  // approximate: image tokens + caption
  return {1000.0 * secs / steps, tokens / secs, imgs / secs};
}

}  // namespace

int main(int argc, char** argv) {
  int64_t steps = 5;
  for (int i = 1; i + 1 < argc; ++i)
    if (!std::strcmp(argv[i], "--steps")) steps = std::atoll(argv[i + 1]);
  set_log_level(LogLevel::kQuiet);
  configure_runtime(Workload::kTraining);
  const std::string recipe_path = std::string(VADAPT_SOURCE_DIR) + "/recipes/llava-coco-tiny.yaml";
  if (!std::getenv("VADAPT_SHARED_DIR")) setenv("VADAPT_SHARED_DIR", (std::string(VADAPT_SOURCE_DIR) + "/../shared").c_str(), 1);
  auto recipe = train::load_recipe(recipe_path, {"stages.0.train.batch_size=8", "stages.0.train.grad_accum=1",
                                                 "stages.1.train.batch_size=8", "stages.1.train.grad_accum=1"});
  std::cout << "| tune | feature cache | ms/step | tokens/s | images/s | peak RSS MB |\n|---|---|---|---|---|---|\n";
  for (const std::string tune : {"projector", "lora", "qlora", "full"}) {
    for (bool cache : {false, true}) {
      if (tune != "projector" && !cache) continue;
      int fds[2];
      if (pipe(fds) != 0) return 1;
      pid_t pid = fork();
      if (pid == 0) {
        close(fds[0]);
        train::Stage st = recipe.stages[tune == "projector" ? 0 : 1];
        st.spec.options["tune"] = tune;  // LLaVA's options as adapter_config.json spells them
        if (tune == "lora" || tune == "qlora") st.spec.options.update({{"r", 8}, {"lora_alpha", 16}, {"lora_dropout", 0.0}});
        st.init_from.clear();
        auto tmp = std::filesystem::temp_directory_path() / ("vadapt-bench-" + std::to_string(getpid()));
        Result r = run_once(st, cache, steps, tmp.string());
        vadapt::io::remove_tree(tmp);
        if (write(fds[1], &r, sizeof r) != sizeof r) _exit(2);
        _exit(0);
      }
      close(fds[1]);
      Result r{};
      ssize_t got = read(fds[0], &r, sizeof r);
      close(fds[0]);
      int status = 0;
      struct rusage ru {};
      wait4(pid, &status, 0, &ru);
      if (got != sizeof r || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        std::cout << "| " << tune << " | " << (cache ? "on" : "off") << " | failed | | | |\n";
        continue;
      }
      char line[256];
      std::snprintf(line, sizeof line, "| %s | %s | %.0f | %.0f | %.1f | %.0f |\n", tune.c_str(), cache ? "on" : "off",
                    r.ms_per_step, r.tokens_per_s, r.images_per_s, ru.ru_maxrss / 1024.0);
      std::cout << line << std::flush;
    }
  }
  std::cout << "\nbatch 8, " << steps << " timed steps after as many warm-up steps; LLaVA recipe data (COCO captions), "
            << "ViT-Tiny/16 + stories260K, f32, CPU\n";
  return 0;
}

// Inference benchmark: prefill and decode tok/s at batch 1 and 8 for stories260K and a random
// Llama of the stories110M shape, in f32 and bf16 (the fast decode step and, for comparison, the
// module path: VADAPT_FAST_DECODE=0), the machine's read bandwidth and the ratio of batch-1
// decode to the weight-streaming bound (a decode step reads every layer weight and the output
// head once; an untied embedding table is only indexed), and ViT images/s. Prints Markdown
// tables to stdout.
//   build/bench/bench_inference [--quick] [--device cuda]
#include <torch/torch.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <thread>
#include <vector>

#include "common/log.h"
#include "common/runtime.h"
#include "generate/generator.h"
#include "io/hf_config.h"
#include "model/fast_decode.h"
#include "model/llama.h"
#include "model/load.h"
#include "vision/vision_tower.h"
#include "vision/vit.h"

using namespace vadapt;

namespace {

// Read bandwidth: the best of 5 sums over 256 MiB of floats (libtorch's vectorised, threaded sum).
// Read bandwidth: every hardware thread sums its slice of 256 MiB with vector loads (several
// accumulators, so that the adds do not bound it), best of 5. A one-thread torch sum reads at
// what one core can add, not at what the memory gives.
double measure_bandwidth_gbs() {
  using v16 = float __attribute__((vector_size(64)));
  const size_t n = size_t{64} << 20;
  std::vector<v16> a(n / 16);
  for (auto& v : a) v = v16{} + 1.0f;
  const size_t nt = std::max(1u, std::thread::hardware_concurrency());
  double best = 1e9, sink = 0;
  for (int i = 0; i < 5; ++i) {
    std::vector<float> part(nt);
    Stopwatch sw;
    std::vector<std::thread> ts;
    for (size_t t = 0; t < nt; ++t)
      ts.emplace_back([&, t] {
        v16 s0{}, s1{}, s2{}, s3{};
        const size_t from = a.size() * t / nt, to = a.size() * (t + 1) / nt;
        size_t k = from;
        for (; k + 4 <= to; k += 4) s0 += a[k], s1 += a[k + 1], s2 += a[k + 2], s3 += a[k + 3];
        for (; k < to; ++k) s0 += a[k];
        const v16 s = s0 + s1 + s2 + s3;
        for (int l = 0; l < 16; ++l) part[t] += s[l];
      });
    for (auto& th : ts) th.join();
    best = std::min(best, sw.seconds());
    for (float p : part) sink += p;
  }
  if (sink < 0) std::cerr << sink;
  return 4.0 * static_cast<double>(n) / best / 1e9;
}

struct Row {
  std::string model, dtype, path;
  int64_t batch;
  double prefill_tps, decode_tps, weight_mb, bound_ratio;
};

Row bench_llama(const std::string& name, model::LlamaForCausalLM lm, int64_t batch, int64_t prompt, int64_t gen,
                double bw_gbs) {
  generate::GenerateOptions o;
  o.max_new_tokens = gen;
  o.stop_at_eos = false;
  std::vector<std::vector<int64_t>> prompts(batch, std::vector<int64_t>(prompt));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < prompt; ++t) prompts[b][t] = 1 + (b * 31 + t * 7) % (lm->config().vocab_size - 1);
  generate::Generator g(lm);
  g.generate(prompts, o);  // warm-up
  generate::GenerateResult best;
  double best_decode = 0;
  for (int r = 0; r < 3; ++r) {
    auto res = g.generate(prompts, o);
    double d = res.decode_steps * batch / std::max(res.decode_seconds, 1e-9);
    if (d > best_decode) best_decode = d, best = res;
  }
  auto pc = model::count_parameters(*lm);
  double weight_bytes = static_cast<double>(pc.bytes);
  if (lm->lm_head) weight_bytes -= static_cast<double>(lm->model->embed_tokens->weight.nbytes());  // only indexed
  double bound_tps = bw_gbs * 1e9 / weight_bytes;  // batch-1 decode streams these bytes once per token
  Row row;
  row.model = name;
  row.dtype = c10::toString(lm->dtype());
  row.path = model::FastDecoder::make(*lm) ? "fast" : "modules";
  row.batch = batch;
  row.prefill_tps = best.prompt_tokens / std::max(best.prefill_seconds, 1e-9);
  row.decode_tps = best_decode;
  row.weight_mb = weight_bytes / 1e6;
  row.bound_ratio = (best_decode / batch) / bound_tps;
  return row;
}

model::LlamaForCausalLM random_llama(const io::LlamaConfig& cfg, torch::ScalarType dtype, torch::Device dev) {
  model::LlamaForCausalLM lm(cfg, torch::TensorOptions().dtype(torch::kFloat32));
  model::init_normal(*lm, 5, 0.02);
  lm->to(dev, dtype);
  lm->eval();
  return lm;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  torch::Device dev = torch::kCPU;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    if (!std::strcmp(argv[i], "--device") && i + 1 < argc) dev = torch::Device(argv[++i]);
  }
  set_log_level(LogLevel::kQuiet);
  configure_runtime();
  torch::NoGradGuard ng;
  const double bw = measure_bandwidth_gbs();
  std::cerr << "threads: " << torch::get_num_threads() << ", read bandwidth: " << bw << " GB/s\n";
  std::string shared = std::string(VADAPT_SOURCE_DIR) + "/../shared/models/stories260K";
  std::vector<Row> rows;
  const int64_t prompt = quick ? 32 : 128, gen = quick ? 16 : 64;
  for (auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    model::LlamaForCausalLM small{nullptr};
    io::LlamaConfig scfg;
    if (std::filesystem::exists(shared)) {
      small = model::load_llama(shared, dtype, dev);
    } else {
      scfg = io::LlamaConfig::from_json(nlohmann::json{{"model_type", "llama"}, {"hidden_size", 64}, {"intermediate_size", 172},
                                                       {"num_hidden_layers", 5}, {"num_attention_heads", 8},
                                                       {"num_key_value_heads", 4}, {"vocab_size", 512},
                                                       {"max_position_embeddings", 512}, {"tie_word_embeddings", true}}, "stories260K-shape");
      small = random_llama(scfg, dtype, dev);
    }
    io::LlamaConfig big = io::LlamaConfig::from_json(
        nlohmann::json{{"model_type", "llama"}, {"hidden_size", 768}, {"intermediate_size", 2048}, {"num_hidden_layers", 12},
                       {"num_attention_heads", 12}, {"vocab_size", 32000}, {"max_position_embeddings", 1024}},
        "stories110M-shape");
    auto large = random_llama(big, dtype, dev);
    // On the CPU: the fast decode step, then the module path for comparison.
    const bool both = dev.is_cpu();
    for (int pass = 0; pass < (both ? 2 : 1); ++pass) {
      if (pass == 1) setenv("VADAPT_FAST_DECODE", "0", 1);
      for (int64_t b : {1, 8}) {
        rows.push_back(bench_llama("stories260K", small, b, prompt, gen, bw));
        rows.push_back(bench_llama("stories110M-shape (random)", large, b, prompt, gen, bw));
      }
      unsetenv("VADAPT_FAST_DECODE");
    }
  }
  std::cout << "\n| model | dtype | decode path | batch | prefill tok/s | decode tok/s | weights read per step MB | decode/bound (b=1) | b=8 / b=1 |\n"
            << "|---|---|---|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    double one = 0;
    for (const auto& o : rows)
      if (o.model == r.model && o.dtype == r.dtype && o.path == r.path && o.batch == 1) one = o.decode_tps;
    char line[512];
    std::snprintf(line, sizeof line, "| %s | %s | %s | %ld | %.0f | %.1f | %.1f | %s | %s |\n", r.model.c_str(), r.dtype.c_str(), r.path.c_str(),
                  static_cast<long>(r.batch), r.prefill_tps, r.decode_tps, r.weight_mb,
                  r.batch == 1 ? (std::to_string(static_cast<int>(r.bound_ratio * 100)) + "%").c_str() : "-",
                  r.batch > 1 && one > 0 ? (std::to_string(r.decode_tps / one).substr(0, 4) + "x").c_str() : "-");
    std::cout << line;
  }
  // ViT images/s (ViT-Tiny shape).
  io::ViTConfig vc;
  vc.architecture = "ViTForImageClassification";
  vc.hidden_size = 192;
  vc.num_attention_heads = 3;
  vc.intermediate_size = 768;
  vc.num_labels = 200;
  vision::ViT vit(vc, torch::TensorOptions().dtype(torch::kFloat32));
  model::init_normal(*vit, 3, 0.02);
  vit->to(dev);
  std::cout << "\n| vision tower | batch | images/s |\n|---|---|---|\n";
  for (int64_t b : {1, 8}) {
    auto px = torch::randn({b, 3, 224, 224}).to(dev);
    vit->encode(px);
    Stopwatch sw;
    const int iters = quick ? 2 : 5;
    for (int i = 0; i < iters; ++i) vit->encode(px);
    std::cout << "| ViT-Tiny/16 224 (f32) | " << b << " | " << (b * iters / sw.seconds()) << " |\n";
  }
  std::cout << "\nread bandwidth " << bw << " GB/s; decode/bound = (batch-1 decode tok/s) / (bandwidth / weight bytes read per step)\n";
  return 0;
}

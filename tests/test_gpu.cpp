// CUDA: every model and the trainer give on the GPU what they give on the CPU (f32 within
// float tolerance, generation ids exactly), the KV cache on CUDA equals full recompute, and
// bf16 / fp16 autocast trains with fp32 master weights. Skipped without a CUDA device; run on
// a CUDA libtorch build (see docs/results.md for the machine it ran on).
#include <gtest/gtest.h>

#include <ATen/Context.h>

#include "data/dataset.h"
#include "eval/eval_runner.h"
#include "fixtures.h"
#include "generate/generator.h"
#include "io/atomic_file.h"
#include "model/llama.h"
#include "model/load.h"
#include "model/nf4.h"
#include "train/trainer.h"
#include "vision/vision_tower.h"
#include "vlm/vision_language_model.h"

using namespace vadapt;
using vadapt::test::TempDir;
using vadapt::test::tensors_close;

#define REQUIRE_CUDA()                                                                                    \
  do {                                                                                                    \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device here (CPU libtorch or no GPU)";     \
    at::globalContext().setAllowTF32CuBLAS(false); /* f32 comparisons: true f32 matmuls */               \
    at::globalContext().setAllowTF32CuDNN(false);                                                         \
  } while (0)

namespace {
const torch::Device kCuda(torch::kCUDA, 0);

struct TrainRun {
  std::vector<double> losses;
  double before = 0, after = 0;  // teacher-forced loss over the whole set before / after training
  std::vector<std::pair<std::string, torch::Tensor>> trained;
};

TrainRun train_run(const test::TinyVlmWorld& w, const std::string& tune, torch::Device dev, const std::string& precision, int steps) {
  vlm::VisionLanguageModel m(w.spec(tune), dev);
  auto samples = data::load_dataset(w.data, {});
  TempDir out;
  train::TrainConfig cfg;
  cfg.max_steps = steps;
  cfg.batch_size = 4;
  cfg.lr = 5e-3;
  cfg.warmup_ratio = 0;
  cfg.log_every = 100;
  cfg.precision = precision;
  cfg.out_dir = out.path();
  train::Trainer t(m, samples, {}, cfg);
  TrainRun r;
  r.before = t.evaluate(samples);
  t.fit();
  r.after = t.evaluate(samples);
  r.losses = t.losses();
  r.trained = m.trainable_state();
  return r;
}
}  // namespace

TEST(Gpu, LlamaLogitsAndKvCacheOnCudaEqualCpu) {
  REQUIRE_CUDA();
  TempDir tmp;
  test::write_tiny_llama(tmp.path(), test::tiny_llama_config(true, false, true));
  auto cpu = model::load_llama(tmp.path(), torch::kFloat32, torch::kCPU);
  auto gpu = model::load_llama(tmp.path(), torch::kFloat32, kCuda);
  torch::NoGradGuard ng;
  auto ids = torch::randint(0, 300, {2, 12}, torch::kInt64);
  model::ForwardContext c1, c2;
  auto ref = cpu->forward(ids, c1);
  auto full = gpu->forward(ids.to(kCuda), c2);
  EXPECT_TRUE(tensors_close(full.cpu(), ref, 1e-4, 1e-4));
  auto cache = gpu->make_cache(2, 12);
  model::ForwardContext ctx;
  ctx.cache = &cache;
  std::vector<torch::Tensor> steps{gpu->forward(ids.narrow(1, 0, 5).to(kCuda), ctx)};
  for (int64_t t = 5; t < 12; ++t) steps.push_back(gpu->forward(ids.narrow(1, t, 1).to(kCuda), ctx));
  EXPECT_TRUE(tensors_close(torch::cat(steps, 1).cpu(), full.cpu(), 1e-5, 1e-5));
  // bf16 on the GPU stays close to f32.
  auto bf = model::load_llama(tmp.path(), torch::kBFloat16, kCuda);
  model::ForwardContext c3;
  EXPECT_TRUE(tensors_close(bf->forward(ids.to(kCuda), c3).to(torch::kFloat32).cpu(), ref, 0.1, 0.05));
}

TEST(Gpu, GreedyBatchedAndBeamIdsOnCudaEqualCpu) {
  REQUIRE_CUDA();
  TempDir tmp;
  test::write_tiny_llama(tmp.path(), test::tiny_llama_config());
  auto cpu = model::load_llama(tmp.path(), torch::kFloat32, torch::kCPU);
  auto gpu = model::load_llama(tmp.path(), torch::kFloat32, kCuda);
  generate::GenerateOptions o;
  o.max_new_tokens = 10;
  o.stop_at_eos = false;
  std::vector<std::vector<int64_t>> prompts{{1, 9, 8, 7, 6, 5}, {1, 4}};
  EXPECT_EQ(generate::Generator(gpu).generate(prompts, o).tokens, generate::Generator(cpu).generate(prompts, o).tokens);
  o.num_beams = 3;
  torch::NoGradGuard ng;
  auto emb_cpu = cpu->embed(torch::tensor(prompts[0]).unsqueeze(0));
  auto emb_gpu = gpu->embed(torch::tensor(prompts[0]).unsqueeze(0).to(kCuda));
  EXPECT_EQ(generate::Generator(gpu).beam_search(emb_gpu, o).tokens, generate::Generator(cpu).beam_search(emb_cpu, o).tokens);
}

TEST(Gpu, VisionTowersOnCudaEqualCpu) {
  REQUIRE_CUDA();
  TempDir tmp;
  test::write_tiny_vit(tmp.file("vit"));
  test::write_tiny_clip(tmp.file("clip"));
  torch::NoGradGuard ng;
  for (const char* name : {"vit", "clip"}) {
    auto cpu = vision::load_vision_tower(tmp.file(name), torch::kFloat32, torch::kCPU);
    auto gpu = vision::load_vision_tower(tmp.file(name), torch::kFloat32, kCuda);
    auto px = torch::randn({2, 3, cpu->image_size(), cpu->image_size()});
    auto a = cpu->encode(px), b = gpu->encode(px.to(kCuda));
    ASSERT_EQ(a.hidden_states.size(), b.hidden_states.size());
    for (size_t i = 0; i < a.hidden_states.size(); ++i)
      EXPECT_TRUE(tensors_close(b.hidden_states[i].cpu(), a.hidden_states[i], 1e-4, 1e-4)) << name << " layer " << i;
  }
}

// The GPU quantises to the same 4-bit codes; the double-quantised block scales differ in their
// last bits only (the mean of the block absmaxes is a reduction whose order differs by device).
TEST(Gpu, Nf4OnCudaGivesTheCpuCodesAndScales) {
  REQUIRE_CUDA();
  torch::manual_seed(0);
  auto w = torch::randn({300, 70}) * 0.05;
  auto qc = model::nf4_quantize(w), qg = model::nf4_quantize(w.to(kCuda));
  const double same_codes = qg.codes.cpu().eq(qc.codes).to(torch::kFloat64).mean().item<double>();
  EXPECT_GT(same_codes, 0.999) << same_codes;
  EXPECT_NEAR(qg.absmax_offset, qc.absmax_offset, 1e-6 * std::abs(qc.absmax_offset));
  EXPECT_TRUE(tensors_close(model::nf4_dequantize(qg, torch::kFloat32).cpu(), model::nf4_dequantize(qc, torch::kFloat32), 1e-6, 1e-5));
}

// The first step's loss is the same computation on both devices (f32, no TF32); later steps are
// compared loosely, since Adam's first update is ~ lr * sign(g) and float-level gradient
// differences flip the sign of near-zero entries.
TEST(Gpu, Fp32TrainingOnCudaFollowsTheCpuRun) {
  REQUIRE_CUDA();
  test::TinyVlmWorld w;
  for (const char* tune : {"lora", "qlora", "full"}) {
    auto cpu = train_run(w, tune, torch::kCPU, "fp32", 4), gpu = train_run(w, tune, kCuda, "fp32", 4);
    EXPECT_NEAR(gpu.before, cpu.before, 1e-5 * cpu.before) << tune;
    EXPECT_NEAR(gpu.losses[0], cpu.losses[0], 1e-5 * cpu.losses[0]) << tune;
    EXPECT_NEAR(gpu.after, cpu.after, 0.02 * cpu.after) << tune;
    EXPECT_LT(gpu.after, gpu.before) << tune;
  }
}

// Autocast computes in bf16 / fp16 (fp16 with dynamic loss scaling) while the trainable weights
// and their updates stay fp32; the run learns as the fp32 run does.
TEST(Gpu, Bf16AndFp16AutocastTrainWithFp32MasterWeights) {
  REQUIRE_CUDA();
  test::TinyVlmWorld w;
  auto ref = train_run(w, "lora", kCuda, "fp32", 16);
  EXPECT_LT(ref.after, 0.8 * ref.before);
  for (const char* p : {"bf16", "fp16"}) {
    auto r = train_run(w, "lora", kCuda, p, 16);
    EXPECT_NEAR(r.before, ref.before, 0.02 * ref.before) << p;  // same model, lower-precision matmuls
    EXPECT_LT(r.after, 0.8 * r.before) << p;                     // it learns
    EXPECT_NEAR(r.after, ref.after, 0.1 * ref.after) << p;      // about as well as in fp32
    for (const auto& [name, t] : r.trained) EXPECT_EQ(t.scalar_type(), torch::kFloat32) << p << " " << name;
  }
}

TEST(Gpu, EvalOnCudaAnswersAsOnCpu) {
  REQUIRE_CUDA();
  test::TinyVlmWorld w;
  TempDir a, b;
  eval::EvalOptions o;
  o.data = w.data;
  o.task = "exact_match";
  o.batch_size = 3;
  o.max_new_tokens = 6;
  vlm::VisionLanguageModel cpu(w.spec("projector")), gpu(w.spec("projector"), kCuda);
  o.out_dir = a.path();
  eval::run_eval(cpu, o);
  o.out_dir = b.path();
  eval::run_eval(gpu, o);
  EXPECT_EQ(io::read_text_file(b.file("predictions.jsonl")), io::read_text_file(a.file("predictions.jsonl")));
}

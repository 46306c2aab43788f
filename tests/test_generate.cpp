// Generation: greedy determinism, seeded sampling, top-k 1 = greedy, batch = single runs,
// stop tokens and bad arguments.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "common/error.h"
#include "fixtures.h"
#include "generate/continuous_batch.h"
#include "generate/generator.h"
#include "model/llama.h"

using namespace vadapt;
using vadapt::test::TempDir;

class GenerateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    vadapt::test::write_tiny_llama(tmp_.path(), vadapt::test::tiny_llama_config());
    lm_ = model::load_llama(tmp_.path(), torch::kFloat32, torch::kCPU);
  }
  generate::GenerateResult run(const std::vector<std::vector<int64_t>>& p, generate::GenerateOptions o) {
    o.stop_at_eos = false;
    return generate::Generator(lm_).generate(p, o);
  }
  TempDir tmp_;
  model::LlamaForCausalLM lm_{nullptr};
};

TEST_F(GenerateTest, GreedyMatchesArgmaxOfFullRecompute) {
  generate::GenerateOptions o;
  o.max_new_tokens = 8;
  auto res = run({{1, 2, 3}}, o);
  ASSERT_EQ(res.tokens[0].size(), 8u);
  std::vector<int64_t> seq = {1, 2, 3};
  torch::NoGradGuard ng;
  for (int i = 0; i < 8; ++i) {
    model::ForwardContext ctx;
    auto logits = lm_->forward(torch::tensor(seq).unsqueeze(0), ctx);
    int64_t next = logits[0][-1].argmax().item<int64_t>();
    EXPECT_EQ(res.tokens[0][i], next) << i;
    seq.push_back(next);
  }
}

TEST_F(GenerateTest, SeededSamplingIsRepeatableAndTopK1IsGreedy) {
  generate::GenerateOptions o;
  o.max_new_tokens = 12;
  o.sampling = {1.0f, 0, 0.9f, 42};
  auto a = run({{5, 6}}, o), b = run({{5, 6}}, o);
  EXPECT_EQ(a.tokens, b.tokens);
  o.sampling = {0.7f, 1, 1.0f, 7};
  generate::GenerateOptions g;
  g.max_new_tokens = 12;
  EXPECT_EQ(run({{5, 6}}, o).tokens, run({{5, 6}}, g).tokens);
}

TEST_F(GenerateTest, LeftPaddedBatchEqualsSingleRuns) {
  generate::GenerateOptions o;
  o.max_new_tokens = 6;
  std::vector<int64_t> p1 = {1, 9, 8, 7, 6, 5}, p2 = {1, 4};
  auto batch = run({p1, p2}, o);
  EXPECT_EQ(batch.tokens[0], run({p1}, o).tokens[0]);
  EXPECT_EQ(batch.tokens[1], run({p2}, o).tokens[0]);
}

TEST_F(GenerateTest, StopIdsAndErrors) {
  generate::GenerateOptions o;
  o.max_new_tokens = 10;
  auto free_run = run({{3}}, o);
  o.stop_ids = {free_run.tokens[0][2]};
  auto stopped = run({{3}}, o);
  EXPECT_LE(stopped.tokens[0].size(), 2u);
  EXPECT_THROW(run({{}}, o), VadaptError);
  o.max_new_tokens = 1000;
  EXPECT_THROW(run({{3}}, o), VadaptError);  // beyond max_position_embeddings
  o.max_new_tokens = 0;
  EXPECT_TRUE(run({{3}}, o).tokens[0].empty());
}

TEST_F(GenerateTest, BeamWidthOneEqualsGreedyAndWiderBeamsScoreAtLeastAsWell) {
  generate::GenerateOptions g;
  g.max_new_tokens = 7;
  g.stop_at_eos = false;
  auto greedy = run({{1, 2, 3}}, g);
  generate::Generator gen(lm_);
  auto embeds = lm_->embed(torch::tensor(std::vector<int64_t>{1, 2, 3}).unsqueeze(0));
  g.num_beams = 1;
  // num_beams == 1 goes through the plain path; the beam search itself with one beam:
  auto b1 = gen.beam_search(embeds, g);
  EXPECT_EQ(b1.tokens[0], greedy.tokens[0]);
  // Sequence log-probability of a 4-beam result is at least the greedy one's.
  auto seq_logp = [&](const std::vector<int64_t>& toks) {
    torch::NoGradGuard ng;
    std::vector<int64_t> seq = {1, 2, 3};
    seq.insert(seq.end(), toks.begin(), toks.end());
    model::ForwardContext ctx;
    auto lp = torch::log_softmax(lm_->forward(torch::tensor(seq).unsqueeze(0), ctx)[0], -1);
    double s = 0;
    for (size_t i = 3; i < seq.size(); ++i) s += lp[i - 1][seq[i]].item<double>();
    return s;
  };
  g.num_beams = 4;
  g.length_penalty = 0.0;
  auto b4 = gen.beam_search(embeds, g);
  ASSERT_EQ(b4.tokens[0].size(), 7u);
  EXPECT_GE(seq_logp(b4.tokens[0]), seq_logp(greedy.tokens[0]) - 1e-4);
}

// Continuous batching: rows join a running batch (in groups, left-padded) and leave it at
// different steps; each row's tokens equal generating it alone, greedy and seeded sampling (each
// row has its own sampler), and a dropped row leaves the others unchanged.
TEST_F(GenerateTest, ContinuousBatchRowsJoiningAndLeavingEqualSingleRuns) {
  struct Row {
    std::vector<int64_t> prompt;
    int64_t max_new;
    int join_at;
    generate::SamplingParams sampling;
  };
  const generate::SamplingParams greedy{}, hot{1.0f, 0, 0.9f, 11};
  std::vector<Row> rows = {{{1, 9, 8, 7, 6, 5}, 12, 0, greedy}, {{1, 4}, 3, 0, hot},        {{2, 3, 4}, 9, 2, greedy},
                           {{7}, 5, 2, hot},                    {{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, 6, 5, greedy},
                           {{3, 3}, 4, 9, greedy},              {{5, 6, 7}, 20, 9, hot}};
  generate::ContinuousBatch cb(lm_);
  std::map<int64_t, size_t> row_of;
  std::vector<std::vector<int64_t>> got(rows.size());
  std::vector<int64_t> sizes;
  torch::NoGradGuard ng;
  for (int step = 0; step < 60; ++step) {
    std::vector<std::vector<int64_t>> prompts;
    std::vector<generate::RowOptions> opts;
    std::vector<size_t> which;
    for (size_t i = 0; i < rows.size(); ++i)
      if (rows[i].join_at == step) {
        prompts.push_back(rows[i].prompt), which.push_back(i);
        generate::RowOptions o;
        o.max_new_tokens = rows[i].max_new, o.sampling = rows[i].sampling, o.stop_at_eos = false;
        opts.push_back(o);
      }
    if (!prompts.empty()) {
      auto [ids, mask] = generate::left_pad(prompts, 0);
      auto embeds = lm_->embed(ids);
      auto joined = cb.join(embeds, mask.min().item<int64_t>() == 0 ? mask : torch::Tensor(), nullptr, opts);
      for (size_t k = 0; k < joined.size(); ++k) row_of[joined[k]] = which[k];
    }
    if (cb.empty()) continue;
    sizes.push_back(cb.size());
    cb.step([&](int64_t id, int64_t tok) {
      got[row_of.at(id)].push_back(tok);
      return true;
    });
  }
  EXPECT_TRUE(cb.empty());
  EXPECT_EQ(*std::max_element(sizes.begin(), sizes.end()), 5);  // rows overlapped (steps 9-10: rows 0, 2, 4, 5, 6)
  for (size_t i = 0; i < rows.size(); ++i) {
    generate::GenerateOptions o;
    o.max_new_tokens = rows[i].max_new, o.sampling = rows[i].sampling;
    EXPECT_EQ(got[i], run({rows[i].prompt}, o).tokens[0]) << "row " << i;
  }
  // Dropping a row (a cancelled request) mid-way leaves the other rows' tokens as they were.
  generate::ContinuousBatch cb2(lm_);
  generate::RowOptions o;
  o.max_new_tokens = 10, o.stop_at_eos = false;
  auto a = cb2.join(lm_->embed(torch::tensor(rows[4].prompt).unsqueeze(0)), {}, nullptr, {o});
  auto b = cb2.join(lm_->embed(torch::tensor(rows[0].prompt).unsqueeze(0)), {}, nullptr, {o});
  std::vector<int64_t> kept;
  for (int s = 0; s < 10 && !cb2.empty(); ++s) {
    if (s == 3) cb2.drop(a[0]);
    cb2.step([&](int64_t id, int64_t tok) {
      if (id == b[0]) kept.push_back(tok);
      return true;
    });
  }
  generate::GenerateOptions g;
  g.max_new_tokens = 10;
  EXPECT_EQ(kept, run({rows[0].prompt}, g).tokens[0]);
  // Budget and context are checked per row before anything joins.
  o.max_new_tokens = 600;
  EXPECT_THROW(cb2.join(lm_->embed(torch::tensor(rows[0].prompt).unsqueeze(0)), {}, nullptr, {o}), VadaptError);
}

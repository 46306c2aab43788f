// Batched KV-cache generation loop.
#include "generate/generator.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/error.h"
#include "common/log.h"

namespace vadapt::generate {

std::pair<torch::Tensor, torch::Tensor> left_pad(const std::vector<std::vector<int64_t>>& prompts, int64_t pad_id) {
  if (prompts.empty()) throw VadaptError("generate: no prompts given");
  size_t t = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty()) throw VadaptError(cat("generate: prompt ", i, " is empty (no tokens)"));
    t = std::max(t, prompts[i].size());
  }
  const int64_t b = static_cast<int64_t>(prompts.size());
  auto ids = torch::full({b, static_cast<int64_t>(t)}, pad_id, torch::kInt64);
  auto mask = torch::zeros({b, static_cast<int64_t>(t)}, torch::kInt64);
  for (int64_t i = 0; i < b; ++i) {
    const auto& p = prompts[i];
    const int64_t off = static_cast<int64_t>(t - p.size());
    ids[i].narrow(0, off, static_cast<int64_t>(p.size())).copy_(torch::tensor(p, torch::kInt64));
    mask[i].narrow(0, off, static_cast<int64_t>(p.size())).fill_(1);
  }
  return {ids, mask};
}

GenerateResult Generator::generate(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& opts,
                                   const TokenCallback& on_token) {
  auto [ids, mask] = left_pad(prompts, 0);
  torch::NoGradGuard ng;
  auto embeds = lm_->embed(ids);  // (B, T, d)
  bool padded = mask.min().item<int64_t>() == 0;
  return generate_embeds(embeds, padded ? mask : torch::Tensor(), opts, on_token);
}

torch::Tensor Generator::decode_step(const torch::Tensor& ids, model::ForwardContext& ctx) {
  return model::decode_logits(*lm_, fast_.get(), ids, ctx);
}

GenerateResult Generator::beam_search(const torch::Tensor& embeds, const GenerateOptions& opts, const model::AdapterState* state_in) {
  torch::NoGradGuard ng;
  const int64_t nb = opts.num_beams, t = embeds.size(1);
  if (embeds.size(0) != 1) throw VadaptError("beam search takes one prompt at a time");
  const auto& cfg = lm_->config();
  if (t + opts.max_new_tokens > cfg.max_position_embeddings)
    throw VadaptError(cat("prompt of ", t, " tokens + max_new_tokens ", opts.max_new_tokens,
                          " exceeds the model's max_position_embeddings ", cfg.max_position_embeddings));
  std::vector<int64_t> stops = opts.stop_ids;
  if (opts.stop_at_eos) stops.insert(stops.end(), cfg.eos_token_ids.begin(), cfg.eos_token_ids.end());
  auto is_stop = [&](int64_t id) { return std::find(stops.begin(), stops.end(), id) != stops.end(); };
  model::KVCache cache = lm_->make_cache(nb, t + std::max<int64_t>(opts.max_new_tokens, 1));
  fast_ = model::FastDecoder::make(*lm_);
  model::ForwardContext ctx;
  ctx.cache = &cache;
  model::AdapterState state;  // adapters may keep per-row state in it from prefill on
  if (state_in) state = *state_in;
  state.select_rows(torch::zeros({nb}, torch::kInt64));  // every beam starts from the one prompt
  ctx.adapter_state = &state;
  GenerateResult res;
  res.tokens.resize(1);
  res.prompt_tokens = t;
  Stopwatch sw;
  auto h = lm_->forward_embeds(embeds.to(lm_->device()).expand({nb, t, embeds.size(2)}).contiguous(), ctx);  // (nb, T, d)
  auto logp = torch::log_softmax(lm_->logits(h.select(1, t - 1)).to(torch::kFloat32), -1).cpu();     // (nb, V)
  res.prefill_seconds = sw.seconds();
  sw.reset();
  std::vector<double> scores(nb, -std::numeric_limits<double>::infinity());
  scores[0] = 0.0;  // all beams start identical: only the first may expand at step 0
  std::vector<std::vector<int64_t>> beams(nb);
  std::vector<std::pair<double, std::vector<int64_t>>> finished;
  auto final_score = [&](double s, size_t len) { return s / std::pow(static_cast<double>(std::max<size_t>(len, 1)), opts.length_penalty); };
  for (int64_t step = 0; step < opts.max_new_tokens; ++step) {
    auto cand = logp + torch::tensor(scores, torch::kFloat64).to(torch::kFloat32).unsqueeze(1);  // (nb, V)
    auto [top, idx] = cand.view({-1}).topk(std::min<int64_t>(2 * nb, cand.numel()));
    const int64_t v = logp.size(1);
    std::vector<int64_t> src_rows, next_tokens;
    std::vector<double> next_scores;
    for (int64_t k = 0; k < top.size(0) && static_cast<int64_t>(src_rows.size()) < nb; ++k) {
      double sc = top[k].item<double>();
      if (!std::isfinite(sc)) break;
      int64_t flat = idx[k].item<int64_t>(), row = flat / v, tok = flat % v;
      if (is_stop(tok)) {
        if (k < nb) finished.emplace_back(final_score(sc, beams[row].size() + 1), beams[row]);
        continue;
      }
      src_rows.push_back(row);
      next_tokens.push_back(tok);
      next_scores.push_back(sc);
    }
    if (src_rows.empty()) break;
    while (static_cast<int64_t>(src_rows.size()) < nb) {  // pad with dead beams
      src_rows.push_back(src_rows[0]);
      next_tokens.push_back(next_tokens[0]);
      next_scores.push_back(-std::numeric_limits<double>::infinity());
    }
    std::vector<std::vector<int64_t>> nbeams(nb);
    for (int64_t i = 0; i < nb; ++i) {
      nbeams[i] = beams[src_rows[i]];
      nbeams[i].push_back(next_tokens[i]);
    }
    beams = std::move(nbeams);
    scores = next_scores;
    // Done when enough hypotheses finished and no running beam can beat the worst of them.
    if (static_cast<int64_t>(finished.size()) >= nb) {
      std::sort(finished.begin(), finished.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
      finished.resize(nb);
      double best_running = *std::max_element(scores.begin(), scores.end());
      if (final_score(best_running, beams[0].size()) <= finished.back().first) break;
    }
    if (step + 1 == opts.max_new_tokens) break;
    cache.select_rows(torch::tensor(src_rows, torch::kInt64).to(lm_->device()));
    state.select_rows(torch::tensor(src_rows, torch::kInt64));
    logp = torch::log_softmax(decode_step(torch::tensor(next_tokens, torch::kInt64).to(lm_->device()), ctx).to(torch::kFloat32), -1).cpu();
    ++res.decode_steps;
  }
  for (int64_t i = 0; i < nb; ++i)
    if (std::isfinite(scores[i])) finished.emplace_back(final_score(scores[i], beams[i].size()), beams[i]);
  if (!finished.empty()) {
    auto best = std::max_element(finished.begin(), finished.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    res.tokens[0] = best->second;
  }
  res.generated_tokens = static_cast<int64_t>(res.tokens[0].size());
  res.decode_seconds = sw.seconds();
  return res;
}

GenerateResult Generator::generate_embeds(const torch::Tensor& embeds, const torch::Tensor& key_mask,
                                          const GenerateOptions& opts, const TokenCallback& on_token, const model::AdapterState* state) {
  if (opts.num_beams > 1) {
    if (key_mask.defined()) throw VadaptError("beam search takes one unpadded prompt at a time");
    auto r = beam_search(embeds, opts, state);
    if (on_token)
      for (auto id : r.tokens[0]) on_token(0, id);
    return r;
  }
  torch::NoGradGuard ng;
  if (opts.max_new_tokens < 0) throw VadaptError("max_new_tokens must be >= 0");
  const int64_t b = embeds.size(0), t = embeds.size(1);
  const auto& cfg = lm_->config();
  if (t == 0) throw VadaptError("generate: empty prompt (no tokens)");
  if (t + opts.max_new_tokens > cfg.max_position_embeddings)
    throw VadaptError(cat("prompt of ", t, " tokens + max_new_tokens ", opts.max_new_tokens,
                          " exceeds the model's max_position_embeddings ", cfg.max_position_embeddings));
  const auto dev = lm_->device();
  model::KVCache cache = lm_->make_cache(b, t + std::max<int64_t>(opts.max_new_tokens, 1));
  fast_ = model::FastDecoder::make(*lm_);
  model::ForwardContext ctx;
  ctx.cache = &cache;
  model::AdapterState adapter_state;  // adapters may keep per-row state in it from prefill on
  if (state) adapter_state = *state;
  ctx.adapter_state = &adapter_state;
  torch::Tensor mask;   // (B, S) running key mask, only when padded
  torch::Tensor next_pos;  // (B, 1)
  if (key_mask.defined()) {
    mask = torch::cat({key_mask.to(torch::kInt64), torch::ones({b, opts.max_new_tokens}, torch::kInt64)}, 1).to(dev);  // (B, T + N)
    auto pos = (key_mask.to(torch::kInt64).cumsum(1) - 1).clamp_min(0);  // (B, T)
    ctx.position_ids = pos.to(dev);
    ctx.attention_mask = mask.narrow(1, 0, t);
    next_pos = pos.select(1, t - 1).unsqueeze(1) + 1;  // (B, 1)
  }
  std::vector<int64_t> stops = opts.stop_ids;
  if (opts.stop_at_eos) stops.insert(stops.end(), cfg.eos_token_ids.begin(), cfg.eos_token_ids.end());

  GenerateResult res;
  res.tokens.resize(b);
  res.prompt_tokens = key_mask.defined() ? key_mask.sum().item<int64_t>() : b * t;
  Sampler sampler(opts.sampling);
  Stopwatch sw;
  auto h = lm_->forward_embeds(embeds.to(dev), ctx);         // (B, T, d)
  auto logits = lm_->logits(h.select(1, t - 1));            // (B, V)
  std::vector<bool> done(b, false);
  int64_t active = b;
  for (int64_t step = 0; step < opts.max_new_tokens && active > 0; ++step) {
    auto next = sampler.sample(logits);  // (B,) CPU
    if (step == 0) res.prefill_seconds = sw.seconds(), sw.reset();
    auto acc = next.accessor<int64_t, 1>();
    for (int64_t i = 0; i < b; ++i) {
      if (done[i]) continue;
      int64_t id = acc[i];
      if (std::find(stops.begin(), stops.end(), id) != stops.end()) {
        done[i] = true, --active;
        continue;
      }
      res.tokens[i].push_back(id);
      ++res.generated_tokens;
      if (on_token && !on_token(i, id)) done[i] = true, --active;
    }
    if (active == 0 || step + 1 == opts.max_new_tokens) break;
    if (mask.defined()) {
      ctx.attention_mask = mask.narrow(1, 0, cache.length() + 1);
      ctx.position_ids = next_pos.to(dev);
      next_pos = next_pos + 1;
    } else {
      ctx.position_ids = torch::Tensor();
    }
    logits = decode_step(next.to(dev), ctx);  // (B, V)
    ++res.decode_steps;
  }
  if (opts.max_new_tokens == 0) res.prefill_seconds = sw.seconds();
  else res.decode_seconds = sw.seconds();
  return res;
}

}  // namespace vadapt::generate

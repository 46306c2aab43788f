// Continuous batching over a right-aligned, growing KV cache.
#include "generate/continuous_batch.h"

#include <algorithm>

#include "common/error.h"

namespace vadapt::generate {

bool ContinuousBatch::can_join(const model::AdapterState& state) const {
  if (rows_.empty()) return true;
  // The running state also holds what adapters keep from prefill; compare what prefill keeps by
  // its keys only when the joining state has them already.
  model::AdapterState running = state_;
  for (auto it = running.kept.begin(); it != running.kept.end();)
    it = state.kept.count(it->first) ? std::next(it) : running.kept.erase(it);
  return model::AdapterState::stackable(running, state);
}

std::vector<int64_t> ContinuousBatch::join(const torch::Tensor& embeds, const torch::Tensor& key_mask,
                                           const model::AdapterState* state, const std::vector<RowOptions>& opts) {
  torch::NoGradGuard ng;
  const int64_t n = embeds.size(0), t = embeds.size(1);
  if (static_cast<int64_t>(opts.size()) != n) throw VadaptError(cat("continuous batch: ", n, " rows but ", opts.size(), " row options"));
  if (t == 0) throw VadaptError("generate: empty prompt (no tokens)");
  const auto& cfg = lm_->config();
  // Each row's own length counts (a short prompt padded beside a long one may generate more).
  std::vector<int64_t> lengths(static_cast<size_t>(n), t);
  if (key_mask.defined()) {
    auto l = key_mask.to(torch::kCPU, torch::kInt64).sum(1);
    for (int64_t i = 0; i < n; ++i) lengths[static_cast<size_t>(i)] = l[i].item<int64_t>();
  }
  for (size_t i = 0; i < opts.size(); ++i) {
    const auto& o = opts[i];
    if (o.max_new_tokens < 0) throw VadaptError("max_new_tokens must be >= 0");
    if (lengths[i] + o.max_new_tokens > cfg.max_position_embeddings)
      throw VadaptError(cat("prompt of ", lengths[i], " tokens + max_new_tokens ", o.max_new_tokens,
                            " exceeds the model's max_position_embeddings ", cfg.max_position_embeddings));
  }
  const auto dev = lm_->device();
  model::KVCache cache = lm_->make_cache(n, t + 1);
  model::AdapterState st;
  if (state) st = *state;
  model::ForwardContext ctx;
  ctx.cache = &cache;
  ctx.adapter_state = &st;
  auto mask = key_mask.defined() ? key_mask.to(torch::kInt64).to(dev) : torch::ones({n, t}, torch::TensorOptions(torch::kInt64).device(dev));
  auto pos = (mask.cumsum(1) - 1).clamp_min(0);  // (n, T)
  if (key_mask.defined()) ctx.position_ids = pos, ctx.attention_mask = mask;
  auto h = lm_->forward_embeds(embeds.to(dev), ctx);             // (n, T, d)
  auto logits = lm_->logits(h.select(1, t - 1));                 // (n, V)
  auto next_pos = pos.select(1, t - 1).unsqueeze(1) + 1;         // (n, 1)
  if (rows_.empty()) {
    cache_.emplace(std::move(cache));
    state_ = std::move(st), mask_ = mask, next_pos_ = next_pos, logits_ = logits;
  } else {
    const int64_t len = std::max(cache_->length(), cache.length());
    cache_.emplace(model::KVCache::stack(*cache_, cache, std::max(cache_->capacity(), len + 1)));
    auto pad = [len](const torch::Tensor& m) { return torch::constant_pad_nd(m, {len - m.size(1), 0}, 0); };  // left-pad to len
    mask_ = torch::cat({pad(mask_), pad(mask)}, 0);
    state_ = model::AdapterState::stack(state_, st);
    next_pos_ = torch::cat({next_pos_, next_pos}, 0);
    logits_ = torch::cat({logits_, logits.to(logits_.scalar_type())}, 0);
  }
  std::vector<int64_t> ids;
  for (const auto& o : opts) {
    rows_.push_back({next_id_, o, std::make_unique<Sampler>(o.sampling), 0});
    ids.push_back(next_id_++);
  }
  return ids;
}

void ContinuousBatch::keep_rows(const std::vector<size_t>& keep) {
  if (keep.size() == rows_.size()) return;
  std::vector<Row> rows;
  std::vector<int64_t> index;
  for (auto i : keep) rows.push_back(std::move(rows_[i])), index.push_back(static_cast<int64_t>(i));
  rows_ = std::move(rows);
  if (rows_.empty()) {
    cache_.reset();
    state_ = {}, mask_ = next_pos_ = logits_ = torch::Tensor();
    return;
  }
  auto idx = torch::tensor(index, torch::kInt64).to(mask_.device());
  mask_ = mask_.index_select(0, idx);
  // Entries before the first one any kept row holds are padding for all of them.
  const int64_t from = mask_.sum(0).gt(0).nonzero().min().item<int64_t>();
  mask_ = mask_.narrow(1, from, mask_.size(1) - from);
  cache_->keep(idx, from);
  state_.select_rows(idx);
  next_pos_ = next_pos_.index_select(0, idx);
  logits_ = logits_.index_select(0, idx.to(logits_.device()));
}

void ContinuousBatch::drop(int64_t id) {
  std::vector<size_t> keep;
  for (size_t i = 0; i < rows_.size(); ++i)
    if (rows_[i].id != id) keep.push_back(i);
  keep_rows(keep);
}

std::vector<int64_t> ContinuousBatch::step(const TokenCallback& on_token) {
  torch::NoGradGuard ng;
  std::vector<int64_t> ended;
  std::vector<size_t> keep;
  const auto& eos = lm_->config().eos_token_ids;
  std::vector<int64_t> chosen(rows_.size(), 0);
  for (size_t i = 0; i < rows_.size(); ++i) {
    auto& r = rows_[i];
    bool go_on = r.generated < r.opts.max_new_tokens;
    if (go_on) {
      const int64_t id = r.sampler->sample(logits_.narrow(0, static_cast<int64_t>(i), 1)).item<int64_t>();
      chosen[i] = id;
      const bool stop = std::find(r.opts.stop_ids.begin(), r.opts.stop_ids.end(), id) != r.opts.stop_ids.end() ||
                        (r.opts.stop_at_eos && std::find(eos.begin(), eos.end(), id) != eos.end());
      if (stop) {
        go_on = false;
      } else {
        ++r.generated;
        if (on_token && !on_token(r.id, id)) go_on = false;
        if (r.generated >= r.opts.max_new_tokens) go_on = false;
      }
    }
    if (go_on) keep.push_back(i);
    else ended.push_back(r.id);
  }
  std::vector<int64_t> next;
  for (auto i : keep) next.push_back(chosen[i]);
  keep_rows(keep);
  if (rows_.empty()) return ended;
  // One decode step for the rows still running.
  const int64_t b = size();
  if (cache_->length() + 1 > cache_->capacity())  // doubling: a copy every so often, not every step
    cache_->reserve(std::min(2 * cache_->capacity(), std::max(cache_->length() + 1, lm_->config().max_position_embeddings)));
  auto ones = torch::ones({b, 1}, mask_.options());
  mask_ = torch::cat({mask_, ones}, 1);
  model::ForwardContext ctx;
  ctx.cache = &*cache_;
  ctx.adapter_state = &state_;
  ctx.attention_mask = mask_;
  ctx.position_ids = next_pos_;
  next_pos_ = next_pos_ + 1;
  if (!fast_checked_) fast_ = model::FastDecoder::make(*lm_), fast_checked_ = true;
  logits_ = model::decode_logits(*lm_, fast_.get(), torch::tensor(next, torch::kInt64), ctx);  // (B, V)
  return ended;
}

}  // namespace vadapt::generate

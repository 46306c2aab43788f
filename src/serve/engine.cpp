// Serving engine: queue, batching worker, cancellation, metrics.
#include "serve/engine.h"

#include <chrono>
#include <sstream>

#include "common/error.h"
#include "common/log.h"
#include "vlm/pipeline.h"

namespace vadapt::serve {

std::string Job::take_pending() {
  std::string out;
  out.swap(pending);
  return out;
}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds.size() && v > bounds[i]) ++i;
  ++counts[i];
  sum += v, ++n;
}

std::string Histogram::prometheus(const std::string& name, const std::string& help) const {
  std::ostringstream o;
  o << "# HELP " << name << " " << help << "\n# TYPE " << name << " histogram\n";
  int64_t cum = 0;
  for (size_t i = 0; i < bounds.size(); ++i) o << name << "_bucket{le=\"" << bounds[i] << "\"} " << (cum += counts[i]) << "\n";
  o << name << "_bucket{le=\"+Inf\"} " << (cum += counts.back()) << "\n" << name << "_sum " << sum << "\n" << name << "_count " << n << "\n";
  return o.str();
}

double Engine::now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

Engine::Engine(std::vector<std::pair<std::string, std::unique_ptr<vlm::VisionLanguageModel>>> models, Options o)
    : models_(std::move(models)), o_(o) {
  if (models_.empty()) throw VadaptError("serve: no model to serve (give --adapter NAME=DIR or --model DIR)");
  worker_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
    for (auto& j : queue_) j->cancelled = true;
  }
  cv_.notify_all();
  if (worker_.joinable()) worker_.join();
}

std::vector<std::string> Engine::model_names() const {
  std::vector<std::string> out;
  for (const auto& [n, m] : models_) out.push_back(n);
  return out;
}

vlm::VisionLanguageModel& Engine::mutable_model(const std::string& name) {
  for (auto& [n, m] : models_)
    if (n == name) return *m;
  std::string all;
  for (const auto& [n, m] : models_) all += (all.empty() ? "" : ", ") + n;
  throw ApiError(404, "model '" + name + "' is not served here (models: " + all + ")", "model", "invalid_request_error", "model_not_found");
}

const vlm::VisionLanguageModel& Engine::model(const std::string& name) const { return const_cast<Engine*>(this)->mutable_model(name); }

std::shared_ptr<Job> Engine::submit(Request r) {
  auto& m = mutable_model(r.model);
  auto job = std::make_shared<Job>();
  if (!r.images.empty() && !m.has_vision())
    throw ApiError(400, "model '" + r.model + "' reads no images (a text-only adapter)", "messages");
  if (r.images.size() > 1 && !m.method().multi_image())
    throw ApiError(400, "model '" + r.model + "' (method " + m.method().name() + ") reads one image per request, got " +
                            std::to_string(r.images.size()), "messages");
  try {
    if (r.chat) {
      vlm::Query q{"request", r.conv, r.images.empty() ? "" : r.images[0]};
      job->prompt = vlm::encode_query(m, q);
    } else {
      job->prompt.ids = m.tokenizer().encode(r.prompt, m.tokenizer().add_bos_token());
    }
  } catch (const VadaptError& e) {
    throw ApiError(400, e.what(), r.chat ? "messages" : "prompt");
  }
  const int64_t ctx = m.lm()->config().max_position_embeddings, n = static_cast<int64_t>(job->prompt.ids.size());
  if (n + r.max_tokens > ctx)
    throw ApiError(400, "the prompt takes " + std::to_string(n) + " tokens and max_tokens is " + std::to_string(r.max_tokens) +
                            ": more than the model's context of " + std::to_string(ctx),
                   r.chat ? "messages" : "prompt", "invalid_request_error", "context_length_exceeded");
  job->req = std::move(r);
  job->queued_at = now();
  {
    std::lock_guard<std::mutex> l(mu_);
    if (queue_.size() >= o_.max_queue)
      throw ApiError(429, "the server's queue is full (" + std::to_string(o_.max_queue) + " requests); retry later", "", "rate_limit_error");
    queue_.push_back(job);
  }
  cv_.notify_all();
  return job;
}

void Engine::count_request(int status) {
  std::lock_guard<std::mutex> l(mu_);
  ++requests_by_status_[status];
}

namespace {
bool same_settings(const Request& a, const Request& b) {
  return a.model == b.model && a.num_beams == 1 && b.num_beams == 1 && a.temperature == b.temperature && a.top_p == b.top_p &&
         a.top_k == b.top_k && a.seed == b.seed && a.stop == b.stop && (a.images.size() > 1) == (b.images.size() > 1);
}
}  // namespace

void Engine::loop() {
  while (true) {
    std::vector<std::shared_ptr<Job>> batch;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (stop_) return;
      batch.push_back(queue_.front());
      queue_.pop_front();
      for (auto it = queue_.begin(); it != queue_.end() && static_cast<int64_t>(batch.size()) < o_.max_batch;) {
        if (same_settings(batch[0]->req, (*it)->req)) batch.push_back(*it), it = queue_.erase(it);
        else ++it;
      }
    }
    batch.erase(std::remove_if(batch.begin(), batch.end(), [](const auto& j) {
                  if (!j->cancelled) return false;
                  std::lock_guard<std::mutex> l(j->mu);
                  j->done = true, j->error = "cancelled";
                  j->cv.notify_all();
                  return true;
                }),
                batch.end());
    if (!batch.empty()) run_batch(batch);
  }
}

void Engine::run_batch(std::vector<std::shared_ptr<Job>>& jobs) {
  const Request& r0 = jobs[0]->req;
  auto& m = mutable_model(r0.model);
  std::vector<text::EncodedPrompt> prompts;
  std::vector<std::vector<std::string>> images;
  int64_t max_new = 0;
  for (auto& j : jobs) {
    prompts.push_back(j->prompt);
    images.push_back(j->req.images);
    max_new = std::max(max_new, j->req.max_tokens);
    images_encoded_ += static_cast<int64_t>(j->req.images.size());
  }
  generate::GenerateOptions opts;
  opts.max_new_tokens = max_new;
  opts.sampling = {r0.temperature, r0.top_k, r0.top_p, r0.seeded ? r0.seed : static_cast<uint64_t>(now() * 1e6)};
  opts.num_beams = r0.num_beams;
  opts.stop_strings = r0.stop;
  if (m.tokenizer().eos_id() >= 0) opts.stop_ids.push_back(m.tokenizer().eos_id());
  std::vector<text::StreamDecoder> decoders;
  std::vector<int64_t> counts(jobs.size(), 0);
  for (auto& j : jobs) decoders.emplace_back(m.tokenizer(), j->prompt.ids);
  const double t0 = now();
  try {
    auto res = vlm::answer(m, prompts, images, opts, [&](int64_t row, int64_t id) {
      auto& j = *jobs[static_cast<size_t>(row)];
      if (j.cancelled) return false;
      ++counts[static_cast<size_t>(row)];
      const std::string piece = decoders[static_cast<size_t>(row)].push(id);
      {
        std::lock_guard<std::mutex> l(j.mu);
        if (j.first_token_at == 0) j.first_token_at = now();
        j.pending += piece;
      }
      j.cv.notify_all();
      return counts[static_cast<size_t>(row)] < j.req.max_tokens;
    });
    for (size_t i = 0; i < jobs.size(); ++i) {
      auto& j = *jobs[i];
      auto ids = res.tokens[i];
      if (static_cast<int64_t>(ids.size()) > j.req.max_tokens) ids.resize(static_cast<size_t>(j.req.max_tokens));
      std::lock_guard<std::mutex> l(j.mu);
      j.pending += decoders[i].flush();  // bytes held back for an incomplete character
      j.text = m.tokenizer().decode(ids);
      j.completion_tokens = static_cast<int64_t>(ids.size());
      j.finish_reason = j.completion_tokens >= j.req.max_tokens ? "length" : "stop";
      if (j.first_token_at == 0) j.first_token_at = now();
      j.done = true;
      tokens_generated_ += j.completion_tokens;
    }
  } catch (const std::exception& e) {
    log_warn(cat("serve: generation failed: ", e.what()));
    for (auto& j : jobs) {
      std::lock_guard<std::mutex> l(j->mu);
      j->error = e.what(), j->done = true;
    }
  }
  const double t1 = now();
  {
    std::lock_guard<std::mutex> l(mu_);
    decode_seconds_ += t1 - t0;
    ++batches_;
    batched_requests_ += static_cast<int64_t>(jobs.size());
    for (auto& j : jobs) ttft_.observe(j->first_token_at - j->queued_at), latency_.observe(t1 - j->queued_at);
  }
  for (auto& j : jobs) j->cv.notify_all();
}

std::string Engine::metrics_text() const {
  std::lock_guard<std::mutex> l(mu_);
  std::ostringstream o;
  o << "# HELP vadapt_requests_total HTTP requests by status.\n# TYPE vadapt_requests_total counter\n";
  for (const auto& [s, n] : requests_by_status_) o << "vadapt_requests_total{status=\"" << s << "\"} " << n << "\n";
  o << "# HELP vadapt_tokens_generated_total Tokens generated.\n# TYPE vadapt_tokens_generated_total counter\n"
    << "vadapt_tokens_generated_total " << tokens_generated_ << "\n";
  o << "# HELP vadapt_tokens_per_second Generated tokens per second of generation time.\n# TYPE vadapt_tokens_per_second gauge\n"
    << "vadapt_tokens_per_second " << (decode_seconds_ > 0 ? static_cast<double>(tokens_generated_) / decode_seconds_ : 0) << "\n";
  o << "# HELP vadapt_queue_depth Requests waiting.\n# TYPE vadapt_queue_depth gauge\nvadapt_queue_depth " << queue_.size() << "\n";
  o << "# HELP vadapt_images_encoded_total Images encoded.\n# TYPE vadapt_images_encoded_total counter\n"
    << "vadapt_images_encoded_total " << images_encoded_ << "\n";
  o << "# HELP vadapt_batches_total Generation batches run.\n# TYPE vadapt_batches_total counter\nvadapt_batches_total " << batches_ << "\n";
  o << "# HELP vadapt_batched_requests_total Requests generated in those batches.\n# TYPE vadapt_batched_requests_total counter\n"
    << "vadapt_batched_requests_total " << batched_requests_ << "\n";
  int64_t hits = 0;
  for (const auto& [n, m] : models_)
    if (m->feature_cache()) hits += m->feature_cache()->hits();
  o << "# HELP vadapt_feature_cache_hits_total Vision features served from the cache.\n# TYPE vadapt_feature_cache_hits_total counter\n"
    << "vadapt_feature_cache_hits_total " << hits << "\n";
  o << ttft_.prometheus("vadapt_time_to_first_token_seconds", "Time from queueing to the first token.");
  o << latency_.prometheus("vadapt_request_latency_seconds", "Time from queueing to the last token.");
  return o.str();
}

}  // namespace vadapt::serve

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

struct Engine::Row {
  std::shared_ptr<Job> job;
  text::StreamDecoder decoder;
  std::string so_far;  // the text, to find the stop strings in
  std::vector<std::string> text_stops;
  std::vector<int64_t> ids;
};

namespace {
generate::SamplingParams sampling_of(const Request& r) {
  return {r.temperature, r.top_k, r.top_p, r.seeded ? r.seed : static_cast<uint64_t>(Engine::now() * 1e6)};
}

void end_job(Job& j, const std::string& error) {
  std::lock_guard<std::mutex> l(j.mu);
  j.error = error, j.done = true;
  j.cv.notify_all();
}
}  // namespace

void Engine::finish(Job& j, std::vector<int64_t> ids, const std::vector<std::string>& text_stops, const vlm::VisionLanguageModel& m) {
  const double t = now();
  if (static_cast<int64_t>(ids.size()) > j.req.max_tokens) ids.resize(static_cast<size_t>(j.req.max_tokens));
  {
    std::lock_guard<std::mutex> l(j.mu);
    const bool length = static_cast<int64_t>(ids.size()) >= j.req.max_tokens;
    const size_t before = ids.size();
    vlm::cut_at_stop_text(m.tokenizer(), ids, text_stops);
    j.text = m.tokenizer().decode(ids);
    j.completion_tokens = static_cast<int64_t>(ids.size());
    j.finish_reason = length && ids.size() == before ? "length" : "stop";
    if (j.first_token_at == 0) j.first_token_at = t;
    tokens_generated_ += j.completion_tokens;
    j.done = true;
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    ttft_.observe(j.first_token_at - j.queued_at), latency_.observe(t - j.queued_at);
  }
  j.cv.notify_all();
}

bool Engine::admit(const std::vector<std::shared_ptr<Job>>& jobs, generate::ContinuousBatch& batch, std::map<int64_t, Row>& rows) {
  auto& m = mutable_model(jobs[0]->req.model);
  std::vector<text::EncodedPrompt> prompts;
  std::vector<std::vector<std::string>> images;
  for (const auto& j : jobs) prompts.push_back(j->prompt), images.push_back(j->req.images);
  vlm::GenerationInputs in;
  try {
    in = vlm::prepare_inputs(m, prompts, images);  // the group's images encoded as one batch
  } catch (const std::exception& e) {
    if (jobs.size() == 1) {
      log_warn(cat("serve: a request failed: ", e.what()));
      end_job(*jobs[0], e.what());
      return true;
    }
    bool all = true;  // find the request at fault: each on its own
    for (const auto& j : jobs) all = admit({j}, batch, rows) && all;
    return all;
  }
  if (!batch.can_join(in.state)) return false;
  std::vector<generate::RowOptions> opts;
  std::vector<std::vector<std::string>> texts;
  for (const auto& j : jobs) {
    auto rules = vlm::stop_rules(m, j->req.stop);
    generate::RowOptions o;
    o.sampling = sampling_of(j->req);
    o.max_new_tokens = j->req.max_tokens;
    o.stop_ids = rules.ids;
    if (m.tokenizer().eos_id() >= 0) o.stop_ids.push_back(m.tokenizer().eos_id());
    opts.push_back(o), texts.push_back(rules.texts);
  }
  const double t0 = now();
  std::vector<int64_t> ids;
  try {
    ids = batch.join(in.embeds, in.key_mask, &in.state, opts);
  } catch (const std::exception& e) {
    log_warn(cat("serve: prefill failed: ", e.what()));
    for (const auto& j : jobs) end_job(*j, e.what());
    return true;
  }
  for (size_t i = 0; i < jobs.size(); ++i) {
    images_encoded_ += static_cast<int64_t>(jobs[i]->req.images.size());
    rows.emplace(ids[i], Row{jobs[i], text::StreamDecoder(m.tokenizer(), jobs[i]->prompt.ids), "", texts[i], {}});
  }
  ++joins_;
  std::lock_guard<std::mutex> l(mu_);
  decode_seconds_ += now() - t0;
  return true;
}

void Engine::loop() {
  std::unique_ptr<generate::ContinuousBatch> batch;
  std::string batch_model;
  std::map<int64_t, Row> rows;
  std::vector<std::shared_ptr<Job>> held;  // popped, but their state cannot join the running rows
  while (true) {
    std::vector<std::shared_ptr<Job>> joining;
    std::shared_ptr<Job> beam;
    {
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return stop_ || !queue_.empty() || !rows.empty() || !held.empty(); });
      if (stop_) break;
      if (rows.empty()) batch_model.clear();
      if (rows.empty() && !held.empty()) {
        joining.swap(held);
        batch_model = joining[0]->req.model;
      }
      // First in, first served: requests join while the oldest queued one is for the model being
      // decoded; one for another model (or a beam search) waits until this batch drains.
      while (!queue_.empty() && held.empty() && static_cast<int64_t>(rows.size() + joining.size()) < o_.max_batch) {
        auto j = queue_.front();
        if (j->cancelled) {
          queue_.pop_front();
          end_job(*j, "cancelled");
          continue;
        }
        if (j->req.num_beams > 1) {
          if (rows.empty() && joining.empty()) beam = j, queue_.pop_front();
          break;
        }
        if (!batch_model.empty() && j->req.model != batch_model) break;
        batch_model = j->req.model;
        joining.push_back(j);
        queue_.pop_front();
      }
    }
    if (beam) {
      run_beam(beam);
      continue;
    }
    if (batch_model.empty()) continue;  // nothing running, nothing admitted
    auto& m = mutable_model(batch_model);
    if (!batch || rows.empty()) batch = std::make_unique<generate::ContinuousBatch>(m.lm());
    if (!joining.empty() && !admit(joining, *batch, rows)) held = std::move(joining);
    if (rows.empty()) continue;
    // Rows whose request was cancelled leave before the step.
    for (auto it = rows.begin(); it != rows.end();) {
      if (!it->second.job->cancelled) {
        ++it;
        continue;
      }
      batch->drop(it->first);
      end_job(*it->second.job, "cancelled");
      it = rows.erase(it);
    }
    if (rows.empty()) continue;
    const double t0 = now();
    const int64_t n = batch->size();
    std::vector<int64_t> ended;
    try {
      ended = batch->step([&](int64_t id, int64_t tok) {
        auto& r = rows.at(id);
        auto& j = *r.job;
        if (j.cancelled) return false;
        r.ids.push_back(tok);
        const std::string piece = r.decoder.push(tok);
        {
          std::lock_guard<std::mutex> l(j.mu);
          if (j.first_token_at == 0) j.first_token_at = now();
          j.pending += piece;
        }
        j.cv.notify_all();
        if (r.text_stops.empty()) return true;
        r.so_far += piece;
        for (const auto& s : r.text_stops)
          if (r.so_far.find(s) != std::string::npos) return false;
        return true;
      });
    } catch (const std::exception& e) {
      log_warn(cat("serve: generation failed: ", e.what()));
      for (auto& [id, r] : rows) end_job(*r.job, e.what());
      rows.clear();
      batch.reset();
      continue;
    }
    ++decode_steps_;
    decode_rows_ += n;
    {
      std::lock_guard<std::mutex> l(mu_);
      decode_seconds_ += now() - t0;
      batch_rows_.observe(static_cast<double>(n));
    }
    for (auto id : ended) {
      auto it = rows.find(id);
      auto& r = it->second;
      {
        std::lock_guard<std::mutex> l(r.job->mu);
        r.job->pending += r.decoder.flush();  // bytes held back for an incomplete character
      }
      if (r.job->cancelled) end_job(*r.job, "cancelled");
      else finish(*r.job, std::move(r.ids), r.text_stops, m);
      rows.erase(it);
    }
  }
  for (auto& [id, r] : rows) end_job(*r.job, "cancelled");
  for (auto& j : held) end_job(*j, "cancelled");
}

void Engine::run_beam(const std::shared_ptr<Job>& job) {
  Job& j = *job;
  auto& m = mutable_model(j.req.model);
  generate::GenerateOptions opts;
  opts.max_new_tokens = j.req.max_tokens;
  opts.num_beams = j.req.num_beams;
  opts.stop_strings = j.req.stop;
  if (m.tokenizer().eos_id() >= 0) opts.stop_ids.push_back(m.tokenizer().eos_id());
  text::StreamDecoder decoder(m.tokenizer(), j.prompt.ids);
  const double t0 = now();
  try {
    images_encoded_ += static_cast<int64_t>(j.req.images.size());
    auto res = vlm::answer(m, {j.prompt}, std::vector<std::vector<std::string>>{j.req.images}, opts, [&](int64_t, int64_t id) {
      const std::string piece = decoder.push(id);
      std::lock_guard<std::mutex> l(j.mu);
      if (j.first_token_at == 0) j.first_token_at = now();
      j.pending += piece;
      return true;
    });
    {
      std::lock_guard<std::mutex> l(j.mu);
      j.pending += decoder.flush();
    }
    finish(j, res.tokens[0], {}, m);  // vlm::answer cut the stop strings already
  } catch (const std::exception& e) {
    log_warn(cat("serve: generation failed: ", e.what()));
    end_job(j, e.what());
  }
  std::lock_guard<std::mutex> l(mu_);
  decode_seconds_ += now() - t0;
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
  o << "# HELP vadapt_decode_steps_total Decode steps run (each over every running request).\n# TYPE vadapt_decode_steps_total counter\n"
    << "vadapt_decode_steps_total " << decode_steps_ << "\n";
  o << "# HELP vadapt_decode_rows_total Request rows over all decode steps.\n# TYPE vadapt_decode_rows_total counter\n"
    << "vadapt_decode_rows_total " << decode_rows_ << "\n";
  o << "# HELP vadapt_joins_total Groups of requests that joined a running batch.\n# TYPE vadapt_joins_total counter\n"
    << "vadapt_joins_total " << joins_ << "\n";
  o << batch_rows_.prometheus("vadapt_batch_rows", "Requests per decode step.");
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

// The serving engine: named vision-language models (adapters), a bounded request queue and one
// worker thread that runs every forward pass. Continuous batching: requests for the model being
// decoded join the running batch between decode steps (queued ones prefilled together, their
// images encoded as one batch) and leave it when they end, each with its own sampling settings,
// budget and stop strings; a request for another model waits until that batch drains (first in,
// first served), as does a beam-search request (run on its own). Each request streams its own
// tokens and may be cancelled (client gone, timeout), which frees its row at the next step.
// Metrics for /metrics are kept here.
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "generate/continuous_batch.h"
#include "serve/api.h"
#include "vlm/vision_language_model.h"

namespace vadapt::serve {

struct Job {
  Request req;
  text::EncodedPrompt prompt;
  // Filled by the worker; read under `mu`.
  std::mutex mu;
  std::condition_variable cv;
  std::string pending;  // streamed text not yet taken by the handler
  std::string text;     // the whole answer (set when done)
  std::string finish_reason;
  std::string error;
  int64_t completion_tokens = 0;
  bool done = false;
  std::atomic<bool> cancelled{false};
  double queued_at = 0, first_token_at = 0;
  std::string take_pending();  // under the lock
};

struct Histogram {
  std::vector<double> bounds;
  std::vector<int64_t> counts;  // per bound, then +Inf
  double sum = 0;
  int64_t n = 0;
  explicit Histogram(std::vector<double> b) : bounds(std::move(b)), counts(bounds.size() + 1, 0) {}
  void observe(double v);
  std::string prometheus(const std::string& name, const std::string& help) const;
};

class Engine {
 public:
  struct Options {
    size_t max_queue = 64;
    int64_t max_batch = 8;
  };
  Engine(std::vector<std::pair<std::string, std::unique_ptr<vlm::VisionLanguageModel>>> models, Options o);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  std::vector<std::string> model_names() const;
  const vlm::VisionLanguageModel& model(const std::string& name) const;  // throws ApiError 404
  // Validates against the model (images, context) and queues; ApiError 4xx / 429 when full.
  std::shared_ptr<Job> submit(Request r);
  std::string metrics_text() const;
  void count_request(int status);
  static double now();

 private:
  struct Row;  // a request in the running batch
  void loop();
  void run_beam(const std::shared_ptr<Job>& job);
  // Prepares and joins queued requests to the running batch; false when their adapter state cannot
  // join it (they wait for the batch to drain).
  bool admit(const std::vector<std::shared_ptr<Job>>& jobs, generate::ContinuousBatch& batch, std::map<int64_t, Row>& rows);
  // Cuts the answer before its first text stop and completes the job.
  void finish(Job& j, std::vector<int64_t> ids, const std::vector<std::string>& text_stops, const vlm::VisionLanguageModel& m);
  vlm::VisionLanguageModel& mutable_model(const std::string& name);

  std::vector<std::pair<std::string, std::unique_ptr<vlm::VisionLanguageModel>>> models_;
  Options o_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool stop_ = false;
  std::thread worker_;
  // Metrics.
  std::map<int, int64_t> requests_by_status_;
  std::atomic<int64_t> tokens_generated_{0}, images_encoded_{0}, decode_steps_{0}, decode_rows_{0}, joins_{0};
  double decode_seconds_ = 0;  // under mu_
  Histogram batch_rows_{{1, 2, 4, 8, 16, 32, 64}};  // rows per decode step
  Histogram ttft_{{0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}}, latency_{{0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}};
};

}  // namespace vadapt::serve

// Serving benchmark: an in-process `vadapt serve` (the same Engine and Server) and 1 / 8 / 32
// concurrent HTTP clients, each sending streamed chat requests with an image, with continuous
// batching (--max-batch 8 by default) and without it (max batch 1). Prints a Markdown table:
// requests/s, generated tokens/s, time to first token and request latency (p50 / p95), rows per
// decode step.
//   build/bench/bench_serve [--adapter DIR] [--clients 1,8,32] [--requests 4] [--max-tokens 32]
// Without --adapter: an untrained LLaVA projector over ../shared's stories260K and ViT-Tiny
// (the speed does not depend on what the projector learned).
#include <httplib.h>
#include <openssl/evp.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "common/log.h"
#include "common/runtime.h"
#include "io/path_vars.h"
#include "serve/engine.h"
#include "serve/server.h"
#include "vlm/vision_language_model.h"

using namespace vadapt;
using nlohmann::json;

namespace {

std::string shared_dir() {
  for (const char* c : std::initializer_list<const char*>{std::getenv("VADAPT_SHARED_DIR"), VADAPT_SOURCE_DIR "/../shared"})
    if (c && std::filesystem::exists(std::string(c) + "/models")) return c;
  return "";
}

std::unique_ptr<vlm::VisionLanguageModel> make_model(const std::string& adapter) {
  if (!adapter.empty()) return vlm::load_vlm_checkpoint(adapter);
  const std::string sh = shared_dir();
  if (sh.empty()) throw VadaptError("bench_serve: give --adapter DIR, or set VADAPT_SHARED_DIR to ../shared (stories260K, ViT-Tiny)");
  vlm::VlmSpec s;
  s.llm = sh + "/models/stories260K";
  s.vision = sh + "/models/vit-tiny-patch16-224";
  s.preprocess = "vit224";
  s.template_name = "vicuna_v1";
  s.options = {{"mm_projector_type", "mlp2x_gelu"}, {"tune", "projector"}};
  return std::make_unique<vlm::VisionLanguageModel>(s);
}

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

std::string b64(const std::string& bytes) {  // OpenSSL's encoder, as the server's decoder
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

struct Result {
  int64_t clients, max_batch, requests = 0, failed = 0, tokens = 0;
  double seconds = 0, rows_per_step = 0;
  std::vector<double> ttft, latency;
};

Result run(serve::Server& server, serve::Engine& engine, int64_t clients, int64_t per_client, int64_t max_tokens,
           const std::vector<std::string>& images) {
  Result r;
  r.clients = clients;
  std::mutex mu;
  auto before = engine.metrics_text();
  Stopwatch all;
  std::vector<std::thread> ts;
  for (int64_t c = 0; c < clients; ++c)
    ts.emplace_back([&, c] {
      httplib::Client cl("127.0.0.1", server.port());
      cl.set_read_timeout(600, 0);
      for (int64_t k = 0; k < per_client; ++k) {
        const auto& img = images[static_cast<size_t>((c * per_client + k) % static_cast<int64_t>(images.size()))];
        json body = {{"model", "m"},
                     {"messages", json::array({{{"role", "user"},
                                                {"content", json::array({{{"type", "text"}, {"text", "What is in the image?"}},
                                                                         {{"type", "image_url"}, {"image_url", {{"url", img}}}}})}}})},
                     {"temperature", 0.8}, {"seed", c * 1000 + k}, {"max_tokens", max_tokens}, {"stream", true}};
        httplib::Request rq;
        rq.method = "POST", rq.path = "/v1/chat/completions", rq.body = body.dump();
        rq.set_header("Content-Type", "application/json");
        Stopwatch sw;
        double first = -1;
        std::string buf;
        rq.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
          buf.append(d, n);
          if (first < 0 && buf.find("\"content\"") != std::string::npos) first = sw.seconds();
          return true;
        };
        auto res = cl.send(rq);
        const double t = sw.seconds();
        std::lock_guard<std::mutex> l(mu);
        ++r.requests;
        if (!res || res->status != 200) {
          ++r.failed;
          continue;
        }
        r.latency.push_back(t);
        if (first >= 0) r.ttft.push_back(first);
      }
    });
  for (auto& t : ts) t.join();
  r.seconds = all.seconds();
  auto metric = [](const std::string& text, const std::string& name) {
    auto p = text.find("\n" + name + " ");
    return p == std::string::npos ? 0.0 : std::stod(text.substr(p + name.size() + 2));
  };
  auto after = engine.metrics_text();
  const double steps = metric(after, "vadapt_decode_steps_total") - metric(before, "vadapt_decode_steps_total");
  const double rows = metric(after, "vadapt_decode_rows_total") - metric(before, "vadapt_decode_rows_total");
  r.rows_per_step = steps > 0 ? rows / steps : 0;
  r.tokens = static_cast<int64_t>(metric(after, "vadapt_tokens_generated_total") - metric(before, "vadapt_tokens_generated_total"));
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string adapter, clients_arg = "1,8,32", batches_arg = "1,8";
  int64_t per_client = 4, max_tokens = 32;
  configure_runtime(Workload::kInference);  // as vadapt serve
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw VadaptError(cat(a, " needs a value"));
      return argv[++i];
    };
    if (a == "--adapter") adapter = next();
    else if (a == "--clients") clients_arg = next();
    else if (a == "--max-batch") batches_arg = next();
    else if (a == "--requests") per_client = std::stoll(next());
    else if (a == "--max-tokens") max_tokens = std::stoll(next());
    else {
      std::cerr << "usage: bench_serve [--adapter DIR] [--clients 1,8,32] [--max-batch 1,8] [--requests N] [--max-tokens N]\n";
      return 2;
    }
  }
  auto list = [](const std::string& s) {
    std::vector<int64_t> v;
    std::stringstream ss(s);
    for (std::string x; std::getline(ss, x, ',');) v.push_back(std::stoll(x));
    return v;
  };
  try {
    // Four distinct images (their features are computed once, then served from the cache).
    std::vector<std::string> images;
    const std::string sh = shared_dir();
    for (int i = 0; i < 4; ++i) {
      std::string bytes;
      const std::string p = sh + "/data/coco-captions-val2017/val2017";
      if (!sh.empty() && std::filesystem::exists(p)) {
        int k = 0;
        for (const auto& e : std::filesystem::directory_iterator(p))
          if (k++ == i) {
            std::ifstream in(e.path(), std::ios::binary);
            bytes.assign(std::istreambuf_iterator<char>(in), {});
            break;
          }
      }
      if (bytes.empty()) throw VadaptError("bench_serve: needs ../shared/data/coco-captions-val2017/images for its test images");
      images.push_back("data:image/jpeg;base64," + b64(bytes));
    }
    std::cout << "| max batch | clients | requests | failed | req/s | gen tok/s | TTFT p50 ms | TTFT p95 ms | latency p50 ms | latency p95 ms | rows/step |\n"
              << "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for (int64_t mb : list(batches_arg)) {
      std::vector<std::pair<std::string, std::unique_ptr<vlm::VisionLanguageModel>>> models;
      const auto tmp = std::filesystem::temp_directory_path() / ("vadapt-bench-serve-" + std::to_string(::getpid()));
      models.emplace_back("m", make_model(adapter));
      models[0].second->train_mode(false);
      models[0].second->enable_feature_cache((tmp / "features").string());  // as vadapt serve
      const auto counts = list(clients_arg);
      const int64_t most = *std::max_element(counts.begin(), counts.end());
      serve::Engine engine(std::move(models), {static_cast<size_t>(std::max<int64_t>(most, 1)), mb});
      serve::ServerOptions so;
      so.port = 0, so.max_body_bytes = 64u << 20;
      so.limits.image_dir = (tmp / "images").string();
      serve::Server server(engine, so);
      server.bind();
      std::thread th([&] { server.listen(); });
      run(server, engine, 1, 2, max_tokens, images);  // warm-up: features cached, allocator warm
      for (int64_t c : counts) {
        auto r = run(server, engine, c, per_client, max_tokens, images);
        std::cout << "| " << mb << " | " << c << " | " << r.requests << " | " << r.failed << " | " << cat(r.requests / r.seconds)
                  << " | " << static_cast<int64_t>(r.tokens / r.seconds) << " | " << static_cast<int64_t>(1000 * pct(r.ttft, 0.5)) << " | "
                  << static_cast<int64_t>(1000 * pct(r.ttft, 0.95)) << " | " << static_cast<int64_t>(1000 * pct(r.latency, 0.5)) << " | "
                  << static_cast<int64_t>(1000 * pct(r.latency, 0.95)) << " | " << cat(r.rows_per_step) << " |" << std::endl;
      }
      server.stop();
      th.join();
      std::filesystem::remove_all(tmp);
    }
  } catch (const std::exception& e) {
    std::cerr << "bench_serve: " << e.what() << "\n";
    return 1;
  }
  return 0;
}

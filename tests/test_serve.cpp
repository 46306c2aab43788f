// Serving: request validation naming the field (no HTTP), then a real server on a loopback port
// with two adapters of different methods on one base: /health, /v1/models, greedy answers equal
// to the pipeline's for the same model / image / prompt, both adapters at once from concurrent
// clients, streaming (SSE chunks concatenate to the answer, [DONE] at the end), a client that
// disconnects mid-stream, the 4xx errors (malformed JSON, unknown model, bad image, oversized
// body, missing API key) with the server still answering, /metrics, the chat page; and
// `vadapt chat` on piped stdin.
#include <gtest/gtest.h>
#include <httplib.h>
#include <openssl/evp.h>

#include <array>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "fixtures.h"
#include "model/weight_share.h"
#include "serve/api.h"
#include "serve/chat.h"
#include "serve/engine.h"
#include "serve/server.h"
#include "vlm/pipeline.h"

using namespace vadapt;
using vadapt::test::TempDir;
using nlohmann::json;

namespace {
using World = vadapt::test::TinyVlmWorld;

std::string b64(const std::string& bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), reinterpret_cast<const unsigned char*>(bytes.data()),
                                static_cast<int>(bytes.size()));
  out.resize(static_cast<size_t>(n));
  return out;
}

std::string read_file(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::string data_url(const std::string& path) { return "data:image/png;base64," + b64(read_file(path)); }

vlm::VlmSpec palm2_spec(const World& w) {
  vlm::VlmSpec s = w.spec("projector");
  s.method = "palm2_vadapter";
  s.template_name = "palm2_vqa";
  s.options = {{"palm2_role", "adapter"}, {"connector", "perceiver"},
               {"resampler", {{"queries", 3}, {"layers", 1}, {"width", 16}, {"heads", 2}, {"ffn_mult", 4}, {"norms", "separate"},
                              {"final_norm", false}, {"ffn", true}, {"time_embedding", true}, {"max_frames", 8}}}};
  return s;
}

// The pipeline's greedy answer for one prompt + image.
std::string direct_answer(vlm::VisionLanguageModel& m, const std::string& question, const std::string& image, int64_t max_tokens) {
  text::Conversation c;
  c.turns.push_back({"user", std::string(text::kImageTag) + "\n" + question});
  auto p = vlm::encode_query(m, {"t", c, image});
  generate::GenerateOptions o;
  o.max_new_tokens = max_tokens;
  o.stop_ids.push_back(m.tokenizer().eos_id());
  auto r = vlm::answer(m, {p}, {image}, o);
  return m.tokenizer().decode(r.tokens[0]);
}

// As the server writes it: invalid UTF-8 from a random model becomes U+FFFD.
std::string as_served(const std::string& s) { return json::parse(serve::dump(json(s))).get<std::string>(); }

json chat_body(const std::string& model, const std::string& question, const std::string& image_url, bool stream = false) {
  json content = json::array({{{"type", "text"}, {"text", question}}});
  if (!image_url.empty()) content.push_back({{"type", "image_url"}, {"image_url", {{"url", image_url}}}});
  return {{"model", model}, {"messages", json::array({{{"role", "user"}, {"content", content}}})}, {"temperature", 0},
          {"max_tokens", 6}, {"stream", stream}};
}

struct Running {
  World w;
  std::unique_ptr<serve::Engine> engine;
  std::unique_ptr<serve::Server> server;
  std::thread thread;
  TempDir images;
  explicit Running(const std::string& api_key = "") {
    model::WeightShare::clear();
    model::WeightShare::enable(true);  // as vadapt serve: one copy of the frozen base
    std::vector<std::pair<std::string, std::unique_ptr<vlm::VisionLanguageModel>>> models;
    models.emplace_back("llava", std::make_unique<vlm::VisionLanguageModel>(w.spec("projector")));
    models.emplace_back("palm2", std::make_unique<vlm::VisionLanguageModel>(palm2_spec(w)));
    for (auto& [n, m] : models) m->train_mode(false);
    engine = std::make_unique<serve::Engine>(std::move(models), serve::Engine::Options{8, 4});
    serve::ServerOptions o;
    o.port = 0, o.api_key = api_key, o.max_body_bytes = 1 << 20;
    o.limits.image_dir = images.path();
    o.limits.allow_local_images = w.dir.path();
    server = std::make_unique<serve::Server>(*engine, o);
    server->bind();
    thread = std::thread([this] { server->listen(); });
  }
  ~Running() {
    server->stop();
    thread.join();
    model::WeightShare::enable(false);
    model::WeightShare::clear();
  }
  httplib::Client client() const {
    httplib::Client c("127.0.0.1", server->port());
    c.set_read_timeout(60, 0);
    return c;
  }
};

void expect_error(const httplib::Result& r, int status, const std::string& needle) {
  ASSERT_TRUE(r) << "no response";
  EXPECT_EQ(r->status, status) << r->body;
  auto j = json::parse(r->body);
  ASSERT_TRUE(j.contains("error")) << r->body;
  EXPECT_NE(j["error"]["message"].get<std::string>().find(needle), std::string::npos) << r->body;
}
}  // namespace

TEST(ServeApi, BadRequestsNameTheField) {
  World w;
  TempDir d;
  serve::Limits lim;
  lim.image_dir = d.path();
  auto expect = [&](const std::string& body, const std::string& param, int status = 400) {
    try {
      serve::parse_request(body, true, lim, "m");
      ADD_FAILURE() << body;
    } catch (const serve::ApiError& e) {
      EXPECT_EQ(e.status, status) << e.what();
      EXPECT_EQ(e.param, param) << e.what();
    }
  };
  expect("{not json", "");
  expect("[]", "");
  expect(R"({"messages": []})", "messages");
  expect(R"({"messages": "hi"})", "messages");
  expect(R"({"messages": [{"role": "robot", "content": "hi"}]})", "messages[0].role");
  expect(R"({"messages": [{"role": "user", "content": 3}]})", "messages[0].content");
  expect(R"({"messages": [{"role": "user", "content": [{"type": "audio"}]}]})", "messages[0].content[0].type");
  expect(R"({"messages": [{"role": "user", "content": "hi"}], "n": 2})", "n");
  expect(R"({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"})", "temperature");
  expect(R"({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0})", "max_tokens");
  expect(R"({"messages": [{"role": "user", "content": "hi"}], "stream": true, "num_beams": 2})", "num_beams");
  expect(R"({"messages": [{"role": "assistant", "content": "hi"}]})", "messages[0].role");
  expect(R"({"messages": [{"role": "user", "content": "<image> hi"}]})", "messages[0].content");
  const std::string img = R"({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "URL"}}]}]})";
  auto with = [&](const std::string& url) { return std::regex_replace(img, std::regex("URL"), url); };
  expect(with("https://example.com/cat.png"), "messages[0].content[0].image_url.url");
  expect(with("data:image/png;base64,@@@@"), "messages[0].content[0].image_url.url");
  expect(with("data:image/png;base64," + b64("not an image at all")), "messages[0].content[0].image_url.url");
  expect(with(w.dir.file("img0.png")), "messages[0].content[0].image_url.url");  // local paths not allowed
  lim.allow_local_images = d.path();
  expect(with(w.dir.file("img0.png")), "messages[0].content[0].image_url.url");  // outside the allowed folder
  lim.max_image_bytes = 10;
  expect(with(data_url(w.dir.file("img0.png"))), "messages[0].content[0].image_url.url", 413);
  lim.max_image_bytes = 1 << 20;
  auto ok = serve::parse_request(with(data_url(w.dir.file("img0.png"))), true, lim, "m");
  ASSERT_EQ(ok.images.size(), 1u);
  EXPECT_EQ(read_file(ok.images[0]), read_file(w.dir.file("img0.png")));
  EXPECT_EQ(ok.conv.turns[0].text.rfind(text::kImageTag, 0), 0u);
  EXPECT_EQ(ok.model, "m");
}

TEST(Serve, AnswersEqualThePipelineForTwoAdaptersAtOnce) {
  Running s;
  World& w = s.w;
  auto c = s.client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto models = json::parse(c.Get("/v1/models")->body);
  ASSERT_EQ(models["data"].size(), 2u);
  EXPECT_EQ(models["data"][1]["method"], "palm2_vadapter");
  // The expected answers from identical models (same specs and seeds) through the pipeline.
  vlm::VisionLanguageModel llava(w.spec("projector")), palm2(palm2_spec(w));
  llava.train_mode(false), palm2.train_mode(false);
  const std::string want_llava = as_served(direct_answer(llava, "What colour?", w.dir.file("img1.png"), 6));
  const std::string want_palm2 = as_served(direct_answer(palm2, "What colour?", w.dir.file("img1.png"), 6));
  // Concurrent clients, both adapters, several requests each (they batch per adapter).
  std::vector<std::thread> clients;
  std::array<std::string, 8> got;
  for (int i = 0; i < 8; ++i)
    clients.emplace_back([&, i] {
      auto cl = s.client();
      auto r = cl.Post("/v1/chat/completions", chat_body(i % 2 ? "palm2" : "llava", "What colour?", data_url(w.dir.file("img1.png"))).dump(),
                       "application/json");
      got[static_cast<size_t>(i)] = r && r->status == 200 ? json::parse(r->body)["choices"][0]["message"]["content"].get<std::string>()
                                                          : "HTTP error " + (r ? std::to_string(r->status) + " " + r->body : "none");
    });
  for (auto& t : clients) t.join();
  for (int i = 0; i < 8; ++i) EXPECT_EQ(got[static_cast<size_t>(i)], i % 2 ? want_palm2 : want_llava) << i;
  // Usage and finish reason.
  auto one = json::parse(c.Post("/v1/chat/completions", chat_body("llava", "What colour?", w.dir.file("img1.png")).dump(), "application/json")->body);
  EXPECT_EQ(one["choices"][0]["message"]["content"], want_llava) << "a local path under --allow-local-images";
  EXPECT_GT(one["usage"]["prompt_tokens"].get<int64_t>(), 0);
  EXPECT_EQ(one["usage"]["total_tokens"].get<int64_t>(),
            one["usage"]["prompt_tokens"].get<int64_t>() + one["usage"]["completion_tokens"].get<int64_t>());
  auto metrics = c.Get("/metrics")->body;
  EXPECT_NE(metrics.find("vadapt_requests_total{status=\"200\"}"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("vadapt_time_to_first_token_seconds_bucket"), std::string::npos);
  EXPECT_NE(c.Get("/")->body.find("<title>vadapt chat</title>"), std::string::npos);
}

TEST(Serve, StreamsServerSentEventsAndSurvivesBadClients) {
  Running s;
  World& w = s.w;
  auto c = s.client();
  auto plain = json::parse(c.Post("/v1/chat/completions", chat_body("palm2", "What colour?", data_url(w.dir.file("img2.png"))).dump(),
                                  "application/json")->body)["choices"][0]["message"]["content"].get<std::string>();
  std::string events;
  httplib::Request req;
  auto r = c.Post("/v1/chat/completions", chat_body("palm2", "What colour?", data_url(w.dir.file("img2.png")), true).dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_NE(r->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  std::string text, finish;
  size_t at = 0, n = 0;
  bool done = false;
  for (size_t e; (e = r->body.find("\n\n", at)) != std::string::npos; at = e + 2, ++n) {
    const std::string ev = r->body.substr(at, e - at);
    ASSERT_EQ(ev.rfind("data: ", 0), 0u) << ev;
    if (ev == "data: [DONE]") {
      done = true;
      continue;
    }
    auto j = json::parse(ev.substr(6));
    EXPECT_EQ(j["object"], "chat.completion.chunk");
    const auto& ch = j["choices"][0];
    if (ch["delta"].contains("content")) text += ch["delta"]["content"].get<std::string>();
    if (!ch["finish_reason"].is_null()) finish = ch["finish_reason"];
  }
  EXPECT_TRUE(done);
  EXPECT_EQ(text, plain);
  EXPECT_FALSE(finish.empty());
  // A client that goes away after the first event: its generation is cancelled, nothing hangs.
  {
    auto cl = s.client();
    int chunks = 0;
    httplib::Headers hdr;
    auto body = chat_body("llava", "What colour?", data_url(w.dir.file("img3.png")), true);
    body["max_tokens"] = 200;
    cl.Post("/v1/chat/completions", hdr, body.dump(), "application/json");  // full read is fine too
    httplib::Request rq;
    rq.method = "POST", rq.path = "/v1/chat/completions", rq.body = body.dump();
    rq.set_header("Content-Type", "application/json");
    rq.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
    cl.send(rq);
    EXPECT_GE(chunks, 1);
  }
  // Errors: each a JSON error with its status; the server keeps answering.
  expect_error(c.Post("/v1/chat/completions", "{oops", "application/json"), 400, "not valid JSON");
  expect_error(c.Post("/v1/chat/completions", chat_body("nope", "hi", "").dump(), "application/json"), 404, "'nope'");
  expect_error(c.Post("/v1/chat/completions", chat_body("llava", "hi", "data:image/png;base64," + b64("GIF89a-garbage")).dump(), "application/json"),
               400, "not a readable image");
  expect_error(c.Post("/v1/chat/completions", std::string(2 << 20, 'x'), "application/json"), 413, "exceeds");
  expect_error(c.Post("/v1/chat/completions", json{{"messages", json::array({{{"role", "user"}, {"content", "hi"}}})}}.dump(), "application/json"),
               400, "model");
  auto text_only = c.Post("/v1/completions", json{{"model", "llava"}, {"prompt", "Say red."}, {"max_tokens", 3}, {"temperature", 0}}.dump(),
                          "application/json");
  ASSERT_TRUE(text_only);
  EXPECT_EQ(text_only->status, 200) << text_only->body;
  EXPECT_EQ(json::parse(text_only->body)["object"], "text_completion");
  auto again = json::parse(c.Post("/v1/chat/completions", chat_body("palm2", "What colour?", data_url(w.dir.file("img2.png"))).dump(),
                                  "application/json")->body);
  EXPECT_EQ(again["choices"][0]["message"]["content"], plain);
}

TEST(Serve, ApiKeyIsRequiredWhenGiven) {
  Running s("sekret");
  auto c = s.client();
  EXPECT_EQ(c.Get("/health")->status, 200);
  expect_error(c.Get("/v1/models"), 401, "API key");
  httplib::Headers h = {{"Authorization", "Bearer sekret"}};
  EXPECT_EQ(c.Get("/v1/models", h)->status, 200);
}

TEST(Serve, ChatOnPipedStdin) {
  World w;
  TempDir d;
  vlm::VisionLanguageModel m(w.spec("projector"));
  m.save_adapter(d.file("adapter"));
  std::ofstream(d.file("in.txt")) << "What colour?\nAnd now?\n/save " << d.file("conv.json") << "\n/reset\n/image " << d.file("missing.png")
                                  << "\nSay red.\n/exit\n";
  const std::string cmd = std::string(VADAPT_BINARY) + " chat --adapter " + d.file("adapter") + " --image " + w.dir.file("img0.png") +
                          " --max-new-tokens 3 < " + d.file("in.txt") + " > " + d.file("out.txt") + " 2> " + d.file("err.txt");
  const int status = std::system(cmd.c_str());
  EXPECT_EQ(WEXITSTATUS(status), 2) << "a failed command (missing image) makes the exit status non-zero";
  const std::string err = read_file(d.file("err.txt"));
  EXPECT_NE(err.find("missing.png"), std::string::npos) << err;
  std::istringstream out(read_file(d.file("out.txt")));
  std::vector<std::string> lines;
  for (std::string l; std::getline(out, l);) lines.push_back(l);
  EXPECT_EQ(lines.size(), 3u) << "one line per turn: " << read_file(d.file("out.txt"));
  auto conv = json::parse(read_file(d.file("conv.json")));
  ASSERT_EQ(conv["turns"].size(), 4u);
  EXPECT_EQ(conv["turns"][0]["text"], "<image>\nWhat colour?");
  EXPECT_EQ(conv["turns"][2]["text"], "And now?");
  EXPECT_EQ(conv["images"].size(), 1u);
}

TEST(Serve, AdaptersShareTheFrozenBaseWeightsAndNeverWriteThem) {
  World w;
  model::WeightShare::clear();
  model::WeightShare::enable(true);
  struct Off {
    ~Off() { model::WeightShare::enable(false), model::WeightShare::clear(); }
  } off;
  const std::string q = "model.layers.0.self_attn.q_proj.weight", norm = "model.layers.1.input_layernorm.weight";
  vlm::VisionLanguageModel lora(w.spec("lora")), palm2(palm2_spec(w)), full(w.spec("full"));
  auto lp = lora.lm()->named_parameters(), pp = palm2.lm()->named_parameters(), fp = full.lm()->named_parameters();
  EXPECT_EQ(lp[q].data_ptr(), pp[q].data_ptr()) << "one copy of the frozen LLM";
  EXPECT_EQ(lora.tower().module().parameters()[0].data_ptr(), palm2.tower().module().parameters()[0].data_ptr()) << "and of the tower";
  EXPECT_NE(fp[q].data_ptr(), lp[q].data_ptr()) << "full tuning owns its LLM weights";
  EXPECT_GT(model::WeightShare::bytes(), 0);
  {  // Loading a fully tuned adapter's weights into `full` leaves the shared ones as they were.
    torch::NoGradGuard ng;
    for (auto& p : fp) p.value().add_(1.0);
  }
  model::WeightShare::enable(false);
  vlm::VisionLanguageModel alone(w.spec("lora"));
  EXPECT_TRUE(vadapt::test::tensors_equal(lp[q], alone.lm()->named_parameters()[q]));
  EXPECT_TRUE(vadapt::test::tensors_equal(pp[norm], alone.lm()->named_parameters()[norm]));
  auto samples = vadapt::test::mixed_samples(w);
  lora.train_mode(false), alone.train_mode(false);
  auto b = vadapt::test::batch_of(lora, samples, {0, 9});
  EXPECT_TRUE(vadapt::test::tensors_equal(vadapt::test::logits_of(lora, b), vadapt::test::logits_of(alone, b)));
}

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
#include <map>
#include <mutex>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "common/error.h"
#include "fixtures.h"
#include "generate/continuous_batch.h"
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
  explicit Running(const std::string& api_key = "", serve::Engine::Options eo = {8, 4}) {
    model::WeightShare::clear();
    model::WeightShare::enable(true);  // as vadapt serve: one copy of the frozen base
    std::vector<std::pair<std::string, std::unique_ptr<vlm::VisionLanguageModel>>> models;
    models.emplace_back("llava", std::make_unique<vlm::VisionLanguageModel>(w.spec("projector")));
    models.emplace_back("palm2", std::make_unique<vlm::VisionLanguageModel>(palm2_spec(w)));
    for (auto& [n, m] : models) m->train_mode(false);
    engine = std::make_unique<serve::Engine>(std::move(models), eo);
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

// Continuous batching with every method's adapter state (prefix keys kept from prefill, routes,
// conditioning, resampled prefixes): requests joining a running batch at different steps, text-only
// beside image requests where the method takes both, each equal to generating it alone.
TEST(Serve, ContinuousBatchEqualsGeneratingAloneForEveryMethod) {
  World w;
  std::vector<std::pair<std::string, vlm::VlmSpec>> specs;
  specs.emplace_back("llava", w.spec("lora"));
  {
    auto s = w.spec("projector");
    s.method = "llama_adapter_v1", s.template_name = "alpaca";
    s.options = {{"adapter_len", 2}, {"adapter_layer", 1}, {"visual_taps", std::vector<int64_t>{1, 3}}, {"visual_hidden", 16}};
    specs.emplace_back("v1", s);
  }
  for (const char* fusion : {"early", "late"}) {
    auto s = w.spec("projector");
    s.method = "llama_adapter_v2", s.template_name = "alpaca";
    s.options = {{"adapter_len", 3},    {"adapter_layer", 1}, {"fusion", fusion},  {"visual", true},   {"visual_width", 16},
                 {"visual_queries", 3}, {"visual_blocks", 1}, {"visual_heads", 2}, {"bias_form", "bias"}};
    specs.emplace_back(std::string("v2-") + fusion, s);
  }
  {
    auto s = w.spec("projector");
    s.method = "lavin", s.template_name = "lavin", s.preprocess = "imagenet32";
    s.options = {{"adapter_dim", 4}, {"tap_every", 1}, {"hidden_proj", 16}, {"temperature", 2.0}};
    specs.emplace_back("lavin", s);
  }
  specs.emplace_back("palm2", palm2_spec(w));
  for (auto& [name, spec] : specs) {
    SCOPED_TRACE(name);
    vlm::VisionLanguageModel m(spec);
    m.train_mode(false);
    {
      torch::NoGradGuard ng;
      torch::manual_seed(5);
      for (auto& [k, t] : m.trainable_state()) t.copy_(0.3 * torch::randn_like(t));  // every part matters
    }
    const bool text_ok = name == "lavin" || name == "llava";
    struct Q {
      std::string question, image;
      int64_t max_new;
      int join_at;
    };
    std::vector<Q> qs = {{"What colour?", w.dir.file("img0.png"), 8, 0}, {"Describe it.", w.dir.file("img1.png"), 3, 0},
                         {"Is it red?", w.dir.file("img2.png"), 6, 2},   {"What is it?", w.dir.file("img3.png"), 5, 3}};
    if (text_ok) qs.push_back({"Tell a story.", "", 7, 3});
    auto prompt = [&](const Q& q) {
      text::Conversation c;
      c.turns.push_back({"user", (q.image.empty() ? "" : std::string(text::kImageTag) + "\n") + q.question});
      return vlm::encode_query(m, {"t", c, q.image});
    };
    auto images = [](const Q& q) { return q.image.empty() ? std::vector<std::string>{} : std::vector<std::string>{q.image}; };
    generate::ContinuousBatch cb(m.lm());
    std::map<int64_t, size_t> row_of;
    std::vector<std::vector<int64_t>> got(qs.size());
    int64_t most = 0;
    for (int step = 0; step < 30; ++step) {
      std::vector<text::EncodedPrompt> ps;
      std::vector<std::vector<std::string>> ims;
      std::vector<generate::RowOptions> opts;
      std::vector<size_t> which;
      for (size_t i = 0; i < qs.size(); ++i)
        if (qs[i].join_at == step) {
          ps.push_back(prompt(qs[i])), ims.push_back(images(qs[i])), which.push_back(i);
          generate::RowOptions o;
          o.max_new_tokens = qs[i].max_new, o.stop_at_eos = false;
          opts.push_back(o);
        }
      if (!ps.empty()) {
        auto in = vlm::prepare_inputs(m, ps, ims);
        ASSERT_TRUE(cb.can_join(in.state)) << "step " << step;
        auto ids = cb.join(in.embeds, in.key_mask, &in.state, opts);
        for (size_t k = 0; k < ids.size(); ++k) row_of[ids[k]] = which[k];
      }
      if (cb.empty()) continue;
      most = std::max(most, cb.size());
      cb.step([&](int64_t id, int64_t tok) {
        got[row_of.at(id)].push_back(tok);
        return true;
      });
    }
    EXPECT_GE(most, 3);
    for (size_t i = 0; i < qs.size(); ++i) {
      auto in = vlm::prepare_inputs(m, {prompt(qs[i])}, {images(qs[i])});
      generate::GenerateOptions o;
      o.max_new_tokens = qs[i].max_new, o.stop_at_eos = false;
      auto alone = generate::Generator(m.lm()).generate_embeds(in.embeds, in.key_mask, o, {}, &in.state);
      EXPECT_EQ(got[i], alone.tokens[0]) << "request " << i;
    }
  }
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
  expect_error(c.Post("/v1/chat/completions", chat_body("llava", "hi", "data:image/png;base64," + b64(std::string("GIF89a\0\0\0\0-garbage", 16))).dump(),
                      "application/json"),
               400, "not a readable image");
  // A PNG whose header claims 20,000 x 20,000 pixels: refused from the header, before decoding.
  std::string bomb("\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR\x00\x00\x4e\x20\x00\x00\x4e\x20\x08\x02\x00\x00\x00\x00\x00\x00\x00", 33);
  expect_error(c.Post("/v1/chat/completions", chat_body("llava", "hi", "data:image/png;base64," + b64(bomb)).dump(), "application/json"), 413,
               "image of 20000 x 20000 pixels exceeds the limit of 89478485 pixels (refused before decoding)");
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

namespace {
// stdout of a shell command and its exit status.
std::pair<int, std::string> run_command(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {-1, ""};
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : 128, out};
}

// The npm packages scripts/setup.sh installs for the client tests, or a reason to skip.
std::string node_clients_missing(const std::string& package) {
  if (run_command("node --version >/dev/null 2>&1").first != 0) return "node is not installed (scripts/setup.sh installs nodejs)";
  const std::string dir = std::string(VADAPT_SOURCE_DIR) + "/tests/node/node_modules/" + package;
  if (!std::ifstream(dir + "/package.json")) return "the npm package '" + package + "' is not installed in tests/node (run scripts/setup.sh)";
  return "";
}

std::string artifacts_dir() {
  const char* e = std::getenv("VADAPT_TEST_ARTIFACTS");
  const std::string d = e && *e ? e : "test-artifacts";
  std::filesystem::create_directories(d);
  return d;
}
}  // namespace

// A client we did not write: the official openai npm package lists the models, chats with an
// image (data: URL) with and without streaming, and gets the server's 404 as its own error type.
TEST(Serve, OfficialOpenaiNpmClient) {
  if (auto why = node_clients_missing("openai"); !why.empty()) GTEST_SKIP() << why;
  Running s;
  World& w = s.w;
  vlm::VisionLanguageModel llava(w.spec("projector"));
  llava.train_mode(false);
  const std::string want = as_served(direct_answer(llava, "What colour?", w.dir.file("img1.png"), 6));
  const std::string cmd = "node " + std::string(VADAPT_SOURCE_DIR) + "/tests/node/openai_client.mjs http://127.0.0.1:" +
                          std::to_string(s.server->port()) + "/v1 llava " + w.dir.file("img1.png") + " 2>&1";
  auto [rc, out] = run_command(cmd);
  ASSERT_EQ(rc, 0) << out;
  auto j = json::parse(out);
  EXPECT_EQ(j["models"], json::array({"llava", "palm2"}));
  EXPECT_EQ(j["chat"], want);
  EXPECT_EQ(j["stream"], want);
  EXPECT_GE(j["chunks"].get<int>(), 2) << "a streamed answer arrives in chunks";
  EXPECT_GT(j["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(j["error_status"], 404);
  EXPECT_NE(j["error_message"].get<std::string>().find("no-such-model"), std::string::npos) << out;
}

// The chat page in headless Chromium (Debian's, driven by playwright-core): pick up the models,
// attach an image (thumbnail shown), ask, see the answer stream in; a screenshot is kept.
TEST(Serve, ChatPageInHeadlessChromium) {
  if (auto why = node_clients_missing("playwright-core"); !why.empty()) GTEST_SKIP() << why;
  if (!std::ifstream("/usr/bin/chromium")) GTEST_SKIP() << "Debian's chromium is not installed (scripts/setup.sh installs it)";
  Running s;
  World& w = s.w;
  const std::string shot = std::filesystem::absolute(artifacts_dir() + "/chat_page.png").string();
  std::filesystem::remove(shot);
  const std::string cmd = "node " + std::string(VADAPT_SOURCE_DIR) + "/tests/node/page_test.mjs http://127.0.0.1:" +
                          std::to_string(s.server->port()) + "/ " + w.dir.file("img1.png") + " " + shot + " 2>&1";
  auto [rc, out] = run_command(cmd);
  ASSERT_EQ(rc, 0) << out;
  auto j = json::parse(out.substr(out.rfind("\n{") == std::string::npos ? 0 : out.rfind("\n{") + 1));
  EXPECT_EQ(j["models"], json::array({"llava", "palm2"}));
  EXPECT_TRUE(j["thumbnail"].get<bool>());
  EXPECT_EQ(j["user_thumbnail"], 1);
  EXPECT_TRUE(j["preview_hidden_after_send"].get<bool>()) << "the attachment preview clears once sent";
  EXPECT_TRUE(j["answer_fits"].get<bool>()) << "long answers wrap inside the log";
  EXPECT_TRUE(j["pasted_image_attached"].get<bool>()) << "an image pasted on the page is attached";
  EXPECT_FALSE(j["answer"].get<std::string>().empty());
  EXPECT_GE(j["updates"].get<int>(), 2) << "the answer streams in: " << out;
  EXPECT_TRUE(j["errors_shown"].empty()) << out;
  EXPECT_TRUE(j["page_errors"].empty()) << out;
  EXPECT_TRUE(j["external_requests"].empty()) << "the page is self-contained: " << out;
  EXPECT_GT(std::filesystem::file_size(shot), 1000u) << "screenshot kept at " << shot;
}

namespace {
int64_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  int64_t pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * 4096;
}
int64_t metric(const std::string& text, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(text, m, std::regex("\n" + name + " ([0-9.e+]+)"))) return -1;
  return static_cast<int64_t>(std::stod(m[1]));
}
}  // namespace

// 64 clients at once, twice, against a queue of 32 and batches of 8: plain and streamed chats to
// both adapters with several sampling settings, clients that leave mid-stream, malformed bodies,
// bodies over the limit, images that are not images.
// Every answer is a 200 equal to the pipeline's (greedy ones), a 429 while the queue is full, or the
// 4xx it should be; nothing hangs, the queue drains, requests join running batches, and memory
// stays bounded (the second round grows the process by less than 64 MiB).
TEST(Serve, SixtyFourClientsTwiceWithBoundedMemory) {
  Running s("", {32, 8});
  World& w = s.w;
  vlm::VisionLanguageModel llava(w.spec("projector"));
  llava.train_mode(false);
  std::array<std::string, 4> want;
  for (int i = 0; i < 4; ++i) want[static_cast<size_t>(i)] = as_served(direct_answer(llava, "What colour?", w.dir.file("img" + std::to_string(i) + ".png"), 6));
  std::array<std::string, 4> urls;
  for (int i = 0; i < 4; ++i) urls[static_cast<size_t>(i)] = data_url(w.dir.file("img" + std::to_string(i) + ".png"));
  int64_t rss_after_first = 0;
  for (int round = 0; round < 2; ++round) {
    std::mutex mu;
    std::map<int, int> statuses;
    std::vector<std::string> wrong;
    std::vector<std::thread> clients;
    for (int i = 0; i < 64; ++i)
      clients.emplace_back([&, i] {
        auto cl = s.client();
        const int kind = i % 8;
        int status = 0;
        std::string problem;
        if (kind == 7) {  // malformed
          auto r = cl.Post("/v1/chat/completions", "{\"model\": \"llava\", \"messages\": [", "application/json");
          status = r ? r->status : -1;
          if (status != 400) problem = "malformed body: " + std::to_string(status) + (r ? "" : " (" + httplib::to_string(r.error()) + ")");
        } else if (kind == 5 && i % 16 == 5) {  // not an image
          auto r = cl.Post("/v1/chat/completions", chat_body("llava", "What colour?", "data:image/png;base64," + b64("not an image at all")).dump(),
                           "application/json");
          status = r ? r->status : -1;
          if (status != 400) problem = "bad image: " + std::to_string(status);
        } else if (kind == 5) {  // over the body limit (1 MiB)
          auto r = cl.Post("/v1/chat/completions", chat_body("llava", std::string(3 << 19, 'a'), "").dump(), "application/json");
          status = r ? r->status : -1;
          if (status != 413) problem = "oversized body: " + std::to_string(status);
        } else if (kind == 6) {  // leaves after the first event
          auto body = chat_body("llava", "What colour?", urls[static_cast<size_t>(i % 4)], true);
          body["max_tokens"] = 100;
          httplib::Request rq;
          rq.method = "POST", rq.path = "/v1/chat/completions", rq.body = body.dump();
          rq.set_header("Content-Type", "application/json");
          int chunks = 0;
          rq.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
          cl.send(rq);
          status = 499;
        } else {
          auto body = chat_body(kind % 2 ? "palm2" : "llava", "What colour?", urls[static_cast<size_t>(i % 4)], kind == 2);
          if (kind == 4) body["temperature"] = 0.9, body["seed"] = i, body["max_tokens"] = 3 + i % 5;
          auto r = cl.Post("/v1/chat/completions", body.dump(), "application/json");
          status = r ? r->status : -1;
          if (status == 200 && kind == 0) {
            const auto got = json::parse(r->body)["choices"][0]["message"]["content"].get<std::string>();
            if (got != want[static_cast<size_t>(i % 4)]) problem = "answer " + got + " != " + want[static_cast<size_t>(i % 4)];
          } else if (status == 200 && kind == 2) {
            if (r->body.find("data: [DONE]") == std::string::npos) problem = "stream without [DONE]";
          } else if (status != 200 && status != 429) {
            problem = "status " + std::to_string(status) + (r ? " " + r->body : " (" + httplib::to_string(r.error()) + ")");
          }
        }
        std::lock_guard<std::mutex> l(mu);
        ++statuses[status];
        if (!problem.empty()) wrong.push_back(std::to_string(i) + ": " + problem);
      });
    for (auto& t : clients) t.join();
    EXPECT_TRUE(wrong.empty()) << wrong.size() << " wrong, first: " << wrong[0];
    EXPECT_GE(statuses[200], 24) << "round " << round;
    EXPECT_EQ(statuses[400], 12);  // 8 malformed, 4 bad images
    EXPECT_EQ(statuses[413], 4);
    // The queue drains and the server still answers.
    auto c = s.client();
    std::string metrics;
    for (int k = 0; k < 100; ++k) {
      metrics = c.Get("/metrics")->body;
      if (metric(metrics, "vadapt_queue_depth") == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_EQ(metric(metrics, "vadapt_queue_depth"), 0) << metrics;
    EXPECT_GT(metric(metrics, "vadapt_decode_rows_total"), metric(metrics, "vadapt_decode_steps_total")) << "requests shared decode steps";
    EXPECT_EQ(c.Get("/health")->status, 200);
    if (round == 0) rss_after_first = rss_bytes();
  }
  EXPECT_LT(rss_bytes() - rss_after_first, int64_t{64} << 20) << "the second round of 64 clients grew the process";
}

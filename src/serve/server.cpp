// HTTP routes of `vadapt serve` on cpp-httplib.
#include "serve/server.h"

#include <httplib.h>
#include <sys/socket.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>

#include "common/error.h"
#include "common/log.h"
#include "serve/web_page.h"

namespace vadapt::serve {
using nlohmann::json;

namespace {
void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  res.set_content(dump(e.body()), "application/json");
}

int64_t unix_time() { return static_cast<int64_t>(std::time(nullptr)); }

std::string new_id(bool chat) {
  static std::atomic<uint64_t> n{0};
  return cat(chat ? "chatcmpl-" : "cmpl-", unix_time(), "-", ++n);
}
}  // namespace

Server::Server(Engine& engine, ServerOptions o) : engine_(engine), o_(std::move(o)), http_(std::make_unique<httplib::Server>()) {
  auto& s = *http_;
  // Debian's cpp-httplib is a compiled library whose listen() uses an accept backlog of 5
  // (CPPHTTPLIB_LISTEN_BACKLOG in our translation unit does not reach it): with dozens of
  // clients connecting at once the accept queue overflows and connections are dropped before a
  // request is read (httplib's client then reports "Read"; Serve.SixtyFourClientsTwiceWithBoundedMemory
  // under load). The listening socket is noted here and its backlog raised after bind.
  s.set_socket_options([this](socket_t sock) {
    httplib::default_socket_options(sock);
    listen_fd_ = sock;
  });
  s.set_payload_max_length(o_.max_body_bytes);
  s.set_read_timeout(30, 0);
  s.set_write_timeout(30, 0);
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (o_.api_key.empty() || req.path == "/health" || (req.path == "/" && req.method == "GET")) return httplib::Server::HandlerResponse::Unhandled;
    if (req.get_header_value("Authorization") != "Bearer " + o_.api_key) {
      send_error(res, ApiError(401, "missing or wrong API key (send Authorization: Bearer KEY)", "", "authentication_error", "invalid_api_key"));
      engine_.count_request(401);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  s.set_error_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 413)
      send_error(res, ApiError(413, cat("the request body exceeds ", o_.max_body_bytes, " bytes"), "", "invalid_request_error", "payload_too_large"));
    else if (res.status == 404)
      send_error(res, ApiError(404, cat("no route ", req.method, " ", req.path), "", "invalid_request_error", "not_found"));
    else
      send_error(res, ApiError(res.status, cat("HTTP error ", res.status)));
    engine_.count_request(res.status);
  });
  s.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    try {
      std::rethrow_exception(ep);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, e.what(), "", "server_error"));
    } catch (...) {
      send_error(res, ApiError(500, "unknown error", "", "server_error"));
    }
    engine_.count_request(res.status);
  });
  s.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(json{{"status", "ok"}, {"models", engine_.model_names()}}.dump(), "application/json");
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(engine_.metrics_text(), "text/plain; version=0.0.4");
  });
  s.Get("/v1/models", [this](const httplib::Request&, httplib::Response& res) {
    json data = json::array();
    for (const auto& n : engine_.model_names()) {
      const auto& m = engine_.model(n);
      data.push_back({{"id", n}, {"object", "model"}, {"created", 0}, {"owned_by", "vadapt"}, {"method", m.spec().method},
                      {"template", m.spec().template_name}, {"vision", m.has_vision()}});
    }
    res.set_content(json{{"object", "list"}, {"data", data}}.dump(), "application/json");
    engine_.count_request(200);
  });
  s.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(web_page(), "text/html; charset=utf-8"); });
  auto complete = [this](bool chat) {
    return [this, chat](const httplib::Request& req, httplib::Response& res) {
      Request r;
      std::shared_ptr<Job> job;
      try {
        const auto names = engine_.model_names();
        r = parse_request(req.body, chat, o_.limits, names.size() == 1 ? names[0] : "");
        if (r.model.empty()) throw ApiError(400, "model: required when the server has several models", "model");
        job = engine_.submit(r);
      } catch (const ApiError& e) {
        send_error(res, e);
        engine_.count_request(e.status);
        return;
      }
      const std::string id = new_id(chat);
      const int64_t created = unix_time();
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(o_.request_timeout_s);
      const int64_t prompt_tokens = static_cast<int64_t>(job->prompt.ids.size());
      if (!job->req.stream) {
        std::unique_lock<std::mutex> l(job->mu);
        if (!job->cv.wait_until(l, deadline, [&] { return job->done; })) {
          job->cancelled = true;
          l.unlock();
          send_error(res, ApiError(504, cat("generation did not finish within ", o_.request_timeout_s, " s"), "", "timeout"));
          engine_.count_request(504);
          return;
        }
        if (!job->error.empty()) {
          send_error(res, ApiError(500, job->error, "", "server_error"));
          engine_.count_request(500);
          return;
        }
        res.set_content(dump(completion_json(job->req, id, created, job->text, job->finish_reason, prompt_tokens, job->completion_tokens)),
                        "application/json");
        engine_.count_request(200);
        return;
      }
      engine_.count_request(200);
      res.set_header("Cache-Control", "no-cache");
      auto first = std::make_shared<bool>(true);
      res.set_chunked_content_provider(
          "text/event-stream",
          [job, id, created, first, deadline](size_t, httplib::DataSink& sink) {
            auto send = [&](const std::string& s) {
              if (!sink.is_writable() || !sink.write(s.data(), s.size())) {
                job->cancelled = true;  // the client is gone: free its row
                return false;
              }
              return true;
            };
            if (*first) {
              *first = false;
              if (!send(stream_chunk(job->req, id, created, "", true, ""))) return false;
            }
            std::unique_lock<std::mutex> l(job->mu);
            while (!job->done && job->pending.empty()) {
              if (job->cv.wait_until(l, deadline) == std::cv_status::timeout) {
                job->cancelled = true;
                l.unlock();
                send("data: " + dump(ApiError(504, "generation timed out", "", "timeout").body()) + "\n\n");
                sink.done();
                return true;
              }
              if (!sink.is_writable()) {
                job->cancelled = true;
                return false;
              }
            }
            std::string piece = job->take_pending();
            const bool done = job->done;
            const std::string err = job->error, finish = job->finish_reason;
            l.unlock();
            if (!piece.empty() && !send(stream_chunk(job->req, id, created, piece, false, ""))) return false;
            if (done) {
              if (!err.empty()) send("data: " + dump(ApiError(500, err, "", "server_error").body()) + "\n\n");
              else send(stream_chunk(job->req, id, created, "", false, finish.empty() ? "stop" : finish));
              send("data: [DONE]\n\n");
              sink.done();
            }
            return true;
          },
          [job](bool) { job->cancelled = true; });
    };
  };
  s.Post("/v1/chat/completions", complete(true));
  s.Post("/v1/completions", complete(false));
}

Server::~Server() { stop(); }

void Server::bind() {
  if (o_.port == 0) {
    port_ = http_->bind_to_any_port(o_.host);
    if (port_ <= 0) throw VadaptError(cat("serve: cannot bind ", o_.host, " (any port)"));
  } else {
    if (!http_->bind_to_port(o_.host, o_.port)) throw VadaptError(cat("serve: cannot bind ", o_.host, ":", o_.port, " (in use, or not allowed)"));
    port_ = o_.port;
  }
  // listen() again on a listening socket sets its backlog (capped by net.core.somaxconn).
  if (listen_fd_ >= 0 && ::listen(listen_fd_, 1024) != 0) log_warn(cat("serve: cannot raise the accept backlog: ", std::strerror(errno)));
}

void Server::listen() { http_->listen_after_bind(); }

void Server::stop() {
  if (http_) http_->stop();
}

}  // namespace vadapt::serve

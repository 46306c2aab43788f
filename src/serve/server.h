// `vadapt serve`: the HTTP front of the engine (cpp-httplib from Debian): OpenAI's
// /v1/chat/completions (streaming as server-sent events), /v1/completions, /v1/models, /health,
// /metrics (Prometheus text). Every error is OpenAI's JSON error with a 4xx / 5xx status; an
// API key, when given, is required as "Authorization: Bearer KEY".
#pragma once

#include <memory>
#include <string>

#include "serve/api.h"
#include "serve/engine.h"

namespace httplib {
class Server;
}

namespace vadapt::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0: any free port (see Server::port)
  std::string api_key;
  size_t max_body_bytes = 32u << 20;
  double request_timeout_s = 600;
  Limits limits;
};

class Server {
 public:
  Server(Engine& engine, ServerOptions o);
  ~Server();
  // Binds (throws VadaptError naming host:port when it cannot); then listen() blocks until stop().
  void bind();
  int port() const { return port_; }
  void listen();
  void stop();

 private:
  Engine& engine_;
  ServerOptions o_;
  std::unique_ptr<httplib::Server> http_;
  int port_ = 0;
  int listen_fd_ = -1;  // the listening socket (its accept backlog is raised after bind)
};

}  // namespace vadapt::serve

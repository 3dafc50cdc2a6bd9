// The OpenAI-compatible HTTP server of `bik serve`.
//
// Threads: HTTP worker threads parse and validate a request (src/engine/openai_api.h), tokenise it and
// hand it to the engine thread through a queue. The engine thread alone owns the LLMEngine: it admits
// queued requests, runs step() while anything is unfinished, and routes each StepOutput to the request's
// channel (a mutex + condition variable + event queue). The worker of a request waits on its channel and
// writes the whole response, or one SSE chunk per token when streaming.
//
// Cancellation: a choice that a stop string ended, or whose streaming client went away, is flagged
// cancelled by its HTTP worker (an atomic in the request's channel; workers never touch the engine).
// Before each step the engine thread drops the outputs of flagged choices and calls LLMEngine::abort on
// their sequences, which frees their KV blocks and batch rows at once (finish reason "abort", counted in
// bik_requests_aborted_total). A non-streaming client that disconnects is not noticed (cpp-httplib 0.11
// has no way to ask whether the connection is still open): its sequences run to their end.
//
// Routes: POST /v1/completions, POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics
// (Prometheus text). Anything else: 404 in OpenAI's error shape.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "engine/engine.h"
#include "engine/openai_api.h"

namespace bik::engine {

class ModelRunner;
class Tokenizer;

struct ServerConfig {
  std::string host = "127.0.0.1";  // loopback unless asked otherwise
  int port = 8000;                 // 0: an ephemeral port (see Server::port())
  int http_threads = 128;          // connections served at once (each in-flight request holds one)
  std::string model_name = "bik";  // the "model" of responses; requests naming another one get 404
  uint64_t default_seed = 0;       // requests without "seed" use it (sampling stays reproducible)
  api::Limits limits;              // max_model_len and vocab are filled from the engine
};

class Server {
 public:
  // `tok` may be null (dummy weights): prompts are then bytes (or token ids) and text is " <id>" per token.
  // The model and tokenizer must outlive the server.
  Server(const ModelRunner& model, const Tokenizer* tok, const EngineConfig& engine_config, const ServerConfig& cfg);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds (throws naming host:port when it cannot) and serves on background threads; returns the port.
  int start();
  // Blocks until stop() is called (from a signal handler's thread or another thread).
  void wait();
  // Stops accepting, fails what is in flight with 503, joins every thread. Idempotent.
  void stop();
  int port() const;
  const api::Limits& limits() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace bik::engine

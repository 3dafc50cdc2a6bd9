// The OpenAI-compatible server: request validation (each bad field -> 400 naming it), the text assembly of
// choices (stop strings held back across tokens), and end to end on an in-process server with a tiny
// seeded model on an ephemeral port: streaming equals non-streaming, n, stop, max_tokens, logprobs, seeds,
// length limits, /health, /metrics, 404s, a streaming client that disconnects, and the engine-side abort
// of choices a stop string ended or whose client went away.
#include <gtest/gtest.h>
#include <httplib.h>

#include <chrono>
#include <memory>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine_fixtures.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/openai_api.h"
#include "engine/server.h"

namespace bik::engine {
namespace {

using nlohmann::json;

// ---- parsing and validation ----------------------------------------------------------------------------

api::Limits test_limits() {
  api::Limits l;
  l.max_body_bytes = 4096;
  l.max_tokens = 256;
  l.max_n = 4;
  l.max_logprobs = 5;
  l.max_stop = 3;
  l.max_model_len = 100;
  l.vocab = 512;
  return l;
}

// The error a body gets: (status, param, message).
std::tuple<int, std::string, std::string> error_of(const std::string& body, bool chat = false) {
  try {
    if (chat)
      api::parse_chat_request(body, test_limits());
    else
      api::parse_completion_request(body, test_limits());
  } catch (const api::ApiError& e) {
    return {e.status, e.param, e.what()};
  }
  return {200, "", ""};
}

TEST(ServerApi, ParsesACompletionRequest) {
  const auto r = api::parse_completion_request(
      R"({"model":"m","prompt":"hi","max_tokens":7,"temperature":0.5,"top_p":0.9,"top_k":-1,"min_p":0.1,"n":2,
          "seed":9,"stop":["x","y"],"stop_token_ids":[3],"logprobs":2,"stream":true,
          "stream_options":{"include_usage":true},"ignore_eos":true,"user":"ignored"})",
      test_limits());
  EXPECT_EQ(r.model, "m");
  EXPECT_EQ(r.prompt, "hi");
  EXPECT_EQ(*r.max_tokens, 7);
  EXPECT_FLOAT_EQ(r.temperature, 0.5f);
  EXPECT_EQ(r.top_k, 0);
  EXPECT_EQ(r.n, 2);
  EXPECT_EQ(*r.seed, 9u);
  EXPECT_EQ(r.stop.size(), 2u);
  EXPECT_EQ(r.stop_token_ids, std::vector<int32_t>{3});
  EXPECT_EQ(*r.logprobs, 2);
  EXPECT_TRUE(r.stream && r.include_usage && r.ignore_eos);

  const auto ids = api::parse_completion_request(R"({"prompt":[5,6,7]})", test_limits());
  EXPECT_TRUE(ids.prompt_is_ids);
  EXPECT_EQ(ids.prompt_ids, (std::vector<int32_t>{5, 6, 7}));
  EXPECT_FALSE(ids.logprobs.has_value());

  const auto chat = api::parse_chat_request(
      R"({"messages":[{"role":"developer","content":"be brief"},{"role":"user","content":[{"type":"text","text":"a"},
          {"type":"text","text":"b"}]}],"logprobs":true,"top_logprobs":3,"max_completion_tokens":5})",
      test_limits());
  ASSERT_EQ(chat.messages.size(), 2u);
  EXPECT_EQ(chat.messages[0].role, "system");
  EXPECT_EQ(chat.messages[1].content, "ab");
  EXPECT_EQ(*chat.logprobs, 3);
  EXPECT_EQ(*chat.max_tokens, 5);
}

TEST(ServerApi, EachBadFieldIsA400NamingIt) {
  const std::vector<std::pair<std::string, std::string>> completions = {
      {R"({"max_tokens":5})", "prompt"},
      {R"({"prompt":5})", "prompt"},
      {R"({"prompt":""})", "prompt"},
      {R"({"prompt":[-1]})", "prompt"},
      {R"({"prompt":[512]})", "prompt"},
      {R"({"prompt":["a","b"]})", "prompt"},
      {R"({"prompt":"x","model":5})", "model"},
      {R"({"prompt":"x","temperature":-1})", "temperature"},
      {R"({"prompt":"x","temperature":"hot"})", "temperature"},
      {R"({"prompt":"x","top_p":0})", "top_p"},
      {R"({"prompt":"x","top_p":1.5})", "top_p"},
      {R"({"prompt":"x","top_k":-2})", "top_k"},
      {R"({"prompt":"x","top_k":1.5})", "top_k"},
      {R"({"prompt":"x","min_p":2})", "min_p"},
      {R"({"prompt":"x","n":0})", "n"},
      {R"({"prompt":"x","n":5})", "n"},
      {R"({"prompt":"x","max_tokens":0})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":257})", "max_tokens"},
      {R"({"prompt":"x","max_tokens":"many"})", "max_tokens"},
      {R"({"prompt":"x","logprobs":6})", "logprobs"},
      {R"({"prompt":"x","logprobs":true})", "logprobs"},
      {R"({"prompt":"x","seed":"s"})", "seed"},
      {R"({"prompt":"x","stop":5})", "stop"},
      {R"({"prompt":"x","stop":[""]})", "stop"},
      {R"({"prompt":"x","stop":["a","b","c","d"]})", "stop"},
      {R"({"prompt":"x","stop_token_ids":[512]})", "stop_token_ids"},
      {R"({"prompt":"x","stop_token_ids":"1"})", "stop_token_ids"},
      {R"({"prompt":"x","stream":"yes"})", "stream"},
      {R"({"prompt":"x","stream_options":{"include_usage":true}})", "stream_options"},
      {R"({"prompt":"x","echo":true})", "echo"},
      {R"({"prompt":"x","presence_penalty":0.5})", "presence_penalty"},
      {R"({"prompt":"x","best_of":3})", "best_of"},
      {R"({"prompt":"x","logit_bias":{"1":5}})", "logit_bias"},
  };
  for (const auto& [body, param] : completions) {
    const auto [status, p, msg] = error_of(body);
    EXPECT_EQ(status, 400) << body;
    EXPECT_EQ(p, param) << body;
    EXPECT_NE(msg.find(param), std::string::npos) << body << " -> " << msg;
  }
  const std::vector<std::pair<std::string, std::string>> chat = {
      {R"({"max_tokens":5})", "messages"},
      {R"({"messages":[]})", "messages"},
      {R"({"messages":[5]})", "messages[0]"},
      {R"({"messages":[{"content":"x"}]})", "messages[0].role"},
      {R"({"messages":[{"role":"user","content":"x"},{"role":"robot","content":"x"}]})", "messages[1].role"},
      {R"({"messages":[{"role":"user","content":5}]})", "messages[0].content"},
      {R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", "messages[0].content"},
      {R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":2})", "top_logprobs"},
      {R"({"messages":[{"role":"user","content":"x"}],"logprobs":true,"top_logprobs":9})", "top_logprobs"},
      {R"({"messages":[{"role":"user","content":"x"}],"logprobs":2})", "logprobs"},
      {R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":0})", "max_completion_tokens"},
      {R"({"messages":[{"role":"user","content":"x"}],"tools":[{"type":"function"}]})", "tools"},
  };
  for (const auto& [body, param] : chat) {
    const auto [status, p, msg] = error_of(body, true);
    EXPECT_EQ(status, 400) << body;
    EXPECT_EQ(p, param) << body;
    EXPECT_NE(msg.find(param), std::string::npos) << body << " -> " << msg;
  }
}

TEST(ServerApi, MalformedAndOversizeBodies) {
  for (const char* body : {"{\"prompt\": ", "not json", "", "[1,2]", "\"text\""}) {
    const auto [status, p, msg] = error_of(body);
    EXPECT_EQ(status, 400) << body;
    EXPECT_TRUE(msg.find("JSON") != std::string::npos) << msg;
  }
  const auto [status, p, msg] = error_of(R"({"prompt":")" + std::string(5000, 'a') + "\"}");
  EXPECT_EQ(status, 413);
  EXPECT_NE(msg.find("4096"), std::string::npos) << msg;

  const json e = api::error_body(400, "bad 'n'", "n");
  EXPECT_EQ(e["error"]["message"], "bad 'n'");
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_EQ(e["error"]["param"], "n");
  EXPECT_TRUE(api::error_body(404, "x")["error"]["param"].is_null());
}

TEST(ServerApi, LengthLimitsNameTheField) {
  const api::Limits l = test_limits();  // max_model_len 100, max_tokens 256
  auto req = api::parse_completion_request(R"({"prompt":"x","max_tokens":50})", l);
  EXPECT_EQ(api::resolve_max_tokens(req, 50, l), 50);
  try {
    api::resolve_max_tokens(req, 51, l);
    ADD_FAILURE() << "no error";
  } catch (const api::ApiError& e) {
    EXPECT_EQ(e.param, "max_tokens");
    EXPECT_NE(std::string(e.what()).find("at most 49"), std::string::npos) << e.what();
  }
  try {
    api::resolve_max_tokens(req, 100, l);
    ADD_FAILURE() << "no error";
  } catch (const api::ApiError& e) {
    EXPECT_EQ(e.param, "prompt");
  }
  req.max_tokens.reset();
  EXPECT_EQ(api::resolve_max_tokens(req, 10, l), 16);  // OpenAI's completions default
  EXPECT_EQ(api::resolve_max_tokens(req, 90, l), 10);
  auto chat = api::parse_chat_request(R"({"messages":[{"role":"user","content":"x"}]})", l);
  EXPECT_EQ(api::resolve_max_tokens(chat, 30, l), 70);  // what fits
  try {
    api::resolve_max_tokens(chat, 100, l);
    ADD_FAILURE() << "no error";
  } catch (const api::ApiError& e) {
    EXPECT_EQ(e.param, "messages");
  }
}

TEST(ServerApi, RequestParamsPerChoice) {
  auto r = api::parse_completion_request(R"({"prompt":"x","seed":10,"stop_token_ids":[7],"logprobs":2})", test_limits());
  const RequestParams p0 = api::request_params(r, 0, 5, 0, {1, 7});
  const RequestParams p2 = api::request_params(r, 2, 5, 0, {1, 7});
  EXPECT_EQ(p0.seed, 10u);
  EXPECT_EQ(p2.seed, 12u);
  EXPECT_EQ(p0.stop_ids, (std::vector<int32_t>{7, 1}));
  EXPECT_EQ(p0.top_logprobs, 2);
  r.ignore_eos = true;
  EXPECT_EQ(api::request_params(r, 0, 5, 0, {1}).stop_ids, std::vector<int32_t>{7});
  r.seed.reset();
  EXPECT_EQ(api::request_params(r, 1, 5, 100, {}).seed, 101u);
}

TEST(ServerApi, ChoiceTextHoldsBackAndCutsStopStrings) {
  // No tokenizer: token k is the text " k".
  api::ChoiceText plain(nullptr, {});
  EXPECT_EQ(plain.push(12), " 12");
  EXPECT_EQ(plain.push(3), " 3");
  EXPECT_EQ(plain.finish(), "");
  EXPECT_EQ(plain.text(), " 12 3");

  // " 4 5" spans two tokens: " 4" is held back, then the stop cuts it.
  api::ChoiceText t(nullptr, {" 4 5", "zz"});
  std::string streamed;
  streamed += t.push(1);
  streamed += t.push(4);
  EXPECT_EQ(streamed, " 1");
  streamed += t.push(5);
  EXPECT_TRUE(t.stopped());
  EXPECT_EQ(t.push(6), "");
  EXPECT_EQ(streamed, " 1");
  EXPECT_EQ(t.text(), " 1");

  // A held-back prefix that does not complete is released.
  api::ChoiceText u(nullptr, {" 4 5"});
  std::string s = u.push(4);
  EXPECT_EQ(s, "");
  s += u.push(6);
  EXPECT_EQ(s, " 4 6");
  s += u.push(4);
  s += u.finish();
  EXPECT_EQ(s, " 4 6 4");
  EXPECT_FALSE(u.stopped());
}

// ---- end to end on an in-process server -----------------------------------------------------------------

ModelConfig tiny_config(int64_t hidden, int64_t vocab) { return test_fixtures::tiny_model_config(hidden, vocab, 256); }

struct TinyServer {
  ModelConfig config = tiny_config(64, 512);
  Weights weights = Weights::dummy(config, 11);
  LlamaModel model{config, weights, Device::cpu(), true};
  std::unique_ptr<Server> server;
  int port = 0;
  TinyServer() {
    EngineConfig ec;
    ec.num_blocks = 64;  // 1024 token slots
    ec.max_num_batched_tokens = 64;
    ServerConfig sc;
    sc.port = 0;
    sc.http_threads = 16;
    sc.model_name = "tiny";
    sc.limits.max_body_bytes = 8192;
    server = std::make_unique<Server>(model, nullptr, ec, sc);
    port = server->start();
  }
};

TinyServer& tiny_server() {
  static TinyServer s;
  return s;
}

httplib::Client client() {
  httplib::Client c("127.0.0.1", tiny_server().port);
  c.set_read_timeout(60);
  return c;
}

json post(const std::string& path, const json& body, int want_status = 200) {
  auto c = client();
  auto res = c.Post(path, body.dump(), "application/json");
  EXPECT_TRUE(res) << "no answer";
  if (!res) return json();
  EXPECT_EQ(res->status, want_status) << res->body;
  return json::parse(res->body);
}

// The data events of an SSE body, [DONE] excluded (and required last).
std::vector<json> sse_events(const std::string& body) {
  std::vector<json> out;
  size_t pos = 0;
  bool done = false;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    if (end == std::string::npos) end = body.size();
    const std::string ev = body.substr(pos, end - pos);
    pos = end + 2;
    if (ev.rfind("data: ", 0) != 0) continue;
    const std::string data = ev.substr(6);
    EXPECT_FALSE(done) << "event after [DONE]";
    if (data == "[DONE]") {
      done = true;
      continue;
    }
    out.push_back(json::parse(data));
  }
  EXPECT_TRUE(done) << "no [DONE]";
  return out;
}

std::vector<json> post_stream(const std::string& path, json body) {
  body["stream"] = true;
  auto c = client();
  auto res = c.Post(path, body.dump(), "application/json");
  EXPECT_TRUE(res);
  if (!res) return {};
  EXPECT_EQ(res->status, 200) << res->body;
  EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  return sse_events(res->body);
}

TEST(Server, CompletionStreamingEqualsNonStreaming) {
  const json req = {{"prompt", "the quick brown fox"}, {"max_tokens", 12}, {"temperature", 0.9}, {"seed", 4},
                    {"logprobs", 2}, {"return_token_ids", true}, {"ignore_eos", true}};
  const json full = post("/v1/completions", req);
  ASSERT_EQ(full["choices"].size(), 1u);
  const json& c = full["choices"][0];
  EXPECT_EQ(full["object"], "text_completion");
  EXPECT_EQ(full["model"], "tiny");
  EXPECT_EQ(c["finish_reason"], "length");
  EXPECT_EQ(c["token_ids"].size(), 12u);
  EXPECT_EQ(c["logprobs"]["tokens"].size(), 12u);
  EXPECT_EQ(full["usage"]["completion_tokens"], 12);
  EXPECT_EQ(full["usage"]["prompt_tokens"], 19);

  const auto events = post_stream("/v1/completions", req);
  std::string text;
  json ids = json::array(), lps = json::array(), tops = json::array(), offsets = json::array();
  std::string finish;
  for (const json& e : events) {
    ASSERT_EQ(e["choices"].size(), 1u);
    const json& ch = e["choices"][0];
    text += ch["text"].get<std::string>();
    for (const auto& id : ch["token_ids"]) ids.push_back(id);
    if (ch["logprobs"].is_object()) {
      for (const auto& v : ch["logprobs"]["token_logprobs"]) lps.push_back(v);
      for (const auto& v : ch["logprobs"]["top_logprobs"]) tops.push_back(v);
      for (const auto& v : ch["logprobs"]["text_offset"]) offsets.push_back(v);
    }
    if (ch["finish_reason"].is_string()) finish = ch["finish_reason"];
  }
  EXPECT_EQ(text, c["text"].get<std::string>());
  EXPECT_EQ(ids, c["token_ids"]);
  EXPECT_EQ(lps.dump(), c["logprobs"]["token_logprobs"].dump());  // same text: same bits
  EXPECT_EQ(tops.dump(), c["logprobs"]["top_logprobs"].dump());
  EXPECT_EQ(offsets, c["logprobs"]["text_offset"]);
  EXPECT_EQ(finish, "length");
}

TEST(Server, ChatStreamingEqualsNonStreaming) {
  const json req = {{"messages", {{{"role", "system"}, {"content", "terse"}}, {{"role", "user"}, {"content", "hi"}}}},
                    {"max_tokens", 8}, {"temperature", 0}, {"logprobs", true}, {"top_logprobs", 3},
                    {"ignore_eos", true}};
  const json full = post("/v1/chat/completions", req);
  EXPECT_EQ(full["object"], "chat.completion");
  const json& msg = full["choices"][0]["message"];
  EXPECT_EQ(msg["role"], "assistant");
  const json& content = full["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 8u);
  EXPECT_EQ(content[0]["top_logprobs"].size(), 3u);

  const auto events = post_stream("/v1/chat/completions", req);
  std::string text;
  json lps = json::array();
  bool saw_role = false;
  for (const json& e : events) {
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    const json& d = e["choices"][0]["delta"];
    if (d.contains("role")) saw_role = true;
    if (d.contains("content")) text += d["content"].get<std::string>();
    if (e["choices"][0]["logprobs"].is_object())
      for (const auto& v : e["choices"][0]["logprobs"]["content"]) lps.push_back(v);
  }
  EXPECT_TRUE(saw_role);
  EXPECT_EQ(text, msg["content"].get<std::string>());
  EXPECT_EQ(lps.dump(), content.dump());
}

TEST(Server, NChoicesAndSeedReproducibility) {
  const json req = {{"prompt", "abc"}, {"max_tokens", 10}, {"temperature", 1.0}, {"n", 3}, {"seed", 77},
                    {"return_token_ids", true}};
  const json a = post("/v1/completions", req);
  const json b = post("/v1/completions", req);
  ASSERT_EQ(a["choices"].size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(a["choices"][i]["index"], i);
    EXPECT_EQ(a["choices"][i]["token_ids"], b["choices"][i]["token_ids"]);
  }
  EXPECT_NE(a["choices"][0]["token_ids"], a["choices"][1]["token_ids"]);  // seeds 77 and 78
  // Choice 1 of seed 77 is choice 0 of seed 78.
  json one = req;
  one["n"] = 1;
  one["seed"] = 78;
  EXPECT_EQ(post("/v1/completions", one)["choices"][0]["token_ids"], a["choices"][1]["token_ids"]);
  // Streaming n > 1 carries every choice.
  const auto events = post_stream("/v1/completions", req);
  std::vector<json> ids(3, json::array());
  for (const json& e : events)
    for (const auto& id : e["choices"][0]["token_ids"]) ids[e["choices"][0]["index"].get<size_t>()].push_back(id);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(ids[size_t(i)], a["choices"][i]["token_ids"]);
}

TEST(Server, StopIdsStopStringsAndMaxTokens) {
  const json base = {{"prompt", "stop test"}, {"max_tokens", 12}, {"temperature", 0}, {"return_token_ids", true},
                     {"ignore_eos", true}};
  const json full = post("/v1/completions", base)["choices"][0];
  ASSERT_EQ(full["token_ids"].size(), 12u);
  // Stop at a token id: the first occurrence of the 4th token ends the choice, the token is kept.
  const int stop_id = full["token_ids"][3];
  size_t first = 0;
  while (full["token_ids"][first] != stop_id) ++first;
  json r = base;
  r["stop_token_ids"] = {stop_id};
  const json by_id = post("/v1/completions", r)["choices"][0];
  EXPECT_EQ(by_id["finish_reason"], "stop");
  EXPECT_EQ(by_id["token_ids"].size(), first + 1);
  // Stop at a string spanning two tokens: text cut before it.
  const std::string text = full["text"];
  const std::string t2 = " " + full["token_ids"][2].dump(), t3 = " " + full["token_ids"][3].dump();
  const std::string stop = t2.substr(1) + t3;  // "<id2> <id3>", starts inside token 2
  r = base;
  r["stop"] = {stop};
  const json by_str = post("/v1/completions", r)["choices"][0];
  EXPECT_EQ(by_str["finish_reason"], "stop");
  EXPECT_EQ(by_str["text"], text.substr(0, text.find(stop)));
  // The same through the stream.
  std::string streamed;
  for (const json& e : post_stream("/v1/completions", r)) streamed += e["choices"][0]["text"].get<std::string>();
  EXPECT_EQ(streamed, by_str["text"].get<std::string>());
  // max_tokens.
  r = base;
  r["max_tokens"] = 3;
  const json short_one = post("/v1/completions", r)["choices"][0];
  EXPECT_EQ(short_one["finish_reason"], "length");
  EXPECT_EQ(short_one["token_ids"], json(std::vector<int>(full["token_ids"].begin(), full["token_ids"].begin() + 3)));
}

TEST(Server, LogprobsAreConsistent) {
  const json r = post("/v1/completions", {{"prompt", {5, 6, 7, 8}}, {"max_tokens", 6}, {"temperature", 0}, {"logprobs", 4},
                                           {"ignore_eos", true}});
  const json& lp = r["choices"][0]["logprobs"];
  ASSERT_EQ(lp["tokens"].size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    const json& top = lp["top_logprobs"][i];
    ASSERT_EQ(top.size(), 4u);
    // Greedy: the chosen token is the most likely one, and its logprob is the top entry.
    double best = -1e30;
    for (auto it = top.begin(); it != top.end(); ++it) best = std::max(best, it.value().get<double>());
    EXPECT_EQ(lp["token_logprobs"][i].get<double>(), best);
    EXPECT_TRUE(top.contains(lp["tokens"][i].get<std::string>()));
    EXPECT_LE(best, 0.0);
  }
  EXPECT_EQ(r["usage"]["prompt_tokens"], 4);
}

TEST(Server, LimitsAndErrorsOverHttp) {
  auto c = client();
  // Prompt longer than max_model_len (256): bytes are tokens without a tokenizer.
  const json too_long = post("/v1/completions", {{"prompt", std::string(300, 'a')}}, 400);
  EXPECT_EQ(too_long["error"]["param"], "prompt");
  const json too_many = post("/v1/completions", {{"prompt", std::string(200, 'a')}, {"max_tokens", 100}}, 400);
  EXPECT_EQ(too_many["error"]["param"], "max_tokens");
  EXPECT_EQ(post("/v1/completions", {{"prompt", "x"}, {"n", 99}}, 400)["error"]["param"], "n");
  EXPECT_EQ(post("/v1/completions", {{"prompt", "x"}, {"model", "gpt-4"}}, 404)["error"]["param"], "model");
  // Malformed JSON.
  auto res = c.Post("/v1/chat/completions", "{\"messages\": [", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_NE(json::parse(res->body)["error"]["message"].get<std::string>().find("malformed JSON"), std::string::npos);
  // Oversize body (limit 8192).
  res = c.Post("/v1/completions", "{\"prompt\":\"" + std::string(10000, 'a') + "\"}", "application/json");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_TRUE(json::parse(res->body)["error"].contains("message"));
  // Unknown route, in OpenAI's error shape.
  res = c.Get("/v1/nothing");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  const json e = json::parse(res->body)["error"];
  EXPECT_TRUE(e.contains("message") && e.contains("type") && e.contains("param"));
}

TEST(Server, HealthModelsAndMetrics) {
  auto c = client();
  auto res = c.Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = c.Get("/v1/models");
  ASSERT_TRUE(res);
  EXPECT_EQ(json::parse(res->body)["data"][0]["id"], "tiny");
  post("/v1/completions", {{"prompt", "metrics"}, {"max_tokens", 2}});
  // Answers the server writes itself (an oversize body, an unknown route) are counted too.
  ASSERT_EQ(c.Post("/v1/completions", "{\"prompt\":\"" + std::string(10000, 'a') + "\"}", "application/json")->status,
            413);
  ASSERT_EQ(c.Get("/v1/nothing/here")->status, 404);
  res = c.Get("/metrics");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  for (const char* want : {"bik_requests_total{route=\"/v1/completions\",status=\"200\"}",
                           "bik_requests_total{route=\"/v1/completions\",status=\"413\"} ",
                           "bik_requests_total{route=\"other\",status=\"404\"} ", "bik_prompt_tokens_total ",
                           "bik_generation_tokens_total ", "bik_requests_running ", "bik_requests_waiting ",
                           "bik_engine_step_seconds_count ", "bik_engine_step_seconds_bucket{le=\"+Inf\"}",
                           "# TYPE bik_engine_step_seconds histogram"})
    EXPECT_NE(res->body.find(want), std::string::npos) << want << "\n" << res->body;
  // The request was answered in full before /metrics was read: nothing of it is still counted as in flight.
  EXPECT_NE(res->body.find("\nbik_requests_running 0\n"), std::string::npos) << res->body;
  EXPECT_NE(res->body.find("\nbik_requests_waiting 0\n"), std::string::npos) << res->body;
}

// Posts a streaming completion and hangs up after its second chunk; returns the chunks received.
int stream_and_hang_up(const json& body) {
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = body.dump();
  req.set_header("Content-Type", "application/json");
  int chunks = 0;
  req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 2; };
  httplib::Client dc("127.0.0.1", tiny_server().port);
  dc.set_read_timeout(30);
  dc.send(req);  // fails on purpose: the receiver hangs up after the second chunk
  return chunks;
}

int64_t metric(const std::string& text, const std::string& name) {
  const size_t at = text.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stoll(text.substr(at + name.size() + 2));
}

TEST(Server, StreamingClientDisconnectCancels) {
  auto c = client();
  const int64_t before = metric(c.Get("/metrics")->body, "bik_requests_cancelled_total");
  EXPECT_GE(stream_and_hang_up({{"prompt", "disconnect"}, {"max_tokens", 200}, {"stream", true}}), 2);
  int64_t after = before;
  for (int i = 0; i < 100 && after == before; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    after = metric(c.Get("/metrics")->body, "bik_requests_cancelled_total");
  }
  EXPECT_EQ(after, before + 1);
  // The server keeps serving.
  EXPECT_EQ(post("/v1/completions", {{"prompt", "after"}, {"max_tokens", 2}})["choices"][0]["finish_reason"], "length");
}

// Polls /metrics until `name` moves past `before` (5 s at most); returns its last value.
int64_t wait_metric_above(const std::string& name, int64_t before) {
  auto c = client();
  int64_t v = before;
  for (int i = 0; i < 100 && v <= before; ++i) {
    v = metric(c.Get("/metrics")->body, name);
    if (v <= before) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return v;
}

// Once the engine has aborted everything in flight, no more steps run.
void expect_engine_idle() {
  auto c = client();
  const std::string m0 = c.Get("/metrics")->body;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const std::string m1 = c.Get("/metrics")->body;
  EXPECT_EQ(metric(m0, "bik_engine_steps_total"), metric(m1, "bik_engine_steps_total"));
  EXPECT_EQ(metric(m1, "bik_requests_running"), 0);
  EXPECT_EQ(metric(m1, "bik_requests_waiting"), 0);
}

TEST(Server, StopStringAbortsTheSequence) {
  json r = {{"prompt", "abort at a stop string"}, {"max_tokens", 3}, {"temperature", 0}, {"return_token_ids", true},
            {"ignore_eos", true}};
  const json first = post("/v1/completions", r)["choices"][0];
  ASSERT_EQ(first["token_ids"].size(), 3u);
  auto c = client();
  const std::string m0 = c.Get("/metrics")->body;
  const int64_t aborted0 = metric(m0, "bik_requests_aborted_total");
  const int64_t tokens0 = metric(m0, "bik_aborted_generation_tokens_total");
  ASSERT_GE(aborted0, 0);
  r["max_tokens"] = 200;
  r["stop"] = {" " + first["token_ids"][1].dump()};
  const json got = post("/v1/completions", r)["choices"][0];
  EXPECT_EQ(got["finish_reason"], "stop");
  const int64_t aborted1 = wait_metric_above("bik_requests_aborted_total", aborted0);
  EXPECT_EQ(aborted1, aborted0 + 1);
  // The sequence stopped within a few tokens of the match, far from its 200.
  const int64_t tokens1 = metric(c.Get("/metrics")->body, "bik_aborted_generation_tokens_total");
  EXPECT_GE(tokens1 - tokens0, 2);
  EXPECT_LT(tokens1 - tokens0, 50);
  expect_engine_idle();
}

TEST(Server, StreamingDisconnectAbortsTheSequence) {
  auto c = client();
  const std::string m0 = c.Get("/metrics")->body;
  const int64_t aborted0 = metric(m0, "bik_requests_aborted_total");
  const int64_t tokens0 = metric(m0, "bik_aborted_generation_tokens_total");
  EXPECT_GE(stream_and_hang_up({{"prompt", "hang up"}, {"max_tokens", 220}, {"ignore_eos", true}, {"stream", true}}),
            2);
  const int64_t aborted1 = wait_metric_above("bik_requests_aborted_total", aborted0);
  EXPECT_EQ(aborted1, aborted0 + 1);
  const int64_t tokens1 = metric(c.Get("/metrics")->body, "bik_aborted_generation_tokens_total");
  EXPECT_GE(tokens1 - tokens0, 2);
  EXPECT_LT(tokens1 - tokens0, 150);
  expect_engine_idle();
  EXPECT_EQ(post("/v1/completions", {{"prompt", "after"}, {"max_tokens", 2}})["choices"][0]["finish_reason"], "length");
}

TEST(Server, ConcurrentIdenticalRequestsAgree) {
  const json req = {{"prompt", "batch me"}, {"max_tokens", 10}, {"temperature", 0.7}, {"seed", 3}, {"logprobs", 1}};
  const std::string want = post("/v1/completions", req)["choices"][0].dump();
  std::vector<std::thread> ts;
  std::vector<std::string> got(12);
  for (size_t i = 0; i < got.size(); ++i)
    ts.emplace_back([&, i] {
      auto c = client();
      json r = req;
      if (i % 3 == 1) r = {{"prompt", std::string(10 + i * 7, 'q')}, {"max_tokens", 5 + int(i)}};  // other work
      auto res = c.Post("/v1/completions", r.dump(), "application/json");
      if (res && i % 3 != 1) got[i] = json::parse(res->body)["choices"][0].dump();
    });
  for (auto& t : ts) t.join();
  for (size_t i = 0; i < got.size(); ++i)
    if (i % 3 != 1) EXPECT_EQ(got[i], want) << i;
}

}  // namespace
}  // namespace bik::engine

// bik audit: the comparison of completions, and whole audits against (1) the in-process server with the
// batch-invariant kernels (must pass), (2) the same server with them off, whose GEMMs change their
// summation with the batch (must fail: the audit has teeth), and (3) a stub endpoint whose answers
// diverge at a known token (must report that index).
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <thread>

#include <nlohmann/json.hpp>

#include "engine_fixtures.h"
#include "check/audit.h"
#include "engine/engine.h"
#include "engine/model.h"
#include "engine/model_config.h"
#include "engine/server.h"

namespace bik::check {
namespace {

using nlohmann::json;

Completion make(std::vector<int64_t> ids, std::vector<double> lps) {
  Completion c;
  c.ids = ids;
  for (int64_t id : ids) {
    c.tokens.push_back(" " + std::to_string(id));
    c.text += " " + std::to_string(id);
  }
  c.logprobs = lps;
  return c;
}

TEST(Audit, AnalyzeIdenticalDivergentAndLogprobOnly) {
  const Completion a = make({1, 2, 3, 4}, {-0.5, -1.0, -1.5, -2.0});
  ProbeResult same = analyze_completions({a, a, a});
  EXPECT_TRUE(same.pass());
  EXPECT_EQ(same.unique_completions, 1);
  EXPECT_EQ(same.first_divergent_token, -1);
  EXPECT_EQ(same.max_logprob_diff, 0.0);
  EXPECT_EQ(same.trials, 3);

  Completion b = make({1, 2, 9, 9}, {-0.5, -1.25, -3.0, -2.0});
  ProbeResult div = analyze_completions({a, b, a});
  EXPECT_FALSE(div.pass());
  EXPECT_EQ(div.unique_completions, 2);
  EXPECT_EQ(div.reference_count, 2);
  EXPECT_EQ(div.first_divergent_token, 2);
  EXPECT_DOUBLE_EQ(div.max_logprob_diff, 0.25);  // only positions before the divergence count
  EXPECT_EQ(div.reference_text, a.text);

  Completion c = a;
  c.logprobs[3] = -2.0000001;
  ProbeResult lp = analyze_completions({a, a, c});
  EXPECT_FALSE(lp.pass());
  EXPECT_EQ(lp.unique_completions, 1);
  EXPECT_FALSE(lp.logprobs_identical);
  EXPECT_EQ(lp.first_divergent_token, -1);
  EXPECT_NEAR(lp.max_logprob_diff, 1e-7, 1e-9);

  Completion shorter = make({1, 2, 3}, {-0.5, -1.0, -1.5});
  EXPECT_EQ(analyze_completions({a, a, shorter}).first_divergent_token, 3);
}

TEST(Audit, ParsesCompletionResponses) {
  const std::string body = R"({"choices":[{"index":0,"text":" a b","finish_reason":"length","token_ids":[4,5],
    "logprobs":{"tokens":[" a"," b"],"token_logprobs":[-0.25,null],"top_logprobs":[{" b":-1.5," a":-0.25},null]}}]})";
  const Completion c = parse_completion(body);
  EXPECT_EQ(c.text, " a b");
  EXPECT_EQ(c.ids, (std::vector<int64_t>{4, 5}));
  EXPECT_EQ(c.tokens, (std::vector<std::string>{" a", " b"}));
  ASSERT_EQ(c.logprobs.size(), 2u);
  EXPECT_EQ(c.logprobs[0], -0.25);
  EXPECT_TRUE(std::isnan(c.logprobs[1]));
  ASSERT_EQ(c.top.size(), 2u);
  EXPECT_EQ(c.top[0][0].first, " a");  // sorted by token
  EXPECT_THROW(parse_completion("{}"), AuditError);
  EXPECT_THROW(parse_completion("not json"), AuditError);
}

// ---- against the in-process server ------------------------------------------------------------------

engine::ModelConfig config(int64_t hidden, int64_t vocab) { return test_fixtures::tiny_model_config(hidden, vocab, 512); }

struct Served {
  engine::ModelConfig cfg;
  engine::Weights weights;
  engine::LlamaModel model;
  std::unique_ptr<engine::Server> server;
  Served(int64_t hidden, int64_t vocab, bool invariant)
      : cfg(config(hidden, vocab)), weights(engine::Weights::dummy(cfg, 5)),
        model(cfg, weights, Device::cpu(), invariant) {
    engine::EngineConfig ec;
    ec.num_blocks = 256;
    ec.max_num_batched_tokens = 256;
    engine::ServerConfig sc;
    sc.port = 0;
    sc.http_threads = 32;
    sc.model_name = "tiny";
    server = std::make_unique<engine::Server>(model, nullptr, ec, sc);
    server->start();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(server->port()); }
};

AuditOptions small_audit(const std::string& url) {
  AuditOptions o;
  o.endpoint = url;
  o.requests = 48;
  o.concurrency = 16;
  o.max_tokens = 12;
  o.timeout_s = 240;
  o.prompts = {"Tell me a long story about a dragon.", "Count from one to one hundred."};
  return o;
}

TEST(Audit, PassesAgainstTheBatchInvariantServer) {
  Served s(64, 512, true);
  std::atomic<int64_t> calls{0};
  AuditOptions o = small_audit(s.url());
  o.progress = [&](int64_t, int64_t) { ++calls; };
  const AuditReport rep = run_audit(o);
  EXPECT_TRUE(rep.pass()) << rep.text();
  EXPECT_EQ(rep.model, "tiny");  // taken from /v1/models
  ASSERT_EQ(rep.probes.size(), 4u);  // 2 prompts x (greedy, sampled)
  for (const auto& p : rep.probes) {
    EXPECT_EQ(p.trials, 12);
    EXPECT_EQ(p.unique_completions, 1);
    EXPECT_TRUE(p.logprobs_identical);
  }
  EXPECT_EQ(rep.planned, 48 + 12);
  EXPECT_EQ(calls.load(), rep.planned);
  EXPECT_EQ(rep.to_json()["verdict"], "PASS");
  EXPECT_NE(rep.confidence().find("48 probe completions"), std::string::npos) << rep.confidence();
}

// With batch invariance off the GEMMs' split of K changes with the number of rows
// (check::split_k_openblas_gemm): the audit must see the logprobs move with the load; the batch-invariant
// kernels on the same shapes pass.
TEST(Audit, FailsWhenBatchInvarianceIsOff) {
  {
    Served off(1000, 1000, false);
    const AuditReport rep = run_audit(small_audit(off.url()));
    EXPECT_FALSE(rep.pass()) << "the batch-variant GEMM gave identical results: the audit has no teeth here\n"
                             << rep.text();
    EXPECT_EQ(rep.to_json()["verdict"], "FAIL");
    bool some_diff = false;
    for (const auto& p : rep.probes) some_diff |= !p.logprobs_identical || p.unique_completions > 1;
    EXPECT_TRUE(some_diff);
  }
  Served on(1000, 1000, true);
  const AuditReport rep = run_audit(small_audit(on.url()));
  EXPECT_TRUE(rep.pass()) << rep.text();
}

// ---- against a stub endpoint -------------------------------------------------------------------------

struct Stub {
  httplib::Server http;
  std::thread thread;
  int port = 0;
  std::atomic<int> probes{0};
  std::function<json(int)> answer;  // probe number -> choice
  int delay_ms = 0;
  Stub() {
    http.Get("/v1/models", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"object":"list","data":[{"id":"stub"}]})", "application/json");
    });
    http.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      if (delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      const json body = json::parse(req.body);
      json choice;
      if (body["prompt"] == "probe") {
        choice = answer(probes++);
      } else {
        choice = {{"text", " x"}, {"logprobs", {{"tokens", {" x"}}, {"token_logprobs", {-1.0}}}}};
      }
      choice["index"] = 0;
      choice["finish_reason"] = "length";
      res.set_content(json({{"choices", {choice}}}).dump(), "application/json");
    });
    port = http.bind_to_any_port("127.0.0.1");
    thread = std::thread([this] { http.listen_after_bind(); });
    while (!http.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // else stop() is lost
  }
  ~Stub() {
    http.stop();
    thread.join();
  }
};

json stub_choice(std::vector<int> ids, std::vector<double> lps) {
  json tokens = json::array();
  std::string text;
  for (int id : ids) {
    tokens.push_back(" t" + std::to_string(id));
    text += " t" + std::to_string(id);
  }
  return {{"text", text}, {"logprobs", {{"tokens", tokens}, {"token_logprobs", lps}}}};
}

AuditOptions stub_audit(int port) {
  AuditOptions o;
  o.endpoint = "http://127.0.0.1:" + std::to_string(port) + "/v1";
  o.prompts = {"probe"};
  o.sampled = false;
  o.requests = 9;
  o.concurrency = 3;
  o.max_tokens = 10;
  o.timeout_s = 30;
  return o;
}

TEST(Audit, ReportsTheFirstDivergentTokenOfAStub) {
  Stub stub;
  stub.answer = [](int n) {
    std::vector<int> ids = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9};
    std::vector<double> lps(10, -0.5);
    if (n % 3 == 2) {
      ids[6] = 99;
      lps[5] = -0.625;  // before the divergence: counts in the logprob difference
    }
    return stub_choice(ids, lps);
  };
  const AuditReport rep = run_audit(stub_audit(stub.port));
  ASSERT_EQ(rep.probes.size(), 1u);
  const ProbeResult& p = rep.probes[0];
  EXPECT_FALSE(rep.pass());
  EXPECT_EQ(p.trials, 9);
  EXPECT_EQ(p.unique_completions, 2);
  EXPECT_EQ(p.reference_count, 6);
  EXPECT_EQ(p.first_divergent_token, 6);
  EXPECT_DOUBLE_EQ(p.max_logprob_diff, 0.125);
  EXPECT_EQ(rep.model, "stub");
  const json j = rep.to_json();
  EXPECT_EQ(j["verdict"], "FAIL");
  EXPECT_EQ(j["probes"][0]["first_divergent_token"], 6);
  EXPECT_NE(rep.text().find("DIFF"), std::string::npos);
}

TEST(Audit, LogprobOnlyDifferencesFail) {
  Stub stub;
  stub.answer = [](int n) {
    std::vector<double> lps(4, -0.5);
    if (n == 4) lps[3] = std::nextafter(-0.5, 0.0);
    return stub_choice({1, 2, 3, 4}, lps);
  };
  const AuditReport rep = run_audit(stub_audit(stub.port));
  EXPECT_FALSE(rep.pass());
  EXPECT_EQ(rep.probes[0].unique_completions, 1);
  EXPECT_FALSE(rep.probes[0].logprobs_identical);
}

TEST(Audit, UsageAndConnectionErrors) {
  AuditOptions o = stub_audit(1);  // nothing listens on port 1
  EXPECT_THROW(run_audit(o), AuditError);
  o.endpoint = "127.0.0.1:8000";
  EXPECT_THROW(run_audit(o), AuditError);
  o.endpoint = "ftp://127.0.0.1:8000";
  EXPECT_THROW(run_audit(o), AuditError);
  Stub stub;
  stub.answer = [](int) { return stub_choice({1}, {-1.0}); };
  o = stub_audit(stub.port);
  o.requests = 0;
  EXPECT_THROW(run_audit(o), AuditError);
}

TEST(Audit, IsBoundedInTime) {
  Stub stub;
  stub.delay_ms = 2500;
  stub.answer = [](int) { return stub_choice({1}, {-1.0}); };
  AuditOptions o = stub_audit(stub.port);
  o.timeout_s = 0.5;
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_THROW(run_audit(o), AuditError);  // nothing came back in time
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(), 2.0);
}

}  // namespace
}  // namespace bik::check

// `bik audit`: black-box determinism audit of an OpenAI-compatible /v1/completions endpoint.
//
// For each probe prompt (chosen to produce long outputs) and each mode (greedy; seeded sampling) it sends
// many identical requests, concurrently and shuffled among background requests of varied prompts and
// lengths, so that the probes land in batches of changing size and composition. A deterministic server
// returns one unique completion per (prompt, mode) with bitwise-identical logprobs; anything else is a
// divergence, reported with the first token index at which a completion departs from the most common one
// and the largest logprob difference before that index.
#pragma once
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace bik::check {

// Bad options or an endpoint that cannot be reached / does not answer like the API: exit code 2.
class AuditError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct AuditOptions {
  std::string endpoint;             // http://host:port (a trailing /v1 is accepted); only this URL is contacted
  std::string model;                // "model" of the requests; empty: the first of GET /v1/models, else omitted
  int64_t requests = 1000;          // probe requests in total, split evenly over prompts x modes
  int concurrency = 64;             // requests in flight at once
  std::vector<std::string> prompts;  // probe prompts; empty: default_audit_prompts()
  int max_tokens = 256;
  double timeout_s = 600;           // the whole audit: no request starts after it, in-flight ones are cut
  double background_ratio = 0.25;   // background requests per probe request
  bool greedy = true;               // temperature 0
  bool sampled = true;              // temperature `temperature`, fixed `seed`
  float temperature = 0.8f;
  uint64_t seed = 1234;
  int top_logprobs = 1;             // "logprobs" of the requests
  uint64_t shuffle_seed = 42;       // order of the jobs, background prompts and lengths
  // Called from a worker thread after each finished request (done, total); may be empty.
  std::function<void(int64_t, int64_t)> progress;
};

std::vector<std::string> default_audit_prompts();

// One completion as returned by the endpoint.
struct Completion {
  std::vector<std::string> tokens;  // logprobs.tokens
  std::vector<int64_t> ids;         // choices[0].token_ids when the server returns them
  std::vector<double> logprobs;     // logprobs.token_logprobs (NaN for null)
  std::vector<std::vector<std::pair<std::string, double>>> top;  // logprobs.top_logprobs, sorted by token
  std::string text;
  std::string finish_reason;
};

// Parses a /v1/completions response body (throws AuditError when it is not one).
Completion parse_completion(const std::string& body);

struct ProbeResult {
  std::string prompt, mode;  // mode: "greedy" or "sampled"
  int64_t trials = 0;        // completions received
  int64_t errors = 0;        // requests that failed
  int64_t unique_completions = 0;
  int64_t reference_count = 0;       // completions equal to the most common one (the reference)
  int64_t first_divergent_token = -1;  // earliest token index where any completion departs from the reference
  double max_logprob_diff = 0.0;     // over token logprobs at positions before the divergence
  bool logprobs_identical = true;    // every completion's logprobs (token and top) equal the reference's bitwise
  int64_t completion_tokens = 0;     // of the reference
  std::string reference_text;
  bool pass() const { return trials > 0 && unique_completions == 1 && logprobs_identical; }
};

// Compares completions of one (prompt, mode): what the report says about them.
ProbeResult analyze_completions(const std::vector<Completion>& completions);

struct AuditReport {
  AuditOptions options;
  std::string model;
  std::vector<ProbeResult> probes;
  int64_t planned = 0, completed = 0, errors = 0, background_sent = 0, background_errors = 0;
  double duration_s = 0;
  bool timed_out = false;
  std::string first_error;
  bool pass() const;
  std::string verdict() const { return pass() ? "PASS" : "FAIL"; }
  std::string confidence() const;  // what the verdict rests on: trials, concurrency, load
  nlohmann::json to_json() const;
  std::string text() const;        // the readable report
};

// Runs the audit. Throws AuditError when the options are unusable, the endpoint cannot be reached, or
// most requests fail (nothing to judge).
AuditReport run_audit(const AuditOptions& opt);

}  // namespace bik::check

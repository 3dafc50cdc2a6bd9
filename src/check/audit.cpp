#include "check/audit.h"

#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

namespace bik::check {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::vector<std::string> default_audit_prompts() {
  return {
      "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. Describe every "
      "day of the following week.",
      "Explain step by step, in great detail, how a CPU executes a single instruction, from fetch to writeback, "
      "including caches, pipelines and branch prediction.",
      "List the numbers from 1 to 300 in words, one per line, without skipping any.",
      "Write a complete beginner's guide to baking sourdough bread at home, with a troubleshooting section.",
  };
}

namespace {

bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0 || (std::isnan(a) && std::isnan(b)); }

// The identity of a completion: its token ids when the server gives them, else its token strings; and text.
std::string completion_key(const Completion& c) {
  std::string k;
  if (!c.ids.empty()) {
    for (int64_t id : c.ids) k += std::to_string(id) + ",";
  } else {
    for (const auto& t : c.tokens) k += std::to_string(t.size()) + ":" + t;
  }
  return k + "\x1f" + c.text;
}

bool same_token(const Completion& a, const Completion& b, size_t i) {
  if (!a.ids.empty() && !b.ids.empty()) return a.ids[i] == b.ids[i];
  return a.tokens[i] == b.tokens[i];
}

size_t num_tokens(const Completion& c) { return std::max(c.ids.size(), c.tokens.size()); }

// First index where b departs from a (a token differs, or one ends first); -1 when the tokens are equal.
int64_t first_divergence(const Completion& a, const Completion& b) {
  const bool by_ids = !a.ids.empty() && !b.ids.empty();
  const size_t na = by_ids ? a.ids.size() : a.tokens.size(), nb = by_ids ? b.ids.size() : b.tokens.size();
  const size_t n = std::min(na, nb);
  for (size_t i = 0; i < n; ++i)
    if (!same_token(a, b, i)) return int64_t(i);
  if (na != nb) return int64_t(n);
  return a.text == b.text ? -1 : int64_t(n);
}

}  // namespace

Completion parse_completion(const std::string& body) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::parse_error& e) {
    throw AuditError(std::string("the endpoint's answer is not JSON: ") + e.what());
  }
  if (!j.is_object() || !j.contains("choices") || !j["choices"].is_array() || j["choices"].empty())
    throw AuditError("the endpoint's answer has no choices: " + body.substr(0, 200));
  const json& c = j["choices"][0];
  Completion out;
  if (c.contains("text") && c["text"].is_string()) out.text = c["text"].get<std::string>();
  if (c.contains("finish_reason") && c["finish_reason"].is_string()) out.finish_reason = c["finish_reason"];
  if (c.contains("token_ids") && c["token_ids"].is_array())
    for (const auto& id : c["token_ids"]) out.ids.push_back(id.get<int64_t>());
  if (c.contains("logprobs") && c["logprobs"].is_object()) {
    const json& lp = c["logprobs"];
    if (lp.contains("tokens") && lp["tokens"].is_array())
      for (const auto& t : lp["tokens"]) out.tokens.push_back(t.is_string() ? t.get<std::string>() : t.dump());
    if (lp.contains("token_logprobs") && lp["token_logprobs"].is_array())
      for (const auto& v : lp["token_logprobs"])
        out.logprobs.push_back(v.is_number() ? v.get<double>() : std::nan(""));
    if (lp.contains("top_logprobs") && lp["top_logprobs"].is_array())
      for (const auto& step : lp["top_logprobs"]) {
        std::vector<std::pair<std::string, double>> s;
        if (step.is_object())
          for (auto it = step.begin(); it != step.end(); ++it)
            s.emplace_back(it.key(), it.value().is_number() ? it.value().get<double>() : std::nan(""));
        std::sort(s.begin(), s.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
        out.top.push_back(std::move(s));
      }
  }
  return out;
}

ProbeResult analyze_completions(const std::vector<Completion>& cs) {
  ProbeResult r;
  r.trials = int64_t(cs.size());
  if (cs.empty()) return r;
  std::map<std::string, int64_t> counts;
  std::map<std::string, size_t> first_of;
  for (size_t i = 0; i < cs.size(); ++i) {
    const std::string k = completion_key(cs[i]);
    if (counts[k]++ == 0) first_of[k] = i;
  }
  r.unique_completions = int64_t(counts.size());
  // The reference: the most common completion (ties: the one seen first).
  std::string ref_key;
  for (const auto& [k, n] : counts)
    if (n > r.reference_count || (n == r.reference_count && first_of[k] < first_of[ref_key])) {
      ref_key = k;
      r.reference_count = n;
    }
  const Completion& ref = cs[first_of[ref_key]];
  r.reference_text = ref.text;
  r.completion_tokens = int64_t(num_tokens(ref));
  for (const Completion& c : cs) {
    const int64_t d = first_divergence(ref, c);
    if (d >= 0 && (r.first_divergent_token < 0 || d < r.first_divergent_token)) r.first_divergent_token = d;
    const size_t upto = std::min({d >= 0 ? size_t(d) : SIZE_MAX, ref.logprobs.size(), c.logprobs.size()});
    for (size_t i = 0; i < upto; ++i) {
      if (!same_bits(ref.logprobs[i], c.logprobs[i])) {
        r.logprobs_identical = false;
        const double diff = std::fabs(ref.logprobs[i] - c.logprobs[i]);
        if (std::isfinite(diff)) r.max_logprob_diff = std::max(r.max_logprob_diff, diff);
      }
    }
    if (ref.logprobs.size() != c.logprobs.size() || ref.top.size() != c.top.size()) r.logprobs_identical = false;
    for (size_t i = 0; i < std::min(ref.top.size(), c.top.size()); ++i) {
      const auto &a = ref.top[i], &b = c.top[i];
      bool same = a.size() == b.size();
      for (size_t k = 0; same && k < a.size(); ++k) same = a[k].first == b[k].first && same_bits(a[k].second, b[k].second);
      if (!same) r.logprobs_identical = false;
    }
  }
  return r;
}

bool AuditReport::pass() const {
  if (probes.empty()) return false;
  for (const auto& p : probes)
    if (!p.pass()) return false;
  return true;
}

std::string AuditReport::confidence() const {
  std::ostringstream o;
  int64_t trials = 0, min_trials = INT64_MAX, tokens = 0;
  for (const auto& p : probes) {
    trials += p.trials;
    min_trials = std::min(min_trials, p.trials);
    tokens += p.trials * p.completion_tokens;
  }
  if (probes.empty()) min_trials = 0;
  o << probes.size() << " probe groups (prompt x mode), " << trials << " probe completions (at least " << min_trials
    << " identical requests per group), " << tokens << " generated tokens compared; sent " << options.concurrency
    << " at a time, shuffled among " << background_sent << " background requests of varied prompts and lengths.";
  if (pass()) {
    o << " Every group gave 1 unique completion with bitwise-identical logprobs. With " << min_trials
      << " trials per group, a per-request divergence rate above " << (min_trials > 0 ? 3.0 / double(min_trials) : 1.0)
      << " would have shown with 95% probability (rule of three); this is evidence under this load, not a proof.";
  } else {
    int64_t bad = 0;
    for (const auto& p : probes) bad += !p.pass();
    o << " " << bad << " of " << probes.size() << " groups diverged: the endpoint's outputs depend on the load.";
  }
  if (errors + background_errors > 0)
    o << " " << errors + background_errors << " requests failed (first: " << first_error << ").";
  if (timed_out) o << " Stopped by --timeout after " << completed << " of " << planned << " requests.";
  return o.str();
}

json AuditReport::to_json() const {
  json ps = json::array();
  for (const auto& p : probes)
    ps.push_back({{"prompt", p.prompt},
                  {"mode", p.mode},
                  {"trials", p.trials},
                  {"errors", p.errors},
                  {"unique_completions", p.unique_completions},
                  {"reference_count", p.reference_count},
                  {"first_divergent_token", p.first_divergent_token < 0 ? json(nullptr) : json(p.first_divergent_token)},
                  {"max_logprob_diff", p.max_logprob_diff},
                  {"logprobs_identical", p.logprobs_identical},
                  {"completion_tokens", p.completion_tokens},
                  {"reference_text", p.reference_text},
                  {"pass", p.pass()}});
  return {{"endpoint", options.endpoint},
          {"model", model},
          {"verdict", verdict()},
          {"confidence", confidence()},
          {"requests",
           {{"planned", planned},
            {"completed", completed},
            {"errors", errors},
            {"background_sent", background_sent},
            {"background_errors", background_errors}}},
          {"concurrency", options.concurrency},
          {"max_tokens", options.max_tokens},
          {"temperature_sampled", options.temperature},
          {"seed", options.seed},
          {"duration_s", duration_s},
          {"timed_out", timed_out},
          {"first_error", first_error.empty() ? json(nullptr) : json(first_error)},
          {"probes", ps}};
}

std::string AuditReport::text() const {
  std::ostringstream o;
  o << "bik audit: " << options.endpoint << (model.empty() ? "" : " (model " + model + ")") << "\n";
  char line[512];
  std::snprintf(line, sizeof line, "  %-44s %-8s %7s %7s %12s %14s %6s\n", "prompt", "mode", "trials", "unique",
                "first-div", "max |dlogp|", "result");
  o << line;
  for (const auto& p : probes) {
    std::string short_prompt = p.prompt.substr(0, 40);
    for (char& c : short_prompt)
      if (c == '\n' || c == '\t') c = ' ';
    if (p.prompt.size() > 40) short_prompt += "...";
    std::snprintf(line, sizeof line, "  %-44s %-8s %7lld %7lld %12s %14.6g %6s\n", short_prompt.c_str(), p.mode.c_str(),
                  (long long)p.trials, (long long)p.unique_completions,
                  p.first_divergent_token < 0 ? "-" : std::to_string(p.first_divergent_token).c_str(),
                  p.max_logprob_diff, p.pass() ? "ok" : "DIFF");
    o << line;
  }
  std::snprintf(line, sizeof line, "  %lld of %lld requests completed in %.1f s (%lld errors)\n", (long long)completed,
                (long long)planned, duration_s, (long long)(errors + background_errors));
  o << line;
  o << verdict() << ": " << confidence() << "\n";
  return o.str();
}

namespace {

struct Endpoint {
  std::string scheme_host_port;  // for httplib::Client
  std::string prefix;            // path before /v1
};

Endpoint parse_endpoint(const std::string& url) {
  const size_t sep = url.find("://");
  if (sep == std::string::npos)
    throw AuditError("--endpoint must be a URL like http://127.0.0.1:8000, got '" + url + "'");
  const std::string scheme = url.substr(0, sep);
  if (scheme != "http" && scheme != "https") throw AuditError("--endpoint must be http:// or https://, got '" + url + "'");
  const size_t slash = url.find('/', sep + 3);
  Endpoint e;
  e.scheme_host_port = url.substr(0, slash);
  if (e.scheme_host_port.size() <= sep + 3) throw AuditError("--endpoint has no host: '" + url + "'");
  std::string path = slash == std::string::npos ? "" : url.substr(slash);
  while (!path.empty() && path.back() == '/') path.pop_back();
  if (path.size() >= 3 && path.compare(path.size() - 3, 3, "/v1") == 0) path.resize(path.size() - 3);
  e.prefix = path;
  return e;
}

std::unique_ptr<httplib::Client> make_client(const Endpoint& e, double read_timeout_s) {
  auto c = std::make_unique<httplib::Client>(e.scheme_host_port);
  if (!c->is_valid()) throw AuditError("--endpoint: cannot use '" + e.scheme_host_port + "'");
  c->set_connection_timeout(10);
  const auto t = std::chrono::duration<double>(std::max(read_timeout_s, 1.0));
  c->set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(t));
  c->set_write_timeout(30);
  c->set_keep_alive(true);
  return c;
}

std::string describe(const httplib::Result& res) {
  if (!res) return "no answer (" + httplib::to_string(res.error()) + ")";
  std::string body = res->body.substr(0, 300);
  try {
    const json j = json::parse(res->body);
    if (j.contains("error") && j["error"].contains("message")) body = j["error"]["message"].get<std::string>();
  } catch (...) {
  }
  return "HTTP " + std::to_string(res->status) + ": " + body;
}

struct Job {
  int group;  // index into the probe groups; -1: background
  json body;
};

std::string background_prompt(std::mt19937_64& rng) {
  static const char* words[] = {"river", "engine", "quiet", "table", "seven", "orange", "market", "winter",
                                "silver", "garden", "number", "bridge", "paper", "signal", "forest", "window",
                                "history", "simple", "yellow", "machine", "ocean", "letter", "mountain", "clock"};
  const int n = std::uniform_int_distribution<int>(1, 60)(rng);
  std::string s;
  for (int i = 0; i < n; ++i) s += std::string(i ? " " : "") + words[rng() % std::size(words)];
  return s;
}

}  // namespace

AuditReport run_audit(const AuditOptions& opt_in) {
  AuditOptions opt = opt_in;
  if (opt.requests < 1) throw AuditError("--requests must be >= 1");
  if (opt.concurrency < 1) throw AuditError("--concurrency must be >= 1");
  if (opt.max_tokens < 1) throw AuditError("--max-tokens must be >= 1");
  if (!(opt.timeout_s > 0)) throw AuditError("--timeout must be > 0");
  if (!opt.greedy && !opt.sampled) throw AuditError("no mode: enable greedy or sampled");
  if (opt.prompts.empty()) opt.prompts = default_audit_prompts();
  const Endpoint ep = parse_endpoint(opt.endpoint);
  const auto t0 = Clock::now();
  const auto deadline = t0 + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(opt.timeout_s));
  auto remaining_s = [&] { return std::chrono::duration<double>(deadline - Clock::now()).count(); };

  AuditReport rep;
  rep.options = opt;
  rep.options.progress = nullptr;

  // Reachability, and the model name when none was given.
  {
    auto cli = make_client(ep, std::min(30.0, opt.timeout_s));
    auto res = cli->Get(ep.prefix + "/v1/models");
    if (!res) throw AuditError("cannot reach " + opt.endpoint + ": " + httplib::to_string(res.error()));
    rep.model = opt.model;
    if (rep.model.empty() && res->status == 200) {
      try {
        const json j = json::parse(res->body);
        if (j.contains("data") && j["data"].is_array() && !j["data"].empty() && j["data"][0].contains("id"))
          rep.model = j["data"][0]["id"].get<std::string>();
      } catch (...) {
      }
    }
  }

  // Probe groups and jobs.
  struct Group {
    std::string prompt, mode;
    json body;
  };
  std::vector<Group> groups;
  for (const auto& p : opt.prompts) {
    json base = {{"prompt", p}, {"max_tokens", opt.max_tokens}, {"logprobs", opt.top_logprobs},
                 {"return_token_ids", true}};
    if (!rep.model.empty()) base["model"] = rep.model;
    if (opt.greedy) {
      json b = base;
      b["temperature"] = 0;
      groups.push_back({p, "greedy", b});
    }
    if (opt.sampled) {
      json b = base;
      b["temperature"] = opt.temperature;
      b["seed"] = opt.seed;
      groups.push_back({p, "sampled", b});
    }
  }
  std::mt19937_64 rng(opt.shuffle_seed);
  std::vector<Job> jobs;
  for (int64_t i = 0; i < opt.requests; ++i) {
    const int g = int(i % int64_t(groups.size()));
    jobs.push_back({g, groups[size_t(g)].body});
  }
  const int64_t n_background = int64_t(std::llround(double(opt.requests) * std::max(0.0, opt.background_ratio)));
  for (int64_t i = 0; i < n_background; ++i) {
    json b = {{"prompt", background_prompt(rng)},
              {"max_tokens", std::uniform_int_distribution<int>(1, opt.max_tokens)(rng)},
              {"temperature", (rng() % 3 == 0) ? 0.0 : 1.0},
              {"seed", rng() % 1000000},
              {"logprobs", int(rng() % 3)}};
    if (!rep.model.empty()) b["model"] = rep.model;
    jobs.push_back({-1, b});
  }
  std::shuffle(jobs.begin(), jobs.end(), rng);
  rep.planned = int64_t(jobs.size());

  std::vector<std::vector<Completion>> results(groups.size());
  std::vector<int64_t> group_errors(groups.size(), 0);
  std::mutex m;
  std::atomic<size_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> out_of_time{false};
  auto worker = [&] {
    std::unique_ptr<httplib::Client> cli;
    for (;;) {
      const size_t i = next++;
      if (i >= jobs.size()) return;
      const double left = remaining_s();
      if (left <= 0) {
        out_of_time = true;
        return;
      }
      if (!cli) cli = make_client(ep, left);
      else cli->set_read_timeout(std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::duration<double>(std::max(left, 1.0))));
      const Job& job = jobs[i];
      auto res = cli->Post(ep.prefix + "/v1/completions", job.body.dump(), "application/json");
      if (!res && remaining_s() > 1) {
        // No answer at all: most often a kept-alive connection the server had just closed. One retry on a
        // fresh connection (a repeated request only adds load; its answer is compared like any other).
        cli = make_client(ep, remaining_s());
        res = cli->Post(ep.prefix + "/v1/completions", job.body.dump(), "application/json");
      }
      std::string error;
      std::optional<Completion> c;
      if (!res || res->status != 200) {
        error = describe(res);
        if (!res) cli.reset();  // reconnect next time
        if (remaining_s() <= 0) out_of_time = true;
      } else {
        try {
          c = parse_completion(res->body);
        } catch (const AuditError& e) {
          error = e.what();
        }
      }
      {
        std::lock_guard<std::mutex> lk(m);
        if (job.group < 0) {
          rep.background_sent++;
          if (!error.empty()) rep.background_errors++;
        } else if (c) {
          results[size_t(job.group)].push_back(std::move(*c));
        } else {
          group_errors[size_t(job.group)]++;
          rep.errors++;
        }
        if (!error.empty() && rep.first_error.empty()) rep.first_error = error;
      }
      const int64_t d = ++done;
      if (opt.progress) opt.progress(d, int64_t(jobs.size()));
    }
  };
  std::vector<std::thread> threads;
  const int nthreads = int(std::min<int64_t>(opt.concurrency, int64_t(jobs.size())));
  for (int t = 0; t < nthreads; ++t) threads.emplace_back(worker);
  for (auto& t : threads) t.join();

  rep.completed = done.load();
  rep.timed_out = out_of_time.load();
  rep.duration_s = std::chrono::duration<double>(Clock::now() - t0).count();
  int64_t received = 0;
  for (size_t g = 0; g < groups.size(); ++g) {
    ProbeResult p = analyze_completions(results[g]);
    p.prompt = groups[g].prompt;
    p.mode = groups[g].mode;
    p.errors = group_errors[g];
    received += p.trials;
    rep.probes.push_back(std::move(p));
  }
  if (received == 0)
    throw AuditError("no completion came back from " + opt.endpoint +
                     (rep.first_error.empty() ? std::string(" (out of time)") : ": " + rep.first_error));
  if (rep.errors > received)
    throw AuditError("most requests to " + opt.endpoint + " failed (" + std::to_string(rep.errors) + " of " +
                     std::to_string(rep.errors + received) + "): " + rep.first_error);
  return rep;
}

}  // namespace bik::check

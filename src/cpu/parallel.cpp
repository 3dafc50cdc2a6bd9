#include "cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace bik::cpu {
namespace {

// A fixed pool of workers; one parallel_for runs at a time (calls from inside a task run serially).
class Pool {
 public:
  explicit Pool(int n) { resize(n); }
  ~Pool() { stop(); }

  int size() const { return int(workers_.size()) + 1; }

  void resize(int n) {
    std::lock_guard<std::mutex> run_lock(run_mu_);  // never while a parallel_for is in flight
    stop();
    done_ = false;
    // A new worker has already "seen" the current generation: it must wait for the next run, not
    // replay the last one (which would corrupt the count of pending workers).
    const uint64_t current = generation_;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, current] { loop(current); });
  }

  void run(int64_t chunks, const std::function<void(int64_t)>& task) {
    std::unique_lock<std::mutex> run_lock(run_mu_);
    {
      std::lock_guard<std::mutex> g(mu_);
      task_ = &task;
      chunks_ = chunks;
      next_.store(0);
      pending_ = int(workers_.size());
      error_ = nullptr;
      ++generation_;
    }
    cv_.notify_all();
    work();
    std::unique_lock<std::mutex> g(mu_);
    idle_cv_.wait(g, [this] { return pending_ == 0; });
    task_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

 private:
  void work() {
    for (int64_t c; (c = next_.fetch_add(1)) < chunks_;) {
      try {
        (*task_)(c);
      } catch (...) {
        std::lock_guard<std::mutex> g(mu_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }
  void loop(uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> g(mu_);
        cv_.wait(g, [&] { return done_ || generation_ != seen; });
        if (done_) return;
        seen = generation_;
      }
      work();
      std::lock_guard<std::mutex> g(mu_);
      if (--pending_ == 0) idle_cv_.notify_all();
    }
  }
  void stop() {
    {
      std::lock_guard<std::mutex> g(mu_);
      done_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  std::vector<std::thread> workers_;
  std::mutex mu_, run_mu_;
  std::condition_variable cv_, idle_cv_;
  const std::function<void(int64_t)>* task_ = nullptr;
  int64_t chunks_ = 0;
  std::atomic<int64_t> next_{0};
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool done_ = false;
  std::exception_ptr error_;
};

int default_threads() {
  if (const char* e = std::getenv("BIK_NUM_THREADS")) {
    int n = std::atoi(e);
    if (n > 0) return n;
  }
  return std::max(1u, std::thread::hardware_concurrency());
}

Pool& pool() {
  static Pool p(default_threads());
  return p;
}
thread_local bool in_task = false;

}  // namespace

int num_threads() { return pool().size(); }
void set_num_threads(int n) { pool().resize(n > 0 ? n : default_threads()); }

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  int threads = num_threads();
  int64_t chunks = std::min<int64_t>((n + grain - 1) / grain, int64_t(threads) * 4);
  if (chunks <= 1 || threads == 1 || in_task) {
    fn(0, n);
    return;
  }
  int64_t per = (n + chunks - 1) / chunks;
  pool().run(chunks, [&](int64_t c) {
    int64_t b = c * per, e = std::min(n, b + per);
    if (b >= e) return;
    in_task = true;
    try {
      fn(b, e);
    } catch (...) {
      in_task = false;
      throw;
    }
    in_task = false;
  });
}

}  // namespace bik::cpu

// The CPU thread pool: every chunk runs exactly once, errors propagate, and resizing the pool between
// calls never replays or loses work (a stale generation once made workers re-run an old task).
#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

#include "cpu/parallel.h"

using bik::cpu::parallel_for;
using bik::cpu::set_num_threads;

TEST(Parallel, EveryIndexOnceAcrossResizes) {
  for (int i = 0; i < 3000; ++i) {
    set_num_threads(1 + i % 5);
    std::vector<std::atomic<int>> hits(97);
    parallel_for(97, 1, [&](int64_t b, int64_t e) {
      for (int64_t j = b; j < e; ++j) hits[size_t(j)]++;
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1) << "iteration " << i;
  }
  set_num_threads(0);
}

TEST(Parallel, ErrorsPropagateAndThePoolSurvives) {
  set_num_threads(4);
  EXPECT_THROW(parallel_for(64, 1, [](int64_t b, int64_t) {
                 if (b > 10) throw std::runtime_error("chunk failed");
               }),
               std::runtime_error);
  std::atomic<int64_t> total{0};
  parallel_for(1000, 1, [&](int64_t b, int64_t e) { total += e - b; });
  EXPECT_EQ(total.load(), 1000);
  set_num_threads(0);
}

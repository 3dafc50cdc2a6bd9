// CPU parallelism: work is split over independent outputs only (rows, tiles), never inside a reduction,
// so the thread count can never change a result.
#pragma once
#include <cstdint>
#include <functional>

namespace bik::cpu {

int num_threads();
void set_num_threads(int n);  // 0 = hardware concurrency (default; BIK_NUM_THREADS overrides)
// Calls fn(begin, end) over contiguous chunks of [0, n), each at least `grain` long, on the pool.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace bik::cpu

// `bik bench attention`: paged causal attention, prefill (TFLOP/s) and decode (GB/s of KV read), for
// batches 1..256 and contexts 512..32k (Hq 32, Hkv 8, head_dim 128, bf16, block size 16).
//
// Method: per case, random q/K/V (never zeros), shuffled physical blocks (--blocks in-order: each sequence's
// blocks consecutive, as a fresh cache hands them out). Two timings:
//  - kernel: the CUDA launches of paged_attention (metadata already validated), captured in a CUDA
//    graph of `launches` calls, replayed --repeats times between events; the median over replays / launches.
//  - call: the public paged_attention() in a loop (it reads the metadata back to validate it, one
//    device synchronisation per call); median over repeats.
//  - sustained (--sustain S): the kernel graph replayed back to back for S / 2 seconds and then S more,
//    over which the time per call, and through NVML the energy per call, the power and the SM clock, are
//    read (bench_util.h's sustain_graph). A burst of replays runs at whatever clock the GPU boosts to; a
//    stream of work, as in serving, runs at the power limit, where the energy of a call sets its time.
// FLOPs (prefill): 4 * Hq * D * sum over sequences of n (n + 1) / 2 (causal, q_len = context).
// Bytes (decode): the K and V of every context position read once. The copy ceiling is cudaMemcpy
// device-to-device over 1 GiB (bytes read + written). bench/torch_attention.py adds torch SDPA's times
// on the same shapes (contiguous K/V, is_causal for prefill); bench/plot_attention.py renders md + png.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench.h"
#include "bench_util.h"
#include "bik/attention.h"
#include "bik/device.h"
#include "bik/tensor.h"
#include "cli.h"

#if BIK_WITH_CUDA
#include <cuda_runtime.h>

#include "core/backend.h"
#include "cuda/check.cuh"
#endif

namespace bik::cli {

#if BIK_WITH_CUDA
namespace {

using bench::median;

double time_graph(const std::function<void(cudaStream_t)>& fn, int launches, int repeats, cudaStream_t st) {
  return bench::time_graph([&](int, cudaStream_t s) { fn(s); }, 1, launches, repeats, st);
}
// Median of single calls (each may synchronise the device inside).
double time_calls(const std::function<void(cudaStream_t)>& fn, int repeats, cudaStream_t st) {
  return bench::time_loop([&](int, cudaStream_t s) { fn(s); }, 1, 1, repeats, st);
}

Tensor random_bf16(const Shape& shape, float amp, uint64_t seed) {
  static std::vector<float> pool = [] {
    std::vector<float> p(size_t(1) << 20);
    std::mt19937_64 g(7);
    std::uniform_real_distribution<float> d(-1.0f, 1.0f);
    for (float& x : p) x = d(g);
    return p;
  }();
  Tensor h = Tensor::empty(shape, DType::BF16);
  const size_t rot = size_t(seed * 7919) % pool.size();
  for (int64_t i = 0; i < h.numel(); ++i) h.ptr<bf16>()[i] = to_bf16(amp * pool[(size_t(i) * 3 + rot) % pool.size()]);
  return h.to(Device::cuda(0));
}

Tensor i32_tensor(const std::vector<int32_t>& v, const Shape& shape) {
  Tensor h = Tensor::empty(shape, DType::I32);
  std::copy(v.begin(), v.end(), h.ptr<int32_t>());
  return h.to(Device::cuda(0));
}

struct Problem {
  Tensor q, out, kc, vc, bt, sl, qsl;
  AttentionArgs args;
};

// batch sequences of context `ctx`, each with q_len query rows.
Problem make_problem(int64_t batch, int64_t ctx, int64_t q_len, int64_t hq, int64_t hkv, int64_t d, int64_t bs,
                     bool shuffled) {
  Problem p;
  const int64_t blocks_per = (ctx + bs - 1) / bs, nb = batch * blocks_per;
  p.kc = random_bf16({nb, bs, hkv, d}, 1.5f, 1);
  p.vc = random_bf16({nb, bs, hkv, d}, 1.0f, 2);
  p.q = random_bf16({batch * q_len, hq, d}, 4.0f, 3);
  p.out = Tensor::empty({batch * q_len, hq, d}, DType::BF16, Device::cuda(0));
  std::vector<int32_t> perm(static_cast<size_t>(nb));
  std::iota(perm.begin(), perm.end(), 0);
  if (shuffled) std::shuffle(perm.begin(), perm.end(), std::mt19937_64(5));
  std::vector<int32_t> sl(static_cast<size_t>(batch), static_cast<int32_t>(ctx)), qsl(static_cast<size_t>(batch + 1));
  for (int64_t i = 0; i <= batch; ++i) qsl[size_t(i)] = int32_t(i * q_len);
  p.bt = i32_tensor(perm, {batch, blocks_per});
  p.sl = i32_tensor(sl, {batch});
  p.qsl = i32_tensor(qsl, {batch + 1});
  AttentionArgs& a = p.args;
  a.out = p.out;
  a.q = p.q;
  a.k_cache = p.kc;
  a.v_cache = p.vc;
  a.block_tables = p.bt;
  a.seq_lens = p.sl;
  a.query_start_loc = p.qsl;
  a.scale = float(1.0 / std::sqrt(double(d)));
  a.tokens = batch * q_len;
  a.num_seqs = batch;
  a.q_heads = hq;
  a.kv_heads = hkv;
  a.head_dim = d;
  a.block_size = bs;
  a.max_q_len = q_len;
  a.max_seq_len = ctx;
  a.host_seq_lens = sl;
  a.host_query_start_loc = qsl;
  return p;
}

}  // namespace

int bench_attention(const std::vector<std::string>& argv) {
  Args args(argv, {"help", "quick"}, {"out", "name", "repeats", "commit", "case", "sustain", "blocks"},
            "bench attention");
  if (args.flag("help")) {
    std::puts(
        "usage: bik bench attention [--out DIR] [--name NAME] [--repeats N] [--quick] [--commit SHA]\n"
        "                          [--case MODE:BATCH:CTX[,...]] [--sustain S] [--blocks shuffled|in-order]\n"
        "Times paged_attention prefill (TFLOP/s) and decode (GB/s of KV read); writes DIR/NAME.json (default\n"
        "bench/results/attention_<gpu>.json). Add torch SDPA: python3 bench/torch_attention.py DIR/NAME.json;\n"
        "render: python3 bench/plot_attention.py DIR/NAME.json\n"
        "--case runs only the listed cases (MODE prefill or decode), e.g. --case prefill:1:8192,decode:1:32768\n"
        "--sustain S also runs each case's kernels back to back for S seconds (after S / 2 of the same) and\n"
        "reports the time per call there, and through NVML the energy per call, the power and the SM clock:\n"
        "under sustained load a GPU runs at its power limit (torch_attention.py --sustain S does the same for SDPA)\n"
        "--blocks: where each sequence's 16-token cache blocks lie in the pool: shuffled (the default: blocks in a\n"
        "random order, as a long-running cache leaves them) or in-order (consecutive, as a fresh cache gives them)");
    return 0;
  }
  const double sustain_s = bench::check_sustain_seconds(args.number("sustain", 0.0), "bik bench attention");
  const std::string blocks = args.str("blocks", "shuffled");
  BIK_CHECK(blocks == "shuffled" || blocks == "in-order", "bik bench attention: --blocks '", blocks,
            "': expected shuffled or in-order");
  if (!bench::have_cuda_device("bik bench attention")) return 2;
  const DeviceProps props = cuda_device_props(0);
  const int repeats = int(args.integer("repeats", 15));
  const bool quick = args.flag("quick");
  const std::string tag = bench::name_tag(props.name);
  const std::string path = args.str("out", "bench/results") + "/" + args.str("name", "attention_" + tag) + ".json";
  const std::string commit = bench::commit_of(args.str("commit", ""));
  const std::string date = bench::utc_now();
  cudaStream_t st = nullptr;
  BIK_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  const int64_t copy_bytes = int64_t(1) << 30;
  void *src = nullptr, *dst = nullptr;
  BIK_CUDA_CHECK(cudaMalloc(&src, size_t(copy_bytes)));
  BIK_CUDA_CHECK(cudaMalloc(&dst, size_t(copy_bytes)));
  BIK_CUDA_CHECK(cudaMemset(src, 0x3c, size_t(copy_bytes)));
  const double t_copy = time_graph(
      [&](cudaStream_t s) {
        BIK_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(copy_bytes), cudaMemcpyDeviceToDevice, s));
      },
      5, repeats, st);
  BIK_CUDA_CHECK(cudaFree(src));
  BIK_CUDA_CHECK(cudaFree(dst));
  const double copy_gbps = 2.0 * double(copy_bytes) / (t_copy * 1e-3) / 1e9;
  std::printf("copy ceiling (1 GiB, read + write): %.0f GB/s\n", copy_gbps);

  const int64_t hq = 32, hkv = 8, d = 128, bs = 16;
  nlohmann::json j = bench::gpu_report("attention", props, commit, date);
  j["config"] = {{"q_heads", hq}, {"kv_heads", hkv}, {"head_dim", d},
                 {"block_size", bs}, {"dtype", "bf16"}, {"blocks", blocks}};
  j["method"] = "kernel: median over " + std::to_string(repeats) +
                " replays of a CUDA graph of launches (metadata validated once); call: median of the public "
                "op in a loop (validation + one device sync per call); prefill flops = 4*Hq*D*sum n(n+1)/2; "
                "decode bytes = K+V of every context position read once";
  if (sustain_s > 0) j["sustain_method"] = bench::sustain_method("the kernel graph replayed", sustain_s);
  j["copy_gbps"] = copy_gbps;
  j["results"] = nlohmann::json::array();
  auto save = [&] {
    std::ofstream f(path);
    if (!f) throw Error("bik bench attention: cannot write " + path);
    f << j.dump(1) << "\n";
  };

  struct Case {
    std::string mode;
    int64_t batch, ctx;
  };
  std::vector<Case> cases;
  const std::vector<int64_t> ctxs = quick ? std::vector<int64_t>{512, 8192} : std::vector<int64_t>{512, 2048, 8192, 32768};
  const std::vector<int64_t> dec_b = quick ? std::vector<int64_t>{1, 64} : std::vector<int64_t>{1, 8, 32, 128, 256};
  const std::vector<int64_t> pre_b = quick ? std::vector<int64_t>{1} : std::vector<int64_t>{1, 4, 16};
  if (args.has("case")) {
    for (const std::string& item : split_list(args.str("case", ""))) {
      Case c;
      const size_t a = item.find(':'), b = a == std::string::npos ? a : item.find(':', a + 1);
      c.mode = item.substr(0, a);
      if (b == std::string::npos || (c.mode != "prefill" && c.mode != "decode"))
        throw Error("bik bench attention: --case '" + item + "': expected MODE:BATCH:CTX with MODE prefill or decode");
      const std::string where = "bik bench attention: --case '" + item + "': ";
      c.batch = positive_integer(item.substr(a + 1, b - a - 1), where + "batch");
      c.ctx = positive_integer(item.substr(b + 1), where + "context");
      cases.push_back(c);
    }
  } else {
    for (int64_t b : pre_b)
      for (int64_t n : ctxs)
        if (b * n <= 65536) cases.push_back({"prefill", b, n});
    for (int64_t b : dec_b)
      for (int64_t n : ctxs)
        if (b * n <= (int64_t(1) << 21)) cases.push_back({"decode", b, n});
  }

  std::printf("%-8s %6s %6s | %10s %10s %10s %8s\n", "mode", "batch", "ctx", "kernel us", "call us", "TFLOP/s", "GB/s");
  int failures = 0;
  for (const Case& c : cases) {
    try {
      const bool pre = c.mode == "prefill";
      Problem p = make_problem(c.batch, c.ctx, pre ? c.ctx : 1, hq, hkv, d, bs, blocks == "shuffled");
      const double flops = 4.0 * double(hq * d) * double(c.batch) *
                           (pre ? double(c.ctx) * double(c.ctx + 1) / 2.0 : double(c.ctx));
      const double kv_bytes = double(c.batch) * double(c.ctx) * double(hkv * d * 2 * 2);
      const int launches = flops > 1e11 ? 3 : 20;
      // The kernels alone (metadata validated once), for the burst timing and the sustained run.
      const auto kernels = [&](int, cudaStream_t s) { cuda::paged_attention(p.args, Stream{s}); };
      const double t_kernel = bench::time_graph(kernels, 1, launches, repeats, st);
      const double t_call = time_calls(
          [&](cudaStream_t s) {
            paged_attention(p.out, p.q, p.kc, p.vc, p.bt, p.sl, p.qsl, p.args.scale, Stream{s});
          },
          repeats, st);
      const double tflops = flops / (t_kernel * 1e-3) / 1e12, gbps = kv_bytes / (t_kernel * 1e-3) / 1e9;
      std::printf("%-8s %6ld %6ld | %10.1f %10.1f %10.1f %8.0f\n", c.mode.c_str(), long(c.batch), long(c.ctx),
                  t_kernel * 1e3, t_call * 1e3, tflops, gbps);
      std::fflush(stdout);
      j["results"].push_back({{"mode", c.mode},
                              {"batch", c.batch},
                              {"ctx", c.ctx},
                              {"q_len", pre ? c.ctx : 1},
                              {"flops", flops},
                              {"kv_bytes", kv_bytes},
                              {"bik_ms", t_kernel},
                              {"bik_call_ms", t_call},
                              {"bik_tflops", tflops},
                              {"bik_gbps", gbps},
                              {"bik_frac_of_copy", gbps / copy_gbps}});
      if (sustain_s > 0) {
        const bench::Sustained t = bench::sustain_graph(kernels, 1, launches, sustain_s / 2, sustain_s, st);
        std::printf("%-8s %6s %6s   sustained: %s\n", "", "", "", bench::describe(t).c_str());
        std::fflush(stdout);
        j["results"].back()["sustained"] = bench::to_json(t);
      }
      save();
    } catch (const std::exception& e) {
      std::printf("%-8s %6ld %6ld | failed: %s\n", c.mode.c_str(), long(c.batch), long(c.ctx), e.what());
      ++failures;
      bench::recover_stream(st);
    }
  }
  BIK_CUDA_CHECK(cudaStreamDestroy(st));
  save();
  std::printf("wrote %s\n", path.c_str());
  return failures == 0 ? 0 : 1;
}
#else
int bench_attention(const std::vector<std::string>&) {
  std::fprintf(stderr, "bik bench attention: this build has no CUDA backend\n");
  return 2;
}
#endif

}  // namespace bik::cli

// `bik bench ops`: the CUDA memory-bound ops (norms, softmax, reductions, element-wise, gathers) and
// sampling, as achieved bandwidth against the device's copy ceiling.
//
// Method: per case, a warm-up, then a CUDA graph of `launches` launches rotating over enough input sets
// that one pass over them exceeds twice the L2 cache (at most 8 sets); the graph is replayed `--repeats`
// times between events and the median replay time over the launches is the time of one call. sample and
// logprobs are timed that way too, for their kernels: sample's call is captured as it is (its batches of at
// most 768 rows pass their params in the launch, with no host wait), logprobs through cuda::logprobs_launch
// (its kernel without the wait for the token check). Each is also timed as a plain loop of public calls
// between events ("call_ms"; logprobs then waits for its kernel in every call), which is what PyTorch's
// compositions are compared with. Bytes are the fewest a call must move: each input read
// once, each output written once. The copy ceiling is cudaMemcpyAsync device-to-device over 1 GiB,
// counting bytes read plus bytes written (bench/torch_ops.py adds a copy kernel's figure: torch's copy_).
// Output: JSON (device, commit, date, every timing) under --out; bench/torch_ops.py adds PyTorch's
// times for the same cases, and bench/plot_ops.py renders the markdown table and the plot.
#include <algorithm>
#include <cctype>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench.h"
#include "bench_util.h"
#include "bik/device.h"
#include "bik/ops.h"
#include "bik/sampling.h"
#include "bik/tensor.h"
#include "cli.h"

#if BIK_WITH_CUDA
#include <cuda_runtime.h>

#include "cuda/check.cuh"
#include "cuda/sampling.h"
#endif

namespace bik::cli {

#if BIK_WITH_CUDA
namespace {

using bench::median;
using bench::time_graph;
using bench::time_loop;

// Random contents without drawing a number per element: a pool of random values of the dtype, copied
// with a different rotation per tensor.
Tensor random_tensor(const Shape& shape, DType t, double scale, uint64_t salt) {
  static std::vector<float> pool = [] {
    std::vector<float> p(size_t(1) << 20);
    std::mt19937_64 g(42);
    std::normal_distribution<float> d(0.0f, 1.0f);
    for (float& x : p) x = d(g);
    return p;
  }();
  Tensor h = Tensor::empty(shape, t);
  const int64_t n = h.numel(), es = dtype_size(t);
  const size_t rot = size_t(salt * 7919) % pool.size();
  auto* bytes = static_cast<uint8_t*>(h.data());
  for (int64_t i = 0; i < n; ++i) {
    const float v = float(scale) * pool[(size_t(i) + rot) % pool.size()];
    switch (t) {
      case DType::F32: reinterpret_cast<float*>(bytes)[i] = v; break;
      case DType::F16: reinterpret_cast<f16*>(bytes)[i] = to_f16(v); break;
      case DType::BF16: reinterpret_cast<bf16*>(bytes)[i] = to_bf16(v); break;
      default: break;
    }
  }
  (void)es;
  return h.to(Device::cuda(0));
}

Tensor random_ids(int64_t count, int64_t hi, uint64_t salt) {
  Tensor h = Tensor::empty({count}, DType::I32);
  std::mt19937_64 g(salt);
  for (int64_t i = 0; i < count; ++i) h.ptr<int32_t>()[i] = int32_t(g() % uint64_t(hi));
  return h.to(Device::cuda(0));
}

using Launch = std::function<void(int set, cudaStream_t)>;

// One benchmark case: what torch_ops.py needs to rebuild it (op, dtypes, shape), the bytes it must
// move, and how to launch it on input set i.
struct Case {
  std::string op, dtype, out_dtype;
  nlohmann::json shape;  // op-specific sizes
  double bytes = 0;      // minimal bytes moved by one call
  double input_bytes = 0;
  std::function<Launch(int sets)> setup;  // allocates `sets` input sets, returns the launcher
  // Instead of setup, for ops whose public call waits for the host: returns the launcher of the kernel
  // alone (capturable) and the public call's, on the same inputs; the call is also timed (call_ms).
  std::function<std::pair<Launch, Launch>(int sets)> setup_both;
};

DType dt_of(const std::string& s) { return parse_dtype(s); }

std::vector<Case> make_cases(bool quick) {
  std::vector<Case> cs;
  auto ms = [&](std::vector<int64_t> v) {
    if (quick) v.resize(std::min<size_t>(v.size(), 2));
    return v;
  };
  for (bool res : {false, true})
    for (int64_t m : ms({1, 64, 1024, 16384})) {
      const int64_t n = 4096;
      Case c{res ? "rms_norm_residual" : "rms_norm", "bf16", "bf16", {{"m", m}, {"n", n}}};
      c.input_bytes = double(m * n * 2) * (res ? 2 : 1);
      c.bytes = c.input_bytes + double(m * n * 2) * (res ? 2 : 1) + double(n * 2);
      c.setup = [=](int sets) {
        auto xs = std::make_shared<std::vector<Tensor>>(), rs = std::make_shared<std::vector<Tensor>>();
        for (int i = 0; i < sets; ++i) {
          xs->push_back(random_tensor({m, n}, DType::BF16, 1.0, uint64_t(i)));
          if (res) rs->push_back(random_tensor({m, n}, DType::BF16, 1.0, uint64_t(100 + i)));
        }
        auto w = std::make_shared<Tensor>(random_tensor({n}, DType::BF16, 0.2, 7));
        auto out = std::make_shared<Tensor>(Tensor::empty({m, n}, DType::BF16, Device::cuda(0)));
        return Launch([=](int i, cudaStream_t st) {
          if (res)
            rms_norm(*out, (*xs)[size_t(i)], *w, 1e-6f, (*rs)[size_t(i)].view(), Stream{st});
          else
            rms_norm(*out, (*xs)[size_t(i)], *w, 1e-6f, std::nullopt, Stream{st});
        });
      };
      cs.push_back(c);
    }
  for (int64_t m : ms({1, 1024, 16384})) {
    const int64_t n = 4096;
    Case c{"layer_norm", "bf16", "bf16", {{"m", m}, {"n", n}}};
    c.input_bytes = double(m * n * 2);
    c.bytes = 2.0 * double(m * n * 2) + double(2 * n * 2);
    c.setup = [=](int sets) {
      auto xs = std::make_shared<std::vector<Tensor>>();
      for (int i = 0; i < sets; ++i) xs->push_back(random_tensor({m, n}, DType::BF16, 1.0, uint64_t(i)));
      auto w = std::make_shared<Tensor>(random_tensor({n}, DType::BF16, 0.2, 7));
      auto b = std::make_shared<Tensor>(random_tensor({n}, DType::BF16, 0.2, 8));
      auto out = std::make_shared<Tensor>(Tensor::empty({m, n}, DType::BF16, Device::cuda(0)));
      return Launch([=](int i, cudaStream_t st) {
        layer_norm(*out, (*xs)[size_t(i)], w->view(), b->view(), 1e-5f, Stream{st});
      });
    };
    cs.push_back(c);
  }
  struct Sm {
    const char* op;
    const char* in;
    const char* out;
    int64_t n;
    bool log;
  };
  for (Sm s : {Sm{"softmax", "f32", "f32", 32000, false}, Sm{"log_softmax", "bf16", "f32", 151936, true}})
    for (int64_t m : ms({1, 64, 512, 2048})) {
      const DType it = dt_of(s.in), ot = dt_of(s.out);
      const int64_t n = s.n;
      Case c{s.op, s.in, s.out, {{"m", m}, {"n", n}}};
      c.input_bytes = double(m * n * dtype_size(it));
      c.bytes = c.input_bytes + double(m * n * dtype_size(ot));
      const bool log = s.log;
      c.setup = [=](int sets) {
        auto xs = std::make_shared<std::vector<Tensor>>();
        for (int i = 0; i < sets; ++i) xs->push_back(random_tensor({m, n}, it, 3.0, uint64_t(i)));
        auto out = std::make_shared<Tensor>(Tensor::empty({m, n}, ot, Device::cuda(0)));
        return Launch([=](int i, cudaStream_t st) {
          if (log)
            log_softmax(*out, (*xs)[size_t(i)], Stream{st});
          else
            softmax(*out, (*xs)[size_t(i)], Stream{st});
        });
      };
      cs.push_back(c);
    }
  for (int64_t m : ms({1, 1024, 16384})) {
    const int64_t n = 4096;
    Case c{"sum", "bf16", "f32", {{"m", m}, {"n", n}}};
    c.input_bytes = double(m * n * 2);
    c.bytes = c.input_bytes + double(m * 4);
    c.setup = [=](int sets) {
      auto xs = std::make_shared<std::vector<Tensor>>();
      for (int i = 0; i < sets; ++i) xs->push_back(random_tensor({m, n}, DType::BF16, 1.0, uint64_t(i)));
      auto out = std::make_shared<Tensor>(Tensor::empty({m}, DType::F32, Device::cuda(0)));
      return Launch([=](int i, cudaStream_t st) { sum(*out, (*xs)[size_t(i)], {-1}, false, Stream{st}); });
    };
    cs.push_back(c);
  }
  // Sum over dim 0 of x [k, n] (the reduced elements far apart, the outputs adjacent).
  for (int64_t n : ms({1024, 16384})) {
    const int64_t k = 4096;
    Case c{"sum_dim0", "bf16", "f32", {{"k", k}, {"n", n}}};
    c.input_bytes = double(k * n * 2);
    c.bytes = c.input_bytes + double(n * 4);
    c.setup = [=](int sets) {
      auto xs = std::make_shared<std::vector<Tensor>>();
      for (int i = 0; i < sets; ++i) xs->push_back(random_tensor({k, n}, DType::BF16, 1.0, uint64_t(i)));
      auto out = std::make_shared<Tensor>(Tensor::empty({n}, DType::F32, Device::cuda(0)));
      return Launch([=](int i, cudaStream_t st) { sum(*out, (*xs)[size_t(i)], {0}, false, Stream{st}); });
    };
    cs.push_back(c);
  }
  for (int64_t m : ms({1, 64, 512, 2048})) {
    const int64_t n = 151936;
    Case c{"argmax", "bf16", "i32", {{"m", m}, {"n", n}}};
    c.input_bytes = double(m * n * 2);
    c.bytes = c.input_bytes + double(m * 4);
    c.setup = [=](int sets) {
      auto xs = std::make_shared<std::vector<Tensor>>();
      for (int i = 0; i < sets; ++i) xs->push_back(random_tensor({m, n}, DType::BF16, 3.0, uint64_t(i)));
      auto out = std::make_shared<Tensor>(Tensor::empty({m}, DType::I32, Device::cuda(0)));
      return Launch([=](int i, cudaStream_t st) { argmax(*out, (*xs)[size_t(i)], Stream{st}); });
    };
    cs.push_back(c);
  }
  for (int64_t m : ms({1, 64, 1024, 8192})) {
    const int64_t d = 14336;
    Case c{"silu_and_mul", "bf16", "bf16", {{"m", m}, {"d", d}}};
    c.input_bytes = double(m * 2 * d * 2);
    c.bytes = c.input_bytes + double(m * d * 2);
    c.setup = [=](int sets) {
      auto xs = std::make_shared<std::vector<Tensor>>();
      for (int i = 0; i < sets; ++i) xs->push_back(random_tensor({m, 2 * d}, DType::BF16, 2.0, uint64_t(i)));
      auto out = std::make_shared<Tensor>(Tensor::empty({m, d}, DType::BF16, Device::cuda(0)));
      return Launch([=](int i, cudaStream_t st) { silu_and_mul(*out, (*xs)[size_t(i)], Stream{st}); });
    };
    cs.push_back(c);
  }
  for (int64_t t : ms({1, 64, 1024, 16384})) {
    const int64_t hq = 32, hk = 8, d = 128, rot = 128, max_pos = 8192;
    Case c{"rotary_neox", "bf16", "bf16", {{"t", t}, {"hq", hq}, {"hk", hk}, {"d", d}, {"rot", rot}, {"max_pos", max_pos}}};
    c.input_bytes = double(t * (hq + hk) * d * 2);
    c.bytes = 2.0 * c.input_bytes + double(t * 4) + double(t * rot * 4);
    c.setup = [=](int sets) {
      auto qs = std::make_shared<std::vector<Tensor>>(), ks = std::make_shared<std::vector<Tensor>>();
      for (int i = 0; i < sets; ++i) {
        qs->push_back(random_tensor({t, hq, d}, DType::BF16, 1.0, uint64_t(i)));
        ks->push_back(random_tensor({t, hk, d}, DType::BF16, 1.0, uint64_t(50 + i)));
      }
      auto pos = std::make_shared<Tensor>(random_ids(t, max_pos, 3));
      auto cs_tab = std::make_shared<Tensor>(rope_cos_sin_table(max_pos, rot, 10000.0, Device::cuda(0)));
      return Launch([=](int i, cudaStream_t st) {
        rotary_embedding((*qs)[size_t(i)], (*ks)[size_t(i)], *pos, *cs_tab, true, Stream{st});
      });
    };
    cs.push_back(c);
  }
  for (int64_t t : ms({1, 64, 1024, 8192})) {
    const int64_t vocab = 151936, d = 4096;
    Case c{"embedding", "bf16", "bf16", {{"t", t}, {"vocab", vocab}, {"d", d}}};
    c.input_bytes = double(t * d * 2);
    c.bytes = 2.0 * double(t * d * 2) + double(t * 4);
    c.setup = [=](int sets) {
      auto table = std::make_shared<Tensor>(random_tensor({vocab, d}, DType::BF16, 1.0, 1));
      auto ids = std::make_shared<std::vector<Tensor>>();
      for (int i = 0; i < sets; ++i) ids->push_back(random_ids(t, vocab, uint64_t(i)));
      auto out = std::make_shared<Tensor>(Tensor::empty({t, d}, DType::BF16, Device::cuda(0)));
      return Launch([=](int i, cudaStream_t st) { embedding(*out, (*ids)[size_t(i)], *table, Stream{st}); });
    };
    cs.push_back(c);
  }
  for (int64_t m : ms({1, 64, 256})) {
    const int64_t vocab = 151936;
    for (int kind = 0; kind < 3; ++kind) {
      const char* names[] = {"sample_topk_topp", "logprobs_top20", "sample_temperature"};
      Case c{names[kind], "f32", "i32", {{"m", m}, {"n", vocab}}};
      c.input_bytes = double(m * vocab * 4);
      c.bytes = c.input_bytes;
      c.setup_both = [=](int sets) {
        auto xs = std::make_shared<std::vector<Tensor>>();
        for (int i = 0; i < sets; ++i) xs->push_back(random_tensor({m, vocab}, DType::F32, 3.0, uint64_t(i)));
        auto tok = std::make_shared<Tensor>(random_ids(m, vocab, 9));
        auto chosen = std::make_shared<Tensor>(Tensor::empty({m}, DType::F32, Device::cuda(0)));
        auto ids = std::make_shared<Tensor>(Tensor::empty({m, 20}, DType::I32, Device::cuda(0)));
        auto vals = std::make_shared<Tensor>(Tensor::empty({m, 20}, DType::F32, Device::cuda(0)));
        std::vector<SamplingParams> ps(static_cast<size_t>(m));
        for (int64_t r = 0; r < m; ++r) {
          ps[size_t(r)].temperature = 0.8f;
          if (kind == 0) {
            ps[size_t(r)].top_k = 50;
            ps[size_t(r)].top_p = 0.9f;
          }
          ps[size_t(r)].seed = uint64_t(r);
          ps[size_t(r)].position = 1000 + r;
        }
        Launch call([=](int i, cudaStream_t st) {
          if (kind == 1)
            logprobs(*chosen, *ids, *vals, (*xs)[size_t(i)], *tok, Stream{st});
          else
            sample(*tok, (*xs)[size_t(i)], ps, Stream{st});
        });
        if (kind != 1) return std::make_pair(call, call);
        // The token check's flag in device memory (the inputs' tokens are all valid: it stays 0).
        auto bad = std::make_shared<Tensor>(Tensor::empty({1}, DType::I32, Device::cuda(0)));
        BIK_CUDA_CHECK(cudaMemset(bad->data(), 0, sizeof(int32_t)));
        Launch kernel([=](int i, cudaStream_t st) {
          cuda::logprobs_launch(*chosen, *ids, *vals, (*xs)[size_t(i)], *tok, bad->ptr<int32_t>(), Stream{st});
        });
        return std::make_pair(kernel, call);
      };
      cs.push_back(c);
    }
  }
  return cs;
}

}  // namespace

int bench_ops(const std::vector<std::string>& argv) {
  Args args(argv, {"help", "quick"}, {"out", "name", "ops", "repeats", "commit"}, "bench ops");
  if (args.flag("help")) {
    std::puts(
        "usage: bik bench ops [--out DIR] [--name NAME] [--ops op1,op2] [--repeats N] [--quick] [--commit SHA]\n"
        "Times the CUDA memory-bound ops against the copy ceiling; writes DIR/NAME.json (default\n"
        "bench/results/ops_<gpu>.json). Add PyTorch's times: python3 bench/torch_ops.py DIR/NAME.json;\n"
        "render: python3 bench/plot_ops.py DIR/NAME.json");
    return 0;
  }
  if (!bench::have_cuda_device("bik bench ops")) return 2;
  const DeviceProps props = cuda_device_props(0);
  const int repeats = int(args.integer("repeats", 15));
  std::vector<std::string> only;
  if (args.has("ops")) only = split_list(args.str("ops"));
  const std::string gpu_tag = bench::name_tag(props.name);
  const std::string out_dir = args.str("out", "bench/results");
  const std::string name = args.str("name", "ops_" + gpu_tag);
  const std::string commit = bench::commit_of(args.str("commit", ""));
  const std::string date = bench::utc_now();

  cudaStream_t st = nullptr;
  BIK_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));

  // The copy ceiling.
  const int64_t copy_bytes = int64_t(1) << 30;
  void *src = nullptr, *dst = nullptr;
  BIK_CUDA_CHECK(cudaMalloc(&src, size_t(copy_bytes)));
  BIK_CUDA_CHECK(cudaMalloc(&dst, size_t(copy_bytes)));
  BIK_CUDA_CHECK(cudaMemset(src, 0x3c, size_t(copy_bytes)));
  const double t_memcpy = time_graph(
      [&](int, cudaStream_t s) {
        BIK_CUDA_CHECK(cudaMemcpyAsync(dst, src, size_t(copy_bytes), cudaMemcpyDeviceToDevice, s));
      },
      1, 5, repeats, st);
  BIK_CUDA_CHECK(cudaFree(src));
  BIK_CUDA_CHECK(cudaFree(dst));
  const double gbps_memcpy = 2.0 * double(copy_bytes) / (t_memcpy * 1e-3) / 1e9;
  const double ceiling = gbps_memcpy;
  std::printf("copy ceiling (1 GiB, read + write): cudaMemcpy D2D %.0f GB/s\n", gbps_memcpy);

  nlohmann::json j = bench::gpu_report("ops", props, commit, date);
  j["method"] = "median over " + std::to_string(repeats) +
                " replays of a CUDA graph of launches rotating input sets (> 2x L2 when they fit in 8 sets); "
                "sample/logprobs: their kernels so (logprobs without the wait of its token check), and their public "
                "calls as a plain loop between events (call us); bytes = inputs read once + outputs written once";
  j["copy_gbps_memcpy"] = gbps_memcpy;
  j["copy_gbps"] = ceiling;
  j["results"] = nlohmann::json::array();

  const std::string path = out_dir + "/" + name + ".json";
  // Written after every case, so a run cut short still leaves the cases it finished.
  auto save = [&]() {
    std::ofstream f(path);
    if (!f) throw Error("bik bench ops: cannot write " + path);
    f << j.dump(1) << "\n";
  };
  int failures = 0;
  std::printf("%-18s %-10s %-28s | %10s %9s %7s\n", "op", "dtype", "shape", "bik us", "GB/s", "% copy");
  for (Case& c : make_cases(args.flag("quick"))) {
    if (!only.empty() && std::find(only.begin(), only.end(), c.op) == only.end()) continue;
    const int sets =
        int(std::clamp<double>(std::ceil(2.0 * double(props.l2_bytes) / std::max(1.0, c.input_bytes)), 1.0, 8.0));
    const int launches = c.bytes > 64e6 ? 5 : 20;
    double t = 0, t_call = 0;
    bool graph = false;
    try {
      if (c.setup_both) {
        const auto [kernel, call] = c.setup_both(sets);
        t = time_graph(kernel, sets, launches, repeats, st, &graph);
        t_call = time_loop(call, sets, launches, repeats, st);
      } else {
        t = time_graph(c.setup(sets), sets, launches, repeats, st, &graph);
      }
    } catch (const std::exception& e) {
      std::printf("%-18s %-28s | failed: %s\n", c.op.c_str(), c.shape.dump().c_str(), e.what());
      ++failures;
      bench::recover_stream(st);
      continue;
    }
    const double gbps = c.bytes / (t * 1e-3) / 1e9;
    std::printf("%-18s %-10s %-28s | %10.2f %9.0f %6.1f%%", c.op.c_str(), (c.dtype + "->" + c.out_dtype).c_str(),
                c.shape.dump().c_str(), t * 1e3, gbps, 100.0 * gbps / ceiling);
    if (c.setup_both) std::printf("   call %.2f us", t_call * 1e3);
    std::printf("%s\n", graph ? "" : "   (not captured: plain launches)");
    std::fflush(stdout);
    j["results"].push_back({{"op", c.op},
                            {"dtype", c.dtype},
                            {"out_dtype", c.out_dtype},
                            {"shape", c.shape},
                            {"bytes", c.bytes},
                            {"bik_ms", t},
                            {"bik_gbps", gbps},
                            {"frac_of_copy", gbps / ceiling},
                            {"input_sets", sets},
                            {"launches", launches},
                            {"timing", graph ? "graph" : "loop"}});
    if (c.setup_both) {
      j["results"].back()["call_ms"] = t_call;
      j["results"].back()["call_timing"] = "loop";
    }
    save();
  }
  BIK_CUDA_CHECK(cudaStreamDestroy(st));
  save();
  std::printf("wrote %s\n", path.c_str());
  return failures == 0 ? 0 : 1;
}
#else
int bench_ops(const std::vector<std::string>&) {
  std::fprintf(stderr, "bik bench ops: this build has no CUDA backend\n");
  return 2;
}
#endif

}  // namespace bik::cli

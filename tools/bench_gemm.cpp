// `bik bench gemm`: the CUDA GEMM (bik::mm) against cuBLASLt's default heuristic on the shapes of a
// transformer layer, for M = 1, 2, 4, ..., 16384.
//
// Method: per (shape, M, implementation), a warm-up, then a CUDA graph of `--launches` launches that
// rotate over enough input sets (A and W) to exceed twice the L2 cache, so every launch reads its operands
// from device memory; the graph is replayed `--repeats` times between events and the median replay time,
// divided by the launches in it, is the time of one GEMM. Graph replays keep host launch gaps out of the
// numbers of the small, microsecond-scale problems. Inputs are uniform random values, never zeros.
// Output: JSON (device, commit, date, every timing) under --out; bench/plot_gemm.py turns it into the
// markdown table and the plot.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cctype>
#include <ctime>
#include <functional>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench.h"
#include "bench_util.h"
#include "bik/attention.h"
#include "bik/device.h"
#include "bik/ops.h"
#include "bik/tensor.h"
#include "cli.h"

#if BIK_WITH_CUDA
#include <cuda_runtime.h>

#include "core/backend.h"
#include "cuda/check.cuh"
#include "cuda/cublas_gemm.h"
#include "cuda/gemm.h"
#endif

namespace bik::cli {

#if BIK_WITH_CUDA
namespace {

struct Shape2 {
  int64_t k, n;
  const char* what;
};
constexpr size_t kTableShapes = 8;
const std::vector<Shape2>& bench_shapes() {
  // Fused projections first (q/k/v and gate/up of an 8B model), then the unfused ones an engine runs today:
  // k or v alone (8 KV heads of 128) and gate or up alone; q alone is o-proj's shape. New shapes go at the
  // end so that --shapes indices keep their meaning; the table (no --shapes) runs the first kTableShapes,
  // so its rows stay comparable from run to run (8: the 8B model's lm-head, for serving's shapes).
  static const std::vector<Shape2> s = {{4096, 6144, "qkv"},       {4096, 4096, "o-proj"},    {4096, 24576, "gate-up"},
                                        {12288, 4096, "down"},     {1024, 151936, "lm-head"}, {4095, 1000, "odd"},
                                        {4096, 1024, "kv"},        {4096, 12288, "gate"},     {4096, 151936, "lm-head-8b"}};
  return s;
}

// Tiles whose epilogue is written for 16-bit outputs: the swapped and pair tiles (columns of the output) and
// the experimental split tiles (staged 16-byte stores).
bool sixteen_bit_only(const std::string& tile) {
  return tile.rfind("swap", 0) == 0 || tile.rfind("pair", 0) == 0 || tile.rfind("split", 0) == 0;
}

}  // namespace

int bench_gemm(const std::vector<std::string>& argv) {
  Args args(argv, {"help", "sweep", "gated"},
            {"out", "name", "m", "shapes", "dtype", "out-dtype", "repeats", "launches", "commit", "sustain", "tiles",
             "qkv"},
            "bench gemm");
  if (args.flag("help")) {
    std::puts(
        "usage: bik bench gemm [--out DIR] [--name NAME] [--m 1,2,4,...] [--shapes 0,1,..] [--dtype bf16|f16]\n"
        "                      [--out-dtype in|f32] [--repeats N] [--launches N] [--commit SHA] [--sweep]\n"
        "                      [--gated] [--sustain S] [--qkv HQ:HK:D]\n"
        "--sweep also times every wgmma tile shape (sm_90) for every problem.\n"
        "--gated times the gated product instead (mm_silu_and_mul: N = 2 d weight rows, out [M, d]) against\n"
        "cuBLASLt's product followed by silu_and_mul; with --sweep, every BIK_GEMM_GLU_SWAP mode as well.\n"
        "--qkv HQ:HK:D times qkv_projection instead (N = (HQ + 2 HK) D stacked q|k|v rows; q and k heads normed\n"
        "and rotated, k and v into a paged cache), fused and as its calls, against cuBLASLt's product then the calls;\n"
        "without --shapes, on the listed shapes of that N.\n"
        "--out-dtype f32 writes the plain product in f32 (as the engine's lm-head writes logits), cuBLASLt too;\n"
        "--sweep then times the unswapped tiles only (the swapped and pair tiles' column epilogues take 16-bit\n"
        "outputs). Default: in (the input dtype).\n"
        "--sustain S also runs each side back to back for S seconds (after S / 2 of the same) and reports the\n"
        "time per call there, and through NVML the energy per call, the power and the SM clock: under sustained\n"
        "load a GPU runs at its power limit, so energy per call sets the pace, as in serving. --tiles T1,T2,..\n"
        "(with --sustain, sm_90) runs those wgmma tiles (names as --sweep prints them, or the experimental split\n"
        "tiles split64x64, split64x128, split128x128: other bits, a K split) the same way too.\n"
        "Times bik::mm against cuBLASLt's default heuristic; writes DIR/NAME.json (default\n"
        "bench/results/gemm_<gpu>.json, with --gated gemm_gated_<gpu>.json).\n"
        "Render with: python3 bench/plot_gemm.py DIR/NAME.json\n"
        "Shapes (--shapes index: name K x N; without --shapes: 0 to 7):");
    for (size_t i = 0; i < bench_shapes().size(); ++i)
      std::printf("  %zu: %s %lld x %lld\n", i, bench_shapes()[i].what, (long long)bench_shapes()[i].k,
                  (long long)bench_shapes()[i].n);
    return 0;
  }
  // --sustain (bench_util.h: each side back to back under sustained load) and --tiles, checked before the device.
  const double sustain_s = bench::check_sustain_seconds(args.number("sustain", 0.0), "bik bench gemm");
  BIK_CHECK(!args.has("tiles") || sustain_s > 0, "bik bench gemm: --tiles needs --sustain S (S > 0)");
  BIK_CHECK(!args.has("tiles") || !args.flag("gated"), "bik bench gemm: --tiles applies to the plain product, not --gated");
  std::vector<int64_t> qkv_heads;  // --qkv HQ:HK:D
  if (args.has("qkv")) {
    const std::string spec = args.str("qkv");
    for (size_t at = 0; at <= spec.size();) {
      const size_t colon = std::min(spec.find(':', at), spec.size());
      const std::string v = spec.substr(at, colon - at);
      char* end = nullptr;
      const long long x = std::strtoll(v.c_str(), &end, 10);
      qkv_heads.push_back(!v.empty() && *end == 0 ? x : -1);
      at = colon + 1;
    }
    BIK_CHECK(qkv_heads.size() == 3 && qkv_heads[0] > 0 && qkv_heads[1] > 0 && qkv_heads[2] > 0,
              "bik bench gemm: --qkv expects HQ:HK:D (three positive integers), got '", args.str("qkv"), "'");
    BIK_CHECK(!args.flag("gated") && !args.has("tiles") && !args.flag("sweep"),
              "bik bench gemm: --qkv takes none of --gated, --tiles, --sweep");
  }
  const std::string dt_name = args.str("dtype", "bf16"), out_dt_name = args.str("out-dtype", "in");
  BIK_CHECK(dt_name == "bf16" || dt_name == "f16", "bik bench gemm: --dtype must be bf16 or f16, got '", dt_name, "'");
  BIK_CHECK(out_dt_name == "in" || out_dt_name == "f32", "bik bench gemm: --out-dtype must be in or f32, got '",
            out_dt_name, "'");
  BIK_CHECK(out_dt_name == "in" || (!args.flag("gated") && !args.has("qkv")),
            "bik bench gemm: --out-dtype f32 applies to the plain product, not --gated or --qkv");
  const DType dt = dt_name == "f16" ? DType::F16 : DType::BF16;
  const DType out_dt = out_dt_name == "f32" ? DType::F32 : dt;
  // --tiles: known names, and with an f32 output none whose epilogue takes 16-bit outputs only.
  std::vector<std::string> tiles;
  if (args.has("tiles")) {
    std::vector<std::string> known = cuda::gemm_sm90_tiles();
    for (const std::string& t : cuda::gemm_sm90_split_tiles()) known.push_back(t);  // experimental
    for (const std::string& tile : split_list(args.str("tiles"))) {
      BIK_CHECK(std::find(known.begin(), known.end(), tile) != known.end(), "bik bench gemm: --tiles '", tile,
                "': not a wgmma tile (--sweep lists them)");
      BIK_CHECK(out_dt != DType::F32 || !sixteen_bit_only(tile), "bik bench gemm: --tiles '", tile,
                "' writes 16-bit outputs only, not --out-dtype f32");
      tiles.push_back(tile);
    }
  }
  const int repeats = int(args.integer("repeats", 15)), launches_max = int(args.integer("launches", 20));
  std::vector<int64_t> ms;
  if (args.has("m")) {
    for (const auto& s : split_list(args.str("m"))) ms.push_back(std::stoll(s));
  } else {
    for (int64_t m = 1; m <= 16384; m *= 2) ms.push_back(m);
  }
  std::vector<Shape2> shapes;
  if (args.has("shapes")) {
    for (const auto& s : split_list(args.str("shapes"))) {
      char* end = nullptr;
      const long long i = std::strtoll(s.c_str(), &end, 10);
      BIK_CHECK(*end == 0 && i >= 0 && i < (long long)bench_shapes().size(), "bik bench gemm: --shapes '", s,
                "': expected an index in [0, ", bench_shapes().size() - 1, "] (--help lists them)");
      shapes.push_back(bench_shapes()[size_t(i)]);
    }
  } else if (qkv_heads.empty()) {
    // The table's shapes: the first kTableShapes (later ones only on request, --shapes).
    shapes.assign(bench_shapes().begin(), bench_shapes().begin() + kTableShapes);
  }
  if (!qkv_heads.empty()) {
    // qkv_projection needs N = (HQ + 2 HK) D: without --shapes, every listed shape of that N; checked before
    // any device work, so a wrong pick fails at once rather than after the shapes before it.
    const int64_t n_qkv = (qkv_heads[0] + 2 * qkv_heads[1]) * qkv_heads[2];
    if (!args.has("shapes"))
      for (const Shape2& s : bench_shapes())
        if (s.n == n_qkv) shapes.push_back(s);
    BIK_CHECK(!shapes.empty(), "bik bench gemm --qkv: no listed shape has N = (HQ + 2 HK) D = ", n_qkv,
              " (--help lists them)");
    for (const Shape2& s : shapes)
      BIK_CHECK(s.n == n_qkv, "bik bench gemm --qkv: shape ", s.what, " has N = ", s.n, ", not (HQ + 2 HK) D = ",
                n_qkv);
  }
  if (!bench::have_cuda_device("bik bench gemm")) return 2;
  const DeviceProps props = cuda_device_props(0);
  const std::string gpu_tag = bench::name_tag(props.name);
  const std::string out_dir = args.str("out", "bench/results");
  // --gated writes its own file by default: the plain table (gemm_<gpu>.json) stays as it is.
  const std::string name = args.str("name", (args.flag("gated")  ? "gemm_gated_"
                                             : args.has("qkv")     ? "gemm_qkv_"
                                             : out_dt != dt        ? "gemm_f32out_"
                                                                   : "gemm_") +
                                                gpu_tag);

  const std::string commit = bench::commit_of(args.str("commit", ""));
  const std::string date = bench::utc_now();

  nlohmann::json j = bench::gpu_report("gemm", props, commit, date);
  j["dtype"] = dtype_name(dt);
  j["out_dtype"] = dtype_name(out_dt);
  j["layout"] = out_dt == dt ? "out[M,N] = a[M,K] * w[N,K]^T, row-major, out in the input dtype, no bias"
                             : "out[M,N] = a[M,K] * w[N,K]^T, row-major, out in f32, no bias";
  j["method"] = "median over " + std::to_string(repeats) + " replays of a CUDA graph of up to " +
                std::to_string(launches_max) + " launches rotating input sets > 2x L2; time per launch";
  j["baseline"] = "cuBLASLt, default heuristic (first algorithm, 32 MiB workspace)";
  j["host_method"] = "bik_host_us / cublaslt_host_us: host time of one call, 32 calls enqueued back to back after "
                     "a warm-up call, median of 5 rounds";
  j["results"] = nlohmann::json::array();

  const std::string path = out_dir + "/" + name + ".json";
  auto write_json = [&] {  // after every shape too, so a run cut short keeps what it measured
    std::ofstream f(path);
    if (!f) {
      std::fprintf(stderr, "bik bench gemm: cannot write %s\n", path.c_str());
      return false;
    }
    f << j.dump(1) << "\n";
    return bool(f);
  };

  // --sustain: both sides back to back under sustained load, as one JSON object and one line.
  if (sustain_s > 0) j["sustain_method"] = bench::sustain_method("each side's calls", sustain_s);
  auto sustained = [&](const std::function<void(int, cudaStream_t)>& bik_launch,
                       const std::function<void(int, cudaStream_t)>& base_launch, int sets, int launches,
                       nlohmann::json& row, cudaStream_t stream) {
    if (sustain_s <= 0) return;
    const bench::Sustained b = bench::sustain_graph(bik_launch, sets, launches, sustain_s / 2, sustain_s, stream);
    const bench::Sustained c = bench::sustain_graph(base_launch, sets, launches, sustain_s / 2, sustain_s, stream);
    nlohmann::json o = {{"bik_ms", b.ms}, {"base_ms", c.ms}, {"ratio", c.ms / b.ms}};
    char energy[32] = "";  // the energy ratio where both sides read it
    if (b.energy && c.energy) {
      o.update({{"bik_mj", b.mj}, {"base_mj", c.mj}, {"energy_ratio", c.mj / b.mj}, {"bik_watts", b.watts},
                {"base_watts", c.watts}, {"bik_sm_mhz", b.sm_mhz}, {"base_sm_mhz", c.sm_mhz}});
      std::snprintf(energy, sizeof energy, " energy x%.3f", c.mj / b.mj);
    }
    std::printf("%-8s   sustained: bik %s | base %s | time x%.3f%s\n", "", bench::describe(b).c_str(),
                bench::describe(c).c_str(), c.ms / b.ms, energy);
    std::fflush(stdout);
    row["sustained"] = o;
  };

  const Device gpu = Device::cuda(0);
  cudaStream_t st = nullptr;
  BIK_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  {  // the memory ceiling: a 1 GiB device-to-device copy, bytes read plus written
    const int64_t n = int64_t(1) << 28;  // 1 GiB of I32
    const Tensor x = Tensor::empty({n}, DType::I32, gpu), y = Tensor::empty({n}, DType::I32, gpu);
    auto copy_launch = [&](int, cudaStream_t stream) {
      BIK_CUDA_CHECK(cudaMemcpyAsync(y.data(), x.data(), size_t(n) * 4, cudaMemcpyDeviceToDevice, stream));
    };
    const double t = bench::time_graph(copy_launch, 1, 4, 10, st);
    j["copy_gbps"] = 8.0 * double(n) / (t * 1e-3) / 1e9;
    std::printf("device-to-device copy: %.0f GB/s (read + write)\n", double(j["copy_gbps"]));
  }
  const int64_t es = dtype_size(dt);
  const bool gated = args.flag("gated");
  if (gated) {
    j["layout"] = "out[M,d] = silu(a w_gate^T) * (a w_up^T), w = [gate rows; up rows] [2d, K], out in the input dtype";
    j["baseline"] = "cuBLASLt product [M, 2d] (default heuristic) then bik silu_and_mul";
  }
  // Launches per graph: fewer for the big problems, whose replay is long enough to time on its own.
  auto launches_for = [&](double flop) { return flop > 2e11 ? std::min(launches_max, 4) : launches_max; };
  // --gated: one row of the gated product (mm_silu_and_mul) against cuBLASLt's product then silu_and_mul,
  // and with --sweep each BIK_GEMM_GLU_SWAP mode (null where the mode does not apply and the default ran).
  auto gated_row = [&](const Shape2& s, int64_t m, const std::vector<Tensor>& ws, const std::vector<Tensor>& as,
                       const Tensor& product) {
    const int sets = int(ws.size());
    const int64_t d = s.n / 2;
    const Tensor out_d = Tensor::empty({m, d}, dt, gpu);
    const double flop = 2.0 * double(m) * double(s.n) * double(s.k);
    const int launches = launches_for(flop);
    const TensorView pv = product.view().narrow(0, 0, m);
    auto bik_launch = [&](int i, cudaStream_t stream) {
      mm_silu_and_mul(out_d, as[size_t(i)].view().narrow(0, 0, m), ws[size_t(i)], Stream{stream});
    };
    auto cublas_launch = [&](int i, cudaStream_t stream) {
      cuda::cublaslt_gemm(gemm_args_2d(pv, as[size_t(i)].view().narrow(0, 0, m), ws[size_t(i)]), Stream{stream});
      silu_and_mul(out_d, pv, Stream{stream});
    };
    const double t_bik = bench::time_graph(bik_launch, sets, launches, repeats, st);
    const double t_cub = bench::time_graph(cublas_launch, sets, launches, repeats, st);
    nlohmann::json modes = nlohmann::json::object();
    std::string line;
    if (args.flag("sweep") && props.arch() == 90) {
      const char* old_env = std::getenv("BIK_GEMM_GLU_SWAP");
      const std::string saved = old_env ? old_env : "";
      for (const char* mode : {"0", "1", "2", "2c", "2c192"}) {
        setenv("BIK_GEMM_GLU_SWAP", mode, 1);
        const uint64_t before = cuda::gemm_sm90_glu_swap_launches();
        bik_launch(0, st);
        BIK_CUDA_CHECK(cudaStreamSynchronize(st));
        const bool applied = cuda::gemm_sm90_glu_swap_launches() > before;
        if (std::string(mode) != "0" && !applied) {
          modes[mode] = nullptr;
          line += std::string(" ") + mode + " -";
          continue;
        }
        const double t = bench::time_graph(bik_launch, sets, launches, repeats, st);
        modes[mode] = t;
        char buf[48];
        std::snprintf(buf, sizeof buf, " %s %.1f", mode, t * 1e3);
        line += buf;
      }
      if (old_env) setenv("BIK_GEMM_GLU_SWAP", saved.c_str(), 1);
      else unsetenv("BIK_GEMM_GLU_SWAP");
    }
    const uint64_t before = cuda::gemm_sm90_glu_swap_launches();
    bik_launch(0, st);
    BIK_CUDA_CHECK(cudaStreamSynchronize(st));
    const bool swapped = cuda::gemm_sm90_glu_swap_launches() > before;
    const std::string rule = cuda::gemm_gated_config_name(gemm_args_2d(pv, as[0].view().narrow(0, 0, m), ws[0]));
    // The rule's name, and what ran when a gated swapped tile it named could not take the operands.
    const std::string config = rule.rfind("glu-swap", 0) == 0 && !swapped ? rule + " (not applied)" : rule;
    const double ratio = t_cub / t_bik;
    std::printf("%-8s %6lld %6lld %6lld | %10.2f %10.2f | %8.1f | %6.3f | %s%s%s\n", s.what, (long long)s.k,
                (long long)s.n, (long long)m, t_bik * 1e3, t_cub * 1e3, flop / (t_bik * 1e-3) / 1e12, ratio,
                config.c_str(), line.empty() ? "" : "; BIK_GEMM_GLU_SWAP us:", line.c_str());
    std::fflush(stdout);
    j["results"].push_back({{"shape", s.what},
                            {"k", s.k},
                            {"n", s.n},
                            {"m", m},
                            {"gated", true},
                            {"bik_ms", t_bik},
                            {"cublaslt_ms", t_cub},
                            {"bik_tflops", flop / (t_bik * 1e-3) / 1e12},
                            {"cublaslt_tflops", flop / (t_cub * 1e-3) / 1e12},
                            {"ratio", ratio},
                            {"bik_config", config},
                            {"input_sets", sets},
                            {"launches_per_graph", launches}});
    if (!modes.empty()) j["results"].back()["glu_swap_ms"] = modes;
    sustained(bik_launch, cublas_launch, sets, launches, j["results"].back(), st);
  };
  // --qkv HQ:HK:D: one row of the attention block's input projection (qkv_projection: the q|k|v product, the
  // q and k heads RMS-normalised and rotated, k and v written into a paged cache) for a stacked weight of
  // N = (HQ + 2 HK) D rows: BIK's one fused kernel, BIK's composed calls (BIK_QKV_FUSED=0: BIK's product, then
  // rms_norm of q and of k, rotary_embedding and write_kv_cache), and cuBLASLt's product followed by the same
  // calls (the base: what an engine without batch invariance runs).
  auto qkv_row = [&](const Shape2& s, int64_t m, const std::vector<Tensor>& ws, const std::vector<Tensor>& as,
                     const Tensor& product) {
    const int sets = int(ws.size());
    const int64_t hq = qkv_heads[0], hk = qkv_heads[1], d = qkv_heads[2];
    const Tensor q_out = Tensor::empty({m, hq, d}, dt, gpu), kn = Tensor::empty({m, hk, d}, dt, gpu);
    const int64_t blocks = (m + 15) / 16;
    const Tensor kc = Tensor::empty({blocks, 16, hk, d}, dt, gpu), vc = Tensor::empty({blocks, 16, hk, d}, dt, gpu);
    const size_t rows = static_cast<size_t>(m);
    std::vector<int32_t> slots(rows), pos(rows);
    for (int64_t i = 0; i < m; ++i) slots[size_t(i)] = int32_t(i), pos[size_t(i)] = int32_t((i * 37) % 4096);
    auto i32_dev = [&](const std::vector<int32_t>& v) {
      Tensor t = Tensor::empty({int64_t(v.size())}, DType::I32, gpu);
      memcpy_bytes(t.data(), gpu, v.data(), Device::cpu(), int64_t(v.size()) * 4);
      return t;
    };
    const Tensor slot_t = i32_dev(slots), pos_t = i32_dev(pos);
    const Tensor cos_sin = rope_cos_sin_table(4096, d, 1e6, gpu);
    const Tensor q_norm = Tensor::empty({d}, DType::F32, gpu), k_norm = Tensor::empty({d}, DType::F32, gpu);
    cuda::gemm_fill_uniform(q_norm, 7);
    cuda::gemm_fill_uniform(k_norm, 8);
    const TensorView pv = product.view().narrow(0, 0, m);
    auto args_of = [&](int i) {
      QkvProjection p;
      p.q_out = q_out, p.k_cache = kc, p.v_cache = vc;
      p.x = as[size_t(i)].view().narrow(0, 0, m), p.w = ws[size_t(i)];
      p.q_norm = q_norm.view(), p.k_norm = k_norm.view();
      p.positions = pos_t, p.cos_sin = cos_sin;
      p.slot_mapping = slot_t, p.host_slot_mapping = HostInts(slots);
      p.qkv = pv, p.k_normed = kn;
      return p;
    };
    auto fused_launch = [&](int i, cudaStream_t stream) { qkv_projection(args_of(i), Stream{stream}); };
    auto calls_launch = [&](int i, cudaStream_t stream) {
      const char* old = std::getenv("BIK_QKV_FUSED");
      const std::string saved = old ? old : "";
      setenv("BIK_QKV_FUSED", "0", 1);
      qkv_projection(args_of(i), Stream{stream});
      if (old) setenv("BIK_QKV_FUSED", saved.c_str(), 1);
      else unsetenv("BIK_QKV_FUSED");
    };
    auto cublas_launch = [&](int i, cudaStream_t stream) {
      const QkvProjection p = args_of(i);
      const Stream sm{stream};
      cuda::cublaslt_gemm(gemm_args_2d(pv, p.x, p.w), sm);
      auto heads = [&](int64_t first, int64_t count) {
        return TensorView(static_cast<char*>(pv.data) + first * es, dt, {m, count, d}, {s.n, d, 1}, gpu);
      };
      rms_norm(q_out, heads(0, hq), q_norm, 1e-6f, std::nullopt, sm);
      rms_norm(kn, heads(hq * d, hk), k_norm, 1e-6f, std::nullopt, sm);
      rotary_embedding(q_out, kn, pos_t, cos_sin, true, sm);
      write_kv_cache(kc, vc, kn, heads((hq + hk) * d, hk), slot_t, HostInts(slots), sm);
    };
    const uint64_t before = cuda::gemm_sm90_heads_launches();
    fused_launch(0, st);
    BIK_CUDA_CHECK(cudaStreamSynchronize(st));
    const bool fused = cuda::gemm_sm90_heads_launches() > before;
    const double flop = 2.0 * double(m) * double(s.n) * double(s.k);
    const int launches = launches_for(flop);
    const double t_fused = bench::time_graph(fused_launch, sets, launches, repeats, st);
    const double t_calls = bench::time_graph(calls_launch, sets, launches, repeats, st);
    const double t_cub = bench::time_graph(cublas_launch, sets, launches, repeats, st);
    const std::string config = fused ? "fused " + cuda::qkv_heads_tile(m, s.n, s.k, int(d), 0) : "composed (not fused)";
    std::printf("%-8s %6lld %6lld %6lld | %10.2f %10.2f %10.2f | %6.3f %6.3f | %s\n", s.what, (long long)s.k,
                (long long)s.n, (long long)m, t_fused * 1e3, t_calls * 1e3, t_cub * 1e3, t_cub / t_fused,
                t_calls / t_fused, config.c_str());
    std::fflush(stdout);
    j["results"].push_back({{"shape", s.what},
                            {"k", s.k},
                            {"n", s.n},
                            {"m", m},
                            {"qkv_heads", {hq, hk, d}},
                            {"bik_ms", t_fused},
                            {"bik_calls_ms", t_calls},
                            {"cublaslt_ms", t_cub},
                            {"ratio", t_cub / t_fused},
                            {"calls_ratio", t_calls / t_fused},
                            {"bik_config", config},
                            {"input_sets", sets},
                            {"launches_per_graph", launches}});
    sustained(fused_launch, cublas_launch, sets, launches, j["results"].back(), st);
  };
  if (!qkv_heads.empty()) {
    j["layout"] = "qkv_projection: x[M,K] * w[N,K]^T, N = (HQ + 2 HK) D, q and k heads RMS-normed (f32 weights) and "
                  "rotated (neox), q to [M, HQ, D], k and v into a paged cache [M / 16 blocks, 16, HK, D]";
    j["baseline"] = "cuBLASLt product [M, N] (default heuristic) then bik rms_norm (q), rms_norm (k), "
                    "rotary_embedding, write_kv_cache";
    std::printf("%-8s %6s %6s %6s | %10s %10s %10s | %6s %6s | %s\n", "shape", "K", "N", "M", "fused us", "calls us",
                "base us", "base/f", "calls/f", "bik path");
  } else if (gated)
    std::printf("%-8s %6s %6s %6s | %10s %10s | %8s | %6s | %s\n", "shape", "K", "N", "M", "bik us", "base us",
                "bik TF/s", "ratio", "bik tile (base: cuBLASLt + silu_and_mul)");
  else
    std::printf("%-8s %6s %6s %6s | %10s %10s | %8s %8s | %6s | %11s  %s\n", "shape", "K", "N", "M", "bik us",
                "cublas us", "bik TF/s", "bik GB/s", "ratio", "host us b/c", "bik config");
  for (const Shape2& s : shapes) {
    const int64_t max_m = *std::max_element(ms.begin(), ms.end());
    const int64_t w_bytes = s.n * s.k * es;
    // Input sets: enough weight copies that one pass over them is > 2x L2 (activations rotate along).
    const int sets = int(std::clamp<int64_t>((2 * int64_t(props.l2_bytes)) / w_bytes + 1, 2, 16));
    std::vector<Tensor> ws, as;
    for (int i = 0; i < sets; ++i) {
      ws.push_back(Tensor::empty({s.n, s.k}, dt, gpu));
      cuda::gemm_fill_uniform(ws.back(), 1000 + uint64_t(i));
      as.push_back(Tensor::empty({max_m, s.k}, dt, gpu));
      cuda::gemm_fill_uniform(as.back(), 2000 + uint64_t(i));
    }
    const Tensor out = Tensor::empty({max_m, s.n}, out_dt, gpu);
    if (!qkv_heads.empty()) {
      for (int64_t m : ms) qkv_row(s, m, ws, as, out);
      write_json();
      continue;
    }
    if (gated) {
      BIK_CHECK(s.n % 2 == 0, "bik bench gemm --gated: shape ", s.what, " has an odd N (", s.n, ")");
      for (int64_t m : ms) gated_row(s, m, ws, as, out);
      write_json();
      continue;
    }
    for (int64_t m : ms) {
      const double flop = 2.0 * double(m) * double(s.n) * double(s.k);
      const double bytes = double(es) * double(m * s.k + s.n * s.k) + double(dtype_size(out_dt)) * double(m * s.n);
      const int launches = launches_for(flop);
      const TensorView ov = out.view().narrow(0, 0, m);
      // The product on input set i: its arguments, and a launcher of one wgmma tile (--sweep, --tiles).
      auto args_of = [&](int i) { return gemm_args_2d(ov, as[size_t(i)].view().narrow(0, 0, m), ws[size_t(i)]); };
      auto tile_launcher = [&](const std::string& tile) {
        return [&, tile](int i, cudaStream_t stream) { cuda::gemm_sm90_tile(args_of(i), Stream{stream}, tile); };
      };
      auto bik_launch = [&](int i, cudaStream_t stream) {
        mm(ov, as[size_t(i)].view().narrow(0, 0, m), ws[size_t(i)], Stream{stream});
      };
      auto cublas_launch = [&](int i, cudaStream_t stream) { cuda::cublaslt_gemm(args_of(i), Stream{stream}); };
      const double t_bik = bench::time_graph(bik_launch, sets, launches, repeats, st);
      const double t_cub = bench::time_graph(cublas_launch, sets, launches, repeats, st);
      // Host time of one call (the graphs above hide it; an engine running op by op pays it): 32 calls
      // enqueued back to back after a warm-up call, microseconds each, the median of 5 such rounds.
      auto host_us = [&](auto&& launch) {
        std::vector<double> rounds;
        for (int r = 0; r < 5; ++r) {
          launch(0, st);
          BIK_CUDA_CHECK(cudaStreamSynchronize(st));
          const auto t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < 32; ++i) launch(i % sets, st);
          const auto t1 = std::chrono::steady_clock::now();
          BIK_CUDA_CHECK(cudaStreamSynchronize(st));
          rounds.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count() / 32);
        }
        std::sort(rounds.begin(), rounds.end());
        return rounds[rounds.size() / 2];
      };
      const double h_bik = host_us(bik_launch), h_cub = host_us(cublas_launch);
      const std::string config = cuda::gemm_config_name(args_of(0));
      nlohmann::json tile_ms = nlohmann::json::object();
      std::string best_tile;
      double best_ms = 1e30;
      if (args.flag("sweep") && props.arch() == 90) {
        for (const std::string& tile : cuda::gemm_sm90_tiles()) {
          if (out_dt == DType::F32 && sixteen_bit_only(tile)) continue;
          const double t = bench::time_graph(tile_launcher(tile), sets, launches, repeats, st);
          tile_ms[tile] = t;
          if (t < best_ms) best_ms = t, best_tile = tile;
        }
      }
      const double ratio = t_cub / t_bik;  // > 1: bik is faster
      std::printf("%-8s %6lld %6lld %6lld | %10.2f %10.2f | %8.1f %8.0f | %6.3f | %5.1f %5.1f  %s\n", s.what,
                  (long long)s.k, (long long)s.n, (long long)m, t_bik * 1e3, t_cub * 1e3, flop / (t_bik * 1e-3) / 1e12,
                  bytes / (t_bik * 1e-3) / 1e9, ratio, h_bik, h_cub, config.c_str());
      if (!best_tile.empty()) {
        std::printf("%-8s   best tile %s: %.2f us (x%.3f of cublas); us per tile:", "", best_tile.c_str(),
                    best_ms * 1e3, t_cub / best_ms);
        for (const auto& [tile, t] : tile_ms.items()) std::printf(" %s %.1f", tile.c_str(), double(t) * 1e3);
        std::printf("\n");
      }
      std::fflush(stdout);
      j["results"].push_back({{"shape", s.what},
                              {"k", s.k},
                              {"n", s.n},
                              {"m", m},
                              {"bik_ms", t_bik},
                              {"cublaslt_ms", t_cub},
                              {"bik_tflops", flop / (t_bik * 1e-3) / 1e12},
                              {"cublaslt_tflops", flop / (t_cub * 1e-3) / 1e12},
                              {"bik_gbps", bytes / (t_bik * 1e-3) / 1e9},
                              {"cublaslt_gbps", bytes / (t_cub * 1e-3) / 1e9},
                              {"ratio", ratio},
                              {"bik_host_us", h_bik},
                              {"cublaslt_host_us", h_cub},
                              {"bik_config", config},
                              {"input_sets", sets},
                              {"launches_per_graph", launches}});
      if (!tile_ms.empty()) j["results"].back()["sm90_tile_ms"] = tile_ms;
      sustained(bik_launch, cublas_launch, sets, launches, j["results"].back(), st);
      if (sustain_s > 0 && !tiles.empty() && props.arch() == 90) {
        for (const std::string& tile : tiles) {
          const bench::Sustained t =
              bench::sustain_graph(tile_launcher(tile), sets, launches, sustain_s / 2, sustain_s, st);
          j["results"].back()["sustained_tiles"][tile] = bench::to_json(t);
          std::printf("%-8s   sustained tile %s: %s\n", "", tile.c_str(), bench::describe(t).c_str());
          std::fflush(stdout);
        }
      }
    }
    write_json();
  }
  BIK_CUDA_CHECK(cudaStreamDestroy(st));
  if (!write_json()) return 1;
  std::printf("wrote %s\n", path.c_str());
  return 0;
}
#else
int bench_gemm(const std::vector<std::string>&) {
  std::fprintf(stderr, "bik bench gemm: this build has no CUDA backend\n");
  return 2;
}
#endif

}  // namespace bik::cli

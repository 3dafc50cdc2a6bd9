// A CUDA injection library: with CUDA_INJECTION64_PATH pointing at it, the driver loads it into a process,
// and it records every kernel's start, end and name through CUPTI's activity API and writes them at exit
// to $KTRACE_OUT (lines "start end id gridX gridY", then "#names" and "id name" lines). Kernels run as they do
// without it (no serialisation, unlike ncu), so idle gaps and in-place kernel times are those of the run.
// Build: g++ -O2 -shared -fPIC -std=c++17 -I/usr/local/cuda/include bench/trace/ktrace.cpp \
//          -o libktrace.so -L/usr/local/cuda/lib -lcupti     (CUPTI ships with the CUDA toolkit)
// Run:   CUDA_INJECTION64_PATH=$PWD/libktrace.so KTRACE_OUT=trace.txt bik bench serve ...
//        python3 bench/trace/kernel_roles.py trace.txt 8
// With KTRACE_API_OUT set it also records the host's CUDA runtime and driver calls and the memsets and copies
// (lines "start end kind name", kind R / D for runtime / driver calls, S / C for memsets / copies; CUPTI puts
// them on the kernels' clock) into that file: where a step's host time goes (bench/trace/host_gaps.py).
#include <cupti.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace {
struct Rec { uint64_t s, e; uint32_t id, gx, gy; };
std::mutex mu;
std::vector<Rec> recs;
std::unordered_map<std::string, uint32_t> ids;
struct ApiRec { uint64_t s, e; char kind; std::string name; };
std::vector<ApiRec> api;
std::string cb_name(CUpti_CallbackDomain d, uint32_t cbid) {
  const char* n = nullptr;
  if (cuptiGetCallbackName(d, cbid, &n) != CUPTI_SUCCESS || !n) return "cbid" + std::to_string(cbid);
  return n;
}
void CUPTIAPI requested(uint8_t** buf, size_t* size, size_t* max) {
  *size = 8 << 20;
  *buf = static_cast<uint8_t*>(aligned_alloc(8, *size));
  *max = 0;
}
void CUPTIAPI completed(CUcontext, uint32_t, uint8_t* buf, size_t, size_t valid) {
  CUpti_Activity* r = nullptr;
  std::lock_guard<std::mutex> l(mu);
  while (cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
    if (r->kind == CUPTI_ACTIVITY_KIND_RUNTIME || r->kind == CUPTI_ACTIVITY_KIND_DRIVER) {
      auto* a = reinterpret_cast<CUpti_ActivityAPI*>(r);
      const bool rt = r->kind == CUPTI_ACTIVITY_KIND_RUNTIME;
      api.push_back({a->start, a->end, rt ? 'R' : 'D',
                     cb_name(rt ? CUPTI_CB_DOMAIN_RUNTIME_API : CUPTI_CB_DOMAIN_DRIVER_API, a->cbid)});
      continue;
    }
    if (r->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
      auto* m = reinterpret_cast<CUpti_ActivityMemset4*>(r);
      api.push_back({m->start, m->end, 'S', "memset " + std::to_string(m->bytes)});
      continue;
    }
    if (r->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
      auto* m = reinterpret_cast<CUpti_ActivityMemcpy6*>(r);
      api.push_back({m->start, m->end, 'C', "memcpy kind " + std::to_string(m->copyKind) + " " +
                                                std::to_string(m->bytes)});
      continue;
    }
    if (r->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL && r->kind != CUPTI_ACTIVITY_KIND_KERNEL) continue;
    auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(r);
    auto it = ids.emplace(k->name ? k->name : "?", uint32_t(ids.size())).first;
    recs.push_back({k->start, k->end, it->second, uint32_t(k->gridX), uint32_t(k->gridY)});
  }
  free(buf);
}
void dump() {
  cuptiActivityFlushAll(1);
  const char* path = std::getenv("KTRACE_OUT");
  FILE* f = std::fopen(path ? path : "ktrace.txt", "w");
  if (!f) return;
  std::lock_guard<std::mutex> l(mu);
  for (const Rec& r : recs)
    std::fprintf(f, "%llu %llu %u %u %u\n", (unsigned long long)r.s, (unsigned long long)r.e, r.id, r.gx, r.gy);
  std::fprintf(f, "#names\n");
  for (const auto& [n, i] : ids) std::fprintf(f, "%u %s\n", i, n.c_str());
  std::fclose(f);
  if (const char* ap = std::getenv("KTRACE_API_OUT")) {
    if (FILE* g = std::fopen(ap, "w")) {
      for (const ApiRec& a : api)
        std::fprintf(g, "%llu %llu %c %s\n", (unsigned long long)a.s, (unsigned long long)a.e, a.kind, a.name.c_str());
      std::fclose(g);
    }
  }
}
}  // namespace

extern "C" int InitializeInjection(void) {
  cuptiActivityRegisterCallbacks(requested, completed);
  cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  if (std::getenv("KTRACE_API_OUT")) {
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
  }
  std::atexit(dump);
  return 1;
}

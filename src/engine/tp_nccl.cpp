// The NCCL transport of tensor parallelism (src/engine/tp.h): one rank per GPU, driven by one host thread
// per GPU of this process. Built only when CMake found NCCL (BIK_WITH_NCCL).
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "bik/device.h"
#include "bik/error.h"
#include "engine/tp.h"

#ifdef BIK_WITH_NCCL
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#endif

namespace bik::engine {

void check_all_gather(const TpComm& c, const TensorView& out, const TensorView& in);  // tp.cpp

#ifdef BIK_WITH_NCCL

namespace {

// NCCL is opened at run time, the first time --tp asks for it on CUDA: the binary starts (and runs
// everything else) on machines without libnccl.so.2, and the library is found through the usual loader
// path (LD_LIBRARY_PATH, the CUDA toolkit's lib64, a pip nvidia-nccl package added to it).
struct NcclApi {
  const char* (*GetErrorString)(ncclResult_t) = nullptr;
  ncclResult_t (*CommInitAll)(ncclComm_t*, int, const int*) = nullptr;
  ncclResult_t (*CommDestroy)(ncclComm_t) = nullptr;
  ncclResult_t (*CommAbort)(ncclComm_t) = nullptr;
  ncclResult_t (*AllGather)(const void*, void*, size_t, ncclDataType_t, ncclComm_t, cudaStream_t) = nullptr;
  ncclResult_t (*AllReduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                            cudaStream_t) = nullptr;
};

const NcclApi& nccl() {
  static const NcclApi api = [] {
    void* h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) h = dlopen("libnccl.so", RTLD_NOW | RTLD_LOCAL);
    BIK_CHECK(h != nullptr, "tp: --tp on CUDA needs NCCL and libnccl.so.2 could not be loaded (", dlerror(),
              "); add its folder to LD_LIBRARY_PATH");
    NcclApi a;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
      BIK_CHECK(fn != nullptr, "tp: libnccl.so.2 has no symbol ", name);
    };
    sym(a.GetErrorString, "ncclGetErrorString");
    sym(a.CommInitAll, "ncclCommInitAll");
    sym(a.CommDestroy, "ncclCommDestroy");
    sym(a.CommAbort, "ncclCommAbort");
    sym(a.AllGather, "ncclAllGather");
    sym(a.AllReduce, "ncclAllReduce");
    return a;
  }();
  return api;
}

#define BIK_TP_CUDA(call)                                                                                   \
  do {                                                                                                      \
    cudaError_t e_ = (call);                                                                                \
    BIK_CHECK(e_ == cudaSuccess, "tp nccl: ", #call, " failed: ", cudaGetErrorString(e_));                 \
  } while (0)
#define BIK_TP_NCCL(call)                                                                                   \
  do {                                                                                                      \
    ncclResult_t r_ = (call);                                                                               \
    BIK_CHECK(r_ == ncclSuccess, "tp nccl: ", #call, " failed: ", nccl().GetErrorString(r_));                 \
  } while (0)

class NcclComm final : public TpComm {
 public:
  NcclComm(ncclComm_t comm, int rank, int size, std::shared_ptr<HostBarrier> enqueued)
      : comm_(comm), rank_(rank), size_(size), enqueued_(std::move(enqueued)) {
    BIK_TP_CUDA(cudaSetDevice(rank_));
    BIK_TP_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    BIK_TP_CUDA(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    BIK_TP_CUDA(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    BIK_TP_CUDA(cudaMalloc(&token_, sizeof(float)));
  }
  ~NcclComm() override {
    cudaSetDevice(rank_);
    if (comm_) nccl().CommDestroy(comm_);
    cudaFree(token_);
    cudaEventDestroy(done_);
    cudaEventDestroy(ready_);
    cudaStreamDestroy(stream_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Device device() const override { return Device::cuda(rank_); }
  void enter() override { BIK_TP_CUDA(cudaSetDevice(rank_)); }

  void all_gather(const TensorView& out, const TensorView& in) override {
    check_all_gather(*this, out, in);
    ++gathers_;
    trace("enqueue");
    // The ops run on the legacy default stream: the gather waits for them, and they wait for the gather.
    BIK_TP_CUDA(cudaEventRecord(ready_, nullptr));
    BIK_TP_CUDA(cudaStreamWaitEvent(stream_, ready_, 0));
    BIK_TP_NCCL(nccl().AllGather(in.data, out.data, size_t(in.numel()), ncclFloat32, comm_, stream_));
    BIK_TP_CUDA(cudaEventRecord(done_, stream_));
    BIK_TP_CUDA(cudaStreamWaitEvent(nullptr, done_, 0));
    // No rank goes on before every rank has enqueued this all-gather. The ranks' threads share the CUDA
    // driver: a rank that next blocks in it (a copy from pageable host memory, a kernel's first load, the
    // memory pool growing) can hold a driver lock while it waits for its own GPU, whose all-gather waits
    // for the peers' all-gathers; a peer that still had to enqueue its one, and needed that lock to get
    // there, would deadlock with it. After this barrier a wait in the driver is only ever for work the
    // GPUs can finish without the host.
    enqueued_->wait();
    trace("all enqueued");
  }

  void barrier() override {
    BIK_TP_CUDA(cudaDeviceSynchronize());
    BIK_TP_NCCL(nccl().AllReduce(token_, token_, 1, ncclFloat32, ncclSum, comm_, stream_));
    BIK_TP_CUDA(cudaStreamSynchronize(stream_));
  }

  void abort() override {
    aborted_ = true;
    enqueued_->abort();
    if (comm_) nccl().CommAbort(comm_);
    comm_ = nullptr;
  }
  bool aborted() const { return aborted_; }

 private:
  ncclComm_t comm_;
  int rank_, size_;
  cudaStream_t stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, done_ = nullptr;
  float* token_ = nullptr;
  std::shared_ptr<HostBarrier> enqueued_;
  int64_t gathers_ = 0;
  bool aborted_ = false;

  // BIK_TP_TRACE=1: one stderr line per rank and step of each all-gather (where a hang stops).
  void trace(const char* what) const {
    static const bool on = [] {
      const char* e = std::getenv("BIK_TP_TRACE");
      return e && *e && std::string(e) != "0";
    }();
    if (on) std::fprintf(stderr, "bik tp: rank %d all-gather %lld: %s\n", rank_, (long long)gathers_, what);
  }
};

// The ranks of one ncclCommInitAll.
struct NcclSet {
  std::vector<std::unique_ptr<NcclComm>> ranks;
};

// Communicators are kept for the life of the process, never destroyed. On the stack this was measured
// on (CUDA 13, two H200s: bench/results/logs_h200x2/README.md), a process that destroyed its last
// communicators and then initialised new ones had the new init fail with an illegal-address fault (the
// same with NCCL_CUMEM_ENABLE=0 or NCCL_P2P_DISABLE=1), while inits next to a live set worked. So a set
// whose model is gone waits here for the next model of the same size; the process's exit releases it.
// A set with an aborted rank is not reused.
std::mutex& pool_mutex() {
  static std::mutex mu;
  return mu;
}
std::map<int, std::vector<NcclSet*>>& idle_sets() {
  static auto* pool = new std::map<int, std::vector<NcclSet*>>();  // never destroyed, like the sets
  return *pool;
}

// One rank of a pooled set, handed to a model; the set goes back to the pool with its last rank.
class LeasedComm final : public TpComm {
 public:
  LeasedComm(std::shared_ptr<NcclSet> set, int rank) : set_(std::move(set)), comm_(set_->ranks[size_t(rank)].get()) {}
  int rank() const override { return comm_->rank(); }
  int size() const override { return comm_->size(); }
  Device device() const override { return comm_->device(); }
  void enter() override { comm_->enter(); }
  void leave() override { comm_->leave(); }
  void all_gather(const TensorView& out, const TensorView& in) override { comm_->all_gather(out, in); }
  void barrier() override { comm_->barrier(); }
  void abort() override { comm_->abort(); }

 private:
  std::shared_ptr<NcclSet> set_;
  NcclComm* comm_;
};

NcclSet* init_set(int size) {
  std::vector<ncclComm_t> raw(size_t(size), nullptr);
  std::vector<int> devs(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) {
    devs[size_t(r)] = r;
    // NCCL's init reads the runtime's last-error state: an error an earlier call left there (and nobody
    // read) would fail the init as an "unhandled cuda error". Said and cleared here; a sticky error (a
    // broken context) fails the init anyway.
    BIK_TP_CUDA(cudaSetDevice(r));
    const cudaError_t stale = cudaGetLastError();
    if (stale != cudaSuccess)
      std::fprintf(stderr, "bik tp: cleared a CUDA error left pending on cuda:%d before NCCL init: %s\n", r,
                   cudaGetErrorString(stale));
  }
  BIK_TP_NCCL(nccl().CommInitAll(raw.data(), size, devs.data()));
  auto set = std::make_unique<NcclSet>();
  auto enqueued = std::make_shared<HostBarrier>(size);
  for (int r = 0; r < size; ++r) set->ranks.push_back(std::make_unique<NcclComm>(raw[size_t(r)], r, size, enqueued));
  return set.release();
}

}  // namespace

bool nccl_built() { return true; }

std::vector<std::unique_ptr<TpComm>> make_nccl_comms(int size) {
  BIK_CHECK(size >= 1, "tp: the number of ranks must be >= 1, got ", size);
  const int gpus = cuda_device_count();
  BIK_CHECK(gpus >= size, "tp: --tp ", size, " needs ", size, " GPUs (one rank per GPU), found ", gpus);
  // NVLink SHARP (NVLS) stays off: its in-switch arithmetic is an order this code does not choose, and
  // nothing here needs it (the only data collective is an all-gather).
  setenv("NCCL_NVLS_ENABLE", "0", 1);
  NcclSet* raw_set = nullptr;
  {
    std::lock_guard<std::mutex> lock(pool_mutex());
    auto& idle = idle_sets()[size];
    if (!idle.empty()) {
      raw_set = idle.back();
      idle.pop_back();
    }
  }
  if (!raw_set) raw_set = init_set(size);
  std::shared_ptr<NcclSet> set(raw_set, [size](NcclSet* done) {
    bool aborted = false;
    for (const auto& c : done->ranks) aborted = aborted || c->aborted();
    if (aborted) {
      delete done;  // its communicators were aborted: nothing left to destroy but the host side
      return;
    }
    std::lock_guard<std::mutex> lock(pool_mutex());
    idle_sets()[size].push_back(done);
  });
  std::vector<std::unique_ptr<TpComm>> comms;
  for (int r = 0; r < size; ++r) comms.push_back(std::make_unique<LeasedComm>(set, r));
  BIK_TP_CUDA(cudaSetDevice(0));
  return comms;
}

#else

bool nccl_built() { return false; }

std::vector<std::unique_ptr<TpComm>> make_nccl_comms(int size) {
  throw Error("tp: --tp " + std::to_string(size) +
              " on CUDA needs NCCL, and this build has none (configure with CUDA and NCCL installed)");
}

#endif

}  // namespace bik::engine

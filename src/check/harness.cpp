// The invariance harness's generic procedure (docs/invariance.md, "How it is proven"): per problem, the
// targets alone, then copies of them inside batches of many sizes with random neighbours, layouts and
// poisoned outputs; every comparison is a memcmp of output bytes.
#include "check/harness.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <set>
#include <sstream>

#include "bik/device.h"
#include "check/op_checks.h"

namespace bik::check {

using namespace detail;

const char* status_name(Status s) {
  switch (s) {
    case Status::Pass: return "PASS";
    case Status::Fail: return "FAIL";
    case Status::Error: return "ERROR";
    case Status::Skipped: return "SKIPPED(no kernel)";
  }
  return "?";
}

std::vector<std::string> op_names() {
  std::vector<std::string> names;
  for (const auto& e : op_table()) names.push_back(e.name);
  return names;
}

std::vector<std::pair<std::string, std::vector<std::string>>> op_aliases() {
  return {
      {"all", op_names()},
      {"matmul", {"mm", "addmm", "bmm"}},
      {"gemm", {"mm", "addmm", "bmm"}},
      {"norm", {"rms_norm", "rms_norm_residual", "layer_norm"}},
      {"softmaxes", {"softmax", "log_softmax"}},
      {"reduce", {"sum", "mean", "argmax"}},
      {"elementwise", {"silu_and_mul", "rotary_embedding", "embedding"}},
      {"rope", {"rotary_embedding"}},
      {"add_rms_norm", {"rms_norm_residual"}},
      {"tp", {"sum_partials"}},
  };
}

std::vector<std::string> resolve_ops(const std::vector<std::string>& names) {
  const std::vector<std::string> all = op_names();
  if (names.empty()) return all;
  std::set<std::string> want;
  const auto aliases = op_aliases();
  for (const std::string& n : names) {
    if (std::find(all.begin(), all.end(), n) != all.end()) {
      want.insert(n);
      continue;
    }
    auto it = std::find_if(aliases.begin(), aliases.end(), [&](const auto& a) { return a.first == n; });
    if (it == aliases.end()) {
      std::string known, alias;
      for (const auto& a : all) known += (known.empty() ? "" : ", ") + a;
      for (const auto& a : aliases) alias += (alias.empty() ? "" : ", ") + a.first;
      throw Error("unknown op '" + n + "' (ops: " + known + "; aliases: " + alias + ")");
    }
    want.insert(it->second.begin(), it->second.end());
  }
  std::vector<std::string> out;
  for (const auto& a : all)
    if (want.count(a)) out.push_back(a);
  return out;
}

namespace {

// Rows of one batch are limited so a batch costs about this much work (Problem::row_cost units).
constexpr double kBatchBudget = 16e6;
constexpr int64_t kMinRows = 33, kMaxRows = 16384;
constexpr int kNeighbourPool = 12;

// Where one operand's elements live in its buffer, in elements.
struct Layout {
  int64_t base = 0, gstride = 0, rstride = 0, total = 0;
  std::vector<int64_t> istride;  // strides of the inner dims
  std::vector<int64_t> ioff;     // offset of each element of a row (row-major order of inner)
  bool contiguous = false;       // ioff[i] == i
  std::vector<uint8_t> mask;     // 1 where an element of the tensor lives (outputs only)
};

Layout make_layout(Rng& rng, const Operand& op, int64_t groups, int64_t rows) {
  Layout l;
  const int nd = int(op.inner.size());
  const int64_t e = op.inner_numel();
  const int64_t pad = rng.chance(0.5) ? 0 : rng.range(1, 17);
  l.istride.resize(size_t(nd));
  int64_t group_span;
  if (nd > 0 && e > 1 && rng.chance(op.rows_inner_prob)) {
    // The row index innermost in memory (a transposed activation, a reduction over a leading dim).
    l.rstride = 1;
    int64_t s = rows + pad;
    for (int d = nd - 1; d >= 0; --d) l.istride[size_t(d)] = s, s *= op.inner[size_t(d)];
    group_span = s;
  } else {
    int64_t s = 1;
    for (int d = nd - 1; d >= 0; --d) l.istride[size_t(d)] = s, s *= op.inner[size_t(d)];
    l.rstride = e + pad;
    group_span = rows * l.rstride;
    l.contiguous = true;
  }
  l.gstride = group_span + (groups > 1 && rng.chance(0.5) ? rng.range(1, 9) : 0);
  l.base = rng.chance(0.5) ? 0 : rng.range(1, 7);  // misaligned starts
  l.total = l.base + (groups - 1) * l.gstride + group_span + rng.range(0, 8);
  l.ioff.resize(size_t(e));
  std::vector<int64_t> idx(size_t(nd), 0);
  for (int64_t i = 0; i < e; ++i) {
    int64_t off = 0;
    for (int d = 0; d < nd; ++d) off += idx[size_t(d)] * l.istride[size_t(d)];
    l.ioff[size_t(i)] = off;
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[size_t(d)] < op.inner[size_t(d)]) break;
      idx[size_t(d)] = 0;
    }
  }
  if (op.is_output()) {
    l.mask.assign(size_t(l.total), 0);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t m = 0; m < rows; ++m) {
        const int64_t r = l.base + g * l.gstride + m * l.rstride;
        for (int64_t o : l.ioff) l.mask[size_t(r + o)] = 1;
      }
  }
  return l;
}

// How much of its tolerance an error uses (exact comparisons: 0 or infinity).
double ratio_of(double err, double tol) { return tol > 0 ? err / tol : (err > 0 ? INFINITY : 0); }

bool all_ff(const uint8_t* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (p[i] != 0xFF) return false;
  return true;
}

// Runs an op on batches: owns the buffers (reused across batches), writes rows into them with a given
// layout, poisons everything else, runs, checks poison and inputs, and gathers each row's outputs.
class Runner {
 public:
  Runner(OpCheck& check, const Problem& p, Device device) : check_(check), p_(p), device_(device) {
    slots_.resize(p.operands.size());
  }

  void new_layout(Rng& rng, int64_t rows) {
    rows_ = rows;
    for (size_t i = 0; i < slots_.size(); ++i) slots_[i].layout = make_layout(rng, p_.operands[i], p_.groups, rows);
  }

  struct Result {
    int64_t unwritten = 0, overwritten = 0;
  };

  // rows[g * M + m] is the row data at position m of group g.
  Result execute(const std::vector<const RowData*>& rows, bool alone, Rng rng) {
    const int64_t groups = p_.groups, m_rows = rows_;
    std::vector<TensorView> views(slots_.size());
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      const Operand& op = p_.operands[i];
      const Layout& l = s.layout;
      const int64_t es = dtype_size(op.dtype), e = op.inner_numel();
      s.host.assign(size_t(l.total * es), 0xFF);
      if (op.role != Role::Out) {
        for (int64_t g = 0; g < groups; ++g)
          for (int64_t m = 0; m < m_rows; ++m) {
            const uint8_t* src = (*rows[size_t(g * m_rows + m)])[i].data();
            uint8_t* dst = s.host.data() + (l.base + g * l.gstride + m * l.rstride) * es;
            if (l.contiguous)
              std::memcpy(dst, src, size_t(e * es));
            else
              for (int64_t k = 0; k < e; ++k) std::memcpy(dst + l.ioff[size_t(k)] * es, src + k * es, size_t(es));
          }
      }
      if (op.role == Role::In) s.snapshot = s.host;
      uint8_t* data = s.host.data();
      if (!device_.is_cpu()) {
        if (s.device_bytes < l.total * es) {
          s.device = Tensor::empty({(l.total * es + 3) / 4}, DType::I32, device_);  // raw bytes
          s.device_bytes = ((l.total * es + 3) / 4) * 4;
        }
        memcpy_bytes(s.device.data(), device_, s.host.data(), Device::cpu(), l.total * es);
        data = static_cast<uint8_t*>(s.device.data());
      }
      Shape shape, strides;
      if (groups > 1) shape.push_back(groups), strides.push_back(l.gstride);
      shape.push_back(m_rows), strides.push_back(l.rstride);
      for (size_t d = 0; d < op.inner.size(); ++d) shape.push_back(op.inner[d]), strides.push_back(l.istride[d]);
      views[i] = TensorView(data + l.base * es, op.dtype, shape, strides, device_);
    }

    check_.run(views, alone, rng);

    Result r;
    if (!device_.is_cpu()) {
      synchronize(device_);
      for (Slot& s : slots_)
        memcpy_bytes(s.host.data(), Device::cpu(), s.device.data(), device_, int64_t(s.host.size()));
    }
    for (size_t i = 0; i < slots_.size(); ++i) {
      Slot& s = slots_[i];
      const Operand& op = p_.operands[i];
      const Layout& l = s.layout;
      const int64_t es = dtype_size(op.dtype), e = op.inner_numel();
      if (op.role == Role::In) {
        if (std::memcmp(s.host.data(), s.snapshot.data(), s.host.size()) != 0)
          for (int64_t k = 0; k < l.total; ++k)
            r.overwritten += std::memcmp(s.host.data() + k * es, s.snapshot.data() + k * es, size_t(es)) != 0;
        continue;
      }
      for (int64_t k = 0; k < l.total; ++k)
        if (!l.mask[size_t(k)] && !all_ff(s.host.data() + k * es, es)) ++r.overwritten;
      s.out.resize(size_t(groups * m_rows * e * es));
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t m = 0; m < m_rows; ++m) {
          const uint8_t* src = s.host.data() + (l.base + g * l.gstride + m * l.rstride) * es;
          uint8_t* dst = s.out.data() + (g * m_rows + m) * e * es;
          if (l.contiguous)
            std::memcpy(dst, src, size_t(e * es));
          else
            for (int64_t k = 0; k < e; ++k) std::memcpy(dst + k * es, src + l.ioff[size_t(k)] * es, size_t(es));
          if (op.role == Role::Out)
            for (int64_t k = 0; k < e; ++k) r.unwritten += all_ff(dst + k * es, es);
        }
    }
    return r;
  }

  // Output bytes of row (g, m) for operand i (after execute).
  const uint8_t* out(size_t i, int64_t g, int64_t m) const {
    const Operand& op = p_.operands[i];
    return slots_[i].out.data() + (g * rows_ + m) * op.inner_numel() * dtype_size(op.dtype);
  }
  std::vector<std::vector<uint8_t>> outputs() const {
    std::vector<std::vector<uint8_t>> o;
    for (const Slot& s : slots_) o.push_back(s.out);
    return o;
  }

 private:
  struct Slot {
    Layout layout;
    std::vector<uint8_t> host, snapshot, out;
    Tensor device;
    int64_t device_bytes = 0;
  };
  OpCheck& check_;
  const Problem& p_;
  Device device_;
  int64_t rows_ = 0;
  std::vector<Slot> slots_;
};

std::vector<int64_t> sweep(Rng& rng, int64_t max_rows) {
  static const std::vector<int64_t> mid = {37, 61, 64, 127, 128, 251, 257, 509};
  static const std::vector<int64_t> large = {1021, 2053, 4099, 8191, 16384};
  std::vector<int64_t> s;
  for (int64_t b = 1; b <= 17; ++b) s.push_back(b);
  for (int64_t b : {31, 32, 33, 100, 1000, 4096}) s.push_back(b);
  for (int i = 0; i < 3; ++i) s.push_back(rng.pick(mid));
  s.push_back(rng.pick(large));
  // Problems too costly for the large sizes still get one batch as large as they afford.
  if (max_rows > kMinRows) s.push_back(rng.range(kMinRows + 1, max_rows));
  s.erase(std::remove_if(s.begin(), s.end(), [&](int64_t b) { return b > max_rows; }), s.end());
  std::sort(s.begin(), s.end());
  s.erase(std::unique(s.begin(), s.end()), s.end());
  return s;
}

// `count` distinct positions in [0, n), in random order.
std::vector<int64_t> positions(Rng& rng, int64_t n, int64_t count) {
  std::vector<int64_t> out;
  if (count * 4 >= n) {
    std::vector<int64_t> all(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) all[size_t(i)] = i;
    for (int64_t i = 0; i < count; ++i) std::swap(all[size_t(i)], all[size_t(i + int64_t(rng.below(uint64_t(n - i))))]);
    out.assign(all.begin(), all.begin() + count);
    return out;
  }
  std::set<int64_t> used;
  if (rng.chance(0.5)) used.insert(n - 1), out.push_back(n - 1);  // the last row: a partial tile
  while (int64_t(out.size()) < count) {
    const int64_t p = int64_t(rng.below(uint64_t(n)));
    if (used.insert(p).second) out.push_back(p);
  }
  return out;
}

std::string describe_bytes(DType t, const uint8_t* p, int64_t i) {
  std::ostringstream os;
  if (t == DType::I32)
    os << int64_t(load(t, p, i));
  else
    os.precision(9), os << load(t, p, i);
  return os.str();
}

bool is_no_kernel(const std::string& what) {
  return what.find("no kernel") != std::string::npos || what.find("no CUDA") != std::string::npos;
}

struct OpState {
  OpReport& rep;
  const CheckOptions& opt;
  uint64_t problem_index = 0;
  std::set<int64_t> sizes;
  void failure(const std::string& s) {
    if (rep.failures.size() < opt.max_failures) rep.failures.push_back(s);
  }
};

// One problem: targets alone, accuracy, then the sweep of batch sizes.
void run_problem(OpCheck& check, const Problem& p, Rng& rng, const Context& ctx, MixReport& mix, OpState& st,
                 const std::function<void()>& on_batch) {
  const int64_t groups = p.groups;
  const size_t nops = p.operands.size();
  const std::string where = st.rep.op + " [" + p.dtypes + " " + p.shape + "] problem #" +
                            std::to_string(st.problem_index) + " (seed " + std::to_string(st.opt.seed) + ")";
  const int64_t targets = rng.range(1, 3);

  auto new_row = [&](RowKind kind) {
    RowData r(nops);
    check.fill_row(rng, kind, r);
    return r;
  };
  std::vector<std::vector<RowData>> target(static_cast<size_t>(groups)), pool(static_cast<size_t>(groups));
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t j = 0; j < targets; ++j) target[size_t(g)].push_back(new_row(RowKind::Target));
    for (int j = 0; j < kNeighbourPool; ++j)
      pool[size_t(g)].push_back(new_row(rng.chance(0.25) ? RowKind::Wild : RowKind::Neighbour));
  }

  Runner runner(check, p, ctx.device);
  auto account = [&](const Runner::Result& r, const std::string& what) {
    mix.unwritten += r.unwritten;
    mix.overwritten += r.overwritten;
    if (r.unwritten) st.failure(where + ": " + what + ": " + std::to_string(r.unwritten) + " output elements unwritten");
    if (r.overwritten)
      st.failure(where + ": " + what + ": " + std::to_string(r.overwritten) +
                 " padding or input elements modified");
  };

  // 1. Targets alone: M = 1 (one target per group).
  // alone[g][j][i]: output bytes of operand i.
  std::vector<std::vector<std::vector<std::vector<uint8_t>>>> alone(
      static_cast<size_t>(groups), std::vector<std::vector<std::vector<uint8_t>>>(static_cast<size_t>(targets)));
  for (int64_t j = 0; j < targets; ++j) {
    std::vector<const RowData*> rows;
    for (int64_t g = 0; g < groups; ++g) rows.push_back(&target[size_t(g)][size_t(j)]);
    runner.new_layout(rng, 1);
    account(runner.execute(rows, true, Rng(rng.next())), "alone");
    for (int64_t g = 0; g < groups; ++g) {
      auto& a = alone[size_t(g)][size_t(j)];
      a.resize(nops);
      for (size_t i = 0; i < nops; ++i) {
        const Operand& op = p.operands[i];
        if (!op.is_output()) continue;
        const uint8_t* o = runner.out(i, g, 0);
        a[i].assign(o, o + op.inner_numel() * dtype_size(op.dtype));
      }
    }
  }

  // 2. Accuracy of the alone results against float64.
  std::vector<Expected> expected(nops);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = 0; j < targets; ++j) {
      check.reference(target[size_t(g)][size_t(j)], g, expected);
      for (size_t i = 0; i < nops; ++i) {
        const Operand& op = p.operands[i];
        if (!op.is_output()) continue;
        const uint8_t* got = alone[size_t(g)][size_t(j)][i].data();
        for (int64_t k = 0; k < op.inner_numel(); ++k) {
          const double v = load(op.dtype, got, k), want = expected[i].value[size_t(k)];
          const double scale = std::max(expected[i].scale[size_t(k)], min_normal(op.dtype));
          double err = 0;
          if (!(v == want || (v != v && want != want))) err = std::fabs(v - want) / scale;
          if (!(err == err)) err = INFINITY;  // NaN where a number was expected
          ++mix.checked;
          if (mix.checked == 1 || ratio_of(err, op.tol) > ratio_of(mix.max_rel_err, mix.tol)) {
            mix.max_rel_err = err;
            mix.tol = op.tol;
          }
          if (!(err <= op.tol)) {
            ++mix.accuracy_failures;
            std::ostringstream os;
            os.precision(9);
            os << where << ": accuracy: target " << j << " group " << g << " " << op.name << "[" << k
               << "] = " << v << ", float64 reference " << want << " (error " << err << " of scale " << scale
               << ", tolerance " << op.tol << ")";
            st.failure(os.str());
          }
        }
      }
    }

  // 3. The sweep: copies of the targets at random positions of batches of many sizes.
  const int64_t max_rows =
      std::clamp(int64_t(kBatchBudget / std::max(1.0, p.row_cost * double(groups))), kMinRows, kMaxRows);
  const std::vector<int64_t> sizes = sweep(rng, max_rows);
  std::vector<const RowData*> rows;
  for (int64_t b : sizes) {
    rows.assign(size_t(groups * b), nullptr);
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t m = 0; m < b; ++m) rows[size_t(g * b + m)] = &pool[size_t(g)][rng.below(kNeighbourPool)];
    struct Copy {
      int64_t g, m, j;
    };
    std::vector<Copy> copies;
    const int64_t per_group = std::min<int64_t>(b, 2 * targets + rng.range(0, 4));
    for (int64_t g = 0; g < groups; ++g) {
      const std::vector<int64_t> pos = positions(rng, b, per_group);
      for (size_t c = 0; c < pos.size(); ++c) {
        const int64_t j = int64_t(c) % targets;
        copies.push_back({g, pos[c], j});
        rows[size_t(g * b + pos[c])] = &target[size_t(g)][size_t(j)];
      }
    }
    runner.new_layout(rng, b);
    const Rng run_rng(rng.next());
    account(runner.execute(rows, false, run_rng), "batch of " + std::to_string(b));
    for (const Copy& c : copies) {
      ++mix.cases;
      for (size_t i = 0; i < nops; ++i) {
        const Operand& op = p.operands[i];
        if (!op.is_output()) continue;
        const auto& a = alone[size_t(c.g)][size_t(c.j)][i];
        const uint8_t* got = runner.out(i, c.g, c.m);
        if (std::memcmp(got, a.data(), a.size()) == 0) continue;
        ++mix.diffs;
        int64_t k = 0;
        const int64_t es = dtype_size(op.dtype);
        while (std::memcmp(got + k * es, a.data() + k * es, size_t(es)) == 0) ++k;
        st.failure(where + ": batch of " + std::to_string(b) + ", target " + std::to_string(c.j) + " at row " +
                   std::to_string(c.m) + (groups > 1 ? " of group " + std::to_string(c.g) : "") + ": " + op.name +
                   "[" + std::to_string(k) + "] = " + describe_bytes(op.dtype, got, k) + " but alone " +
                   describe_bytes(op.dtype, a.data(), k));
        break;
      }
    }
    // Run-to-run: the very same batch again (same layout, same call variations).
    if (b == sizes.back() || rng.chance(0.3)) {
      const auto first = runner.outputs();
      account(runner.execute(rows, false, run_rng), "repeat of batch of " + std::to_string(b));
      for (int64_t g = 0; g < groups; ++g)
        for (int64_t m = 0; m < b; ++m)
          for (size_t i = 0; i < nops; ++i) {
            const Operand& op = p.operands[i];
            if (!op.is_output()) continue;
            const int64_t bytes = op.inner_numel() * dtype_size(op.dtype);
            if (std::memcmp(runner.out(i, g, m), first[i].data() + (g * b + m) * bytes, size_t(bytes)) == 0)
              continue;
            ++mix.repeat_diffs;
            st.failure(where + ": batch of " + std::to_string(b) + " run twice: row " + std::to_string(m) +
                       " differs between the runs");
            break;
          }
    }
    ++mix.batches;
    st.sizes.insert(b);
    on_batch();
  }
}

void add_into(MixReport& t, const MixReport& m) {
  t.problems += m.problems;
  t.cases += m.cases;
  t.batches += m.batches;
  t.diffs += m.diffs;
  t.repeat_diffs += m.repeat_diffs;
  t.unwritten += m.unwritten;
  t.overwritten += m.overwritten;
  t.accuracy_failures += m.accuracy_failures;
  t.checked += m.checked;
  if (m.checked && (t.checked == m.checked || ratio_of(m.max_rel_err, m.tol) > ratio_of(t.max_rel_err, t.tol)))
    t.max_rel_err = m.max_rel_err, t.tol = m.tol;
}

bool mix_failed(const MixReport& m) {
  return m.diffs || m.repeat_diffs || m.unwritten || m.overwritten || m.accuracy_failures;
}

}  // namespace

OpReport check_op(const std::string& op, const CheckOptions& options, int64_t cases) {
  const auto t0 = std::chrono::steady_clock::now();
  OpReport rep;
  rep.op = op;
  const auto& table = op_table();
  auto entry = std::find_if(table.begin(), table.end(), [&](const OpEntry& e) { return e.name == op; });
  if (entry == table.end()) throw Error("check_op: unknown op '" + op + "'");

  Impls impls = options.impls;
  if (!impls.gemm && options.gemm_variant != "bik") impls.gemm = gemm_variant(options.gemm_variant).fn;
  Context ctx;
  ctx.device = options.device;
  ctx.target = options.device.is_cpu() ? policy::Target{policy::Backend::CPU, 0}
                                       : policy::Target{policy::Backend::CUDA, cuda_device_props(options.device.index).arch()};
  std::unique_ptr<OpCheck> check = entry->make(impls);
  Rng rng = Rng(options.seed).fork(op);
  OpState st{rep, options, 0, {}};
  Progress progress{op, 0, cases, 0, 0};

  int64_t done_problems = 0;
  while (rep.total.cases < cases) {
    Problem p = check->draw(rng, ctx);
    auto mix = std::find_if(rep.mixes.begin(), rep.mixes.end(), [&](const MixReport& m) { return m.dtypes == p.dtypes; });
    if (mix == rep.mixes.end()) {
      rep.mixes.push_back(MixReport{});
      rep.mixes.back().dtypes = p.dtypes;
      mix = rep.mixes.end() - 1;
    }
    MixReport before = *mix;
    try {
      run_problem(*check, p, rng, ctx, *mix, st, [&] {
        if (options.progress) {
          progress.cases = rep.total.cases + (mix->cases - before.cases);
          options.progress(progress);
        }
      });
      ++mix->problems;
      ++done_problems;
    } catch (const std::exception& e) {
      const std::string what = e.what();
      *mix = before;  // a problem that did not finish counts for nothing
      if (!is_no_kernel(what)) {
        rep.status = Status::Error;
        rep.note = what + " (" + p.dtypes + " " + p.shape + ", problem #" + std::to_string(st.problem_index) + ")";
        break;
      }
      ++rep.skipped_problems;
      if (rep.note.empty()) rep.note = what;
      // Nothing of this op runs on the backend: stop rather than draw forever.
      if (rep.skipped_problems >= 20 + 4 * done_problems) break;
    }
    ++st.problem_index;
    rep.total = MixReport{};
    rep.total.dtypes.clear();
    for (const MixReport& m : rep.mixes) add_into(rep.total, m);
  }
  rep.mixes.erase(std::remove_if(rep.mixes.begin(), rep.mixes.end(), [](const MixReport& m) { return m.problems == 0; }),
                  rep.mixes.end());
  rep.total = MixReport{};
  for (const MixReport& m : rep.mixes) {
    add_into(rep.total, m);
    rep.total.dtypes += (rep.total.dtypes.empty() ? "" : " ") + m.dtypes;
  }
  rep.batch_sizes.assign(st.sizes.begin(), st.sizes.end());
  if (rep.status != Status::Error) {
    if (mix_failed(rep.total))
      rep.status = Status::Fail;
    else if (rep.total.cases == 0)
      rep.status = Status::Skipped;
    else if (rep.skipped_problems)
      rep.note = std::to_string(rep.skipped_problems) + " problems skipped: " + rep.note;
    else
      rep.note.clear();
  }
  rep.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rep;
}

std::vector<OpReport> run_checks(const CheckOptions& options) {
  const std::vector<std::string> ops = resolve_ops(options.ops);
  const int64_t quota = std::max<int64_t>(1, options.cases / int64_t(ops.size()));
  std::vector<OpReport> reports;
  for (size_t i = 0; i < ops.size(); ++i) {
    CheckOptions o = options;
    if (options.progress)
      o.progress = [&, i](const Progress& p) {
        Progress q = p;
        q.op_index = int(i);
        q.op_count = int(ops.size());
        options.progress(q);
      };
    reports.push_back(check_op(ops[i], o, quota));
  }
  return reports;
}

namespace {

std::string ratio_text(const MixReport& m) {
  char buf[32];
  if (m.checked == 0) return "-";
  if (m.tol == 0) return m.max_rel_err == 0 ? "0 exact" : "inf exact";
  std::snprintf(buf, sizeof buf, "%.3g", ratio_of(m.max_rel_err, m.tol));
  return buf;
}

}  // namespace

std::string format_table(const std::vector<OpReport>& reports, bool per_mix) {
  std::ostringstream os;
  char line[512];
  const char* fmt = "%-20s %-34s %9s %6s %6s %6s %6s %6s %11s %-18s %8s\n";
  std::snprintf(line, sizeof line, fmt, "op", "dtypes", "cases", "diffs", "repeat", "unwr", "overw", "acc",
                "err/tol", "status", "seconds");
  os << line;
  auto row = [&](const std::string& name, const MixReport& m, const std::string& status, const std::string& secs) {
    std::snprintf(line, sizeof line, fmt, name.c_str(), m.dtypes.c_str(), std::to_string(m.cases).c_str(),
                  std::to_string(m.diffs).c_str(), std::to_string(m.repeat_diffs).c_str(),
                  std::to_string(m.unwritten).c_str(), std::to_string(m.overwritten).c_str(),
                  std::to_string(m.accuracy_failures).c_str(), ratio_text(m).c_str(), status.c_str(), secs.c_str());
    os << line;
  };
  MixReport all;
  double seconds = 0;
  for (const OpReport& r : reports) {
    char secs[32];
    std::snprintf(secs, sizeof secs, "%.2f", r.seconds);
    row(r.op, r.total, status_name(r.status), secs);
    if (per_mix)
      for (const MixReport& m : r.mixes) row("  " + m.dtypes, m, mix_failed(m) ? "FAIL" : "", "");
    add_into(all, r.total);
    seconds += r.seconds;
  }
  char secs[32];
  std::snprintf(secs, sizeof secs, "%.2f", seconds);
  all.dtypes = "";
  row("total", all, exit_code(reports) == 0 ? "PASS" : "FAIL", secs);
  for (const OpReport& r : reports) {
    if (!r.note.empty()) os << r.op << ": " << r.note << "\n";
    for (const std::string& f : r.failures) os << "  " << f << "\n";
  }
  return os.str();
}

nlohmann::json report_json(const std::vector<OpReport>& reports) {
  auto mix_json = [](const MixReport& m) {
    return nlohmann::json{{"dtypes", m.dtypes},
                          {"problems", m.problems},
                          {"cases", m.cases},
                          {"batches", m.batches},
                          {"diffs", m.diffs},
                          {"repeat_diffs", m.repeat_diffs},
                          {"unwritten", m.unwritten},
                          {"overwritten", m.overwritten},
                          {"accuracy_failures", m.accuracy_failures},
                          {"checked", m.checked},
                          {"max_rel_err", std::isfinite(m.max_rel_err) ? nlohmann::json(m.max_rel_err) : nlohmann::json("inf")},
                          {"tol", m.tol}};
  };
  nlohmann::json ops = nlohmann::json::array();
  int64_t cases = 0, diffs = 0;
  double seconds = 0;
  for (const OpReport& r : reports) {
    nlohmann::json mixes = nlohmann::json::array();
    for (const MixReport& m : r.mixes) mixes.push_back(mix_json(m));
    ops.push_back({{"op", r.op},
                   {"status", status_name(r.status)},
                   {"note", r.note},
                   {"total", mix_json(r.total)},
                   {"mixes", mixes},
                   {"skipped_problems", r.skipped_problems},
                   {"batch_sizes", r.batch_sizes},
                   {"failures", r.failures},
                   {"seconds", r.seconds}});
    cases += r.total.cases;
    diffs += r.total.diffs + r.total.repeat_diffs;
    seconds += r.seconds;
  }
  return {{"status", exit_code(reports) == 0 ? "PASS" : "FAIL"},
          {"cases", cases},
          {"diffs", diffs},
          {"seconds", seconds},
          {"ops", ops}};
}

int exit_code(const std::vector<OpReport>& reports) {
  bool ran = false;
  for (const OpReport& r : reports) {
    if (r.failed()) return 1;
    ran = ran || r.status == Status::Pass;
  }
  return ran ? 0 : 1;
}

}  // namespace bik::check

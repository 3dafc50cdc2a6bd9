// The harness's view of an op: which tensors carry one slice per row, how to draw a problem, how to
// call the op, and how to compute one row in float64. The generic procedure (placement, padding,
// poison, comparisons) lives in harness.cpp; each op's adapter in op_checks.cpp.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "bik/tensor.h"
#include "check/harness.h"
#include "check/rng.h"
#include "core/policy.h"

namespace bik::check::detail {

enum class Role : uint8_t { In, Out, InOut };

// A tensor with one slice per row: its view is [M, inner...] ([G, M, inner...] for grouped ops).
struct Operand {
  std::string name;
  DType dtype = DType::F32;
  Shape inner;                 // one row's shape; {} for one element per row
  Role role = Role::In;
  double tol = 0;              // Out/InOut: largest relative error allowed vs float64 (0: exact)
  double rows_inner_prob = 0;  // chance of a layout that puts the row index innermost in memory
  int64_t inner_numel() const {
    int64_t n = 1;
    for (int64_t d : inner) n *= d;
    return n;
  }
  bool is_output() const { return role != Role::In; }
};

// Neighbours are drawn like targets, and sometimes "wild" (zeros, huge values, inf, NaN): the content
// of other rows must not matter. Wild rows are never checked for accuracy.
enum class RowKind : uint8_t { Target, Neighbour, Wild };

// One row's inputs: per operand, its elements in row-major order of `inner`, as raw bytes of the
// operand's dtype. Out operands leave their entry empty.
using RowData = std::vector<std::vector<uint8_t>>;

// float64 reference of one output operand of one row. The error of an element is
// |got - value| / max(scale, smallest normal of the dtype): `scale` is the magnitude the rounding
// errors of the computation are proportional to (sum |a_k b_k| for a dot product, for example), so the
// tolerance can be an honest bound instead of a guess that cancellation breaks.
struct Expected {
  std::vector<double> value, scale;
};

struct Problem {
  std::string dtypes;   // "bf16->f32"
  std::string shape;    // e.g. "K=64 N=7 bias=f32": with the seed, enough to find the case again
  int64_t groups = 1;   // G: row groups with their own shared operands (bmm's batch dim)
  double row_cost = 1;  // rough work of one row (elements touched plus scaled flops), sizes the batches
  std::vector<Operand> operands;
};

struct Context {
  Device device;
  policy::Target target;
};

class OpCheck {
 public:
  virtual ~OpCheck() = default;
  // Picks shapes, dtypes and the shared operands (weights, tables), which it places on the device.
  virtual Problem draw(Rng& rng, const Context& ctx) = 0;
  // Writes one row's inputs into row[i] for every In/InOut operand i.
  virtual void fill_row(Rng& rng, RowKind kind, RowData& row) = 0;
  // Calls the op. views[i] is operand i as [M, inner...] ([G, M, inner...] when G > 1). `alone` marks
  // the runs the batched rows are compared with (M = 1); an op may call those through another form of
  // the same computation (a 1-D row, a reduction over all dims). `rng` picks per-call variations such
  // as the layout of a shared weight.
  virtual void run(const std::vector<TensorView>& views, bool alone, Rng& rng) = 0;
  // float64 reference of one row in group g: fills expected[i] for every Out/InOut operand i.
  virtual void reference(const RowData& row, int64_t g, std::vector<Expected>& expected) = 0;
};

struct OpEntry {
  std::string name;
  std::function<std::unique_ptr<OpCheck>(const Impls&)> make;
};
const std::vector<OpEntry>& op_table();

// ---- element helpers shared by the adapters and the harness ---------------------------------------

double load(DType t, const uint8_t* p, int64_t i);
void store(DType t, uint8_t* p, int64_t i, double v);  // rounds through f32 to t; I32 truncates
// Distance from 1 to the next larger value of the dtype (0 for I32: integers are exact).
double eps_of(DType t);
double min_normal(DType t);

}  // namespace bik::check::detail

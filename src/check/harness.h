// The invariance harness: runs every op of include/bik/ops.h on rows alone and inside batches of many
// sizes, and proves (or refutes) that the bits of a row never depend on the batch. See
// docs/invariance.md ("How it is proven") for the procedure; `bik check kernels` is its front end.
//
// Vocabulary used throughout:
//   row      the unit of batching: a token for mm/norms/softmax, the kept index for sum/mean;
//   problem  one random draw of shapes, dtypes and shared operands (weights, tables) for an op;
//   target   a known row whose output is first computed alone (a batch of one);
//   case     one comparison: a copy of a target placed at one position of one batch, its output bytes
//            compared with the alone result (memcmp). Cases are counted, never estimated.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bik/tensor.h"
#include "check/variants.h"

namespace bik::check {

// Implementations under test. Unset members mean the library's public ops; tests set them to run known
// variant (or broken) implementations through the very same procedure.
struct Impls {
  GemmFn gemm;  // mm, addmm, bmm: called with validated GemmArgs instead of bik::mm / addmm / bmm
  std::function<void(const TensorView& out, const TensorView& x, const TensorView& weight, float eps,
                     const std::optional<TensorView>& residual)>
      rms_norm;  // rms_norm, rms_norm_residual
};

struct Progress {
  std::string op;
  int64_t cases = 0, quota = 0;  // of this op
  int op_index = 0, op_count = 0;
};

struct CheckOptions {
  Device device = Device::cpu();
  int64_t cases = 100000;         // spread evenly over the ops; each op finishes its current sweep
  uint64_t seed = 1;
  std::vector<std::string> ops;   // names or aliases (see op_names / op_aliases); empty: every op
  std::string gemm_variant = "bik";
  Impls impls;                    // overrides gemm_variant when impls.gemm is set
  size_t max_failures = 8;        // failure descriptions kept per op
  std::function<void(const Progress&)> progress;  // called after every batch
};

// Totals of one op for one dtype mix ("bf16->f32": inputs -> output; "f16": all the same).
struct MixReport {
  std::string dtypes;
  int64_t problems = 0, cases = 0, batches = 0;
  int64_t diffs = 0;           // cases whose bytes differ from the row computed alone
  int64_t repeat_diffs = 0;    // rows whose bytes differ between two runs of the same batch
  int64_t unwritten = 0;       // output elements still holding the 0xFF poison after a run
  int64_t overwritten = 0;     // padding elements written, or input elements modified
  int64_t accuracy_failures = 0;  // elements outside the tolerance vs the float64 reference
  int64_t checked = 0;         // elements compared with the reference
  double max_rel_err = 0, tol = 0;  // the largest relative error seen and the tolerance it was held to
};

enum class Status { Pass, Fail, Error, Skipped };
const char* status_name(Status s);  // "PASS", "FAIL", "ERROR", "SKIPPED(no kernel)"

struct OpReport {
  std::string op;
  Status status = Status::Pass;
  std::string note;                  // error text, skip reason, or problems skipped
  std::vector<MixReport> mixes;      // in first-seen order
  MixReport total;                   // sum over mixes (dtypes lists them)
  int64_t skipped_problems = 0;      // problems the backend has no kernel for
  std::vector<int64_t> batch_sizes;  // distinct batch sizes run (rows per group), ascending
  std::vector<std::string> failures; // the first few, each enough to reproduce
  double seconds = 0;
  bool failed() const { return status == Status::Fail || status == Status::Error; }
};

// Every op the harness knows, in table order, and the aliases accepted by --ops.
std::vector<std::string> op_names();
std::vector<std::pair<std::string, std::vector<std::string>>> op_aliases();
// Resolves names and aliases to op names (table order, no duplicates); throws bik::Error naming the
// unknown entry and listing the known ones.
std::vector<std::string> resolve_ops(const std::vector<std::string>& names);

// Runs the requested ops. The case quota of each op is options.cases / number of ops.
std::vector<OpReport> run_checks(const CheckOptions& options);
// Runs one op with an explicit quota (options.ops and options.cases are ignored).
OpReport check_op(const std::string& op, const CheckOptions& options, int64_t cases);

// Presentation, shared by the CLI and the tests.
std::string format_table(const std::vector<OpReport>& reports, bool per_mix);
nlohmann::json report_json(const std::vector<OpReport>& reports);
// 0 when no op failed and at least one op ran (PASS); 1 otherwise.
int exit_code(const std::vector<OpReport>& reports);

}  // namespace bik::check

// Sum / mean over trailing dims, and argmax over the last dim, on the CPU.
#include <vector>

#include "core/backend.h"
#include "core/rows.h"
#include "cpu/parallel.h"
#include "cpu/row_reduce.h"

namespace bik::cpu {
namespace {

// The reduced dims of a ReduceArgs x as a view of their own, with size-1 dims dropped and dims merged
// where memory is row-major contiguous across them. Merging keeps the row-major enumeration order, so
// it only saves index arithmetic; the flattened length and the sum's order are unchanged.
TensorView reduced_view(const TensorView& x, int kept) {
  TensorView v = x;
  v.ndim = 0;
  for (int d = kept; d < x.ndim; ++d) {
    if (x.shape[d] == 1) continue;
    if (v.ndim > 0 && v.stride[v.ndim - 1] == x.shape[d] * x.stride[d]) {
      v.shape[v.ndim - 1] *= x.shape[d];
      v.stride[v.ndim - 1] = x.stride[d];
      continue;
    }
    v.shape[v.ndim] = x.shape[d];
    v.stride[v.ndim] = x.stride[d];
    ++v.ndim;
  }
  return v;
}

// Widens elements [j0, j0 + m) of the reduced elements (row-major flat index j) into dst.
void gather(float* dst, const void* base, DType dt, const Rows& red, int64_t j0, int64_t m) {
  int64_t row = j0 / red.n, i = j0 % red.n;
  for (int64_t k = 0; k < m;) {
    int64_t seg = std::min(red.n - i, m - k);
    load_row(dst + k, elem_ptr(const_cast<void*>(base), dt, red.offset(row) + i * red.elem_stride), dt, seg,
             red.elem_stride);
    k += seg;
    i = 0;
    ++row;
  }
}

// Index of the first maximum, with torch's rule that NaN beats everything (so the first NaN wins).
int64_t first_max_index(const float* v, int64_t n) {
  int64_t nans = 0;
  for (int64_t i = 0; i < n; ++i) nans += v[i] != v[i];
  if (nans) {
    for (int64_t i = 0; i < n; ++i)
      if (v[i] != v[i]) return i;
  }
  const float max = row_max(v, n);
  for (int64_t i = 0; i < n; ++i)
    if (v[i] == max) return i;
  return 0;  // unreachable: the max is one of the elements
}

}  // namespace

void reduce(const ReduceArgs& a, Stream) {
  const TensorView& x = a.x;
  const TensorView& out = a.out;
  const TensorView red_view = reduced_view(x, a.kept);
  const Rows red(red_view);  // no reduced dims left: one element at offset 0
  int64_t outputs = 1;
  for (int d = 0; d < a.kept; ++d) outputs *= x.shape[d];
  const int64_t len = red_view.numel();
  check_row_plan(x.dtype, len);
  // The reduced elements are widened in chunks so a huge reduction needs no huge buffer. The chunk is a
  // multiple of the lane count, so element j still lands in lane j % 16 across chunks.
  constexpr int64_t kChunk = 256 * kLanes;
  const bool direct = x.dtype == DType::F32 && red.count == 1 && red.elem_stride == 1;

  parallel_for(outputs, rows_grain(len), [&](int64_t begin, int64_t end) {
    auto buf = row_buffer(std::min(len, kChunk));
    for (int64_t o = begin; o < end; ++o) {
      float acc[kLanes] = {};
      // An empty reduction (a reduced dim of size 0) reads nothing: x may then have no data at all.
      if (len > 0) {
        const void* base = elem_ptr(x.data, x.dtype, flat_offset(x, a.kept, o));
        if (direct) {
          const float* v = static_cast<const float*>(base);
          lanes_add(acc, len, [v](int64_t i) { return v[i]; });
        } else {
          for (int64_t j0 = 0; j0 < len; j0 += kChunk) {
            const int64_t m = std::min(kChunk, len - j0);
            gather(buf.data(), base, x.dtype, red, j0, m);
            const float* v = buf.data();
            lanes_add(acc, m, [v](int64_t i) { return v[i]; });
          }
        }
      }
      float total = lanes_total(acc);
      if (a.mean) total = total / float(len);  // an empty mean is 0 / 0 = NaN, as in torch
      store_row(elem_ptr(out.data, out.dtype, flat_offset(out, out.ndim, o)), out.dtype, 1, 1, &total);
    }
  });
}

void argmax(const TensorView& out, const TensorView& x, Stream) {
  const Rows xr(x);
  const int64_t n = xr.n;
  parallel_for(xr.count, rows_grain(n), [&](int64_t begin, int64_t end) {
    auto buf = row_buffer(n);
    for (int64_t r = begin; r < end; ++r) {
      const float* v = row_floats(x.data, x.dtype, xr.offset(r), n, xr.elem_stride, buf.data());
      out.ptr<int32_t>()[flat_offset(out, out.ndim, r)] = int32_t(first_max_index(v, n));
    }
  });
}

}  // namespace bik::cpu

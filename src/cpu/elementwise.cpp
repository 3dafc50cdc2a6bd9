// Elementwise ops and gathers on the CPU: silu_and_mul, rotary embedding, embedding lookup, and the
// rotary cos/sin table. No reductions here, so only the per-element formulas fix the bits.
#include <cmath>
#include <cstring>
#include <vector>

#include "core/backend.h"
#include "core/rows.h"
#include "cpu/parallel.h"
#include "cpu/row_reduce.h"

namespace bik::cpu {

void silu_and_mul(const TensorView& out, const TensorView& x, Stream) {
  const Rows xr(x), outr(out);
  const int64_t d = outr.n;
  parallel_for(xr.count, rows_grain(2 * d), [&](int64_t begin, int64_t end) {
    auto gate_buf = row_buffer(d);
    auto up_buf = row_buffer(d);
    auto out_buf = row_buffer(d);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t off = xr.offset(r);
      const float* gate = row_floats(x.data, x.dtype, off, d, xr.elem_stride, gate_buf.data());
      const float* up = row_floats(x.data, x.dtype, off + d * xr.elem_stride, d, xr.elem_stride, up_buf.data());
      RowOut o(out.data, out.dtype, outr.offset(r), d, outr.elem_stride, out_buf.data());
      // silu(g) = g * sigmoid(g) = g / (1 + exp(-g)); for g -> -inf, exp overflows to inf and the
      // quotient goes to -0 instead of producing inf * 0 = NaN.
      for (int64_t i = 0; i < d; ++i) o.data[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
      o.finish();
    }
  });
}

namespace {

// Rotates the first 2 * half elements of one head in place. Each pair is read completely before it is
// written, so `v` and `o` may be the same memory (contiguous f32 heads are rotated where they lie).
void rotate_head(float* o, const float* v, const float* cos, const float* sin, int64_t half, bool neox) {
  if (neox) {
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = v[i], x2 = v[i + half];
      o[i] = x1 * cos[i] - x2 * sin[i];
      o[i + half] = x2 * cos[i] + x1 * sin[i];
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = v[2 * i], x2 = v[2 * i + 1];
      o[2 * i] = x1 * cos[i] - x2 * sin[i];
      o[2 * i + 1] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

}  // namespace

void rotary_embedding(const TensorView& q, const TensorView& k, const TensorView& positions,
                      const TensorView& cos_sin, bool neox, Stream) {
  const bool has_k = k.ndim != 0 || k.data != nullptr;
  const int64_t tokens = q.shape[0], rot = cos_sin.shape[1], half = rot / 2;
  const int64_t heads_q = q.shape[1], heads_k = has_k ? k.shape[1] : 0;
  const int32_t* pos = positions.ptr<int32_t>();

  parallel_for(tokens, rows_grain(rot * (heads_q + heads_k)), [&](int64_t begin, int64_t end) {
    auto cos_buf = row_buffer(half);
    auto sin_buf = row_buffer(half);
    auto in_buf = row_buffer(rot);
    auto out_buf = row_buffer(rot);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = pos[t * positions.stride[0]];
      const int64_t row = p * cos_sin.stride[0], col = cos_sin.stride[1];
      const float* cos = row_floats(cos_sin.data, DType::F32, row, half, col, cos_buf.data());
      const float* sin = row_floats(cos_sin.data, DType::F32, row + half * col, half, col, sin_buf.data());
      for (int64_t h = 0; h < heads_q + heads_k; ++h) {
        const TensorView& x = h < heads_q ? q : k;
        const int64_t head = h < heads_q ? h : h - heads_q;
        const int64_t off = t * x.stride[0] + head * x.stride[1], es = x.stride[2];
        // Only the first rot elements are read and written; the rest of the head is left untouched.
        const float* v = row_floats(x.data, x.dtype, off, rot, es, in_buf.data());
        RowOut o(x.data, x.dtype, off, rot, es, out_buf.data());
        rotate_head(o.data, v, cos, sin, half, neox);
        o.finish();
      }
    }
  });
}

void embedding(const TensorView& out, const TensorView& ids, const TensorView& table, bool check_ids, Stream) {
  const int64_t tokens = ids.shape[0], vocab = table.shape[0], dim = table.shape[1];
  const int32_t* id = ids.ptr<int32_t>();
  // Every id is checked before anything is written, so a bad batch leaves out untouched.
  for (int64_t t = 0; t < tokens && check_ids; ++t) {
    const int32_t v = id[t * ids.stride[0]];
    BIK_CHECK(v >= 0 && v < vocab, "embedding: ids[", t, "] = ", v, " is outside the table's rows [0, ", vocab,
              ") of ", table.str());
  }
  const int64_t es = dtype_size(table.dtype);
  parallel_for(tokens, rows_grain(dim), [&](int64_t begin, int64_t end) {
    auto buf = row_buffer(dim);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t src = id[t * ids.stride[0]] * table.stride[0];
      const int64_t dst = t * out.stride[0];
      if (out.dtype == table.dtype) {
        // A gather is a copy: move the bytes (a round trip through float would quiet signalling NaNs).
        const char* s = static_cast<const char*>(elem_ptr(table.data, table.dtype, src));
        char* o = static_cast<char*>(elem_ptr(out.data, out.dtype, dst));
        if (table.stride[1] == 1 && out.stride[1] == 1) {
          std::memcpy(o, s, size_t(dim * es));
        } else {
          for (int64_t i = 0; i < dim; ++i)
            std::memcpy(o + i * out.stride[1] * es, s + i * table.stride[1] * es, size_t(es));
        }
      } else {
        const float* v = row_floats(table.data, table.dtype, src, dim, table.stride[1], buf.data());
        store_row(elem_ptr(out.data, out.dtype, dst), out.dtype, dim, out.stride[1], v);
      }
    }
  });
}

}  // namespace bik::cpu

namespace bik {

Tensor rope_cos_sin_table(int64_t max_pos, int64_t rot_dim, double theta, Device device) {
  BIK_CHECK(max_pos >= 0, "rope_cos_sin_table: max_pos must be >= 0, got ", max_pos);
  BIK_CHECK(rot_dim > 0 && rot_dim % 2 == 0, "rope_cos_sin_table: rot_dim must be even and > 0, got ", rot_dim);
  BIK_CHECK(theta > 0 && std::isfinite(theta), "rope_cos_sin_table: theta must be finite and > 0, got ", theta);
  const int64_t half = rot_dim / 2;
  // inv_freq[i] = theta^(-2i / rot_dim), the frequencies of HF's rotary embedding. Angles and their
  // cos/sin are taken in double and rounded once to f32, so large positions keep full f32 accuracy.
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[size_t(i)] = 1.0 / std::pow(theta, double(2 * i) / double(rot_dim));
  Tensor table = Tensor::empty({max_pos, rot_dim}, DType::F32);
  float* cs = table.ptr<float>();
  cpu::parallel_for(max_pos, cpu::rows_grain(rot_dim * 8), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t i = 0; i < half; ++i) {
        const double angle = double(p) * inv_freq[size_t(i)];
        cs[p * rot_dim + i] = float(std::cos(angle));
        cs[p * rot_dim + half + i] = float(std::sin(angle));
      }
    }
  });
  return device.is_cpu() ? table : table.to(device);
}

}  // namespace bik

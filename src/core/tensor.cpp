#include "bik/tensor.h"

#include <cstdlib>
#include <cstring>
#include <sstream>

#include "core/memory.h"

namespace bik {

std::string Device::str() const { return kind == CPU ? "cpu" : "cuda:" + std::to_string(index); }

namespace {
std::array<int64_t, kMaxDims> to_array(const Shape& s, const char* what) {
  BIK_CHECK(s.size() <= size_t(kMaxDims), "tensor: ", what, " has ", s.size(), " dims; at most ", kMaxDims,
            " are supported");
  std::array<int64_t, kMaxDims> a{};
  for (size_t i = 0; i < s.size(); ++i) a[i] = s[i];
  return a;
}
std::string join(const int64_t* v, int n) {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < n; ++i) os << (i ? ", " : "") << v[i];
  os << "]";
  return os.str();
}
Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (int i = int(shape.size()) - 1; i >= 0; --i) {
    st[i] = acc;
    acc *= shape[i];
  }
  return st;
}
}  // namespace

TensorView::TensorView(void* d, DType t, const Shape& s, Device dev)
    : TensorView(d, t, s, contiguous_strides(s), dev) {}

TensorView::TensorView(void* d, DType t, const Shape& s, const Shape& st, Device dev)
    : data(d), dtype(t), device(dev), ndim(int(s.size())) {
  BIK_CHECK(s.size() == st.size(), "tensor: shape has ", s.size(), " dims but strides have ", st.size());
  shape = to_array(s, "shape");
  stride = to_array(st, "strides");
  for (int i = 0; i < ndim; ++i) {
    BIK_CHECK(shape[i] >= 0, "tensor: negative size ", shape[i], " in dim ", i);
    BIK_CHECK(stride[i] >= 0, "tensor: negative stride ", stride[i], " in dim ", i);
  }
}

int TensorView::norm_dim(int d) const {
  int nd = d < 0 ? d + ndim : d;
  BIK_CHECK(nd >= 0 && nd < ndim, "tensor: dim ", d, " is out of range for ", str());
  return nd;
}

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= shape[i];
  return n;
}

bool TensorView::is_contiguous() const {
  int64_t acc = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    if (shape[i] != 1 && stride[i] != acc) return false;
    acc *= shape[i];
  }
  return true;
}

int64_t TensorView::span_bytes() const {
  if (numel() == 0) return 0;
  int64_t last = 0;
  for (int i = 0; i < ndim; ++i) last += (shape[i] - 1) * stride[i];
  return (last + 1) * dtype_size(dtype);
}

TensorView TensorView::select(int dim, int64_t index) const {
  int d = norm_dim(dim);
  BIK_CHECK(index >= 0 && index < shape[d], "tensor: index ", index, " out of range for dim ", dim, " of ", str());
  TensorView v = *this;
  v.data = static_cast<char*>(data) + index * stride[d] * dtype_size(dtype);
  for (int i = d; i + 1 < ndim; ++i) {
    v.shape[i] = shape[i + 1];
    v.stride[i] = stride[i + 1];
  }
  v.ndim = ndim - 1;
  return v;
}

TensorView TensorView::narrow(int dim, int64_t start, int64_t length) const {
  int d = norm_dim(dim);
  BIK_CHECK(start >= 0 && length >= 0 && start + length <= shape[d], "tensor: narrow(", dim, ", ", start, ", ",
            length, ") is out of range for ", str());
  TensorView v = *this;
  v.data = static_cast<char*>(data) + start * stride[d] * dtype_size(dtype);
  v.shape[d] = length;
  return v;
}

TensorView TensorView::reshape(const Shape& s) const {
  BIK_CHECK(is_contiguous(), "tensor: reshape needs a contiguous view, got ", str());
  TensorView v(data, dtype, s, device);
  BIK_CHECK(v.numel() == numel(), "tensor: cannot reshape ", str(), " to ", join(s.data(), int(s.size())));
  return v;
}

TensorView TensorView::transpose(int d0, int d1) const {
  int a = norm_dim(d0), b = norm_dim(d1);
  TensorView v = *this;
  std::swap(v.shape[a], v.shape[b]);
  std::swap(v.stride[a], v.stride[b]);
  return v;
}

std::string TensorView::str() const {
  std::ostringstream os;
  os << dtype_name(dtype) << join(shape.data(), ndim);
  if (!is_contiguous()) os << " stride " << join(stride.data(), ndim);
  if (!device.is_cpu()) os << " on " << device.str();
  return os.str();
}

namespace {
std::shared_ptr<void> allocate(int64_t bytes, Device d) {
  if (bytes == 0) bytes = 1;
  if (d.is_cpu()) {
    void* p = std::aligned_alloc(64, size_t((bytes + 63) / 64 * 64));
    BIK_CHECK(p, "tensor: out of host memory allocating ", bytes, " bytes");
    return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
  }
  int dev = d.index;
  void* p = cuda::malloc_bytes(dev, bytes);
  return std::shared_ptr<void>(p, [dev](void* q) { cuda::free_bytes(dev, q); });
}
}  // namespace

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  t.view_ = TensorView(nullptr, dtype, shape, device);
  t.alloc_bytes_ = t.view_.numel() * dtype_size(dtype);
  t.storage_ = allocate(t.alloc_bytes_, device);
  t.view_.data = t.storage_.get();
  return t;
}

Tensor Tensor::empty_padded(const Shape& shape, int64_t row_stride, DType dtype, Device device) {
  BIK_CHECK(!shape.empty() && row_stride >= shape.back(), "tensor: row stride ", row_stride,
            " is smaller than the last dim of ", join(shape.data(), int(shape.size())));
  Shape st(shape.size());
  int64_t acc = row_stride;
  st.back() = 1;
  for (int i = int(shape.size()) - 2; i >= 0; --i) {
    st[i] = acc;
    acc *= shape[i];
  }
  Tensor t;
  t.view_ = TensorView(nullptr, dtype, shape, st, device);
  int64_t rows = shape.size() > 1 ? t.view_.numel() / std::max<int64_t>(shape.back(), 1) : 1;
  t.alloc_bytes_ = rows * row_stride * dtype_size(dtype);
  t.storage_ = allocate(t.alloc_bytes_, device);
  t.view_.data = t.storage_.get();
  return t;
}

Tensor Tensor::to(Device d) const {
  Tensor t = empty(sizes(), dtype(), d);
  copy(t, view_);
  return t;
}

Tensor Tensor::narrow(int dim, int64_t start, int64_t length) const {
  Tensor t = *this;
  t.view_ = view_.narrow(dim, start, length);
  return t;
}

void memcpy_bytes(void* dst, Device dd, const void* src, Device sd, int64_t bytes) {
  if (bytes == 0) return;
  if (dd.is_cpu() && sd.is_cpu()) {
    std::memcpy(dst, src, size_t(bytes));
    return;
  }
  cuda::memcpy_bytes(dst, dd.is_cpu() ? -1 : dd.index, src, sd.is_cpu() ? -1 : sd.index, bytes);
}

void copy(const TensorView& dst, const TensorView& src) {
  BIK_CHECK(dst.sizes() == src.sizes() && dst.dtype == src.dtype, "copy: dst ", dst.str(), " and src ", src.str(),
            " differ in shape or dtype");
  int64_t es = dtype_size(src.dtype);
  if (dst.is_contiguous() && src.is_contiguous()) {
    memcpy_bytes(dst.data, dst.device, src.data, src.device, src.numel() * es);
    return;
  }
  // Strided: stage through contiguous host buffers one element at a time (host-side test utility path).
  Tensor s_host = Tensor::empty(src.sizes(), src.dtype);
  if (src.device.is_cpu()) {
    int64_t n = src.numel();
    std::vector<int64_t> idx(size_t(std::max(src.ndim, 1)), 0);
    for (int64_t i = 0; i < n; ++i) {
      int64_t off = 0;
      for (int d = 0; d < src.ndim; ++d) off += idx[d] * src.stride[d];
      std::memcpy(static_cast<char*>(s_host.data()) + i * es, static_cast<const char*>(src.data) + off * es, size_t(es));
      for (int d = src.ndim - 1; d >= 0; --d) {
        if (++idx[d] < src.shape[d]) break;
        idx[d] = 0;
      }
    }
  } else {
    // Copy the whole span down, then gather on the host.
    int64_t span = src.span_bytes();
    std::vector<char> buf(static_cast<size_t>(span));
    memcpy_bytes(buf.data(), Device::cpu(), src.data, src.device, span);
    TensorView hv = src;
    hv.data = buf.data();
    hv.device = Device::cpu();
    copy(s_host, hv);
  }
  if (dst.device.is_cpu()) {
    int64_t n = dst.numel();
    std::vector<int64_t> idx(size_t(std::max(dst.ndim, 1)), 0);
    for (int64_t i = 0; i < n; ++i) {
      int64_t off = 0;
      for (int d = 0; d < dst.ndim; ++d) off += idx[d] * dst.stride[d];
      std::memcpy(static_cast<char*>(dst.data) + off * es, static_cast<const char*>(s_host.data()) + i * es, size_t(es));
      for (int d = dst.ndim - 1; d >= 0; --d) {
        if (++idx[d] < dst.shape[d]) break;
        idx[d] = 0;
      }
    }
  } else {
    // Read the destination span, scatter on the host, write it back (keeps bytes between elements intact).
    int64_t span = dst.span_bytes();
    std::vector<char> buf(static_cast<size_t>(span));
    memcpy_bytes(buf.data(), Device::cpu(), dst.data, dst.device, span);
    TensorView hv = dst;
    hv.data = buf.data();
    hv.device = Device::cpu();
    copy(hv, s_host);
    memcpy_bytes(dst.data, dst.device, buf.data(), Device::cpu(), span);
  }
}

void fill_bytes(const TensorView& dst, uint8_t byte) {
  int64_t span = dst.span_bytes();
  if (span == 0) return;
  if (dst.device.is_cpu())
    std::memset(dst.data, byte, size_t(span));
  else
    cuda::memset_bytes(dst.data, dst.device.index, byte, span);
}

void synchronize(Device d) {
  if (d.is_cuda()) cuda::synchronize(d.index);
}

}  // namespace bik

// Tensor views (non-owning) and tensors (owning), on the CPU or a CUDA device.
// Shapes and strides are in elements; strides may be any non-negative value (0 broadcasts).
#pragma once
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "bik/dtype.h"
#include "bik/error.h"

namespace bik {

struct Device {
  enum Kind : uint8_t { CPU, CUDA };
  Kind kind = CPU;
  int index = 0;
  static Device cpu() { return {CPU, 0}; }
  static Device cuda(int i = 0) { return {CUDA, i}; }
  bool is_cpu() const { return kind == CPU; }
  bool is_cuda() const { return kind == CUDA; }
  bool operator==(const Device& o) const { return kind == o.kind && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
};

constexpr int kMaxDims = 6;
using Shape = std::vector<int64_t>;

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F32;
  Device device{};
  int ndim = 0;
  std::array<int64_t, kMaxDims> shape{};
  std::array<int64_t, kMaxDims> stride{};

  TensorView() = default;
  // Contiguous row-major view.
  TensorView(void* data, DType dtype, const Shape& shape, Device device = Device::cpu());
  // Strided view.
  TensorView(void* data, DType dtype, const Shape& shape, const Shape& strides, Device device = Device::cpu());

  bool defined() const { return data != nullptr || numel() == 0; }
  int64_t size(int d) const { return shape[norm_dim(d)]; }
  int64_t strides(int d) const { return stride[norm_dim(d)]; }
  int64_t numel() const;
  bool is_contiguous() const;
  Shape sizes() const { return Shape(shape.begin(), shape.begin() + ndim); }
  // Bytes spanned from data to one past the last element (0 when empty).
  int64_t span_bytes() const;
  template <class T>
  T* ptr() const { return static_cast<T*>(data); }
  // Sub-views (no copies).
  TensorView select(int dim, int64_t index) const;               // drops dim
  TensorView narrow(int dim, int64_t start, int64_t length) const;
  TensorView reshape(const Shape& new_shape) const;              // contiguous views only
  TensorView transpose(int d0, int d1) const;
  std::string str() const;  // "bf16[4, 8] stride [8, 1] on cpu"
  int norm_dim(int d) const;
};

// An owning tensor: allocation lives as long as any copy of the Tensor.
class Tensor {
 public:
  Tensor() = default;
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  // Allocates room for `shape` with each row padded to `row_stride` elements (row_stride >= last dim).
  static Tensor empty_padded(const Shape& shape, int64_t row_stride, DType dtype, Device device = Device::cpu());
  const TensorView& view() const { return view_; }
  operator const TensorView&() const { return view_; }
  void* data() const { return view_.data; }
  DType dtype() const { return view_.dtype; }
  Device device() const { return view_.device; }
  int64_t numel() const { return view_.numel(); }
  int64_t size(int d) const { return view_.size(d); }
  Shape sizes() const { return view_.sizes(); }
  template <class T>
  T* ptr() const { return view_.ptr<T>(); }
  // Bytes of the whole allocation (including padding).
  int64_t alloc_bytes() const { return alloc_bytes_; }
  Tensor to(Device d) const;  // contiguous copy on another device
  // A sub-tensor sharing this one's storage (it keeps the allocation alive), as TensorView::narrow.
  Tensor narrow(int dim, int64_t start, int64_t length) const;

 private:
  std::shared_ptr<void> storage_;
  TensorView view_;
  int64_t alloc_bytes_ = 0;
};

// Copies between views of equal shape and dtype, any devices, any strides.
void copy(const TensorView& dst, const TensorView& src);
// Fills every byte of the view's span (padding included) with `byte`.
void fill_bytes(const TensorView& dst, uint8_t byte);
// Raw byte copies across devices (cudaMemcpy when either side is a GPU).
void memcpy_bytes(void* dst, Device dst_dev, const void* src, Device src_dev, int64_t bytes);
void synchronize(Device d);

}  // namespace bik

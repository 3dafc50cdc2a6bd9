// GGUF (v2 and v3) reader: the file is memory-mapped, the header, metadata and tensor infos are parsed
// and validated up front, and tensors are dequantised on request (F32, F16, BF16, Q8_0, Q4_0, Q4_1).
// Every malformed input raises bik::Error naming the file, the byte offset and the field.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bik/tensor.h"

namespace bik::engine {

// Metadata value types, numbered as in the file.
enum class GgufType : uint32_t {
  U8 = 0, I8 = 1, U16 = 2, I16 = 3, U32 = 4, I32 = 5, F32 = 6, BOOL = 7, STRING = 8, ARRAY = 9,
  U64 = 10, I64 = 11, F64 = 12,
};
const char* gguf_type_name(GgufType t);

struct GgufValue {
  GgufType type = GgufType::U8;
  GgufType elem_type = GgufType::U8;  // arrays only
  uint64_t u = 0;                     // unsigned integers and bool
  int64_t i = 0;                      // signed integers (also set for unsigned ones that fit)
  double f = 0;                       // floats (also set for every integer)
  std::string s;
  std::vector<GgufValue> arr;

  bool is_integer() const;
  bool is_number() const { return is_integer() || type == GgufType::F32 || type == GgufType::F64; }
  std::string str() const;  // short human-readable rendering (arrays: "[n x type]")
};

// Tensor element types, numbered as in ggml. Only a few are dequantised; the rest are named in errors.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9, Q2_K = 10, Q3_K = 11,
  Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15, IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19,
  IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22, IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28,
  IQ1_M = 29, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35, MXFP4 = 39,
};
const char* ggml_type_name(GgmlType t);
// Elements per block and bytes per block; {0, 0} for a type this reader does not know.
struct GgmlTypeTraits {
  int64_t block = 0;
  int64_t bytes = 0;
};
GgmlTypeTraits ggml_type_traits(GgmlType t);
bool ggml_type_dequantizable(GgmlType t);

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;   // ggml order: ne[0] is the contiguous (fastest) dimension
  GgmlType type = GgmlType::F32;
  uint64_t offset = 0;       // relative to the data section
  uint64_t nbytes = 0;
  uint64_t info_offset = 0;  // file offset of this tensor's info record (for messages)
  int64_t numel() const;
  // Row-major shape as a bik tensor sees it: ne reversed ([rows, cols] for a matrix).
  Shape shape() const;
};

class GgufFile {
 public:
  // Maps and parses `path`; throws bik::Error on any malformed or unsupported content.
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_offset_; }
  uint64_t file_size() const { return size_; }

  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<std::string>& metadata_order() const { return kv_order_; }
  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  // Throws naming the key when absent.
  const GgufValue& get(const std::string& key) const;
  // Typed lookups: `def` when absent; throws when present with an incompatible type.
  std::string get_string(const std::string& key, const std::string& def = "") const;
  int64_t get_int(const std::string& key, int64_t def) const;
  double get_float(const std::string& key, double def) const;
  bool get_bool(const std::string& key, bool def) const;
  std::vector<std::string> get_string_array(const std::string& key) const;  // empty when absent
  std::vector<int64_t> get_int_array(const std::string& key) const;         // empty when absent

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;  // nullptr when absent
  const GgufTensorInfo& tensor(const std::string& name) const;       // throws when absent
  const uint8_t* tensor_data(const GgufTensorInfo& t) const { return base_ + data_offset_ + t.offset; }

  // Dequantises a tensor into a new contiguous CPU tensor of `dtype` (F32 or BF16), shape t.shape().
  // Unsupported quantisation types raise an error naming the tensor and the type.
  Tensor load(const GgufTensorInfo& t, DType dtype) const;
  Tensor load(const std::string& name, DType dtype) const { return load(tensor(name), dtype); }

 private:
  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  int fd_ = -1;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<std::string> kv_order_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// Dequantises `n` elements of type `type` from `src` (n must be a multiple of the block size) into f32.
// Throws for a type that cannot be dequantised; `what` names the tensor in the message.
void dequantize_to_f32(GgmlType type, const uint8_t* src, int64_t n, float* dst, const std::string& what = "");
void dequantize_to_bf16(GgmlType type, const uint8_t* src, int64_t n, bf16* dst, const std::string& what = "");

}  // namespace bik::engine

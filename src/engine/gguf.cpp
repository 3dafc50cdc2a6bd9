#include "engine/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>

namespace bik::engine {

namespace {

constexpr uint32_t kMagic = 0x46554747u;  // "GGUF" read as a little-endian u32
constexpr int kMaxDims = 4;                 // ggml tensors have at most 4 dims
constexpr uint64_t kMaxNumel = uint64_t(1) << 48;

// Bounds-checked cursor over the mapped file; every error names the file, the offset and the field.
class Cursor {
 public:
  Cursor(const std::string& path, const uint8_t* base, uint64_t size) : path_(path), base_(base), size_(size) {}
  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return size_ - pos_; }

  [[noreturn]] void fail(uint64_t at, const std::string& field, const std::string& msg) const {
    throw Error(detail::concat("gguf: ", path_, ": offset ", at, ": ", field, ": ", msg));
  }
  void need(uint64_t n, const std::string& field) const {
    if (n > remaining())
      fail(pos_, field, detail::concat("truncated file: needs ", n, " bytes, ", remaining(), " left (file is ",
                                       size_, " bytes)"));
  }
  template <class T>
  T read(const std::string& field) {
    need(sizeof(T), field);
    T v;
    std::memcpy(&v, base_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string(const std::string& field) {
    const uint64_t at = pos_;
    const uint64_t n = read<uint64_t>(field + " (string length)");
    if (n > remaining())
      fail(at, field, detail::concat("truncated file: string length ", n, " runs past the end of the file (", remaining(),
                                     " bytes left)"));
    std::string s(reinterpret_cast<const char*>(base_ + pos_), size_t(n));
    pos_ += n;
    return s;
  }

 private:
  const std::string& path_;
  const uint8_t* base_;
  uint64_t size_;
  uint64_t pos_ = 0;
};

// Smallest encoded size of one value of a type (bounds the element count of arrays before allocating).
uint64_t min_encoded_size(GgufType t) {
  switch (t) {
    case GgufType::U8: case GgufType::I8: case GgufType::BOOL: return 1;
    case GgufType::U16: case GgufType::I16: return 2;
    case GgufType::U32: case GgufType::I32: case GgufType::F32: return 4;
    case GgufType::U64: case GgufType::I64: case GgufType::F64: case GgufType::STRING: return 8;
    case GgufType::ARRAY: return 12;
  }
  return 1;
}

bool known_value_type(uint32_t t) { return t <= uint32_t(GgufType::F64); }

GgufValue read_value(Cursor& c, GgufType type, const std::string& field, int depth) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::U8: v.u = c.read<uint8_t>(field); break;
    case GgufType::I8: v.i = c.read<int8_t>(field); break;
    case GgufType::U16: v.u = c.read<uint16_t>(field); break;
    case GgufType::I16: v.i = c.read<int16_t>(field); break;
    case GgufType::U32: v.u = c.read<uint32_t>(field); break;
    case GgufType::I32: v.i = c.read<int32_t>(field); break;
    case GgufType::U64: v.u = c.read<uint64_t>(field); break;
    case GgufType::I64: v.i = c.read<int64_t>(field); break;
    case GgufType::F32: v.f = c.read<float>(field); break;
    case GgufType::F64: v.f = c.read<double>(field); break;
    case GgufType::BOOL: {
      const uint64_t at = c.pos();
      const uint8_t b = c.read<uint8_t>(field);
      if (b > 1) c.fail(at, field, detail::concat("bool value ", int(b), " is neither 0 nor 1"));
      v.u = b;
      break;
    }
    case GgufType::STRING: v.s = c.read_string(field); break;
    case GgufType::ARRAY: {
      if (depth > 8) c.fail(c.pos(), field, "arrays nested more than 8 deep");
      const uint64_t at = c.pos();
      const uint32_t et = c.read<uint32_t>(field + " (array element type)");
      if (!known_value_type(et)) c.fail(at, field, detail::concat("unknown array element type ", et));
      v.elem_type = GgufType(et);
      const uint64_t at_n = c.pos();
      const uint64_t n = c.read<uint64_t>(field + " (array length)");
      if (n > c.remaining() / min_encoded_size(v.elem_type))
        c.fail(at_n, field, detail::concat("array of ", n, " ", gguf_type_name(v.elem_type),
                                           " runs past the end of the file (", c.remaining(), " bytes left)"));
      v.arr.reserve(size_t(n));
      for (uint64_t k = 0; k < n; ++k) v.arr.push_back(read_value(c, v.elem_type, field, depth + 1));
      return v;
    }
  }
  // Mirror integer values into the other representations so typed getters are simple.
  if (v.is_integer()) {
    const bool is_signed = type == GgufType::I8 || type == GgufType::I16 || type == GgufType::I32 || type == GgufType::I64;
    if (is_signed) {
      v.u = uint64_t(v.i);
      v.f = double(v.i);
    } else {
      v.i = int64_t(v.u);
      v.f = double(v.u);
    }
  }
  return v;
}

}  // namespace

const char* gguf_type_name(GgufType t) {
  switch (t) {
    case GgufType::U8: return "u8";
    case GgufType::I8: return "i8";
    case GgufType::U16: return "u16";
    case GgufType::I16: return "i16";
    case GgufType::U32: return "u32";
    case GgufType::I32: return "i32";
    case GgufType::F32: return "f32";
    case GgufType::BOOL: return "bool";
    case GgufType::STRING: return "string";
    case GgufType::ARRAY: return "array";
    case GgufType::U64: return "u64";
    case GgufType::I64: return "i64";
    case GgufType::F64: return "f64";
  }
  return "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::U8: case GgufType::I8: case GgufType::U16: case GgufType::I16: case GgufType::U32:
    case GgufType::I32: case GgufType::U64: case GgufType::I64: return true;
    default: return false;
  }
}

std::string GgufValue::str() const {
  if (type == GgufType::STRING) return s;
  if (type == GgufType::BOOL) return u ? "true" : "false";
  if (type == GgufType::ARRAY) return detail::concat("[", arr.size(), " x ", gguf_type_name(elem_type), "]");
  if (type == GgufType::F32 || type == GgufType::F64) return detail::concat(f);
  const bool is_signed = type == GgufType::I8 || type == GgufType::I16 || type == GgufType::I32 || type == GgufType::I64;
  return is_signed ? std::to_string(i) : std::to_string(u);
}

const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::Q8_1: return "Q8_1";
    case GgmlType::Q2_K: return "Q2_K";
    case GgmlType::Q3_K: return "Q3_K";
    case GgmlType::Q4_K: return "Q4_K";
    case GgmlType::Q5_K: return "Q5_K";
    case GgmlType::Q6_K: return "Q6_K";
    case GgmlType::Q8_K: return "Q8_K";
    case GgmlType::IQ2_XXS: return "IQ2_XXS";
    case GgmlType::IQ2_XS: return "IQ2_XS";
    case GgmlType::IQ3_XXS: return "IQ3_XXS";
    case GgmlType::IQ1_S: return "IQ1_S";
    case GgmlType::IQ4_NL: return "IQ4_NL";
    case GgmlType::IQ3_S: return "IQ3_S";
    case GgmlType::IQ2_S: return "IQ2_S";
    case GgmlType::IQ4_XS: return "IQ4_XS";
    case GgmlType::I8: return "I8";
    case GgmlType::I16: return "I16";
    case GgmlType::I32: return "I32";
    case GgmlType::I64: return "I64";
    case GgmlType::F64: return "F64";
    case GgmlType::IQ1_M: return "IQ1_M";
    case GgmlType::BF16: return "BF16";
    case GgmlType::TQ1_0: return "TQ1_0";
    case GgmlType::TQ2_0: return "TQ2_0";
    case GgmlType::MXFP4: return "MXFP4";
  }
  return "unknown";
}

GgmlTypeTraits ggml_type_traits(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return {1, 4};
    case GgmlType::F16: return {1, 2};
    case GgmlType::BF16: return {1, 2};
    case GgmlType::Q4_0: return {32, 18};
    case GgmlType::Q4_1: return {32, 20};
    case GgmlType::Q5_0: return {32, 22};
    case GgmlType::Q5_1: return {32, 24};
    case GgmlType::Q8_0: return {32, 34};
    case GgmlType::Q8_1: return {32, 36};
    case GgmlType::Q2_K: return {256, 84};
    case GgmlType::Q3_K: return {256, 110};
    case GgmlType::Q4_K: return {256, 144};
    case GgmlType::Q5_K: return {256, 176};
    case GgmlType::Q6_K: return {256, 210};
    case GgmlType::Q8_K: return {256, 292};
    case GgmlType::IQ2_XXS: return {256, 66};
    case GgmlType::IQ2_XS: return {256, 74};
    case GgmlType::IQ3_XXS: return {256, 98};
    case GgmlType::IQ1_S: return {256, 50};
    case GgmlType::IQ4_NL: return {32, 18};
    case GgmlType::IQ3_S: return {256, 110};
    case GgmlType::IQ2_S: return {256, 82};
    case GgmlType::IQ4_XS: return {256, 136};
    case GgmlType::I8: return {1, 1};
    case GgmlType::I16: return {1, 2};
    case GgmlType::I32: return {1, 4};
    case GgmlType::I64: return {1, 8};
    case GgmlType::F64: return {1, 8};
    case GgmlType::IQ1_M: return {256, 56};
    case GgmlType::TQ1_0: return {256, 54};
    case GgmlType::TQ2_0: return {256, 66};
    case GgmlType::MXFP4: return {32, 17};
  }
  return {0, 0};
}

bool ggml_type_dequantizable(GgmlType t) {
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16 || t == GgmlType::Q8_0 ||
         t == GgmlType::Q4_0 || t == GgmlType::Q4_1;
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

Shape GgufTensorInfo::shape() const { return Shape(ne.rbegin(), ne.rend()); }

// ---- parsing -------------------------------------------------------------------------------------------

GgufFile::GgufFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw Error(detail::concat("gguf: cannot open ", path, ": ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd_);
    throw Error(detail::concat("gguf: ", path, " is not a regular file"));
  }
  size_ = uint64_t(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
    if (p == MAP_FAILED) {
      ::close(fd_);
      throw Error(detail::concat("gguf: cannot map ", path, ": ", std::strerror(errno)));
    }
    base_ = static_cast<const uint8_t*>(p);
  }
  try {
    Cursor c(path_, base_, size_);
    const uint32_t magic = c.read<uint32_t>("magic");
    if (magic != kMagic) {
      char m[5] = {0};
      std::memcpy(m, &magic, 4);
      for (char& ch : m)
        if (ch && (ch < 32 || ch > 126)) ch = '?';
      c.fail(0, "magic", detail::concat("bad magic '", m, "' (expected 'GGUF'): not a GGUF file"));
    }
    const uint32_t version = c.read<uint32_t>("version");
    if (version == 0x03000000u || version == 0x02000000u)
      c.fail(4, "version", "big-endian GGUF files are not supported");
    if (version != 2 && version != 3)
      c.fail(4, "version", detail::concat("unsupported version ", version, " (this reader handles 2 and 3)"));
    version_ = version;
    const uint64_t n_tensors = c.read<uint64_t>("tensor_count");
    const uint64_t n_kv = c.read<uint64_t>("metadata_kv_count");
    // Each KV takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info at least 8 + 4 + 4 + 8.
    if (n_kv > c.remaining() / 13) c.fail(16, "metadata_kv_count", detail::concat("truncated file or bad count: ", n_kv, " entries cannot fit"));

    for (uint64_t k = 0; k < n_kv; ++k) {
      const uint64_t at = c.pos();
      std::string key = c.read_string(detail::concat("metadata key #", k));
      const uint64_t at_type = c.pos();
      const uint32_t t = c.read<uint32_t>("type of metadata '" + key + "'");
      if (!known_value_type(t)) c.fail(at_type, "metadata '" + key + "'", detail::concat("unknown value type ", t));
      GgufValue v = read_value(c, GgufType(t), "metadata '" + key + "'", 0);
      if (kv_.count(key)) c.fail(at, "metadata '" + key + "'", "duplicate key");
      kv_order_.push_back(key);
      kv_.emplace(std::move(key), std::move(v));
    }

    if (auto it = kv_.find("general.alignment"); it != kv_.end()) {
      const GgufValue& a = it->second;
      if (!a.is_integer() || a.u == 0 || (a.u & (a.u - 1)) != 0 || a.u > (1u << 20))
        c.fail(c.pos(), "metadata 'general.alignment'",
               detail::concat("alignment must be a power of two integer, got ", a.str()));
      alignment_ = a.u;
    }

    if (n_tensors > c.remaining() / 24) c.fail(8, "tensor_count", detail::concat("truncated file or bad count: ", n_tensors, " tensors cannot fit"));
    tensors_.reserve(size_t(n_tensors));
    for (uint64_t k = 0; k < n_tensors; ++k) {
      GgufTensorInfo ti;
      ti.info_offset = c.pos();
      ti.name = c.read_string(detail::concat("tensor #", k, " name"));
      const std::string field = "tensor '" + ti.name + "'";
      const uint64_t at_dims = c.pos();
      const uint32_t nd = c.read<uint32_t>(field + " n_dims");
      if (nd == 0 || nd > uint32_t(kMaxDims))
        c.fail(at_dims, field + " n_dims", detail::concat(nd, " dims (must be 1 to ", kMaxDims, ")"));
      uint64_t numel = 1;
      for (uint32_t d = 0; d < nd; ++d) {
        const uint64_t at = c.pos();
        const uint64_t n = c.read<uint64_t>(field + " dim");
        if (n == 0 || n > kMaxNumel || numel > kMaxNumel / n)
          c.fail(at, detail::concat(field, " dim ", d), detail::concat("size ", n, " is out of range"));
        numel *= n;
        ti.ne.push_back(int64_t(n));
      }
      const uint64_t at_type = c.pos();
      const uint32_t type = c.read<uint32_t>(field + " type");
      ti.type = GgmlType(type);
      const GgmlTypeTraits tr = ggml_type_traits(ti.type);
      if (tr.block == 0) c.fail(at_type, field + " type", detail::concat("unknown tensor type ", type));
      if (ti.ne[0] % tr.block != 0)
        c.fail(at_dims, field + " dims", detail::concat("row length ", ti.ne[0], " is not a multiple of the ",
                                                        ggml_type_name(ti.type), " block size ", tr.block));
      ti.nbytes = numel / uint64_t(tr.block) * uint64_t(tr.bytes);
      const uint64_t at_off = c.pos();
      ti.offset = c.read<uint64_t>(field + " offset");
      if (ti.offset % alignment_ != 0)
        c.fail(at_off, field + " offset", detail::concat("offset ", ti.offset, " is not a multiple of the alignment ", alignment_));
      if (tensor_index_.count(ti.name)) c.fail(ti.info_offset, field, "duplicate tensor name");
      tensor_index_[ti.name] = tensors_.size();
      tensors_.push_back(std::move(ti));
    }

    data_offset_ = (c.pos() + alignment_ - 1) / alignment_ * alignment_;
    if (n_tensors > 0 && data_offset_ > size_)
      c.fail(c.pos(), "data section", detail::concat("truncated file: the data section would start at ", data_offset_,
                                                     " but the file is ", size_, " bytes"));
    const uint64_t data_size = size_ > data_offset_ ? size_ - data_offset_ : 0;
    for (const GgufTensorInfo& ti : tensors_) {
      if (ti.offset > data_size || ti.nbytes > data_size - ti.offset)
        c.fail(ti.info_offset, "tensor '" + ti.name + "'",
               detail::concat("tensor out of bounds: data [", data_offset_ + ti.offset, ", ",
                              data_offset_ + ti.offset + ti.nbytes, ") runs past the end of the file (", size_,
                              " bytes; truncated file or bad offset)"));
    }
  } catch (...) {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
    ::close(fd_);
    throw;
  }
}

GgufFile::~GgufFile() {
  if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
  if (fd_ >= 0) ::close(fd_);
}

const GgufValue& GgufFile::get(const std::string& key) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) throw Error(detail::concat("gguf: ", path_, ": metadata key '", key, "' is missing"));
  return it->second;
}

std::string GgufFile::get_string(const std::string& key, const std::string& def) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return def;
  BIK_CHECK(it->second.type == GgufType::STRING, "gguf: ", path_, ": metadata '", key, "' is ",
            gguf_type_name(it->second.type), ", expected string");
  return it->second.s;
}

int64_t GgufFile::get_int(const std::string& key, int64_t def) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return def;
  BIK_CHECK(it->second.is_integer(), "gguf: ", path_, ": metadata '", key, "' is ", gguf_type_name(it->second.type),
            ", expected an integer");
  return it->second.i;
}

double GgufFile::get_float(const std::string& key, double def) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return def;
  BIK_CHECK(it->second.is_number(), "gguf: ", path_, ": metadata '", key, "' is ", gguf_type_name(it->second.type),
            ", expected a number");
  return it->second.f;
}

bool GgufFile::get_bool(const std::string& key, bool def) const {
  auto it = kv_.find(key);
  if (it == kv_.end()) return def;
  BIK_CHECK(it->second.type == GgufType::BOOL || it->second.is_integer(), "gguf: ", path_, ": metadata '", key,
            "' is ", gguf_type_name(it->second.type), ", expected bool");
  return it->second.u != 0;
}

std::vector<std::string> GgufFile::get_string_array(const std::string& key) const {
  std::vector<std::string> out;
  auto it = kv_.find(key);
  if (it == kv_.end()) return out;
  BIK_CHECK(it->second.type == GgufType::ARRAY && it->second.elem_type == GgufType::STRING, "gguf: ", path_,
            ": metadata '", key, "' is not an array of strings");
  out.reserve(it->second.arr.size());
  for (const GgufValue& v : it->second.arr) out.push_back(v.s);
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(const std::string& key) const {
  std::vector<int64_t> out;
  auto it = kv_.find(key);
  if (it == kv_.end()) return out;
  BIK_CHECK(it->second.type == GgufType::ARRAY &&
                (it->second.arr.empty() || it->second.arr[0].is_integer()),
            "gguf: ", path_, ": metadata '", key, "' is not an array of integers");
  out.reserve(it->second.arr.size());
  for (const GgufValue& v : it->second.arr) out.push_back(v.i);
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  if (!t) throw Error(detail::concat("gguf: ", path_, ": no tensor named '", name, "'"));
  return *t;
}

Tensor GgufFile::load(const GgufTensorInfo& t, DType dtype) const {
  BIK_CHECK(dtype == DType::F32 || dtype == DType::BF16, "gguf: ", path_, ": tensor '", t.name,
            "' can load as f32 or bf16, not ", dtype_name(dtype));
  const std::string what = detail::concat(path_, ": tensor '", t.name, "'");
  Tensor out = Tensor::empty(t.shape(), dtype);
  if (dtype == DType::F32)
    dequantize_to_f32(t.type, tensor_data(t), t.numel(), out.ptr<float>(), what);
  else
    dequantize_to_bf16(t.type, tensor_data(t), t.numel(), out.ptr<bf16>(), what);
  return out;
}

// ---- dequantisation --------------------------------------------------------------------------------------
// Block layouts (32 elements each): Q8_0 = f16 d, i8 q[32]; value = d * q.
// Q4_0 = f16 d, u8 qs[16]; element j < 16 is the low nibble of qs[j], element j + 16 its high nibble;
// value = d * (nibble - 8). Q4_1 = f16 d, f16 m, u8 qs[16] (same nibble order); value = d * nibble + m.
// All arithmetic is f32 (no fused multiply-add), so bf16 results are the f32 results rounded once.

namespace {

inline float load_f16(const uint8_t* p) {
  f16 h;
  std::memcpy(&h.bits, p, 2);
  return to_float(h);
}

template <class Store>
void dequantize(GgmlType type, const uint8_t* src, int64_t n, Store store, const std::string& what) {
  const GgmlTypeTraits tr = ggml_type_traits(type);
  if (!ggml_type_dequantizable(type))
    throw Error(detail::concat("gguf: ", what.empty() ? std::string("tensor") : what, ": type ",
                               ggml_type_name(type), " (", uint32_t(type),
                               ") is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"));
  BIK_CHECK(n % tr.block == 0, "gguf: ", what, ": ", n, " elements is not a multiple of the ", ggml_type_name(type),
            " block size ", tr.block);
  switch (type) {
    case GgmlType::F32:
      for (int64_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, src + 4 * i, 4);
        store(i, v);
      }
      break;
    case GgmlType::F16:
      for (int64_t i = 0; i < n; ++i) store(i, load_f16(src + 2 * i));
      break;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n; ++i) {
        bf16 h;
        std::memcpy(&h.bits, src + 2 * i, 2);
        store(i, to_float(h));
      }
      break;
    case GgmlType::Q8_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = src + b * 34;
        const float d = load_f16(blk);
        for (int j = 0; j < 32; ++j) store(b * 32 + j, d * float(int8_t(blk[2 + j])));
      }
      break;
    case GgmlType::Q4_0:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = src + b * 18;
        const float d = load_f16(blk);
        for (int j = 0; j < 16; ++j) {
          const uint8_t q = blk[2 + j];
          store(b * 32 + j, d * float(int(q & 0xF) - 8));
          store(b * 32 + j + 16, d * float(int(q >> 4) - 8));
        }
      }
      break;
    case GgmlType::Q4_1:
      for (int64_t b = 0; b < n / 32; ++b) {
        const uint8_t* blk = src + b * 20;
        const float d = load_f16(blk), m = load_f16(blk + 2);
        for (int j = 0; j < 16; ++j) {
          const uint8_t q = blk[4 + j];
          const float lo = d * float(q & 0xF), hi = d * float(q >> 4);
          store(b * 32 + j, lo + m);
          store(b * 32 + j + 16, hi + m);
        }
      }
      break;
    default: break;
  }
}

}  // namespace

void dequantize_to_f32(GgmlType type, const uint8_t* src, int64_t n, float* dst, const std::string& what) {
  dequantize(type, src, n, [dst](int64_t i, float v) { dst[i] = v; }, what);
}

void dequantize_to_bf16(GgmlType type, const uint8_t* src, int64_t n, bf16* dst, const std::string& what) {
  if (type == GgmlType::BF16) {  // exact copy, NaN payloads included
    std::memcpy(dst, src, size_t(n) * 2);
    return;
  }
  dequantize(type, src, n, [dst](int64_t i, float v) { dst[i] = to_bf16(v); }, what);
}

}  // namespace bik::engine

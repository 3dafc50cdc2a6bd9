#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace bik::engine {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

int64_t st_dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "I8" || d == "U8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

}  // namespace

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path) : path_(path) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) throw Error(detail::concat("safetensors: cannot open ", path, ": ", std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd_);
      throw Error(detail::concat("safetensors: ", path, " is not a regular file"));
    }
    size_ = uint64_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd_, 0);
      if (p == MAP_FAILED) {
        ::close(fd_);
        throw Error(detail::concat("safetensors: cannot map ", path, ": ", std::strerror(errno)));
      }
      base_ = static_cast<const uint8_t*>(p);
    }
  }
  ~SafetensorsFile() {
    if (base_) ::munmap(const_cast<uint8_t*>(base_), size_);
    if (fd_ >= 0) ::close(fd_);
  }

  // Parses the header; appends the tensors (with file index `index`) and metadata.
  void parse(int index, std::map<std::string, SafetensorsInfo>& out, std::map<std::string, std::string>& meta) {
    auto fail = [&](const std::string& msg) -> void { throw Error("safetensors: " + path_ + ": " + msg); };
    if (size_ < 8) fail(detail::concat("truncated file: ", size_, " bytes, the header length alone takes 8"));
    uint64_t n = 0;
    std::memcpy(&n, base_, 8);
    if (n > size_ - 8)
      fail(detail::concat("truncated file or not a safetensors file: header length ", n, " runs past the end (",
                          size_, " bytes)"));
    if (n > (uint64_t(100) << 20)) fail(detail::concat("header length ", n, " is over 100 MiB"));
    data_offset_ = 8 + n;
    const uint64_t data_size = size_ - data_offset_;
    json h;
    try {
      h = json::parse(reinterpret_cast<const char*>(base_ + 8), reinterpret_cast<const char*>(base_ + 8 + n));
    } catch (const json::exception& e) {
      fail(std::string("header is not valid JSON: ") + e.what());
    }
    if (!h.is_object()) fail("header is not a JSON object");
    for (auto it = h.begin(); it != h.end(); ++it) {
      const std::string& name = it.key();
      const json& e = it.value();
      if (name == "__metadata__") {
        if (!e.is_object()) fail("__metadata__ is not an object");
        for (auto m = e.begin(); m != e.end(); ++m)
          if (m.value().is_string()) meta[m.key()] = m.value().get<std::string>();
        continue;
      }
      const std::string where = "tensor '" + name + "': ";
      if (!e.is_object()) fail(where + "entry is not an object");
      if (!e.contains("dtype") || !e["dtype"].is_string()) fail(where + "missing or non-string 'dtype'");
      if (!e.contains("shape") || !e["shape"].is_array()) fail(where + "missing or non-array 'shape'");
      if (!e.contains("data_offsets") || !e["data_offsets"].is_array() || e["data_offsets"].size() != 2)
        fail(where + "'data_offsets' must be an array of 2 integers");
      SafetensorsInfo t;
      t.name = name;
      t.file = index;
      t.dtype = e["dtype"].get<std::string>();
      const int64_t es = st_dtype_size(t.dtype);
      if (es == 0) fail(where + "unknown dtype '" + t.dtype + "'");
      uint64_t numel = 1;
      if (e["shape"].size() > size_t(kMaxDims)) fail(where + detail::concat(e["shape"].size(), " dims (at most ", kMaxDims, ")"));
      for (const json& d : e["shape"]) {
        if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<int64_t>() >= 0))
          fail(where + "shape entries must be non-negative integers, got " + d.dump());
        const uint64_t v = d.get<uint64_t>();
        if (v != 0 && numel > (uint64_t(1) << 50) / v) fail(where + "shape is too large");
        numel *= v;
        t.shape.push_back(int64_t(v));
      }
      for (const json& o : e["data_offsets"])
        if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<int64_t>() >= 0))
          fail(where + "data_offsets must be non-negative integers, got " + e["data_offsets"].dump());
      t.begin = e["data_offsets"][0].get<uint64_t>();
      t.end = e["data_offsets"][1].get<uint64_t>();
      if (t.begin > t.end) fail(where + detail::concat("data_offsets [", t.begin, ", ", t.end, ") are reversed"));
      if (t.end > data_size)
        fail(where + detail::concat("data_offsets [", t.begin, ", ", t.end, ") run past the data section (",
                                    data_size, " bytes): truncated file or bad offsets"));
      if (t.end - t.begin != numel * uint64_t(es))
        fail(where + detail::concat("data_offsets span ", t.end - t.begin, " bytes but ", t.dtype, " shape needs ",
                                    numel * uint64_t(es)));
      if (out.count(name)) fail(where + "defined in more than one file");
      out.emplace(name, std::move(t));
    }
  }

  const uint8_t* data() const { return base_ + data_offset_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t data_offset_ = 0;
};

SafetensorsFolder::SafetensorsFolder(const std::string& path) {
  std::vector<std::string> paths;
  std::map<std::string, std::string> index_map;  // tensor -> file, when an index is present
  if (fs::is_directory(path)) {
    const fs::path idx = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(idx)) {
      std::ifstream in(idx);
      json j;
      try {
        j = json::parse(in);
      } catch (const json::exception& e) {
        throw Error(detail::concat("safetensors: ", idx.string(), ": not valid JSON: ", e.what()));
      }
      if (!j.contains("weight_map") || !j["weight_map"].is_object())
        throw Error(detail::concat("safetensors: ", idx.string(), ": missing 'weight_map' object"));
      for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
        if (!it.value().is_string())
          throw Error(detail::concat("safetensors: ", idx.string(), ": weight_map['", it.key(), "'] is not a string"));
        const std::string f = it.value().get<std::string>();
        if (f.find('/') != std::string::npos || f == "..")
          throw Error(detail::concat("safetensors: ", idx.string(), ": shard name '", f, "' must be a plain file name"));
        index_map[it.key()] = f;
        const std::string full = (fs::path(path) / f).string();
        if (std::find(paths.begin(), paths.end(), full) == paths.end()) paths.push_back(full);
      }
      for (const std::string& p : paths)
        if (!fs::exists(p))
          throw Error(detail::concat("safetensors: ", idx.string(), " names shard ", p, ", which does not exist"));
    } else {
      for (const auto& e : fs::directory_iterator(path))
        if (e.is_regular_file() && e.path().extension() == ".safetensors") paths.push_back(e.path().string());
      std::sort(paths.begin(), paths.end());
    }
    if (paths.empty()) throw Error(detail::concat("safetensors: no *.safetensors files in ", path));
  } else {
    if (!fs::exists(path)) throw Error(detail::concat("safetensors: ", path, " does not exist"));
    paths.push_back(path);
  }
  for (size_t i = 0; i < paths.size(); ++i) {
    files_.push_back(std::make_unique<SafetensorsFile>(paths[i]));
    files_.back()->parse(int(i), tensors_, metadata_);
  }
  file_paths_ = paths;
  for (const auto& [name, file] : index_map) {
    auto it = tensors_.find(name);
    if (it == tensors_.end())
      throw Error(detail::concat("safetensors: the index names tensor '", name, "' in ", file, ", which lacks it"));
  }
}

SafetensorsFolder::~SafetensorsFolder() = default;

const SafetensorsInfo* SafetensorsFolder::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

const uint8_t* SafetensorsFolder::data(const SafetensorsInfo& t) const { return files_[t.file]->data() + t.begin; }

Tensor SafetensorsFolder::load(const std::string& name, DType dtype) const {
  const SafetensorsInfo* t = find(name);
  if (!t) throw Error(detail::concat("safetensors: no tensor named '", name, "'"));
  const std::string& file = file_paths_[t->file];
  BIK_CHECK(dtype == DType::F32 || dtype == DType::BF16, "safetensors: ", file, ": tensor '", name,
            "' can load as f32 or bf16, not ", dtype_name(dtype));
  BIK_CHECK(t->dtype == "F32" || t->dtype == "F16" || t->dtype == "BF16", "safetensors: ", file, ": tensor '", name,
            "' has dtype ", t->dtype, " (supported: F32, F16, BF16)");
  Tensor out = Tensor::empty(t->shape, dtype);
  const uint8_t* src = data(*t);
  const int64_t n = out.numel();
  auto value = [&](int64_t i) -> float {
    if (t->dtype == "F32") {
      float v;
      std::memcpy(&v, src + 4 * i, 4);
      return v;
    }
    uint16_t b;
    std::memcpy(&b, src + 2 * i, 2);
    return t->dtype == "F16" ? to_float(f16{b}) : to_float(bf16{b});
  };
  if (dtype == DType::BF16 && t->dtype == "BF16") {
    std::memcpy(out.data(), src, size_t(n) * 2);
  } else if (dtype == DType::F32) {
    float* o = out.ptr<float>();
    for (int64_t i = 0; i < n; ++i) o[i] = value(i);
  } else {
    bf16* o = out.ptr<bf16>();
    for (int64_t i = 0; i < n; ++i) o[i] = to_bf16(value(i));
  }
  return out;
}

}  // namespace bik::engine

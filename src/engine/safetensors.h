// Reader for Hugging Face safetensors: one file or a folder of shards (model.safetensors.index.json, or
// every *.safetensors in the folder). Files are memory-mapped; the JSON header of each is validated
// (dtype, shape, data_offsets inside the file and consistent with the shape) with errors naming the file
// and the tensor. Tensors of dtype F32, F16 and BF16 load into CPU tensors of F32 or BF16.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bik/tensor.h"

namespace bik::engine {

struct SafetensorsInfo {
  std::string name;
  std::string dtype;  // as in the header: "F32", "F16", "BF16", ...
  Shape shape;
  uint64_t begin = 0, end = 0;  // byte range inside the file's data section
  int file = 0;                 // index into SafetensorsFolder's files
};

class SafetensorsFile;

class SafetensorsFolder {
 public:
  // `path` is a folder (shards found via model.safetensors.index.json or *.safetensors) or one file.
  explicit SafetensorsFolder(const std::string& path);
  ~SafetensorsFolder();
  SafetensorsFolder(const SafetensorsFolder&) = delete;
  SafetensorsFolder& operator=(const SafetensorsFolder&) = delete;

  const std::vector<std::string>& files() const { return file_paths_; }
  const std::map<std::string, SafetensorsInfo>& tensors() const { return tensors_; }
  const SafetensorsInfo* find(const std::string& name) const;
  // Converts to `dtype` (F32 or BF16): exact widening, or round-to-nearest-even narrowing.
  Tensor load(const std::string& name, DType dtype) const;
  // The raw bytes of a tensor (little-endian, row-major).
  const uint8_t* data(const SafetensorsInfo& t) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::vector<std::string> file_paths_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, SafetensorsInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace bik::engine

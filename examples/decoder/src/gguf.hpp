// GGUF: the single-file model format of ggml/llama.cpp (metadata key/values, then tensor data).
//
// The reader loads the whole file into memory once and hands out typed metadata and tensors dequantised to
// fp32. Only what a Llama-family decoder needs is supported: scalar, string and array metadata, and the
// tensor types F32, F16, BF16, Q8_0, Q4_0 and Q4_1.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace redknot::decoder {

// Value types as numbered by the GGUF specification.
enum class GgufType : std::uint32_t {
  kU8 = 0,
  kI8 = 1,
  kU16 = 2,
  kI16 = 3,
  kU32 = 4,
  kI32 = 5,
  kF32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kU64 = 10,
  kI64 = 11,
  kF64 = 12,
};

// One metadata value. Integers and bools live in `i` (u64 values above INT64_MAX are not expected), floats in
// `f`, strings in `s`, arrays in `arr` (elements all of `elem_type`).
struct GgufValue {
  GgufType type = GgufType::kU32;
  GgufType elem_type = GgufType::kU32;
  std::int64_t i = 0;
  double f = 0.0;
  std::string s;
  std::vector<GgufValue> arr;
};

// ggml tensor types the decoder can dequantise (numbering from ggml).
enum class GgmlType : std::uint32_t { kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ8_0 = 8, kBF16 = 30 };

std::string_view ggml_type_name(GgmlType t);
// Elements per block and bytes per block of a tensor type.
int ggml_block_elems(GgmlType t);
int ggml_block_bytes(GgmlType t);

struct GgufTensorInfo {
  std::string name;
  std::vector<std::int64_t> dims;  // ggml order: dims[0] is the contiguous (fastest) dimension
  GgmlType type = GgmlType::kF32;
  std::uint64_t offset = 0;  // from the start of the data section
  std::int64_t n_elements() const;
  std::uint64_t n_bytes() const;
};

class GgufFile {
 public:
  static GgufFile open(const std::string& path);
  static GgufFile parse(std::vector<std::uint8_t> bytes, std::string origin = "<memory>");

  std::uint32_t version() const { return version_; }
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }

  bool has(const std::string& key) const { return kv_.count(key) != 0; }
  const GgufValue& get(const std::string& key) const;
  std::int64_t get_int(const std::string& key) const;
  std::int64_t get_int(const std::string& key, std::int64_t fallback) const;
  double get_float(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback = "") const;

  const GgufTensorInfo* find_tensor(const std::string& name) const;
  const GgufTensorInfo& tensor(const std::string& name) const;
  // The tensor's elements in ggml order, dequantised to fp32.
  std::vector<float> load_f32(const std::string& name) const;

 private:
  std::string origin_;
  std::vector<std::uint8_t> bytes_;
  std::uint32_t version_ = 0;
  std::uint64_t data_offset_ = 0;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace redknot::decoder

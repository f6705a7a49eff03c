// A small GGUF writer, so tests can build models (random weights, tiny vocabularies) without a download.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "gguf.hpp"

namespace redknot::decoder {

class GgufWriter {
 public:
  void set_u32(const std::string& key, std::uint32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_strings(const std::string& key, const std::vector<std::string>& v);
  void set_i32s(const std::string& key, const std::vector<std::int32_t>& v);
  // dims in ggml order (dims[0] contiguous); values are quantised to `type`.
  void add_tensor(const std::string& name, std::vector<std::int64_t> dims, GgmlType type,
                  std::span<const float> values);

  std::vector<std::uint8_t> bytes() const;
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<std::int64_t> dims;
    GgmlType type;
    std::vector<std::uint8_t> data;
  };
  void key(const std::string& k, GgufType t);
  std::vector<std::uint8_t> kv_;
  std::uint64_t n_kv_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace redknot::decoder

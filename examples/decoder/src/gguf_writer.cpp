#include "gguf_writer.hpp"

#include <cstring>
#include <fstream>

#include "quant.hpp"
#include "redknot/error.hpp"

namespace redknot::decoder {

namespace {

constexpr std::uint64_t kAlign = 32;

template <class T>
void put(std::vector<std::uint8_t>& out, T v) {
  // resize + memcpy rather than insert(p, p + n): GCC 12 at -O3 reports a false -Wstringop-overflow on the
  // inlined range insert.
  const std::size_t at = out.size();
  out.resize(at + sizeof(T));
  std::memcpy(out.data() + at, &v, sizeof(T));
}

void put_string(std::vector<std::uint8_t>& out, const std::string& s) {
  put<std::uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

}  // namespace

void GgufWriter::key(const std::string& k, GgufType t) {
  put_string(kv_, k);
  put<std::uint32_t>(kv_, static_cast<std::uint32_t>(t));
  ++n_kv_;
}

void GgufWriter::set_u32(const std::string& k, std::uint32_t v) {
  key(k, GgufType::kU32);
  put(kv_, v);
}
void GgufWriter::set_f32(const std::string& k, float v) {
  key(k, GgufType::kF32);
  put(kv_, v);
}
void GgufWriter::set_bool(const std::string& k, bool v) {
  key(k, GgufType::kBool);
  put<std::uint8_t>(kv_, v ? 1 : 0);
}
void GgufWriter::set_string(const std::string& k, const std::string& v) {
  key(k, GgufType::kString);
  put_string(kv_, v);
}
void GgufWriter::set_strings(const std::string& k, const std::vector<std::string>& v) {
  key(k, GgufType::kArray);
  put<std::uint32_t>(kv_, static_cast<std::uint32_t>(GgufType::kString));
  put<std::uint64_t>(kv_, v.size());
  for (const auto& s : v) put_string(kv_, s);
}
void GgufWriter::set_i32s(const std::string& k, const std::vector<std::int32_t>& v) {
  key(k, GgufType::kArray);
  put<std::uint32_t>(kv_, static_cast<std::uint32_t>(GgufType::kI32));
  put<std::uint64_t>(kv_, v.size());
  for (auto x : v) put(kv_, x);
}

void GgufWriter::add_tensor(const std::string& name, std::vector<std::int64_t> dims, GgmlType type,
                            std::span<const float> values) {
  std::int64_t n = 1;
  for (auto d : dims) n *= d;
  require(n == static_cast<std::int64_t>(values.size()), "GgufWriter: tensor '", name, "' has ",
          values.size(), " values for ", n, " elements");
  tensors_.push_back(Tensor{name, std::move(dims), type, quantize(type, values)});
}

std::vector<std::uint8_t> GgufWriter::bytes() const {
  std::vector<std::uint8_t> out;
  put<std::uint32_t>(out, 0x46554747u);  // "GGUF"
  put<std::uint32_t>(out, 3);
  put<std::uint64_t>(out, tensors_.size());
  put<std::uint64_t>(out, n_kv_);
  out.insert(out.end(), kv_.begin(), kv_.end());
  std::uint64_t offset = 0;
  for (const auto& t : tensors_) {
    put_string(out, t.name);
    put<std::uint32_t>(out, static_cast<std::uint32_t>(t.dims.size()));
    for (auto d : t.dims) put<std::uint64_t>(out, static_cast<std::uint64_t>(d));
    put<std::uint32_t>(out, static_cast<std::uint32_t>(t.type));
    put<std::uint64_t>(out, offset);
    offset += (t.data.size() + kAlign - 1) / kAlign * kAlign;
  }
  out.resize((out.size() + kAlign - 1) / kAlign * kAlign, 0);
  for (const auto& t : tensors_) {
    out.insert(out.end(), t.data.begin(), t.data.end());
    out.resize((out.size() + kAlign - 1) / kAlign * kAlign, 0);
  }
  return out;
}

void GgufWriter::write(const std::string& path) const {
  const auto b = bytes();
  std::ofstream f(path, std::ios::binary);
  require(static_cast<bool>(f), "GgufWriter: cannot create '", path, "'");
  f.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

}  // namespace redknot::decoder

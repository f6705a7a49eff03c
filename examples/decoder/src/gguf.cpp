#include "gguf.hpp"

#include <cstring>
#include <fstream>

#include "quant.hpp"
#include "redknot/error.hpp"

namespace redknot::decoder {

std::string_view ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return "F32";
    case GgmlType::kF16:
      return "F16";
    case GgmlType::kQ4_0:
      return "Q4_0";
    case GgmlType::kQ4_1:
      return "Q4_1";
    case GgmlType::kQ8_0:
      return "Q8_0";
    case GgmlType::kBF16:
      return "BF16";
  }
  return "unknown";
}

int ggml_block_elems(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return 1;
    default:
      return 32;
  }
}

int ggml_block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::kF32:
      return 4;
    case GgmlType::kF16:
    case GgmlType::kBF16:
      return 2;
    case GgmlType::kQ4_0:
      return 18;  // fp16 scale + 16 bytes of nibbles
    case GgmlType::kQ4_1:
      return 20;  // fp16 scale + fp16 min + 16 bytes of nibbles
    case GgmlType::kQ8_0:
      return 34;  // fp16 scale + 32 int8
  }
  throw InvalidArgument("unsupported ggml tensor type " + std::to_string(static_cast<std::uint32_t>(t)));
}

std::int64_t GgufTensorInfo::n_elements() const {
  std::int64_t n = 1;
  for (auto d : dims) n *= d;
  return n;
}

std::uint64_t GgufTensorInfo::n_bytes() const {
  return static_cast<std::uint64_t>(n_elements() / ggml_block_elems(type)) * ggml_block_bytes(type);
}

namespace {

// Bounds-checked little-endian cursor over the file bytes.
class Cursor {
 public:
  Cursor(const std::vector<std::uint8_t>& b, const std::string& origin) : b_(b), origin_(origin) {}
  template <class T>
  T read() {
    need(sizeof(T));
    T v;
    std::memcpy(&v, b_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  std::string read_string() {
    const auto n = read<std::uint64_t>();
    need(n);
    std::string s(reinterpret_cast<const char*>(b_.data() + pos_), static_cast<std::size_t>(n));
    pos_ += n;
    return s;
  }
  std::uint64_t pos() const { return pos_; }

 private:
  void need(std::uint64_t n) const {
    require(n <= b_.size() && pos_ <= b_.size() - n, origin_, ": GGUF is truncated at byte ", pos_,
            " (needs ", n, " more bytes)");
  }
  const std::vector<std::uint8_t>& b_;
  const std::string& origin_;
  std::uint64_t pos_ = 0;
};

GgufValue read_value(Cursor& c, GgufType type, const std::string& origin, int depth = 0) {
  GgufValue v;
  v.type = type;
  switch (type) {
    case GgufType::kU8:
      v.i = c.read<std::uint8_t>();
      break;
    case GgufType::kI8:
      v.i = c.read<std::int8_t>();
      break;
    case GgufType::kU16:
      v.i = c.read<std::uint16_t>();
      break;
    case GgufType::kI16:
      v.i = c.read<std::int16_t>();
      break;
    case GgufType::kU32:
      v.i = c.read<std::uint32_t>();
      break;
    case GgufType::kI32:
      v.i = c.read<std::int32_t>();
      break;
    case GgufType::kU64:
      v.i = static_cast<std::int64_t>(c.read<std::uint64_t>());
      break;
    case GgufType::kI64:
      v.i = c.read<std::int64_t>();
      break;
    case GgufType::kF32:
      v.f = c.read<float>();
      break;
    case GgufType::kF64:
      v.f = c.read<double>();
      break;
    case GgufType::kBool:
      v.i = c.read<std::uint8_t>() != 0;
      break;
    case GgufType::kString:
      v.s = c.read_string();
      break;
    case GgufType::kArray: {
      require(depth == 0, origin, ": nested GGUF arrays are not supported");
      v.elem_type = static_cast<GgufType>(c.read<std::uint32_t>());
      const auto n = c.read<std::uint64_t>();
      require(n < (1ull << 32), origin, ": GGUF array of ", n, " elements is implausibly long");
      v.arr.reserve(static_cast<std::size_t>(n));
      for (std::uint64_t k = 0; k < n; ++k) v.arr.push_back(read_value(c, v.elem_type, origin, depth + 1));
      break;
    }
    default:
      throw InvalidArgument(origin + ": unknown GGUF value type " +
                            std::to_string(static_cast<std::uint32_t>(type)));
  }
  return v;
}

}  // namespace

GgufFile GgufFile::open(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  require<NotFound>(static_cast<bool>(in), "cannot open GGUF file '", path, "'");
  const auto size = static_cast<std::size_t>(in.tellg());
  std::vector<std::uint8_t> bytes(size);
  in.seekg(0);
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  require(static_cast<bool>(in), "cannot read GGUF file '", path, "'");
  return parse(std::move(bytes), path);
}

GgufFile GgufFile::parse(std::vector<std::uint8_t> bytes, std::string origin) {
  GgufFile f;
  f.origin_ = std::move(origin);
  f.bytes_ = std::move(bytes);
  Cursor c(f.bytes_, f.origin_);
  const auto magic = c.read<std::uint32_t>();
  require(magic == 0x46554747u, f.origin_, ": not a GGUF file (bad magic)");
  f.version_ = c.read<std::uint32_t>();
  require(f.version_ == 2 || f.version_ == 3, f.origin_, ": GGUF version ", f.version_,
          " is not supported (2 or 3)");
  const auto n_tensors = c.read<std::uint64_t>();
  const auto n_kv = c.read<std::uint64_t>();
  for (std::uint64_t i = 0; i < n_kv; ++i) {
    std::string key = c.read_string();
    const auto type = static_cast<GgufType>(c.read<std::uint32_t>());
    f.kv_[key] = read_value(c, type, f.origin_);
  }
  for (std::uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = c.read_string();
    const auto nd = c.read<std::uint32_t>();
    require(nd >= 1 && nd <= 4, f.origin_, ": tensor '", t.name, "' has ", nd, " dims");
    for (std::uint32_t d = 0; d < nd; ++d)
      t.dims.push_back(static_cast<std::int64_t>(c.read<std::uint64_t>()));
    t.type = static_cast<GgmlType>(c.read<std::uint32_t>());
    t.offset = c.read<std::uint64_t>();
    f.tensors_.push_back(std::move(t));
  }
  const auto align = static_cast<std::uint64_t>(f.get_int("general.alignment", 32));
  require(align > 0, f.origin_, ": general.alignment must be > 0");
  f.data_offset_ = (c.pos() + align - 1) / align * align;
  for (const auto& t : f.tensors_) {
    (void)ggml_block_bytes(t.type);  // throws on unsupported types
    require(t.n_elements() % ggml_block_elems(t.type) == 0, f.origin_, ": tensor '", t.name,
            "' is not a whole number of blocks");
    require(f.data_offset_ + t.offset + t.n_bytes() <= f.bytes_.size(), f.origin_, ": tensor '", t.name,
            "' extends past the end of the file");
  }
  return f;
}

const GgufValue& GgufFile::get(const std::string& key) const {
  auto it = kv_.find(key);
  require<NotFound>(it != kv_.end(), origin_, ": metadata key '", key, "' is missing");
  return it->second;
}

std::int64_t GgufFile::get_int(const std::string& key) const { return get(key).i; }
std::int64_t GgufFile::get_int(const std::string& key, std::int64_t fallback) const {
  return has(key) ? get(key).i : fallback;
}
double GgufFile::get_float(const std::string& key, double fallback) const {
  if (!has(key)) return fallback;
  const GgufValue& v = get(key);
  return (v.type == GgufType::kF32 || v.type == GgufType::kF64) ? v.f : static_cast<double>(v.i);
}
bool GgufFile::get_bool(const std::string& key, bool fallback) const {
  return has(key) ? get(key).i != 0 : fallback;
}
std::string GgufFile::get_string(const std::string& key, const std::string& fallback) const {
  return has(key) ? get(key).s : fallback;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  for (const auto& t : tensors_)
    if (t.name == name) return &t;
  return nullptr;
}

const GgufTensorInfo& GgufFile::tensor(const std::string& name) const {
  const GgufTensorInfo* t = find_tensor(name);
  require<NotFound>(t != nullptr, origin_, ": tensor '", name, "' is missing");
  return *t;
}

std::vector<float> GgufFile::load_f32(const std::string& name) const {
  const GgufTensorInfo& t = tensor(name);
  std::vector<float> out(static_cast<std::size_t>(t.n_elements()));
  dequantize(t.type, bytes_.data() + data_offset_ + t.offset, t.n_elements(), out.data());
  return out;
}

}  // namespace redknot::decoder

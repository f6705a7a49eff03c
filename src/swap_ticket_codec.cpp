// SwapTicket <-> bytes (include/redknot/swap_ticket_codec.hpp).
#include "redknot/swap_ticket_codec.hpp"

#include <cstring>
#include <limits>

#include "little_endian.hpp"
#include "redknot/error.hpp"

namespace redknot {

namespace {

constexpr std::uint32_t kMagic = 0x54534B52u;  // "RKST"
constexpr std::size_t kHeader = 24;            // magic, version, body length, body hash
constexpr std::uint8_t kLocal = 1, kCold = 2;
// The smallest encodings, for checking a count against the bytes left before anything is allocated.
constexpr std::size_t kMinObject = 2 + 1 + 4 + 1 + 8 + 8 + 4;  // a 1-byte name, no runs
constexpr std::size_t kRun = 16;

class Writer {
 public:
  template <class U>
  void put(U v) {
    const std::size_t at = out_.size();
    out_.resize(at + sizeof(U));
    le::put<U>(out_.data() + at, v);
  }
  void put_bytes(const void* p, std::size_t n) {
    const std::size_t at = out_.size();
    out_.resize(at + n);
    if (n > 0) std::memcpy(out_.data() + at, p, n);
  }
  std::vector<std::byte>& bytes() { return out_; }

 private:
  std::vector<std::byte> out_;
};

// Reads from a span; every read checks the bytes left, and a failed read sets the reason once and makes every
// later read fail too, so the parser can read a whole record and check once.
class Reader {
 public:
  explicit Reader(std::span<const std::byte> b) : b_(b) {}
  template <class U>
  U get(const char* what) {
    if (!take(sizeof(U), what)) return U{};
    return le::get<U>(b_.data() + at_ - sizeof(U));
  }
  bool take(std::size_t n, const char* what) {
    if (!ok()) return false;
    if (n > b_.size() - at_) {
      fail(detail::concat("truncated: ", what, " needs ", n, " bytes at offset ", at_, ", ", b_.size() - at_,
                          " left"));
      return false;
    }
    at_ += n;
    return true;
  }
  // Whether `count` items of at least `each` bytes can still follow (else fails: an absurd count).
  bool room_for(std::uint64_t count, std::size_t each, const char* what) {
    if (!ok()) return false;
    if (count > (b_.size() - at_) / each) {
      fail(detail::concat(what, " count ", count, " cannot fit in the ", b_.size() - at_, " bytes left"));
      return false;
    }
    return true;
  }
  void fail(std::string why) {
    if (ok()) why_ = std::move(why);
  }
  bool ok() const { return why_.empty(); }
  const std::string& why() const { return why_; }
  std::size_t left() const { return b_.size() - at_; }
  const std::byte* here() const { return b_.data() + at_; }

 private:
  std::span<const std::byte> b_;
  std::size_t at_ = 0;
  std::string why_;
};

bool valid_name(std::string_view name) {
  try {
    check_object_name(name);
    return true;
  } catch (const InvalidArgument&) {
    return false;
  }
}

}  // namespace

std::vector<std::byte> encode_swap_ticket(const SwapTicket& t) {
  constexpr std::size_t kMax32 = std::numeric_limits<std::uint32_t>::max();
  require(t.next_pos.size() == t.query_floor.size(), "encode_swap_ticket: next_pos has ", t.next_pos.size(),
          " layers, query_floor ", t.query_floor.size());
  require(t.next_pos.size() <= kMax32, "encode_swap_ticket: ", t.next_pos.size(), " layers");
  require(t.objects.size() <= kMax32, "encode_swap_ticket: ", t.objects.size(), " objects");
  Writer w;
  w.bytes().resize(kHeader);
  w.put<std::uint64_t>(t.model_fp);
  w.put<std::uint32_t>(static_cast<std::uint32_t>(t.next_pos.size()));
  for (const std::int32_t p : t.next_pos) w.put<std::int32_t>(p);
  for (const std::int32_t q : t.query_floor) w.put<std::int32_t>(q);
  w.put<std::uint32_t>(static_cast<std::uint32_t>(t.objects.size()));
  for (const SwapObject& o : t.objects) {
    check_object_name(o.name);  // 1..200 characters: the u16 length cannot overflow
    require(o.bytes >= 0, "encode_swap_ticket: object '", o.name, "' has bytes=", o.bytes);
    require(o.runs.size() <= kMax32, "encode_swap_ticket: object '", o.name, "' has ", o.runs.size(),
            " runs");
    w.put<std::uint16_t>(static_cast<std::uint16_t>(o.name.size()));
    w.put_bytes(o.name.data(), o.name.size());
    w.put<std::int32_t>(o.layer);
    w.put<std::uint8_t>(static_cast<std::uint8_t>((o.local ? kLocal : 0) | (o.cold ? kCold : 0)));
    w.put<std::int64_t>(o.bytes);
    w.put<std::uint64_t>(o.digest);
    w.put<std::uint32_t>(static_cast<std::uint32_t>(o.runs.size()));
    for (const SwapRun& r : o.runs) {
      w.put<std::int32_t>(r.kv_head);
      w.put<std::int32_t>(r.pos0);
      w.put<std::int32_t>(r.count);
      w.put<std::int32_t>(r.rope_pos0);
    }
  }
  std::vector<std::byte>& out = w.bytes();
  const std::span<const std::byte> body = std::span<const std::byte>(out).subspan(kHeader);
  le::put<std::uint32_t>(out.data(), kMagic);
  le::put<std::uint32_t>(out.data() + 4, kSwapTicketCodecVersion);
  le::put<std::uint64_t>(out.data() + 8, body.size());
  le::put<std::uint64_t>(out.data() + 16, object_digest(body));
  return std::move(out);
}

std::optional<SwapTicket> decode_swap_ticket(std::span<const std::byte> bytes, std::string* why) {
  const auto fail = [&](std::string reason) -> std::optional<SwapTicket> {
    if (why != nullptr) *why = "decode_swap_ticket: " + reason;
    return std::nullopt;
  };
  if (bytes.size() < kHeader)
    return fail(detail::concat(bytes.size(), " bytes, shorter than the ", kHeader, "-byte header"));
  if (le::get<std::uint32_t>(bytes.data()) != kMagic) return fail("not a swap ticket (magic)");
  const auto version = le::get<std::uint32_t>(bytes.data() + 4);
  if (version != kSwapTicketCodecVersion)
    return fail(detail::concat("version ", version, ", this build reads ", kSwapTicketCodecVersion));
  const auto body_len = le::get<std::uint64_t>(bytes.data() + 8);
  if (body_len != bytes.size() - kHeader)
    return fail(detail::concat("the header says ", body_len, " body bytes, there are ",
                               bytes.size() - kHeader, " (truncated or extended)"));
  const std::span<const std::byte> body = bytes.subspan(kHeader);
  if (object_digest(body) != le::get<std::uint64_t>(bytes.data() + 16))
    return fail("checksum mismatch (corrupt)");

  // The hash matched, so what follows was written by encode_swap_ticket unless a writer built a well-hashed
  // bad body on purpose: the checks stay, so even such a body cannot crash or over-allocate.
  Reader r(body);
  SwapTicket t;
  t.model_fp = r.get<std::uint64_t>("model_fp");
  const auto layers = r.get<std::uint32_t>("layer count");
  if (r.room_for(layers, 8, "layer")) {
    t.next_pos.resize(layers);
    t.query_floor.resize(layers);
    for (auto& p : t.next_pos) p = r.get<std::int32_t>("next_pos");
    for (auto& q : t.query_floor) q = r.get<std::int32_t>("query_floor");
  }
  const auto objects = r.get<std::uint32_t>("object count");
  if (r.room_for(objects, kMinObject, "object")) t.objects.reserve(objects);
  for (std::uint32_t i = 0; r.ok() && i < objects; ++i) {
    SwapObject o;
    const auto name_len = r.get<std::uint16_t>("name length");
    if (r.ok() && (name_len == 0 || name_len > 200))
      r.fail(detail::concat("object ", i, ": name length ", name_len));
    const std::byte* name = r.here();
    if (r.take(name_len, "object name")) o.name.assign(reinterpret_cast<const char*>(name), name_len);
    if (r.ok() && !valid_name(o.name)) r.fail(detail::concat("object ", i, ": invalid object name"));
    o.layer = r.get<std::int32_t>("layer");
    const auto flags = r.get<std::uint8_t>("flags");
    if (r.ok() && (flags & ~(kLocal | kCold)) != 0)
      r.fail(detail::concat("object ", i, ": unknown flags ", static_cast<int>(flags)));
    o.local = (flags & kLocal) != 0;
    o.cold = (flags & kCold) != 0;
    o.bytes = r.get<std::int64_t>("object bytes");
    if (r.ok() && o.bytes < 0) r.fail(detail::concat("object ", i, ": bytes=", o.bytes));
    o.digest = r.get<std::uint64_t>("digest");
    const auto runs = r.get<std::uint32_t>("run count");
    if (!r.room_for(runs, kRun, "run")) break;
    o.runs.resize(runs);
    for (SwapRun& run : o.runs) {
      run.kv_head = r.get<std::int32_t>("run");
      run.pos0 = r.get<std::int32_t>("run");
      run.count = r.get<std::int32_t>("run");
      run.rope_pos0 = r.get<std::int32_t>("run");
    }
    t.objects.push_back(std::move(o));
  }
  if (!r.ok()) return fail(r.why());
  if (r.left() != 0) return fail(detail::concat(r.left(), " bytes after the last object"));
  return t;
}

}  // namespace redknot

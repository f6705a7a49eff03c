// The swap ticket codec: exact round trips, and every damaged buffer (each truncation, each single-bit flip,
// foreign bytes, well-hashed bodies with absurd counts) a clean nullopt with a reason.
#include <catch2/catch_test_macros.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "redknot/error.hpp"
#include "redknot/swap_ticket_codec.hpp"

using namespace redknot;

namespace {

// Little-endian, as the codec writes (src/little_endian.hpp is internal to redknot::core).
template <class U>
void put_le(std::byte* p, U v) {
  for (std::size_t i = 0; i < sizeof(U); ++i)
    p[i] = static_cast<std::byte>(static_cast<std::uint64_t>(v) >> (8 * i));
}

SwapTicket sample_ticket() {
  SwapTicket t;
  t.model_fp = 0x0123456789ABCDEFull;
  t.next_pos = {70, 70, 69};
  t.query_floor = {70, 0, 12};
  for (int l = 0; l < 3; ++l)
    for (const bool local : {true, false}) {
      SwapObject o;
      o.name = "seq-1.l" + std::to_string(l) + (local ? ".local" : ".global");
      o.layer = l;
      o.local = local;
      o.cold = !local || l == 2;
      o.bytes = 1000 + 17 * l + (local ? 0 : 5);
      o.digest = 0xFEDCBA9876543210ull ^ static_cast<std::uint64_t>(l * 2 + local);
      for (int kh = 0; kh < (local ? 2 : 1); ++kh) {
        o.runs.push_back(SwapRun{kh, 0, 4, 0});
        o.runs.push_back(SwapRun{kh, 40 + kh, 30 - kh, -3});
      }
      t.objects.push_back(o);
    }
  return t;
}

bool same(const SwapTicket& a, const SwapTicket& b) {
  if (a.model_fp != b.model_fp || a.next_pos != b.next_pos || a.query_floor != b.query_floor ||
      a.objects.size() != b.objects.size())
    return false;
  for (std::size_t i = 0; i < a.objects.size(); ++i) {
    const SwapObject &x = a.objects[i], &y = b.objects[i];
    if (x.name != y.name || x.layer != y.layer || x.local != y.local || x.cold != y.cold ||
        x.bytes != y.bytes || x.digest != y.digest || x.runs != y.runs)
      return false;
  }
  return true;
}

// A body (after the 24-byte header) hashed and framed as encode_swap_ticket does: for bodies no encoder
// writes, whose hash is nevertheless right.
std::vector<std::byte> framed(const std::vector<std::byte>& body) {
  std::vector<std::byte> out(24);
  put_le<std::uint32_t>(out.data(), 0x54534B52u);
  put_le<std::uint32_t>(out.data() + 4, kSwapTicketCodecVersion);
  put_le<std::uint64_t>(out.data() + 8, body.size());
  put_le<std::uint64_t>(out.data() + 16, object_digest(body));
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

template <class U>
void append(std::vector<std::byte>& b, U v) {
  b.resize(b.size() + sizeof(U));
  put_le<U>(b.data() + b.size() - sizeof(U), v);
}

}  // namespace

TEST_CASE("a swap ticket round trips exactly, runs included", "[swap_ticket_codec]") {
  const SwapTicket t = sample_ticket();
  const auto bytes = encode_swap_ticket(t);
  std::string why;
  const auto back = decode_swap_ticket(bytes, &why);
  REQUIRE(back.has_value());
  CHECK(why.empty());
  CHECK(same(*back, t));
  CHECK(encode_swap_ticket(*back) == bytes);  // deterministic

  SwapTicket empty;  // a sequence that held nothing: no layers, no objects
  const auto e = decode_swap_ticket(encode_swap_ticket(empty));
  REQUIRE(e.has_value());
  CHECK(same(*e, empty));
}

TEST_CASE("every truncation and every bit flip of a ticket is a nullopt with a reason",
          "[swap_ticket_codec]") {
  const auto bytes = encode_swap_ticket(sample_ticket());
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    std::string why;
    const auto r = decode_swap_ticket(std::span<const std::byte>(bytes).first(n), &why);
    CHECK_FALSE(r.has_value());
    CHECK_FALSE(why.empty());
  }
  auto longer = bytes;
  longer.push_back(std::byte{0});
  CHECK_FALSE(decode_swap_ticket(longer).has_value());
  for (std::size_t i = 0; i < bytes.size(); ++i)
    for (int bit = 0; bit < 8; ++bit) {
      auto b = bytes;
      b[i] ^= static_cast<std::byte>(1 << bit);
      std::string why;
      const auto r = decode_swap_ticket(b, &why);
      CHECK_FALSE(r.has_value());
      CHECK_FALSE(why.empty());
    }
  // Foreign bytes: another format's magic, a future version, zeros.
  std::string why;
  const std::vector<std::byte> zeros(256);
  CHECK_FALSE(decode_swap_ticket(zeros, &why).has_value());
  CHECK(why.find("magic") != std::string::npos);
  auto future = bytes;
  put_le<std::uint32_t>(future.data() + 4, kSwapTicketCodecVersion + 1);
  CHECK_FALSE(decode_swap_ticket(future, &why).has_value());
  CHECK(why.find("version") != std::string::npos);
}

TEST_CASE("well-hashed bodies with absurd counts or fields are refused before any allocation",
          "[swap_ticket_codec]") {
  std::string why;
  {  // 4 billion layers in a 12-byte body
    std::vector<std::byte> body;
    append<std::uint64_t>(body, 1);
    append<std::uint32_t>(body, 0xFFFFFFFFu);
    CHECK_FALSE(decode_swap_ticket(framed(body), &why).has_value());
    CHECK(why.find("layer count") != std::string::npos);
  }
  {  // 4 billion objects
    std::vector<std::byte> body;
    append<std::uint64_t>(body, 1);
    append<std::uint32_t>(body, 0);
    append<std::uint32_t>(body, 0xFFFFFFFFu);
    CHECK_FALSE(decode_swap_ticket(framed(body), &why).has_value());
    CHECK(why.find("object count") != std::string::npos);
  }
  // One object whose fields are bad, one at a time.
  const auto one_object = [](std::uint16_t name_len, const std::string& name, std::uint8_t flags,
                             std::int64_t bytes, std::uint32_t runs) {
    std::vector<std::byte> body;
    append<std::uint64_t>(body, 1);
    append<std::uint32_t>(body, 0);
    append<std::uint32_t>(body, 1);
    append<std::uint16_t>(body, name_len);
    for (const char c : name) body.push_back(static_cast<std::byte>(c));
    append<std::int32_t>(body, 0);
    append<std::uint8_t>(body, flags);
    append<std::int64_t>(body, bytes);
    append<std::uint64_t>(body, 0);
    append<std::uint32_t>(body, runs);
    return framed(body);
  };
  CHECK(decode_swap_ticket(one_object(3, "abc", 3, 10, 0)).has_value());  // the well-formed baseline
  // An empty name: the body is one byte short of the smallest object, so the count check refuses it.
  CHECK_FALSE(decode_swap_ticket(one_object(0, "", 0, 10, 0), &why).has_value());
  CHECK(why.find("object count") != std::string::npos);
  CHECK_FALSE(decode_swap_ticket(one_object(0, "x", 0, 10, 0), &why).has_value());  // length 0, one byte more
  CHECK(why.find("name length") != std::string::npos);
  CHECK_FALSE(decode_swap_ticket(one_object(60000, "abc", 0, 10, 0), &why).has_value());
  CHECK_FALSE(decode_swap_ticket(one_object(3, "a/b", 0, 10, 0), &why).has_value());
  CHECK(why.find("invalid object name") != std::string::npos);
  CHECK_FALSE(decode_swap_ticket(one_object(3, "abc", 4, 10, 0), &why).has_value());
  CHECK(why.find("flags") != std::string::npos);
  CHECK_FALSE(decode_swap_ticket(one_object(3, "abc", 0, -1, 0), &why).has_value());
  CHECK_FALSE(decode_swap_ticket(one_object(3, "abc", 0, 10, 0xFFFFFFFFu), &why).has_value());
  CHECK(why.find("run count") != std::string::npos);
}

TEST_CASE("a ticket that cannot be encoded is InvalidArgument", "[swap_ticket_codec]") {
  SwapTicket t = sample_ticket();
  t.query_floor.pop_back();
  CHECK_THROWS_AS(encode_swap_ticket(t), InvalidArgument);
  t = sample_ticket();
  t.objects[1].name = "bad name";
  CHECK_THROWS_AS(encode_swap_ticket(t), InvalidArgument);
  t = sample_ticket();
  t.objects[0].bytes = -5;
  CHECK_THROWS_AS(encode_swap_ticket(t), InvalidArgument);
}

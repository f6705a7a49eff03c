// Prefill/decode disaggregation (src/pd_transfer.hpp) on the tiny model: a prompt prefilled and published by
// one session, restored into a fresh session of another store, decodes exactly as an uninterrupted session;
// a missing or damaged handoff is a clean error with the decode-side store unchanged.
#include <catch2/catch_test_macros.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>

#include "gguf.hpp"
#include "llama_model.hpp"
#include "pd_transfer.hpp"
#include "redknot/error.hpp"
#include "redknot/kv_slice.hpp"
#include "redknot/tiers.hpp"
#include "session.hpp"
#include "tiny_model.hpp"
#ifdef REDKNOT_HAS_REDIS
#include "redknot/redis_tier.hpp"
#endif

using namespace redknot;
using namespace redknot::decoder;

namespace {

const LlamaModel& tiny() { return testing::tiny_llama(); }

constexpr int kMaxNew = 12;

SessionOptions options(std::size_t prompt) {
  SessionOptions o;
  o.max_context = static_cast<int>(prompt) + kMaxNew + 1;
  o.chunk = 32;
  o.page_size = 8;
  return o;
}

struct Run {
  std::int32_t first = -1;
  std::vector<float> prompt_logits, logits;  // the prompt's last logits; every decode step's
  std::vector<std::int32_t> tokens;
};

Run uninterrupted(const HeadMap& map, const std::vector<std::int32_t>& prompt) {
  Session s(tiny(), map, options(prompt.size()));
  Run r;
  r.prompt_logits = s.prefill(prompt);
  r.first = argmax(r.prompt_logits);
  r.tokens = continue_greedy(s, r.first, kMaxNew, {}, &r.logits);
  return r;
}

// A decode-side session: a store of its own, sized as redknot-decode sizes it.
std::unique_ptr<Session> decode_session(const HeadMap& map, std::size_t prompt) {
  const SessionOptions o = options(prompt);
  auto store = Session::make_store(tiny(), map, o.page_size,
                                   pd_decode_store_pages(tiny(), o.page_size, o.max_context, 0));
  return std::make_unique<Session>(tiny(), store, o);
}

Run disaggregated(const HeadMap& map, const std::vector<std::int32_t>& prompt, KvTier& tier,
                  const char* name) {
  const std::uint64_t fp = model_fingerprint("tiny");
  Run r;
  {
    Session p(tiny(), map, options(prompt.size()));
    r.prompt_logits = p.prefill(prompt);
    r.first = argmax(r.prompt_logits);
    const PdPublishStats st = publish_prefill(p, r.first, tier, fp, name);
    CHECK(p.swapped_out());
    CHECK(st.kv_bytes > 0);
    CHECK(st.objects > 0);
    CHECK(tier.contains(pd_ticket_name(name)));
  }
  auto d = decode_session(map, prompt.size());
  PdRestoreStats rs;
  const PdHandoff h = restore_decode(*d, tier, fp, name, &rs);
  CHECK(h.first_token == r.first);
  CHECK(h.position == static_cast<std::int32_t>(prompt.size()));
  CHECK(d->position() == h.position);
  CHECK(rs.kv_bytes > 0);
  CHECK_FALSE(tier.contains(pd_ticket_name(name)));  // consumed
  for (const SwapObject& o : h.ticket.objects) CHECK_FALSE(tier.contains(o.name));
  CHECK(d->store().chunk_keys().empty());  // nothing but the sequence came over
  r.tokens = continue_greedy(*d, r.first, kMaxNew, {}, &r.logits);
  return r;
}

void check_same(const Run& a, const Run& b) {
  CHECK(a.first == b.first);
  CHECK(a.tokens == b.tokens);
  REQUIRE(a.logits.size() == b.logits.size());
  CHECK(std::memcmp(a.logits.data(), b.logits.data(), a.logits.size() * sizeof(float)) == 0);
  REQUIRE(a.prompt_logits.size() == b.prompt_logits.size());
  CHECK(std::memcmp(a.prompt_logits.data(), b.prompt_logits.data(), a.prompt_logits.size() * sizeof(float)) ==
        0);
}

std::vector<HeadMap> maps() {
  const auto& c = tiny().config();
  // Local heads whose windows are full by the end of the prompt (sink + window runs travel), and dense.
  return {HeadMap::with_global_ratio(c.n_layers, c.n_kv_heads, 0.5, 20, 2),
          HeadMap::all_global(c.n_layers, c.n_kv_heads)};
}

}  // namespace

TEST_CASE("P/D: a prompt published by one session decodes in another exactly as in one", "[decoder][pd]") {
  const auto prompt = testing::random_tokens(70, tiny().config().vocab, 11);
  HostTier host(1 << 24);
  const auto dir = std::filesystem::temp_directory_path() / "redknot-test-pd";
  std::filesystem::remove_all(dir);
  DiskTier disk(dir, std::int64_t{1} << 26);
  for (const HeadMap& map : maps()) {
    const Run ref = uninterrupted(map, prompt);
    REQUIRE(ref.tokens.size() == static_cast<std::size_t>(kMaxNew));
    check_same(disaggregated(map, prompt, host, "req-1"), ref);
    check_same(disaggregated(map, prompt, disk, "req-1"), ref);
    CHECK(host.stats().objects == 0);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("P/D: a missing, corrupt or foreign handoff is a clean error, the decode store unchanged",
          "[decoder][pd]") {
  const HeadMap map = maps()[0];
  const auto prompt = testing::random_tokens(70, tiny().config().vocab, 12);
  const std::uint64_t fp = model_fingerprint("tiny");
  HostTier host(1 << 24);
  const auto publish = [&](const char* name) {
    Session p(tiny(), map, options(prompt.size()));
    const std::int32_t first = argmax(p.prefill(prompt));
    publish_prefill(p, first, host, fp, name);
  };
  const auto flip = [&](const std::string& object, std::size_t at) {
    auto b = host.get(object);
    REQUIRE(b.has_value());
    (*b)[at % b->size()] ^= std::byte{0x10};
    REQUIRE(host.put(object, *b));
  };
  // Each damage on a fresh publish; the decode side fails with `Exc` and its store holds what it held.
  const auto expect_failure = [&](const char* what, auto damage, auto exc_tag) {
    INFO(what);
    publish("req");
    damage();
    auto d = decode_session(map, prompt.size());
    const std::int64_t used = d->store().pool().used_pages();
    using Exc = typename decltype(exc_tag)::type;
    CHECK_THROWS_AS(restore_decode(*d, host, fp, "req"), Exc);
    CHECK(d->store().pool().used_pages() == used);
    CHECK(d->store().chunk_keys().empty());
    CHECK(host.stats().objects == 0);  // a failed handoff is removed, never half-consumed
  };
  struct U {
    using type = Unavailable;
  };
  struct N {
    using type = NotFound;
  };
  expect_failure(
      "no record",
      [&] {
        host.remove(pd_ticket_name("req"));
        for (int l = 0; l < 2; ++l)
          for (const char* k : {".local", ".global"}) host.remove("req.l" + std::to_string(l) + k);
      },
      N{});
  expect_failure(
      "record bit flip", [&] { flip(pd_ticket_name("req"), 41); }, U{});
  expect_failure(
      "record truncated",
      [&] {
        auto b = *host.get(pd_ticket_name("req"));
        b.resize(b.size() - 9);
        REQUIRE(host.put(pd_ticket_name("req"), b));
      },
      U{});
  expect_failure(
      "object missing", [&] { host.remove("req.l1.global"); }, U{});
  expect_failure(
      "object bit flip", [&] { flip("req.l0.local", 1000); }, U{});
  // Another model's handoff under the right name.
  {
    Session p(tiny(), map, options(prompt.size()));
    const std::int32_t first = argmax(p.prefill(prompt));
    publish_prefill(p, first, host, model_fingerprint("another"), "req");
    auto d = decode_session(map, prompt.size());
    CHECK_THROWS_AS(restore_decode(*d, host, fp, "req"), Unavailable);
    CHECK(d->store().pool().used_pages() == 0);
    CHECK(host.stats().objects == 0);
  }
  // Another head map's decode side: the slices' map fingerprint does not match.
  {
    publish("req");
    auto d = decode_session(maps()[1], prompt.size());
    CHECK_THROWS_AS(restore_decode(*d, host, fp, "req"), Unavailable);
    CHECK(d->store().pool().used_pages() == 0);
    CHECK(host.stats().objects == 0);
  }
  // A name in use, and bad arguments.
  publish("req");
  {
    Session p(tiny(), map, options(prompt.size()));
    const std::int32_t first = argmax(p.prefill(prompt));
    CHECK_THROWS_AS(publish_prefill(p, first, host, fp, "req"), InvalidArgument);
    CHECK_FALSE(p.swapped_out());
    CHECK_THROWS_AS(publish_prefill(p, -1, host, fp, "other"), InvalidArgument);
    CHECK_THROWS_AS(publish_prefill(p, first, host, fp, "bad name"), InvalidArgument);
  }
  auto d = decode_session(map, prompt.size());
  const std::int32_t t = 5;
  std::vector<float> logits;
  d->forward(std::span<const std::int32_t>(&t, 1), false, logits);
  CHECK_THROWS_AS(restore_decode(*d, host, fp, "req"), InvalidArgument);  // not a fresh session
  CHECK(host.contains(pd_ticket_name("req")));                            // untouched
}

TEST_CASE("P/D: the handoff record rejects every truncation", "[decoder][pd]") {
  PdHandoff h;
  h.position = 70;
  h.first_token = 9;
  h.ticket.model_fp = 3;
  h.ticket.next_pos = {70, 70};
  h.ticket.query_floor = {70, 70};
  const auto b = encode_pd_handoff(h);
  const auto back = decode_pd_handoff(b);
  REQUIRE(back.has_value());
  CHECK(back->position == 70);
  CHECK(back->first_token == 9);
  CHECK(back->ticket.next_pos == h.ticket.next_pos);
  for (std::size_t n = 0; n < b.size(); ++n) {
    std::string why;
    CHECK_FALSE(decode_pd_handoff(std::span<const std::byte>(b).first(n), &why).has_value());
    CHECK_FALSE(why.empty());
  }
  h.ticket.next_pos = {70, 69};  // a layer that does not continue at the prompt's length
  CHECK_FALSE(decode_pd_handoff(encode_pd_handoff(h)).has_value());
}

TEST_CASE("P/D over a Redis Cluster: the same tokens and logits through RedisTier", "[decoder][pd][redis]") {
#ifndef REDKNOT_HAS_REDIS
  SKIP("built without hiredis: no RedisTier");
#else
  const char* seeds = std::getenv("REDKNOT_REDIS_CLUSTER");
  if (seeds == nullptr || *seeds == '\0')
    SKIP("REDKNOT_REDIS_CLUSTER is not set (comma-separated HOST:PORT seeds)");
  RedisClusterOptions o;
  for (std::string s = seeds; !s.empty();) {
    const auto comma = s.find(',');
    o.seeds.push_back(s.substr(0, comma));
    s = comma == std::string::npos ? "" : s.substr(comma + 1);
  }
  RedisClusterClient client(o);
  RedisTierOptions ro;
  ro.prefix = "redknot-test-pd";
  RedisTier tier(client, ro);
  const auto prompt = testing::random_tokens(70, tiny().config().vocab, 13);
  const std::string name =
      "req-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count() % 1000000007);
  for (const HeadMap& map : maps())
    check_same(disaggregated(map, prompt, tier, name.c_str()), uninterrupted(map, prompt));
  // An object gone from the server: the restore fails cleanly and the handoff is removed.
  {
    Session p(tiny(), maps()[0], options(prompt.size()));
    const std::int32_t first = argmax(p.prefill(prompt));
    publish_prefill(p, first, tier, model_fingerprint("tiny"), name);
    REQUIRE(tier.remove(name + ".l1.global"));
    auto d = decode_session(maps()[0], prompt.size());
    CHECK_THROWS_AS(restore_decode(*d, tier, model_fingerprint("tiny"), name), Unavailable);
    CHECK(d->store().pool().used_pages() == 0);
    CHECK_FALSE(tier.contains(pd_ticket_name(name)));
    CHECK_FALSE(tier.contains(name + ".l0.local"));
  }
#endif
}

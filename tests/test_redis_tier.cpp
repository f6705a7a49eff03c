// The remote tier (redis_tier.hpp) against a real Redis Cluster on loopback: scripts/redis-cluster.sh up
// starts one (3 masters + 3 replicas, ports 7100..7105) and scripts/test.sh exports
// REDKNOT_REDIS_CLUSTER=127.0.0.1:7100. Without that variable the tests that need a cluster look for one at
// 127.0.0.1:7100 and SKIP with a message when there is none; with it set, a cluster that does not answer is a
// failure (CI must run them).
//
// Covered: CRC16 key slots against the cluster spec's values and CLUSTER KEYSLOT; round trips up to several
// MB; chunks demoted to and promoted from the tier and sequences swapped out to it, bit for bit; corrupt,
// truncated, foreign, index-less and TTL-expired values as misses; unreachable, silent and erroring servers
// as misses within the timeout; and the fault test — kill -9 of a master during a batch of fetches, then the
// whole cluster stopped mid-request — with zero wrong answers. The tests share one cluster, so CTest runs
// them one at a time (RESOURCE_LOCK, tests/CMakeLists.txt); the fault test puts the cluster back when it
// ends.
#include <catch2/catch_template_test_macros.hpp>
#include <catch2/catch_test_macros.hpp>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include "harness.hpp"
#include "redknot/redis_tier.hpp"
#include "redknot/tiers.hpp"
#include "support/tier_fixtures.hpp"

using namespace rktest;
using namespace rktest::tiers;
using Clock = std::chrono::steady_clock;

namespace {

HeadMap tier_map() {
  HeadMap m = HeadMap::all_global(kLayers, kKvHeads);
  m.set(0, 1, HeadPolicy{HeadClass::kLocal, 5, 3});
  m.set(0, 2, HeadPolicy{HeadClass::kLocal, 6, 0});
  m.set(1, 0, HeadPolicy{HeadClass::kLocal, 7, 4});
  return m;
}

template <class T>
KVHeadStore<T> make_store(std::int32_t pages = 600, HeadMap map = tier_map()) {
  return tiers::make_tier_store<T>(std::move(map), pages);
}

std::vector<std::byte> bytes_of(std::size_t n, unsigned seed) {
  std::vector<std::byte> b(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (std::size_t i = 0; i < n; ++i) {
    x = x * 1664525u + 1013904223u;
    b[i] = static_cast<std::byte>(x >> 24);
  }
  return b;
}

const char* cluster_env() { return std::getenv("REDKNOT_REDIS_CLUSTER"); }
std::string cluster_seed() { return cluster_env() != nullptr ? cluster_env() : "127.0.0.1:7100"; }

// Generous for a loaded 2-core CI machine, and still bounded.
RedisClusterOptions cluster_options() {
  RedisClusterOptions o;
  o.seeds = {cluster_seed()};
  o.connect_timeout = std::chrono::milliseconds(1000);
  o.command_timeout = std::chrono::milliseconds(3000);
  o.request_deadline = std::chrono::milliseconds(6000);
  return o;
}

// Whether the cluster answers with a full slot map: SKIP when it does not and nobody said it should be there,
// FAIL when REDKNOT_REDIS_CLUSTER says it should.
// Waits for it (bounded: 20 s) when it answers but is not ok yet: a test that ran before may just have
// restarted a node.
bool cluster_ok(RedisClusterClient& c) {
  for (int i = 0; i < 40; ++i) {
    if (i > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      c.refresh_slots();
    }
    const std::vector<std::string> m = c.masters();
    if (m.empty() && cluster_env() == nullptr) return false;  // nothing there, and nobody said there would be
    if (m.size() < 3) continue;
    const RedisReply r = c.command_at(m.front(), {"CLUSTER", "INFO"});
    if (r.type == RedisReply::Type::kString && r.str.find("cluster_state:ok") != std::string::npos)
      return true;
  }
  return false;
}

#define REQUIRE_CLUSTER(client)                                                                            \
  do {                                                                                                     \
    if (!cluster_ok(client)) {                                                                             \
      if (cluster_env() != nullptr) FAIL("REDKNOT_REDIS_CLUSTER=" << cluster_env() << " does not answer"); \
      SKIP("no Redis Cluster at " << cluster_seed()                                                        \
                                  << ": run scripts/redis-cluster.sh up (or set REDKNOT_REDIS_CLUSTER)");  \
    }                                                                                                      \
  } while (0)

// A key namespace of this process and test, so that runs and tests never see each other's objects.
std::string prefix(const std::string& tag) { return "rktest-" + std::to_string(::getpid()) + "-" + tag; }

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A TCP listener on an ephemeral loopback port that accepts and then either never answers (silent) or answers
// every read with a Redis error: a server that is slow or broken rather than absent.
class FakeServer {
 public:
  explicit FakeServer(bool answer_errors) : errors_(answer_errors) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0;
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    REQUIRE(::listen(fd_, 16) == 0);
    socklen_t len = sizeof a;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~FakeServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
    for (int c : clients_) ::close(c);
  }
  std::string node() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  void serve() {
    while (!stop_) {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0) return;
      clients_.push_back(c);
      if (!errors_) continue;  // silent: the client's reads time out
      timeval tv{0, 200000};
      ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      char buf[4096];
      while (!stop_) {
        const ssize_t n = ::read(c, buf, sizeof buf);
        if (n == 0) break;
        if (n < 0) continue;
        const char msg[] = "-ERR injected failure\r\n";
        if (::write(c, msg, sizeof msg - 1) < 0) break;
      }
    }
  }
  bool errors_;
  int fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::vector<int> clients_;
  std::thread thread_;
};

}  // namespace

// ---- no cluster needed

TEST_CASE("redis_key_slot: CRC16-XMODEM and hash tags as in the Redis Cluster spec", "[redis]") {
  CHECK(redis_crc16("123456789") == 0x31C3);  // the spec's check value
  CHECK(redis_crc16("") == 0);
  CHECK(redis_key_slot("foo") == 12182);
  CHECK(redis_key_slot("bar") == 5061);
  CHECK(redis_key_slot("hello") == 866);
  CHECK(redis_key_slot("{user1000}.following") == redis_key_slot("{user1000}.followers"));
  CHECK(redis_key_slot("{user1000}.following") == redis_key_slot("user1000"));
  CHECK(redis_key_slot("foo{}{bar}") == (redis_crc16("foo{}{bar}") & 16383));  // empty tag: the whole key
  CHECK(redis_key_slot("foo{{bar}}zap") == (redis_crc16("{bar") & 16383));     // up to the first '}'
  CHECK(redis_key_slot("foo{bar}{zap}") == redis_key_slot("bar"));             // the first tag only
  CHECK(redis_key_slot("foo{bar") == (redis_crc16("foo{bar") & 16383));        // no closing brace
}

TEST_CASE("RedisClusterClient and RedisTier refuse bad arguments", "[redis]") {
  CHECK_THROWS_AS(RedisClusterClient(RedisClusterOptions{}), InvalidArgument);
  RedisClusterOptions o;
  o.seeds = {"localhost"};
  CHECK_THROWS_AS(RedisClusterClient(o), InvalidArgument);
  o.seeds = {"127.0.0.1:70000"};
  CHECK_THROWS_AS(RedisClusterClient(o), InvalidArgument);
  o.seeds = {"127.0.0.1:1"};
  o.request_deadline = std::chrono::milliseconds(0);
  CHECK_THROWS_AS(RedisClusterClient(o), InvalidArgument);
  o.request_deadline = std::chrono::milliseconds(300);
  RedisClusterClient c(o);
  CHECK_THROWS_AS(RedisTier(c, RedisTierOptions{"a{b}"}), InvalidArgument);
  CHECK_THROWS_AS(RedisTier(c, RedisTierOptions{""}), InvalidArgument);
  CHECK_THROWS_AS(RedisTier(c, RedisTierOptions{"a b"}), InvalidArgument);
  RedisTier t(c, RedisTierOptions{"ok"});
  CHECK_THROWS_AS(t.put("../x", bytes_of(4, 1)), InvalidArgument);
  CHECK_THROWS_AS(t.get("a{b}"), InvalidArgument);
  CHECK(t.index_key("obj.1") == "ok:{obj.1}:i");
}

TEST_CASE("an unreachable, silent or erroring server: misses and refused puts within the timeout",
          "[redis]") {
  FakeServer silent(false), erroring(true);
  struct Case {
    const char* what;
    std::string node;
  };
  for (const Case& k : {Case{"refused port", "127.0.0.1:1"}, Case{"silent server", silent.node()},
                        Case{"erroring server", erroring.node()}}) {
    INFO(k.what);
    RedisClusterOptions o;
    o.seeds = {k.node};
    o.connect_timeout = std::chrono::milliseconds(300);
    o.command_timeout = std::chrono::milliseconds(300);
    o.request_deadline = std::chrono::milliseconds(800);
    const auto t0 = Clock::now();
    RedisClusterClient c(o);
    RedisTier t(c, RedisTierOptions{prefix("down")});
    CHECK_FALSE(t.put("a", bytes_of(1000, 1)));
    CHECK_FALSE(t.get("a"));
    CHECK_FALSE(t.contains("a"));
    CHECK_FALSE(t.remove("a"));
    const auto many = t.get_many(std::vector<std::string>{"a", "b", "c"});
    CHECK(std::none_of(many.begin(), many.end(), [](const auto& x) { return x.has_value(); }));
    const double s = seconds_since(t0);
    // 7 calls; each is bounded by its deadline plus one command timeout (the read in flight when it passes),
    // plus the slot-map refresh attempts on the one seed.
    CHECK(s < 7 * (0.8 + 0.3 + 0.6) + 2.0);
    const TierStats st = t.stats();
    CHECK(st.put_failures == 1);
    CHECK(st.misses == 4);
    CHECK(st.hits == 0);
    CHECK(c.stats().failed > 0);
    CHECK(c.stats().down_events == 1);  // logged once, not once per request
    CHECK(c.masters().empty());
  }
}

// ---- against the cluster

TEST_CASE("the slot map agrees with CLUSTER KEYSLOT and spreads objects over the masters", "[redis]") {
  RedisClusterClient c(cluster_options());
  REQUIRE_CLUSTER(c);
  RedisTier t(c, RedisTierOptions{prefix("slots")});
  std::set<std::string> owners;
  for (int i = 0; i < 64; ++i) {
    std::string key = "k";  // (built step by step: "k" + std::to_string() trips GCC 12's -Wrestrict)
    key += std::to_string(i * 7919);
    if (i % 3 == 0) key += "{tag" + std::to_string(i) + "}";
    const RedisReply r = c.command_at(c.masters().front(), {"CLUSTER", "KEYSLOT", key});
    REQUIRE(r.type == RedisReply::Type::kInteger);
    CHECK(r.integer == redis_key_slot(key));
    const std::string name = "chunk-" + std::to_string(i);
    owners.insert(c.node_of_slot(redis_key_slot(t.index_key(name))));
  }
  CHECK(owners.size() == 3);  // 64 objects over 3 masters
  // An object's index and payload share a slot (the name is the hash tag).
  REQUIRE(t.put("obj", bytes_of(100, 1)));
  const std::string pk = t.payload_key("obj");
  REQUIRE_FALSE(pk.empty());
  CHECK(redis_key_slot(pk) == redis_key_slot(t.index_key("obj")));
  CHECK(t.remove("obj"));
}

TEST_CASE("RedisTier: round trips, replacement, big values, TTL, stats", "[redis]") {
  RedisClusterClient c(cluster_options());
  REQUIRE_CLUSTER(c);
  RedisTier t(c, RedisTierOptions{prefix("rt")});
  CHECK_FALSE(t.get("a"));
  CHECK_FALSE(t.contains("a"));
  REQUIRE(t.put("a", bytes_of(1000, 1)));
  CHECK(t.contains("a"));
  CHECK(t.get("a") == bytes_of(1000, 1));
  const std::string old_payload = t.payload_key("a");
  REQUIRE(t.put("a", bytes_of(500, 2)));  // replaces; the old payload key is deleted
  CHECK(t.get("a") == bytes_of(500, 2));
  CHECK(c.command({"EXISTS", old_payload}).integer == 0);
  REQUIRE(t.put("empty", {}));
  CHECK(t.get("empty") == std::vector<std::byte>{});
  for (const std::size_t mb : {1, 4, 9}) {
    INFO(mb << " MiB");
    const auto big = bytes_of((mb << 20) + 13, static_cast<unsigned>(mb));
    REQUIRE(t.put("big", big));
    CHECK(t.get("big") == big);
  }
  const std::vector<std::string> names{"a", "missing", "empty", "big"};
  const auto many = t.get_many(names);
  CHECK(many[0] == bytes_of(500, 2));
  CHECK_FALSE(many[1]);
  CHECK(many[2] == std::vector<std::byte>{});
  CHECK(many[3] == bytes_of((9u << 20) + 13, 9));
  CHECK(t.remove("a"));
  CHECK_FALSE(t.remove("a"));
  CHECK_FALSE(t.get("a"));
  RedisTier small(c, RedisTierOptions{prefix("rt-small"), std::chrono::milliseconds(0), 100});
  CHECK_FALSE(small.put("x", bytes_of(101, 1)));
  CHECK(small.stats().put_failures == 1);
  const TierStats st = t.stats();
  CHECK(st.hits == 9);  // a twice, empty, big three times, three of get_many
  CHECK(st.misses == 3);
  CHECK(st.corrupt == 0);
  CHECK(st.get_ns > 0);
  CHECK(st.bytes_read > (9 << 20) * 2);
  // TTL: both keys expire.
  RedisTier ttl(c, RedisTierOptions{prefix("rt-ttl"), std::chrono::milliseconds(300)});
  REQUIRE(ttl.put("t", bytes_of(100, 3)));
  CHECK(ttl.get("t") == bytes_of(100, 3));
  const RedisReply pttl = c.command({"PTTL", ttl.payload_key("t")});
  CHECK((pttl.type == RedisReply::Type::kInteger && pttl.integer > 0 && pttl.integer <= 300));
  bool gone = false;
  for (int i = 0; i < 50 && !gone; ++i) {  // bounded: 5 s
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    gone = !ttl.contains("t");
  }
  CHECK(gone);
  CHECK_FALSE(ttl.get("t"));
  t.remove("empty");
  t.remove("big");
}

TEST_CASE("RedisTier: corrupt, truncated, foreign and index-less values are misses and are removed",
          "[redis]") {
  RedisClusterClient c(cluster_options());
  REQUIRE_CLUSTER(c);
  RedisTier t(c, RedisTierOptions{prefix("bad")});
  const auto value = bytes_of(4000, 7);
  const auto expect_miss = [&](const char* what) {
    INFO(what);
    CHECK_FALSE(t.get("x"));
    CHECK_FALSE(t.contains("x"));  // removed: the next put starts clean
  };
  std::int64_t corrupt = 0;
  // SETRANGE on the stored payload: envelope header (magic, length, hashes) and payload bytes.
  for (const int at : {0, 5, 9, 17, 27, 32, 2000, 4031}) {
    INFO("SETRANGE at " << at);
    REQUIRE(t.put("x", value));
    const std::string pk = t.payload_key("x");
    const RedisReply cur = c.command({"GETRANGE", pk, std::to_string(at), std::to_string(at)});
    REQUIRE(cur.str.size() == 1);
    REQUIRE(
        c.command({"SETRANGE", pk, std::to_string(at), std::string(1, static_cast<char>(cur.str[0] ^ 0x21))})
            .type == RedisReply::Type::kInteger);
    expect_miss("corrupt payload");
    ++corrupt;
  }
  // Truncated payloads, and a payload grown by a byte.
  for (const int len : {0, 10, 31, 32, 33, 4031}) {
    INFO("truncated to " << len);
    REQUIRE(t.put("x", value));
    const std::string pk = t.payload_key("x");
    const RedisReply cur = c.command({"GET", pk});
    REQUIRE(c.command({"SET", pk, cur.str.substr(0, static_cast<std::size_t>(len))}).ok());
    expect_miss("truncated payload");
    ++corrupt;
  }
  REQUIRE(t.put("x", value));
  REQUIRE(c.command({"APPEND", t.payload_key("x"), "z"}).ok());
  expect_miss("payload one byte longer");
  ++corrupt;
  // A corrupt index.
  REQUIRE(t.put("x", value));
  const RedisReply ix = c.command({"GET", t.index_key("x")});
  REQUIRE(c.command({"SETRANGE", t.index_key("x"), "20", "\x7f"}).ok());
  expect_miss("corrupt index");
  ++corrupt;
  // Another object's keys copied under this name: the name hash differs.
  REQUIRE(t.put("y", value));
  const RedisReply yi = c.command({"GET", t.index_key("y")});
  const RedisReply yp = c.command({"GET", t.payload_key("y")});
  REQUIRE(c.command({"SET", t.index_key("x"), yi.str}).ok());
  expect_miss("index of another name");
  ++corrupt;
  CHECK(t.get("y") == value);
  // A payload without its index (a put that failed between its two writes): never readable.
  REQUIRE(t.put("x", value));
  REQUIRE(c.command({"DEL", t.index_key("x")}).integer == 1);
  expect_miss("payload without index");
  // An index whose payload is gone (evicted or expired first): a plain miss, the index removed.
  REQUIRE(t.put("x", value));
  REQUIRE(c.command({"DEL", t.payload_key("x")}).integer == 1);
  expect_miss("index without payload");
  // Something else entirely under the index key.
  REQUIRE(c.command({"SET", t.index_key("x"), "hello"}).ok());
  expect_miss("garbage index");
  ++corrupt;
  CHECK(t.stats().corrupt == corrupt);
  CHECK(t.stats().hits == 1);
  (void)ix;
  (void)yp;
  t.remove("y");
}

TEMPLATE_TEST_CASE("chunks demoted to a RedisTier come back bit for bit, foreign chunks are misses",
                   "[redis]", float, Half, BFloat16) {
  using T = TestType;
  RedisClusterClient c(cluster_options());
  REQUIRE_CLUSTER(c);
  RedisTier tier(c, RedisTierOptions{prefix("chunks")});
  auto ref = make_store<T>(), store = make_store<T>();
  const ChunkKey k1 = seeded_chunk(ref, "tier-model", 13, 1), k2 = seeded_chunk(ref, "tier-model", 7, 2);
  REQUIRE(seeded_chunk(store, "tier-model", 13, 1) == k1);
  REQUIRE(seeded_chunk(store, "tier-model", 7, 2) == k2);
  const auto original = export_slices(ref, k1, kModel);
  TieredChunkCache<T> cache(store, kModel, {&tier});
  store.lookup_chunk(k2);  // k1 is now the least recently used
  CHECK(cache.make_room(store.pool().free_pages() + 1) > 0);
  CHECK_FALSE(store.has_chunk(k1));
  CHECK(cache.in_tiers(k1));
  CHECK(cache.stats().demotions == 1);
  CHECK(cache.lookup(k1) == 13);  // promoted from Redis
  CHECK_FALSE(cache.in_tiers(k1));
  CHECK(export_slices(store, k1, kModel) == original);
  const SeqId a = ref.create_sequence(), b = store.create_sequence();
  append_seeded(ref, a, 0, 3, 8);
  append_seeded(store, b, 0, 3, 8);
  ref.splice(a, k1, 3, 3);
  store.splice(b, k1, 3, 3);
  append_seeded(ref, a, 16, 2, 9);
  append_seeded(store, b, 16, 2, 9);
  CHECK(same_bits(attend(ref, a, 16, 2, 4), attend(store, b, 16, 2, 4)));
  CHECK(cache.stats().bytes_up == cache.stats().bytes_down);
  check_accounting(store);

  // Another model (same shape) reading this chunk's object, and another head map's object stored under it.
  REQUIRE(cache.demote(k2));
  {
    TieredChunkCache<T> foreign(store, model_fingerprint("other-model"), {&tier});
    const Snapshot snap(store);
    CHECK_FALSE(foreign.lookup(k2));
    CHECK(Snapshot(store) == snap);
    CHECK(foreign.stats().rejected == 1);
    CHECK_FALSE(tier.contains(TieredChunkCache<T>::object_name(k2)));
  }
  {
    HeadMap other = tier_map();
    other.set(1, 3, HeadPolicy{HeadClass::kLocal, 2, 1});
    auto o = make_store<T>(600, other);
    const ChunkKey ko = seeded_chunk(o, "tier-model", 7, 2);
    // The same tokens under another head map: its slices carry that map's fingerprint (and key).
    REQUIRE(tier.put(TieredChunkCache<T>::object_name(k2), pack_slices(export_slices(o, ko, kModel))));
    const Snapshot snap(store);
    CHECK_FALSE(cache.lookup(k2));
    CHECK(Snapshot(store) == snap);
    CHECK(cache.stats().rejected == 1);
  }
  store.free_sequence(b);
  ref.free_sequence(a);
}

TEST_CASE("swap_out to a RedisTier (cold) and HostTier (hot), swap_in bit for bit", "[redis]") {
  RedisClusterClient c(cluster_options());
  REQUIRE_CLUSTER(c);
  RedisTier cold(c, RedisTierOptions{prefix("swap")});
  HostTier hot(1 << 20);
  const auto build = [](KVHeadStore<float>& s) {
    ChunkKey key = s.chunk_key("tier-model", std::vector<std::int32_t>(9, 5));
    if (!s.has_chunk(key)) key = seeded_chunk(s, "tier-model", 9, 5);
    const SeqId q = s.create_sequence();
    append_seeded(s, q, 0, 6, 1);
    s.splice(q, key, 6);
    append_seeded(s, q, 15, 14, 2);
    for (std::int32_t p = 29; p < 35; ++p) append_seeded(s, q, p, 1, 100 + static_cast<unsigned>(p));
    return q;
  };
  TierPrefetcher prefetcher(2);
  for (const bool ahead : {false, true}) {
    INFO((ahead ? "read ahead" : "in order"));
    auto ref = make_store<float>(), moved = make_store<float>();
    const SeqId a = build(ref), src = build(moved);
    const auto ticket = swap_out(moved, src, hot, cold, kModel, ahead ? "req-2" : "req-1");
    REQUIRE(ticket);
    CHECK(std::any_of(ticket->objects.begin(), ticket->objects.end(),
                      [](const SwapObject& o) { return o.cold; }));
    for (const SwapObject& o : ticket->objects)
      if (o.cold) CHECK(cold.contains(o.name));
    std::string why;
    const auto b = swap_in(moved, *ticket, hot, cold, SwapInOptions{ahead ? &prefetcher : nullptr, &why});
    INFO(why);
    REQUIRE(b);
    for (const SwapObject& o : ticket->objects) CHECK_FALSE(cold.contains(o.name));
    CHECK(same_bits(attend(ref, a, 34, 1, 9), attend(moved, *b, 34, 1, 9)));
    for (std::int32_t p = 35; p < 40; ++p) {
      append_seeded(ref, a, p, 1, 300 + static_cast<unsigned>(p));
      append_seeded(moved, *b, p, 1, 300 + static_cast<unsigned>(p));
      CHECK(same_bits(attend(ref, a, p, 1, static_cast<unsigned>(p)),
                      attend(moved, *b, p, 1, static_cast<unsigned>(p))));
    }
    check_accounting(moved);
  }
  auto moved = make_store<float>();
  // A swapped object corrupted on the server: swap_in is a miss with a reason, the store unchanged.
  const SeqId s2 = build(moved);
  const auto ticket = swap_out(moved, s2, hot, cold, kModel, "req-3");
  REQUIRE(ticket);
  const auto cold_obj = std::find_if(ticket->objects.begin(), ticket->objects.end(),
                                     [](const SwapObject& o) { return o.cold; });
  REQUIRE(cold_obj != ticket->objects.end());
  REQUIRE(c.command({"SETRANGE", cold.payload_key(cold_obj->name), "40", "X"}).ok());
  const Snapshot snap(moved);
  std::string why;
  CHECK_FALSE(swap_in(moved, *ticket, hot, cold, SwapInOptions{nullptr, &why}));
  CHECK(why.find(cold_obj->name) != std::string::npos);
  CHECK(Snapshot(moved) == snap);
  CHECK(cold.stats().corrupt == 1);
  check_accounting(moved);
}

TEST_CASE("a slot migrating between masters: ASK while it moves, MOVED after, every answer right",
          "[redis]") {
  RedisClusterClient admin(cluster_options());
  REQUIRE_CLUSTER(admin);
  RedisClusterClient c(cluster_options());  // its slot map goes stale when the slot moves
  RedisTier t(c, RedisTierOptions{prefix("migrate")});
  const std::string name = "mig-obj";
  const int slot = redis_key_slot(t.index_key(name));
  const std::string src = admin.node_of_slot(slot);
  std::string dst;
  for (const std::string& m : admin.masters())
    if (m != src) dst = m;
  REQUIRE_FALSE(dst.empty());
  const auto id_of = [&](const std::string& node) { return admin.command_at(node, {"CLUSTER", "MYID"}).str; };
  const std::string src_id = id_of(src), dst_id = id_of(dst);
  REQUIRE(src_id.size() == 40);
  REQUIRE(dst_id.size() == 40);
  const auto v1 = bytes_of(3000, 1), v2 = bytes_of(5000, 2);
  REQUIRE(t.put(name, v1));
  const std::string s = std::to_string(slot);
  // Whatever happens below, the slot ends up owned by one node with no migration pending.
  struct Settle {
    RedisClusterClient& admin;
    std::string s, owner_id;
    std::vector<std::string> masters;
    ~Settle() {
      for (const std::string& m : masters) admin.command_at(m, {"CLUSTER", "SETSLOT", s, "NODE", owner_id});
    }
  } settle{admin, s, src_id, admin.masters()};

  REQUIRE(admin.command_at(dst, {"CLUSTER", "SETSLOT", s, "IMPORTING", src_id}).ok());
  REQUIRE(admin.command_at(src, {"CLUSTER", "SETSLOT", s, "MIGRATING", dst_id}).ok());
  // The replacement's payload key is new: src does not have it and answers ASK; the index is still on src.
  REQUIRE(t.put(name, v2));
  CHECK(c.stats().ask >= 1);
  CHECK(t.get(name) == v2);  // index from src, payload through ASK from dst
  // Move the rest of the slot, then hand it over.
  const RedisReply keys = admin.command_at(src, {"CLUSTER", "GETKEYSINSLOT", s, "100"});
  REQUIRE(keys.type == RedisReply::Type::kArray);
  if (!keys.elements.empty()) {
    const auto hp = dst.substr(0, dst.rfind(':'));
    std::vector<std::string> mig{"MIGRATE", hp, dst.substr(dst.rfind(':') + 1), "", "0", "5000", "KEYS"};
    for (const RedisReply& k : keys.elements) mig.push_back(k.str);
    REQUIRE(admin.command_at(src, mig).ok());
  }
  for (const std::string& m : {dst, src})
    REQUIRE(admin.command_at(m, {"CLUSTER", "SETSLOT", s, "NODE", dst_id}).ok());
  for (const std::string& m : admin.masters())
    if (m != src && m != dst) admin.command_at(m, {"CLUSTER", "SETSLOT", s, "NODE", dst_id});
  settle.owner_id = dst_id;
  // c still routes the slot to src, which answers MOVED.
  const std::int64_t moved0 = c.stats().moved;
  CHECK(t.get(name) == v2);
  CHECK(c.stats().moved > moved0);
  CHECK(c.node_of_slot(slot) == dst);
  CHECK(t.remove(name));
  CHECK_FALSE(t.get(name));
}

// ---- the fault test (destructive: it kills a master, stops the cluster, and puts it back with the script)

namespace {

int seed_port() { return std::atoi(cluster_seed().substr(cluster_seed().rfind(':') + 1).c_str()); }

int port_of(const std::string& node) { return std::atoi(node.substr(node.rfind(':') + 1).c_str()); }

// The pid of our redis-server on `port`, from scripts/redis-cluster.sh's pid file; 0 when none.
pid_t node_pid(int port) {
  const char* tmp = std::getenv("TMPDIR");
  const std::string file = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") +
                           "/redknot-redis-cluster-" + std::to_string(seed_port()) + "/node-" +
                           std::to_string(port) + ".pid";
  pid_t pid = 0;
  std::ifstream(file) >> pid;
  if (pid <= 0) return 0;
  std::ifstream cmd("/proc/" + std::to_string(pid) + "/cmdline");
  std::stringstream ss;
  ss << cmd.rdbuf();
  return ss.str().find("redis-server") != std::string::npos ? pid : 0;  // never signal a reused pid
}

int cluster_script(const std::string& verb) {
  const std::string cmd = std::string("bash '") + REDKNOT_SOURCE_DIR + "/scripts/redis-cluster.sh' " + verb +
                          " --base-port " + std::to_string(seed_port()) + " >&2";
  return std::system(cmd.c_str());
}

struct Tally {
  std::int64_t requests = 0, hits = 0, misses = 0, wrong = 0;
  double max_call_s = 0;
};

}  // namespace

TEST_CASE("fault test: kill -9 a master mid-batch, stop the whole cluster mid-request: no wrong answer",
          "[redis][fault]") {
  RedisClusterOptions o = cluster_options();
  o.connect_timeout = std::chrono::milliseconds(500);
  o.command_timeout = std::chrono::milliseconds(1500);
  o.request_deadline = std::chrono::milliseconds(3000);
  // A get is two calls (index, payload); each is bounded by its deadline plus one command timeout in flight
  // and one slot-map read.
  const double call_bound_s = 2 * (3.0 + 2 * 1.5) + 1.0;
  RedisClusterClient c(o);
  REQUIRE_CLUSTER(c);
  RedisTier t(c, RedisTierOptions{prefix("fault")});
  constexpr int kObjects = 48;
  std::vector<std::string> names;
  std::vector<std::vector<std::byte>> values;
  for (int i = 0; i < kObjects; ++i) {
    names.push_back("obj-" + std::to_string(i));
    values.push_back(bytes_of((64u << 10) + 37u * static_cast<unsigned>(i), static_cast<unsigned>(i) + 1));
    REQUIRE(t.put(names.back(), values.back()));
  }
  // Every write on a replica before the fault: a promoted replica then holds every object. (A replica may
  // still be in its first sync right after the cluster came up: ask again, bounded.)
  for (const std::string& m : c.masters()) {
    RedisReply w;
    for (int i = 0; i < 10 && !(w.type == RedisReply::Type::kInteger && w.integer >= 1); ++i)
      w = c.command_at(m, {"WAIT", "1", "2000"});
    INFO("WAIT on " << m << ": " << w.str << w.integer);
    REQUIRE((w.type == RedisReply::Type::kInteger && w.integer >= 1));
  }
  const auto fetch = [&](Tally& tally, int i) {
    const auto t0 = Clock::now();
    const auto got = t.get(names[static_cast<std::size_t>(i)]);
    tally.max_call_s = std::max(tally.max_call_s, seconds_since(t0));
    ++tally.requests;
    if (!got) {
      ++tally.misses;
    } else if (*got == values[static_cast<std::size_t>(i)]) {
      ++tally.hits;
    } else {
      ++tally.wrong;
    }
    return got.has_value();
  };

  // 1. kill -9 the master of obj-0's slot while a batch of fetches runs; keep fetching (bounded) until the
  // promoted replica serves every object again.
  const std::string victim = c.node_of_slot(redis_key_slot(t.index_key(names[0])));
  const pid_t pid = node_pid(port_of(victim));
  REQUIRE(pid > 0);
  Tally kill9;
  std::atomic<bool> killed{false};
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    ::kill(pid, SIGKILL);
    killed = true;
  });
  const auto t_kill = Clock::now();
  int clean_rounds = 0;
  bool recovered = false;
  for (int round = 0; round < 400 && seconds_since(t_kill) < 45; ++round) {  // bounded
    bool all = true;
    for (int i = 0; i < kObjects; ++i) all = fetch(kill9, i) && all;
    clean_rounds = killed && all ? clean_rounds + 1 : 0;
    if (clean_rounds >= 3) {
      recovered = true;
      break;
    }
  }
  killer.join();
  const double recover_s = seconds_since(t_kill);
  CHECK(kill9.wrong == 0);
  CHECK(recovered);  // the replica was promoted and the client found it
  CHECK(kill9.max_call_s < call_bound_s);
  const std::vector<std::string> masters = c.masters();
  CHECK(masters.size() == 3);
  CHECK(std::find(masters.begin(), masters.end(), victim) == masters.end());  // its replica took over

  // 2. Stop every node (SIGSTOP) in the middle of a batch: requests miss within the bound, one log line.
  std::vector<pid_t> pids;
  for (int i = 0; i < 6; ++i)
    if (const pid_t p = node_pid(seed_port() + i); p > 0 && p != pid) pids.push_back(p);
  REQUIRE(pids.size() == 5);
  const std::int64_t down0 = c.stats().down_events, fast0 = c.stats().fast_failures;
  Tally stopped;
  std::atomic<std::int64_t> started{0};
  std::thread stopper([&] {
    for (int i = 0; i < 2000 && started < 3; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    for (const pid_t p : pids) ::kill(p, SIGSTOP);
  });
  const auto t_stop = Clock::now();
  // Fetch until three requests have missed (everything after the stop misses), bounded.
  for (int i = 0; i < 400 && stopped.misses < 3; ++i) {
    ++started;
    fetch(stopped, i % kObjects);
  }
  stopper.join();
  const double stopped_s = seconds_since(t_stop);
  for (const pid_t p : pids) ::kill(p, SIGCONT);
  CHECK(stopped.wrong == 0);
  CHECK(stopped.misses == 3);
  CHECK(stopped.max_call_s < call_bound_s);
  CHECK(c.stats().down_events == down0 + 1);  // one log line for the outage, not one per request
  // The outage costs one deadline, not one per request: after the first miss, the others fail at once.
  CHECK(c.stats().fast_failures > fast0);
  CHECK(stopped_s < call_bound_s + 1.0);

  // Back: the stopped nodes resume, the script restarts the killed one (it rejoins as a replica).
  REQUIRE(cluster_script("up") == 0);
  Tally after;
  bool back = false;
  for (int round = 0; round < 100 && !back && seconds_since(t_stop) < 60; ++round) {
    Tally r;
    for (int i = 0; i < kObjects; ++i) fetch(r, i);
    back = r.hits == kObjects;
    after.requests += r.requests, after.hits += r.hits, after.misses += r.misses, after.wrong += r.wrong;
    if (!back) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  CHECK(after.wrong == 0);
  CHECK(back);

  const RedisClientStats cs = c.stats();
  std::cout << "fault test report (" << kObjects << " objects of 64 KiB):\n"
            << "| fault | requests | hits | misses | wrong | longest call (s) | until all served (s) |\n"
            << "| --- | --- | --- | --- | --- | --- | --- |\n"
            << "| kill -9 master " << victim << " mid-batch | " << kill9.requests << " | " << kill9.hits
            << " | " << kill9.misses << " | " << kill9.wrong << " | " << kill9.max_call_s << " | "
            << recover_s << " |\n"
            << "| SIGSTOP all nodes mid-batch | " << stopped.requests << " | " << stopped.hits << " | "
            << stopped.misses << " | " << stopped.wrong << " | " << stopped.max_call_s << " | " << stopped_s
            << " (stopped) |\n"
            << "| after SIGCONT + redis-cluster.sh up | " << after.requests << " | " << after.hits << " | "
            << after.misses << " | " << after.wrong << " | - | - |\n"
            << "client: moved=" << cs.moved << " ask=" << cs.ask << " retries=" << cs.retries
            << " connect_failures=" << cs.connect_failures << " connection_errors=" << cs.connection_errors
            << " slot_refreshes=" << cs.slot_refreshes << " failed=" << cs.failed
            << " down_events=" << cs.down_events << "\n";
  for (const std::string& n : names) t.remove(n);
}

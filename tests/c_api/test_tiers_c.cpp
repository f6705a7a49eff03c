// The tier layer through the C ABI: host and disk tiers, sequence swap (bit-exact round trips, placement,
// refusals, misses on corrupt or missing objects, a full pool), chunks through tiers, handle lifetimes and
// bad arguments (a status naming the argument, nothing changed).
#include <catch2/catch_test_macros.hpp>
#include <catch2/generators/catch_generators.hpp>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "redknot/c_api.h"

namespace {

namespace fs = std::filesystem;

constexpr int kL = 2, kHk = 4, kHq = 8, kD = 16;
constexpr DLDataType kF32{kDLFloat, 32, 1};
constexpr const char* kModel = "test-model";

DLTensor tensor(float* data, std::vector<std::int64_t>& shape) {
  DLTensor t{};
  t.data = data;
  t.device = DLDevice{kDLCPU, 0};
  t.ndim = static_cast<int32_t>(shape.size());
  t.dtype = kF32;
  t.shape = shape.data();
  return t;
}

// A fresh directory under the system temp dir, removed at the end of the scope.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> n{0};
    path = fs::temp_directory_path() /
           ("redknot_test_tiers_c_" + std::to_string(::getpid()) + "_" + std::to_string(n.fetch_add(1)));
    fs::remove_all(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string str(const char* sub = "") const { return (path / sub).string(); }
};

// A store whose map has global heads and local heads (window 6, sink 2); page_size 4.
struct Store {
  rk_store* s = nullptr;
  explicit Store(int32_t dtype = RK_DTYPE_F32, int32_t num_pages = 256, int32_t layers = kL) {
    rk_head_map* map = nullptr;
    REQUIRE(rk_head_map_with_global_ratio(layers, kHk, 0.5, 6, 2, &map) == RK_OK);
    rk_store_config cfg{};
    REQUIRE(rk_store_config_init(&cfg) == RK_OK);
    cfg.num_layers = layers;
    cfg.num_q_heads = kHq;
    cfg.num_kv_heads = kHk;
    cfg.head_dim = kD;
    cfg.dtype = dtype;
    cfg.page_size = 4;
    cfg.num_pages = num_pages;
    REQUIRE(rk_store_create(&cfg, map, &s) == RK_OK);
    REQUIRE(rk_head_map_destroy(map) == RK_OK);
  }
  ~Store() { rk_store_destroy(s); }
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  int64_t create() {
    int64_t id = -1;
    REQUIRE(rk_sequence_create(s, &id) == RK_OK);
    return id;
  }
  // K/V of positions [p0, p0 + n) on every layer, a function of the seed only.
  void append(int64_t seq, int32_t p0, int32_t n, unsigned seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    rk_store_config cfg{};
    REQUIRE(rk_store_get_config(s, &cfg) == RK_OK);
    for (int l = 0; l < cfg.num_layers; ++l) {
      std::vector<float> k(static_cast<std::size_t>(n) * kHk * kD), v(k.size());
      for (auto& x : k) x = nd(rng);
      for (auto& x : v) x = nd(rng);
      std::vector<int32_t> pos(static_cast<std::size_t>(n));
      for (int32_t i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = p0 + i;
      std::vector<std::int64_t> shape{n, kHk, kD};
      DLTensor kt = tensor(k.data(), shape), vt = tensor(v.data(), shape);
      REQUIRE(rk_append(s, seq, l, &kt, &vt, pos.data(), n, nullptr) == RK_OK);
    }
  }
  // Attention of one query at q_pos for `seq` in every layer (q a function of the seed), with the lse.
  std::vector<float> attend(int64_t seq, int32_t q_pos, unsigned seed) {
    const int32_t len = 1;
    REQUIRE(rk_plan(s, &seq, &len, 1, &q_pos, 1) == RK_OK);
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd;
    std::vector<float> all;
    for (int l = 0; l < kL; ++l) {
      std::vector<float> q(kHq * kD), out(q.size()), lse(kHq);
      for (auto& x : q) x = nd(rng);
      std::vector<std::int64_t> qshape{1, kHq, kD}, lshape{1, kHq};
      DLTensor qt = tensor(q.data(), qshape), ot = tensor(out.data(), qshape),
               lt = tensor(lse.data(), lshape);
      REQUIRE(rk_attention(s, l, &qt, &ot, &lt, nullptr, nullptr) == RK_OK);
      all.insert(all.end(), out.begin(), out.end());
      all.insert(all.end(), lse.begin(), lse.end());
    }
    return all;
  }
  rk_store_stats stats() const {
    rk_store_stats st{};
    REQUIRE(rk_store_get_stats(s, &st) == RK_OK);
    return st;
  }
};

bool same_stats(const rk_store_stats& a, const rk_store_stats& b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

rk_tier_stats tier_stats(const rk_tier* t) {
  rk_tier_stats st{};
  REQUIRE(rk_tier_get_stats(t, &st) == RK_OK);
  return st;
}

rk_swap_ticket_info info_of(const rk_swap_ticket* t) {
  rk_swap_ticket_info i{};
  REQUIRE(rk_swap_ticket_get_info(t, &i) == RK_OK);
  return i;
}

bool contains(const rk_tier* t, const std::string& name) {
  int32_t in = -1;
  REQUIRE(rk_tier_contains(t, name.c_str(), &in) == RK_OK);
  return in == 1;
}

void flip_last_byte(const fs::path& p) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  REQUIRE(f.good());
  f.seekg(-1, std::ios::end);
  char c = 0;
  f.get(c);
  f.seekp(-1, std::ios::end);
  f.put(static_cast<char>(c ^ 0x10));
}

bool message_has(const char* part) { return std::strstr(rk_last_error(), part) != nullptr; }

void check_no_tier_handles_leak() {
  int64_t tiers = -1, pf = -1, tickets = -1, caches = -1;
  REQUIRE(rk_live_tier_handles(&tiers, &pf, &tickets, &caches) == RK_OK);
  CHECK(tiers == 0);
  CHECK(pf == 0);
  CHECK(tickets == 0);
  CHECK(caches == 0);
}

}  // namespace

TEST_CASE("swap through the C ABI: a restored sequence attends bit for bit like the never-moved one",
          "[c_api][tiers]") {
  const int32_t dtype = GENERATE(RK_DTYPE_F32, RK_DTYPE_F16, RK_DTYPE_BF16);
  const bool prefetch = GENERATE(false, true);
  TempDir dir;
  {
    Store st(dtype);
    const int64_t a = st.create();
    st.append(a, 0, 23, 1);
    REQUIRE(rk_sequence_retire_queries(st.s, a, 22, -1) == RK_OK);
    int64_t ref = -1;
    REQUIRE(rk_sequence_fork(st.s, a, &ref) == RK_OK);
    const auto want = st.attend(ref, 22, 5);

    rk_tier *hot = nullptr, *cold = nullptr;
    rk_prefetcher* pf = nullptr;
    REQUIRE(rk_tier_host_create(1 << 20, &hot) == RK_OK);
    REQUIRE(rk_tier_disk_create(dir.str("cold").c_str(), 1 << 22, 1, 0, &cold) == RK_OK);
    if (prefetch) REQUIRE(rk_prefetcher_create(2, &pf) == RK_OK);
    rk_swap_ticket* t = nullptr;
    REQUIRE(rk_swap_out(st.s, a, hot, cold, kModel, "seq-a", &t) == RK_OK);
    int32_t live = 1;
    REQUIRE(rk_sequence_contains(st.s, a, &live) == RK_OK);
    CHECK(live == 0);
    const rk_swap_ticket_info info = info_of(t);
    CHECK(info.objects == 2 * kL);  // each layer: one local object (hot), one global (cold)
    CHECK(info.cold_objects == kL);
    CHECK(info.num_layers == kL);
    CHECK(info.used == 0);
    for (int l = 0; l < kL; ++l) {
      const std::string p = "seq-a.l" + std::to_string(l);
      CHECK(contains(hot, p + ".local"));
      CHECK_FALSE(contains(cold, p + ".local"));
      CHECK(contains(cold, p + ".global"));
      CHECK(fs::exists(dir.path / "cold" / (p + ".global.rkt")));
    }
    CHECK(tier_stats(hot).bytes_held + tier_stats(cold).bytes_held >= info.bytes);

    int64_t back = -1;
    REQUIRE(rk_swap_in(st.s, t, hot, cold, pf, &back) == RK_OK);
    CHECK(info_of(t).used == 1);
    CHECK(tier_stats(hot).objects == 0);
    CHECK(tier_stats(cold).objects == 0);
    for (int l = 0; l < kL; ++l) {
      int32_t p1 = 0, p2 = 0;
      REQUIRE(rk_sequence_next_position(st.s, back, l, &p1) == RK_OK);
      REQUIRE(rk_sequence_next_position(st.s, ref, l, &p2) == RK_OK);
      CHECK(p1 == p2);
    }
    const auto got = st.attend(back, 22, 5);
    REQUIRE(got.size() == want.size());
    CHECK(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) == 0);
    // Decode steps after the swap: still bit for bit.
    for (int32_t p = 23; p < 27; ++p) {
      st.append(back, p, 1, 100 + static_cast<unsigned>(p));
      st.append(ref, p, 1, 100 + static_cast<unsigned>(p));
      REQUIRE(rk_sequence_retire_queries(st.s, back, p, -1) == RK_OK);
      REQUIRE(rk_sequence_retire_queries(st.s, ref, p, -1) == RK_OK);
      const auto x = st.attend(back, p, static_cast<unsigned>(p));
      const auto y = st.attend(ref, p, static_cast<unsigned>(p));
      CHECK(std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0);
    }
    // A used ticket is refused, and the call changed nothing.
    const rk_store_stats before = st.stats();
    CHECK(rk_swap_in(st.s, t, hot, cold, pf, &back) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("already used"));
    CHECK(same_stats(st.stats(), before));
    REQUIRE(rk_swap_ticket_destroy(t) == RK_OK);
    REQUIRE(rk_prefetcher_destroy(pf) == RK_OK);
    REQUIRE(rk_tier_destroy(hot) == RK_OK);
    REQUIRE(rk_tier_destroy(cold) == RK_OK);
  }
  check_no_tier_handles_leak();
}

TEST_CASE("swap refusals, misses and a full pool leave the store unchanged", "[c_api][tiers]") {
  TempDir dir;
  {
    Store st(RK_DTYPE_BF16, 64);
    const int64_t a = st.create();
    st.append(a, 0, 17, 2);
    const int64_t other = st.create();
    st.append(other, 0, 5, 3);

    SECTION("a tier that refuses: RK_ERR_TIER_REFUSED, the sequence stays live") {
      rk_tier *tiny = nullptr, *small_disk = nullptr;
      REQUIRE(rk_tier_host_create(8, &tiny) == RK_OK);
      REQUIRE(rk_tier_disk_create(dir.str("small").c_str(), 700, 1, 1, &small_disk) == RK_OK);
      const rk_store_stats before = st.stats();
      rk_swap_ticket* t = nullptr;
      CHECK(rk_swap_out(st.s, a, tiny, small_disk, kModel, "r", &t) == RK_ERR_TIER_REFUSED);
      CHECK(t == nullptr);  // out-params only on success
      CHECK(message_has("stays live"));
      CHECK(same_stats(st.stats(), before));
      int32_t live = 0;
      REQUIRE(rk_sequence_contains(st.s, a, &live) == RK_OK);
      CHECK(live == 1);
      CHECK(tier_stats(tiny).objects == 0);
      CHECK(tier_stats(small_disk).objects == 0);
      CHECK(fs::is_empty(dir.path / "small"));
      // The hot tier refuses local objects: they fall back to the cold tier.
      rk_tier* big = nullptr;
      REQUIRE(rk_tier_host_create(1 << 22, &big) == RK_OK);
      REQUIRE(rk_swap_out(st.s, a, tiny, big, kModel, "r", &t) == RK_OK);
      CHECK(info_of(t).cold_objects == info_of(t).objects);
      REQUIRE(rk_swap_discard(t, tiny, big) == RK_OK);
      CHECK(tier_stats(big).objects == 0);
      CHECK(rk_swap_discard(t, tiny, big) == RK_ERR_INVALID_ARGUMENT);
      REQUIRE(rk_swap_ticket_destroy(t) == RK_OK);
      REQUIRE(rk_tier_destroy(big) == RK_OK);
      REQUIRE(rk_tier_destroy(tiny) == RK_OK);
      REQUIRE(rk_tier_destroy(small_disk) == RK_OK);
    }

    SECTION("a corrupt or missing object: RK_ERR_TIER_MISS, no leaked pages, the ticket used up") {
      const int damage = GENERATE(0, 1, 2);  // flip a byte on disk, delete the file, remove the hot object
      rk_tier *hot = nullptr, *cold = nullptr;
      REQUIRE(rk_tier_host_create(1 << 20, &hot) == RK_OK);
      REQUIRE(rk_tier_disk_create(dir.str("d").c_str(), 1 << 22, 1, 0, &cold) == RK_OK);
      rk_swap_ticket* t = nullptr;
      REQUIRE(rk_swap_out(st.s, a, hot, cold, kModel, "m", &t) == RK_OK);
      const fs::path file = dir.path / "d" / "m.l1.global.rkt";
      REQUIRE(fs::exists(file));
      if (damage == 0) flip_last_byte(file);
      if (damage == 1) fs::remove(file);
      if (damage == 2) REQUIRE(rk_tier_remove(hot, "m.l1.local", nullptr) == RK_OK);
      const rk_store_stats before = st.stats();
      int64_t back = -1;
      CHECK(rk_swap_in(st.s, t, hot, cold, nullptr, &back) == RK_ERR_TIER_MISS);
      CHECK(back == -1);
      CHECK(message_has("cannot come back"));
      CHECK(same_stats(st.stats(), before));
      CHECK(info_of(t).used == 1);
      CHECK(tier_stats(hot).objects == 0);
      CHECK(tier_stats(cold).objects == 0);
      if (damage == 0) CHECK(tier_stats(cold).corrupt == 1);
      CHECK(rk_swap_in(st.s, t, hot, cold, nullptr, &back) == RK_ERR_INVALID_ARGUMENT);
      REQUIRE(rk_swap_ticket_destroy(t) == RK_OK);
      REQUIRE(rk_tier_destroy(hot) == RK_OK);
      REQUIRE(rk_tier_destroy(cold) == RK_OK);
    }

    SECTION("a full pool: RK_ERR_POOL_EXHAUSTED, the ticket and its objects stay") {
      rk_tier* hot = nullptr;
      REQUIRE(rk_tier_host_create(1 << 22, &hot) == RK_OK);
      rk_swap_ticket* t = nullptr;
      REQUIRE(rk_swap_out(st.s, a, hot, nullptr, kModel, "e", &t) == RK_OK);
      const int64_t hog = st.create();
      // Global heads hold every position: fill the pool up to a page or two.
      rk_store_stats s0 = st.stats();
      int32_t p = 0;
      while (st.stats().pages_total - st.stats().pages_in_use > 4) st.append(hog, p++, 1, 9);
      s0 = st.stats();
      int64_t back = -1;
      CHECK(rk_swap_in(st.s, t, hot, nullptr, nullptr, &back) == RK_ERR_POOL_EXHAUSTED);
      CHECK(same_stats(st.stats(), s0));
      CHECK(info_of(t).used == 0);
      CHECK(tier_stats(hot).objects == info_of(t).objects);
      REQUIRE(rk_sequence_free(st.s, hog) == RK_OK);
      REQUIRE(rk_swap_in(st.s, t, hot, nullptr, nullptr, &back) == RK_OK);
      CHECK(back >= 0);
      REQUIRE(rk_swap_ticket_destroy(t) == RK_OK);
      REQUIRE(rk_tier_destroy(hot) == RK_OK);
    }
  }
  check_no_tier_handles_leak();
}

TEST_CASE("chunks through tiers in C: demote, promote, prefetch, corrupt copies, lifetimes",
          "[c_api][tiers]") {
  TempDir dir;
  {
    Store st(RK_DTYPE_F16);
    const int64_t c = st.create();
    st.append(c, 0, 11, 4);
    const int32_t tokens[3] = {1, 2, 3};
    rk_chunk_key key{};
    REQUIRE(rk_chunk_key_make(st.s, kModel, tokens, 3, &key) == RK_OK);
    REQUIRE(rk_chunk_register(st.s, key, c) == RK_OK);
    const int32_t pos[3] = {0, 5, 10};
    std::vector<float> k0(3 * kHk * kD), v0(k0.size()), k1(k0.size()), v1(k0.size());
    const int64_t probe = st.create();
    REQUIRE(rk_chunk_splice(st.s, probe, key, 0, -1) == RK_OK);
    REQUIRE(rk_read_rows(st.s, probe, 1, pos, 3, k0.data(), v0.data()) == RK_OK);
    REQUIRE(rk_sequence_free(st.s, probe) == RK_OK);

    rk_tier *hot = nullptr, *disk = nullptr;
    rk_prefetcher* pf = nullptr;
    REQUIRE(rk_tier_host_create(64, &hot) == RK_OK);  // too small: chunks land on disk
    REQUIRE(rk_tier_disk_create(dir.str("chunks").c_str(), 1 << 22, 1, 0, &disk) == RK_OK);
    REQUIRE(rk_prefetcher_create(1, &pf) == RK_OK);
    rk_tier* const tiers[2] = {hot, disk};
    rk_chunk_tiers* cache = nullptr;
    REQUIRE(rk_chunk_tiers_create(st.s, kModel, tiers, 2, 1, pf, &cache) == RK_OK);

    // Lifetimes: what the cache uses cannot be destroyed under it.
    CHECK(rk_tier_destroy(disk) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("destroy them first"));
    CHECK(rk_store_destroy(st.s) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_prefetcher_destroy(pf) == RK_ERR_INVALID_ARGUMENT);

    int64_t freed = -1;
    REQUIRE(rk_chunk_tiers_make_room(cache, 1 << 20, &freed) == RK_OK);
    CHECK(freed > 0);
    rk_chunk_tier_stats cs{};
    REQUIRE(rk_chunk_tiers_get_stats(cache, &cs) == RK_OK);
    CHECK(cs.demotions == 1);
    CHECK(cs.dropped == 0);
    int32_t in = 0, n = 0, started = 0;
    REQUIRE(rk_chunk_tiers_contains(cache, key, &in) == RK_OK);
    CHECK(in == 1);
    REQUIRE(rk_chunk_lookup(st.s, key, &n) == RK_OK);
    CHECK(n == -1);  // gone from the store
    REQUIRE(rk_chunk_tiers_prefetch(cache, key, &started) == RK_OK);
    CHECK(started == 1);
    REQUIRE(rk_chunk_tiers_lookup(cache, key, &n) == RK_OK);
    CHECK(n == 11);
    const int64_t probe2 = st.create();
    REQUIRE(rk_chunk_splice(st.s, probe2, key, 0, -1) == RK_OK);
    REQUIRE(rk_read_rows(st.s, probe2, 1, pos, 3, k1.data(), v1.data()) == RK_OK);
    CHECK(std::memcmp(k0.data(), k1.data(), k0.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(v0.data(), v1.data(), v0.size() * sizeof(float)) == 0);
    // In use: demote refuses, nothing changes.
    int32_t written = -1;
    CHECK(rk_chunk_tiers_demote(cache, key, &written) == RK_ERR_INVALID_ARGUMENT);
    CHECK(written == -1);
    REQUIRE(rk_sequence_free(st.s, probe2) == RK_OK);

    // A corrupt copy: a lookup miss, the store unchanged, the file removed.
    REQUIRE(rk_chunk_tiers_demote(cache, key, &written) == RK_OK);
    CHECK(written == 1);
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(dir.path / "chunks")) files.push_back(e.path());
    REQUIRE(files.size() == 1);
    flip_last_byte(files[0]);
    const rk_store_stats before = st.stats();
    REQUIRE(rk_chunk_tiers_lookup(cache, key, &n) == RK_OK);
    CHECK(n == -1);
    CHECK(same_stats(st.stats(), before));
    CHECK(fs::is_empty(dir.path / "chunks"));
    CHECK(tier_stats(disk).corrupt == 1);
    REQUIRE(rk_chunk_tiers_contains(cache, key, &in) == RK_OK);
    CHECK(in == 0);
    CHECK(rk_chunk_tiers_demote(cache, key, &written) == RK_ERR_NOT_FOUND);

    REQUIRE(rk_chunk_tiers_destroy(cache) == RK_OK);
    CHECK(rk_chunk_tiers_destroy(cache) == RK_ERR_INVALID_ARGUMENT);  // double destroy
    CHECK(rk_chunk_tiers_lookup(cache, key, &n) == RK_ERR_INVALID_ARGUMENT);
    REQUIRE(rk_prefetcher_destroy(pf) == RK_OK);
    REQUIRE(rk_tier_destroy(hot) == RK_OK);
    REQUIRE(rk_tier_destroy(disk) == RK_OK);
  }
  check_no_tier_handles_leak();
}

TEST_CASE("tier calls with bad arguments: a status naming the argument, nothing changed", "[c_api][tiers]") {
  TempDir dir;
  {
    Store st;
    const int64_t a = st.create();
    st.append(a, 0, 9, 6);
    rk_tier *hot = nullptr, *cold = nullptr, *other = nullptr, *dead = nullptr;
    REQUIRE(rk_tier_host_create(1 << 20, &hot) == RK_OK);
    REQUIRE(rk_tier_disk_create(dir.str("cold").c_str(), 1 << 22, 1, 0, &cold) == RK_OK);
    REQUIRE(rk_tier_host_create(1 << 20, &other) == RK_OK);
    REQUIRE(rk_tier_host_create(1, &dead) == RK_OK);
    REQUIRE(rk_tier_destroy(dead) == RK_OK);
    CHECK(rk_tier_destroy(dead) == RK_ERR_INVALID_ARGUMENT);  // double destroy
    CHECK(rk_tier_destroy(nullptr) == RK_OK);
    CHECK(rk_swap_ticket_destroy(nullptr) == RK_OK);
    CHECK(rk_prefetcher_destroy(nullptr) == RK_OK);
    CHECK(rk_chunk_tiers_destroy(nullptr) == RK_OK);
    const rk_store_stats before = st.stats();
    rk_tier* out = nullptr;

    // Creation.
    CHECK(rk_tier_host_create(-1, &out) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("capacity_bytes=-1"));
    CHECK(rk_tier_host_create(10, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_tier_disk_create(nullptr, 10, 1, 0, &out) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_tier_disk_create("", 10, 1, 0, &out) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_tier_disk_create(dir.str("x").c_str(), -5, 1, 0, &out) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_tier_disk_create(dir.str("missing").c_str(), 10, 0, 0, &out) == RK_ERR_NOT_FOUND);
    std::ofstream(dir.path / "file") << "x";
    CHECK(rk_tier_disk_create(dir.str("file").c_str(), 10, 1, 0, &out) == RK_ERR_UNAVAILABLE);
    CHECK(out == nullptr);
    rk_prefetcher* pf = nullptr;
    CHECK(rk_prefetcher_create(0, &pf) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("threads=0"));
    CHECK(rk_prefetcher_create(65, &pf) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_prefetcher_create(2, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(pf == nullptr);

    // Tier calls.
    rk_tier_stats ts{};
    int32_t flag = -1;
    CHECK(rk_tier_get_stats(nullptr, &ts) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_tier_get_stats(dead, &ts) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("not live"));
    CHECK(rk_tier_get_stats(hot, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_tier_contains(hot, "../x", &flag) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("../x"));
    CHECK(rk_tier_contains(hot, nullptr, &flag) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_tier_remove(cold, ".hidden", &flag) == RK_ERR_INVALID_ARGUMENT);
    CHECK(flag == -1);

    // swap_out.
    rk_swap_ticket* t = nullptr;
    CHECK(rk_swap_out(nullptr, a, hot, cold, kModel, "n", &t) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_swap_out(st.s, a, nullptr, cold, kModel, "n", &t) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("hot tier handle is NULL"));
    CHECK(rk_swap_out(st.s, a, dead, cold, kModel, "n", &t) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_swap_out(st.s, a, hot, dead, kModel, "n", &t) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("cold tier handle"));
    CHECK(rk_swap_out(st.s, a, hot, cold, nullptr, "n", &t) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("model_id"));
    CHECK(rk_swap_out(st.s, a, hot, cold, kModel, nullptr, &t) == RK_ERR_INVALID_ARGUMENT);
    for (const char* bad : {"../x", "", ".x", "a/b", "a b"}) {
      CHECK(rk_swap_out(st.s, a, hot, cold, kModel, bad, &t) == RK_ERR_INVALID_ARGUMENT);
      CHECK(message_has("tier object name"));
    }
    const std::string long_name(195, 'x');  // valid alone, too long with ".l1.global"
    CHECK(rk_swap_out(st.s, a, hot, cold, kModel, long_name.c_str(), &t) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_swap_out(st.s, 12345, hot, cold, kModel, "n", &t) == RK_ERR_NOT_FOUND);
    CHECK(rk_swap_out(st.s, a, hot, cold, kModel, "n", nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(t == nullptr);
    CHECK(same_stats(st.stats(), before));
    CHECK(tier_stats(hot).objects == 0);
    CHECK(tier_stats(cold).objects == 0);

    // swap_in / discard / info.
    REQUIRE(rk_swap_out(st.s, a, hot, cold, kModel, "n", &t) == RK_OK);
    const rk_store_stats out_stats = st.stats();
    const int64_t objects = tier_stats(hot).objects + tier_stats(cold).objects;
    int64_t back = -1;
    CHECK(rk_swap_in(nullptr, t, hot, cold, nullptr, &back) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_swap_in(st.s, nullptr, hot, cold, nullptr, &back) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("swap ticket handle is NULL"));
    CHECK(rk_swap_in(st.s, reinterpret_cast<rk_swap_ticket*>(hot), hot, cold, nullptr, &back) ==
          RK_ERR_INVALID_ARGUMENT);  // a pointer of another kind
    CHECK(rk_swap_in(st.s, t, other, cold, nullptr, &back) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("hot tier"));
    CHECK(rk_swap_in(st.s, t, hot, nullptr, nullptr, &back) == RK_ERR_INVALID_ARGUMENT);  // cold was given
    CHECK(message_has("cold tier"));
    CHECK(rk_swap_in(st.s, t, hot, cold, reinterpret_cast<rk_prefetcher*>(hot), &back) ==
          RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_swap_in(st.s, t, hot, cold, nullptr, nullptr) == RK_ERR_INVALID_ARGUMENT);
    {
      Store f16(RK_DTYPE_F16);
      CHECK(rk_swap_in(f16.s, t, hot, cold, nullptr, &back) == RK_ERR_INVALID_ARGUMENT);
      CHECK(message_has("dtype=f16"));
      Store three(RK_DTYPE_F32, 64, 3);
      CHECK(rk_swap_in(three.s, t, hot, cold, nullptr, &back) == RK_ERR_INVALID_ARGUMENT);
      CHECK(message_has("num_layers=3"));
    }
    CHECK(rk_swap_discard(t, other, cold) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_swap_discard(nullptr, hot, cold) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_swap_ticket_get_info(t, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(back == -1);
    CHECK(same_stats(st.stats(), out_stats));
    CHECK(tier_stats(hot).objects + tier_stats(cold).objects == objects);
    CHECK(info_of(t).used == 0);
    // A ticket restores into another store of the same layout.
    {
      Store twin;
      REQUIRE(rk_swap_in(twin.s, t, hot, cold, nullptr, &back) == RK_OK);
    }
    REQUIRE(rk_swap_ticket_destroy(t) == RK_OK);
    CHECK(rk_swap_ticket_destroy(t) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_swap_ticket_get_info(t, nullptr) == RK_ERR_INVALID_ARGUMENT);

    // Chunk tiers.
    rk_chunk_tiers* cache = nullptr;
    rk_tier* const two[2] = {hot, cold};
    rk_tier* const twice[2] = {hot, hot};
    rk_tier* const with_dead[2] = {hot, dead};
    rk_tier* const with_null[2] = {hot, nullptr};
    CHECK(rk_chunk_tiers_create(nullptr, kModel, two, 2, 0, nullptr, &cache) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_create(st.s, nullptr, two, 2, 0, nullptr, &cache) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_create(st.s, kModel, nullptr, 2, 0, nullptr, &cache) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_create(st.s, kModel, two, 0, 0, nullptr, &cache) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("n_tiers=0"));
    CHECK(rk_chunk_tiers_create(st.s, kModel, two, -3, 0, nullptr, &cache) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_create(st.s, kModel, twice, 2, 0, nullptr, &cache) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("same tier"));
    CHECK(rk_chunk_tiers_create(st.s, kModel, with_dead, 2, 0, nullptr, &cache) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("tiers[1]"));
    CHECK(rk_chunk_tiers_create(st.s, kModel, with_null, 2, 0, nullptr, &cache) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_create(st.s, kModel, two, 2, -1, nullptr, &cache) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("min_splices=-1"));
    CHECK(rk_chunk_tiers_create(st.s, kModel, two, 2, 0, reinterpret_cast<rk_prefetcher*>(hot), &cache) ==
          RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_create(st.s, kModel, two, 2, 0, nullptr, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(cache == nullptr);
    // No failed create left a count behind: every handle can still be destroyed (checked below).
    REQUIRE(rk_chunk_tiers_create(st.s, kModel, two, 2, 0, nullptr, &cache) == RK_OK);
    rk_chunk_tier_stats cs{};
    int32_t n = 7;
    CHECK(rk_chunk_tiers_get_stats(nullptr, &cs) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_get_stats(cache, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_lookup(cache, rk_chunk_key{1, 2}, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_contains(cache, rk_chunk_key{1, 2}, nullptr) == RK_ERR_INVALID_ARGUMENT);
    CHECK(rk_chunk_tiers_demote(cache, rk_chunk_key{1, 2}, nullptr) == RK_ERR_NOT_FOUND);
    REQUIRE(rk_chunk_tiers_lookup(cache, rk_chunk_key{1, 2}, &n) == RK_OK);
    CHECK(n == -1);
    REQUIRE(rk_chunk_tiers_prefetch(cache, rk_chunk_key{1, 2}, &flag) == RK_OK);
    CHECK(flag == 0);  // no prefetcher
    REQUIRE(rk_chunk_tiers_destroy(cache) == RK_OK);

    REQUIRE(rk_tier_destroy(hot) == RK_OK);
    REQUIRE(rk_tier_destroy(cold) == RK_OK);
    REQUIRE(rk_tier_destroy(other) == RK_OK);
  }
  check_no_tier_handles_leak();
  CHECK(std::string(rk_status_string(RK_ERR_TIER_REFUSED)) == "RK_ERR_TIER_REFUSED");
  CHECK(std::string(rk_status_string(RK_ERR_TIER_MISS)) == "RK_ERR_TIER_MISS");
}

TEST_CASE("a swap name in use is refused before anything is written", "[c_api][tiers]") {
  {
    Store st;
    const int64_t a = st.create(), b = st.create();
    st.append(a, 0, 7, 1);
    st.append(b, 0, 7, 2);
    rk_tier* hot = nullptr;
    REQUIRE(rk_tier_host_create(1 << 20, &hot) == RK_OK);
    rk_swap_ticket *ta = nullptr, *tb = nullptr;
    REQUIRE(rk_swap_out(st.s, a, hot, nullptr, kModel, "same", &ta) == RK_OK);
    const rk_store_stats before = st.stats();
    const int64_t objects = tier_stats(hot).objects;
    CHECK(rk_swap_out(st.s, b, hot, nullptr, kModel, "same", &tb) == RK_ERR_INVALID_ARGUMENT);
    CHECK(message_has("already exists"));
    CHECK(tb == nullptr);
    CHECK(same_stats(st.stats(), before));
    CHECK(tier_stats(hot).objects == objects);
    int64_t back = -1;
    REQUIRE(rk_swap_in(st.s, ta, hot, nullptr, nullptr, &back) == RK_OK);
    REQUIRE(rk_swap_out(st.s, b, hot, nullptr, kModel, "same", &tb) == RK_OK);  // free again
    REQUIRE(rk_swap_in(st.s, tb, hot, nullptr, nullptr, &back) == RK_OK);
    REQUIRE(rk_swap_ticket_destroy(ta) == RK_OK);
    REQUIRE(rk_swap_ticket_destroy(tb) == RK_OK);
    REQUIRE(rk_tier_destroy(hot) == RK_OK);
  }
  check_no_tier_handles_leak();
}

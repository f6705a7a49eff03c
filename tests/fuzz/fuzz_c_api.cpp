// Fuzz target: the C ABI (c_api.h) driven by a random sequence of calls, checked after every call against a
// small model kept here.
//
// The input is a byte stream: a few bytes choose the store (dtype f32/f16/bf16, layers, heads, head_dim,
// page_size 1..16, pool size) and its head map (mixed local/global/retrieval/dense heads, windows 1..64,
// sinks 0..8, dense prefix), then each following group of bytes is one call: sequence create / fork (of
// forks) / free, rk_append with valid or deliberately invalid arguments (one defect per call: dead id, bad
// layer, stale or non-increasing positions, wrong shape / dtype / device, huge counts, NULL pointers),
// rk_append_batch over a random subset of the live sequences (valid, or with one defect: bad offsets, dead or
// duplicate ids, stale positions, wrong row counts, NULL arrays),
// rk_sequence_retire_queries per layer or for all layers, rk_plan (zero-query items, duplicates, dead ids,
// bad lengths), rk_attention (f32 or store-dtype q, optional lse, valid and invalid params incl.
// num_threads), stats and capacity queries, the FlashInfer CSR export and the pool view, head-map calls, and
// destroy / double destroy / use after destroy of store and head-map handles.
//
// Chunks (position-independent reuse; op bytes 240..255): the store sometimes has a RoPE spec (rotate-half /
// interleaved, partial rotary_dim, default / linear / llama3 / yarn, theta 1.5 .. 500000; from spare bits of
// the config bytes, so older inputs decode as before) and sometimes none. Ops: prefill a new sequence at
// 0..n-1 on every layer and register it (or any sequence: registrable only if every layer holds exactly
// 0..n-1 on every head; where a local head may have dropped a page the model accepts OK or INVALID_ARGUMENT
// and checks the outcome), keys from rk_chunk_key_make, raw or already registered; lookup; splice and
// relocate into live / dead sequences at valid, overlapping or huge `at` with valid or bad first_query, and
// at != 0 without a RoPE spec (a successful one is often followed by a plan and attention of that sequence
// alone); drop (in use: an error; unknown: dropped = 0); overwrite of held positions (or with one defect);
// read_rows; select_recompute against a reference; key_make argument errors. The shadow keeps each key as
// stored and at its true position (a spliced key is the chunk's rotated by `at`; relocated and overwritten
// keys are rotated and rounded like the library does), so later appends, plans, attention and CSR exports of
// spliced sequences are checked as before. Unused chunks may be evicted (LRU) when an allocation needs pages:
// the model notices through rk_chunk_get_stats and rk_chunk_lookup.
//
// After every call:
//   * the status is the one the model predicts (RK_OK for a valid call, the documented error otherwise, with
//     a non-empty rk_last_error()); RK_ERR_INTERNAL is always a failure;
//   * a failed call changed nothing: pages in use, live sequences, next positions per (seq, layer), and the
//     chunk registry (chunks, chunks in use, pages held, evictions);
//   * live sequences and next positions match the model;
//   * after a successful rk_attention every output row matches a naive fp64 oracle over a shadow copy of
//     everything appended (canonical visibility rule), with a tolerance that fails on NaN;
//   * an exported CSR is well formed and its pages hold exactly the shadow's K/V (keys as stored);
//   * registered chunks match the model (count, in use; a chunk in use is never evicted); rk_read_rows rows
//     equal the shadow's keys at their true positions and V, NaN only where the head's retention rule lets
//     the row be gone; rk_select_recompute returns the reference's tokens.
// Any mismatch prints what differed and calls __builtin_trap(), so libFuzzer reports it as a crash.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "redknot/c_api.h"
#include "redknot/dtype.hpp"
#include "redknot/rope.hpp"
#include "redknot/visibility.hpp"

#include <unistd.h>

namespace {

[[noreturn]] void die(const char* what, long long a = 0, long long b = 0) {
  std::fprintf(stderr, "fuzz_c_api: MISMATCH: %s (%lld, %lld); last error: %s\n", what, a, b,
               rk_last_error());
  std::fflush(stderr);
  __builtin_trap();
}
#define FZ_CHECK(cond, ...)                       \
  do {                                            \
    if (!(cond)) die(#cond " [" __VA_ARGS__ "]"); \
  } while (0)
// With one or two values to print.
#define FZ_CHECKV(cond, msg, ...)                      \
  do {                                                 \
    if (!(cond)) die(#cond " [" msg "]", __VA_ARGS__); \
  } while (0)

// Reads the input; past its end every read returns 0 (the sequence just ends).
struct Bytes {
  const std::uint8_t* p;
  std::size_t n;
  std::size_t i = 0;
  bool empty() const { return i >= n; }
  std::uint8_t u8() { return i < n ? p[i++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
  std::uint32_t u32() {
    return static_cast<std::uint32_t>(u16() | (static_cast<std::uint32_t>(u16()) << 16));
  }
  int in(int lo, int hi) {
    return lo + static_cast<int>(u8() % static_cast<unsigned>(hi - lo + 1));
  }  // [lo, hi]
};

struct Rng {  // values of K, V and Q: deterministic from a seed byte, so inputs stay small
  std::uint32_t s;
  std::uint32_t next() {
    s = s * 1664525u + 1013904223u;
    return s >> 8;
  }
  // Multiples of 1/16 in [-1, 1]: exact in f32, f16 and bf16, so storage rounding does not blur the oracle.
  float val() { return static_cast<float>(static_cast<int>(next() % 33) - 16) / 16.f; }
};

constexpr DLDataType kF32{kDLFloat, 32, 1};
constexpr DLDataType kF16{kDLFloat, 16, 1};
constexpr DLDataType kBF16{kDLBfloat, 16, 1};
constexpr DLDataType kI32{kDLInt, 32, 1};

// x clamped to the int32 range (positions computed near INT32_MAX).
std::int32_t sat(std::int64_t x) {
  return static_cast<std::int32_t>(std::clamp<std::int64_t>(x, std::numeric_limits<std::int32_t>::min(),
                                                            std::numeric_limits<std::int32_t>::max()));
}

DLDataType dl_of(int dt) { return dt == RK_DTYPE_F32 ? kF32 : dt == RK_DTYPE_F16 ? kF16 : kBF16; }
std::size_t elem_size(int dt) { return dt == RK_DTYPE_F32 ? 4 : 2; }

// Float <-> storage bits of the store dtype (through redknot's conversions: exact for our values).
void put(void* base, std::size_t i, int dt, float x) {
  if (dt == RK_DTYPE_F32)
    static_cast<float*>(base)[i] = x;
  else if (dt == RK_DTYPE_F16)
    static_cast<redknot::Half*>(base)[i] = redknot::from_float<redknot::Half>(x);
  else
    static_cast<redknot::BFloat16*>(base)[i] = redknot::from_float<redknot::BFloat16>(x);
}
float get(const void* base, std::size_t i, int dt) {
  if (dt == RK_DTYPE_F32) return static_cast<const float*>(base)[i];
  if (dt == RK_DTYPE_F16) return redknot::to_float(static_cast<const redknot::Half*>(base)[i]);
  return redknot::to_float(static_cast<const redknot::BFloat16*>(base)[i]);
}

struct Tensor {
  std::vector<std::int64_t> shape;
  std::vector<unsigned char> buf;
  DLTensor t{};
  DLTensor* make(std::vector<std::int64_t> shp, DLDataType dt, std::size_t elems, std::size_t esize) {
    shape = std::move(shp);
    buf.assign(elems * esize + 16, 0);
    t.data = buf.data();
    t.device = DLDevice{kDLCPU, 0};
    t.ndim = static_cast<std::int32_t>(shape.size());
    t.dtype = dt;
    t.shape = shape.data();
    t.strides = nullptr;
    t.byte_offset = 0;
    return &t;
  }
};

struct LayerShadow {
  std::vector<std::int32_t> pos;
  // [token][kv_head][dim]: k as stored in the pool, ke the key at its true position (k rotated by delta: what
  // attention and rk_read_rows see), v.
  std::vector<float> k, ke, v;
  std::vector<std::int32_t> delta;  // [token]: position - the position its stored key was rotated for
  std::int32_t next = 0;
  std::int32_t floor = 0;
  // One token of H*D values (stored key rotated for its own position).
  void push(std::int32_t p, const float* kr, const float* vr, std::size_t hd) {
    pos.push_back(p);
    k.insert(k.end(), kr, kr + hd);
    ke.insert(ke.end(), kr, kr + hd);
    v.insert(v.end(), vr, vr + hd);
    delta.push_back(0);
  }
  // Index of the token at position p, or -1.
  std::int64_t find(std::int32_t p) const {
    const auto it = std::lower_bound(pos.begin(), pos.end(), p);
    return it != pos.end() && *it == p ? it - pos.begin() : -1;
  }
};

using KeyId = std::pair<std::uint64_t, std::uint64_t>;
KeyId id_of(rk_chunk_key k) { return {k.hi, k.lo}; }

struct SeqModel {
  std::vector<LayerShadow> layers;
  std::vector<KeyId> chunks;  // spliced in, once per splice (the chunk's users)
};

struct ChunkModel {
  std::int32_t n = 0;
  std::vector<LayerShadow> layers;  // positions 0..n-1, keys rotated for them
};

// What the inputs reached (printed at exit when FUZZ_C_API_STATS is set: a quick look at how deep a corpus
// goes without coverage tools).
struct Reached {
  long long appends = 0, attention_ok = 0, attention_rows = 0, attention_err = 0, plans = 0, exports = 0,
            forks = 0, retires = 0, pool_full = 0, batch_appends = 0, batch_items = 0;
  long long registers = 0, register_err = 0, lookups = 0, splices = 0, splice_err = 0, relocates = 0,
            relocate_err = 0, drops = 0, drop_err = 0, evictions = 0, overwrites = 0, overwrite_err = 0,
            read_rows = 0, read_rows_nan = 0, recompute = 0, recompute_err = 0, relocated_rows = 0;
  long long swap_out = 0, swap_refused = 0, swap_in = 0, swap_miss = 0, swap_full = 0, demotions = 0,
            promotions = 0, tier_misses = 0, corruptions = 0, tier_errors = 0, promote_failures = 0,
            rejected = 0;
  ~Reached() {
    if (std::getenv("FUZZ_C_API_STATS")) {
      std::fprintf(
          stderr,
          "fuzz_c_api: appends %lld (pool full %lld), batch appends %lld (%lld non-empty items), forks %lld, "
          "retires %lld, plans %lld, attention ok %lld (%lld rows) / failed %lld, csr exports %lld\n",
          appends, pool_full, batch_appends, batch_items, forks, retires, plans, attention_ok, attention_rows,
          attention_err, exports);
      std::fprintf(stderr,
                   "fuzz_c_api: chunks: registered %lld / failed %lld, lookups %lld, splices %lld / failed "
                   "%lld, relocates %lld / failed %lld, drops %lld / failed %lld, evicted %lld, overwrites "
                   "%lld / failed %lld, read_rows %lld (%lld NaN rows), select_recompute %lld / failed %lld, "
                   "attention rows over relocated keys %lld\n",
                   registers, register_err, lookups, splices, splice_err, relocates, relocate_err, drops,
                   drop_err, evictions, overwrites, overwrite_err, read_rows, read_rows_nan, recompute,
                   recompute_err, relocated_rows);
      std::fprintf(
          stderr,
          "fuzz_c_api: tiers: swap out %lld (refused %lld), swap in %lld (miss %lld, pool full %lld), "
          "demotions %lld, promotions %lld (failed for room %lld, copies rejected %lld), chunk tier misses "
          "%lld, files corrupted %lld, argument errors %lld\n",
          swap_out, swap_refused, swap_in, swap_miss, swap_full, demotions, promotions, promote_failures,
          rejected, tier_misses, corruptions, tier_errors);
    }
  }
} g_reached;

struct Policy {
  int cls = RK_HEAD_GLOBAL;
  int window = -1;
  int sink = 0;
};

// The model applies the library's one visibility rule (the C ABI's head classes map onto HeadPolicy).
bool visible(const Policy& p, std::int64_t q, std::int64_t k) {
  const redknot::HeadPolicy hp{
      p.cls == RK_HEAD_LOCAL ? redknot::HeadClass::kLocal : redknot::HeadClass::kGlobal, p.window, p.sink};
  return redknot::is_visible(hp, q, k);
}

class Fuzzer {
 public:
  explicit Fuzzer(Bytes& in) : in_(in) {}

  void run() {
    if (!create_store()) return;
    int ops = 0;
    while (!in_.empty() && ops++ < 96) step();
    // Tear down: destroy, then a second destroy and a use after destroy must be clean errors.
    destroy_store();
    std::int64_t stores = -1, maps = -1;
    FZ_CHECK(rk_live_handles(&stores, &maps) == RK_OK);
    FZ_CHECK(stores == 0 && maps == 0, "handles leaked");
    std::int64_t tiers = -1, pfs = -1, tickets = -1, caches = -1;
    FZ_CHECK(rk_live_tier_handles(&tiers, &pfs, &tickets, &caches) == RK_OK);
    FZ_CHECK(tiers == 0 && pfs == 0 && tickets == 0 && caches == 0, "tier handles leaked");
  }

 private:
  // ---- expectations
  // ----------------------------------------------------------------------------------------

  void expect(int got, int want, const char* what) {
    if (got == RK_ERR_INTERNAL) {
      std::fprintf(stderr, "fuzz_c_api: %s returned RK_ERR_INTERNAL\n", what);
      die("RK_ERR_INTERNAL");
    }
    if (got != want) {
      std::fprintf(stderr, "fuzz_c_api: %s returned %s, the model expected %s\n", what, rk_status_string(got),
                   rk_status_string(want));
      die("status");
    }
    if (got != RK_OK) FZ_CHECK(rk_last_error()[0] != '\0', "empty error message");
  }

  struct Snap {
    std::int64_t pages = 0, seqs = 0, chunks = 0, chunks_in_use = 0, chunk_pages = 0, evictions = 0;
    std::vector<std::int32_t> next;
  };
  Snap snap() {
    Snap s;
    rk_store_stats st{};
    FZ_CHECK(rk_store_get_stats(store_, &st) == RK_OK);
    s.pages = st.pages_in_use;
    s.seqs = st.num_sequences;
    rk_chunk_stats cs{};
    FZ_CHECK(rk_chunk_get_stats(store_, &cs) == RK_OK);
    s.chunks = cs.chunks;
    s.chunks_in_use = cs.chunks_in_use;
    s.chunk_pages = cs.pages_held;
    s.evictions = cs.evictions;
    for (auto& [id, m] : seqs_)
      for (int l = 0; l < L_; ++l) {
        std::int32_t np = -1;
        FZ_CHECK(rk_sequence_next_position(store_, id, l, &np) == RK_OK);
        s.next.push_back(np);
      }
    return s;
  }
  void same(const Snap& a, const Snap& b) {
    FZ_CHECK(a.pages == b.pages, "a failed call changed pages in use");
    FZ_CHECK(a.seqs == b.seqs, "a failed call changed the number of sequences");
    FZ_CHECK(a.next == b.next, "a failed call changed a next position");
    FZ_CHECK(a.chunks == b.chunks && a.chunks_in_use == b.chunks_in_use && a.chunk_pages == b.chunk_pages &&
                 a.evictions == b.evictions,
             "a failed call changed the chunk registry");
  }

  // Live sequences a chunk is spliced into, counted once per splice (the library's `users`).
  std::int64_t users(const KeyId& k) const {
    std::int64_t n = 0;
    for (const auto& [id, m] : seqs_) n += std::count(m.chunks.begin(), m.chunks.end(), k);
    return n;
  }

  // Unused chunks may be evicted (LRU) when an allocation needs their pages: after a rise of the eviction
  // counter, the model drops the chunks rk_chunk_lookup no longer finds (never one in use).
  void check_chunks() {
    rk_chunk_stats cs{};
    FZ_CHECK(rk_chunk_get_stats(store_, &cs) == RK_OK);
    if (cs.evictions != evictions_) {
      FZ_CHECK(cs.evictions > evictions_, "chunk evictions went down");
      std::int64_t gone = 0;
      for (auto it = chunks_.begin(); it != chunks_.end();) {
        std::int32_t n = -2;
        FZ_CHECK(rk_chunk_lookup(store_, rk_chunk_key{it->first.first, it->first.second}, &n) == RK_OK);
        if (n == -1) {
          FZ_CHECK(users(it->first) == 0, "a chunk in use was evicted");
          it = chunks_.erase(it);
          ++gone;
          continue;
        }
        FZ_CHECK(n == it->second.n, "chunk length differs from the model");
        ++it;
      }
      FZ_CHECK(gone == cs.evictions - evictions_, "evictions counted differ from the chunks gone");
      g_reached.evictions += gone;
      evictions_ = cs.evictions;
    }
    std::int64_t in_use = 0;
    for (const auto& [k, c] : chunks_) in_use += users(k) > 0;
    FZ_CHECK(cs.chunks == static_cast<std::int64_t>(chunks_.size()),
             "number of chunks differs from the model");
    FZ_CHECK(cs.chunks_in_use == in_use, "chunks in use differ from the model");
    FZ_CHECK(cs.pages_held >= 0, "pages_held out of range");
  }

  // Model vs store after every call.
  void check_model() {
    rk_store_stats st{};
    FZ_CHECK(rk_store_get_stats(store_, &st) == RK_OK);
    FZ_CHECK(st.num_sequences == static_cast<std::int64_t>(seqs_.size()), "num_sequences");
    FZ_CHECK(st.pages_in_use >= 0 && st.pages_in_use <= num_pages_, "pages_in_use out of range");
    FZ_CHECK(st.pages_total == num_pages_);
    for (auto& [id, m] : seqs_) {
      std::int32_t live = 0;
      FZ_CHECK(rk_sequence_contains(store_, id, &live) == RK_OK && live == 1, "live sequence missing");
      for (int l = 0; l < L_; ++l) {
        std::int32_t np = -1;
        FZ_CHECK(rk_sequence_next_position(store_, id, l, &np) == RK_OK);
        FZ_CHECK(np == m.layers[static_cast<std::size_t>(l)].next, "next position differs from the model");
      }
    }
    for (const std::int64_t id : dead_) {
      std::int32_t live = 1;
      FZ_CHECK(rk_sequence_contains(store_, id, &live) == RK_OK && live == 0, "freed sequence still live");
    }
    check_chunks();
    if (seqs_.empty() && chunks_.empty()) FZ_CHECK(st.pages_in_use == 0, "pages in use without any sequence");
  }

  // ---- setup
  // -----------------------------------------------------------------------------------------------

  bool create_store() {
    dt_ = in_.in(0, 2);
    L_ = in_.in(1, 3);
    H_ = in_.in(1, 3);
    G_ = in_.in(1, 2);
    D_ = 8 * in_.in(1, 3);
    const int ps_byte = in_.u8();  // bits 4..7: RoPE theta, factor, original_max_position
    ps_ = 1 + ps_byte % 16;
    num_pages_ = in_.in(1, 96);
    const int map_kind = in_.in(0, 3);
    rk_head_map* map = nullptr;
    int st;
    if (map_kind == 0) {
      const int cls = in_.in(0, 3);
      st = rk_head_map_uniform(L_, H_, cls, in_.in(1, 64), in_.in(0, 8), &map);
    } else if (map_kind == 1) {
      st = rk_head_map_with_global_ratio(L_, H_, in_.in(0, 4) / 4.0, in_.in(1, 64), in_.in(0, 8), &map);
    } else {
      st = rk_head_map_from_json(map_json().c_str(), static_cast<size_t>(-1), &map);
    }
    expect(st, RK_OK, "head map creation");
    rk_store_config cfg{};
    FZ_CHECK(rk_store_config_init(&cfg) == RK_OK);
    cfg.num_layers = L_;
    cfg.num_q_heads = H_ * G_;
    cfg.num_kv_heads = H_;
    cfg.head_dim = D_;
    cfg.dtype = dt_;
    cfg.page_size = ps_;
    cfg.num_pages = num_pages_;
    // A few invalid configurations first: each is an error with nothing created. The upper bits of this byte
    // choose the RoPE spec (no new bytes: older inputs decode as before).
    const int bad_byte = in_.u8();
    const int bad = bad_byte % 8;
    set_rope(cfg, bad_byte >> 3, ps_byte >> 4);
    if (bad >= 1 && bad <= 6) {
      rk_store_config c = cfg;
      int want = RK_ERR_INVALID_ARGUMENT;
      if (bad == 1) c.head_dim = D_ + 4;
      if (bad == 2) c.num_layers = L_ + 1;
      if (bad == 3) c.page_size = 0;
      if (bad == 4) {
        const std::int32_t dev = static_cast<std::int32_t>(in_.u32());
        std::memcpy(&c.device.device_type, &dev, sizeof dev);
        if (dev == kDLCPU)
          want = RK_OK;
        else if (dev == kDLCUDA || dev == kDLCUDAManaged)
          want = RK_ERR_UNAVAILABLE;
      }
      if (bad == 5) {
        c.num_q_heads = H_ * G_ + 1;
        if (H_ == 1) want = RK_OK;  // still a multiple of num_kv_heads
      }
      if (bad == 6) {  // an invalid RoPE spec
        if (c.rope.scaling == RK_ROPE_NONE) c.rope.scaling = RK_ROPE_DEFAULT;
        switch ((bad_byte >> 3) % 6) {
          case 0:
            c.rope.theta = (bad_byte >> 6) % 2 ? 1.0 : std::numeric_limits<double>::quiet_NaN();
            break;
          case 1:
            c.rope.rotary_dim = (bad_byte >> 6) % 2 ? D_ + 2 : 3;
            break;
          case 2:
            c.rope.scaling = (bad_byte >> 6) % 2 ? 4 : -2;
            break;
          case 3:
            c.rope.pairing = (bad_byte >> 6) % 2 ? 2 : -1;
            break;
          case 4:
            c.rope.scaling = RK_ROPE_LLAMA3;
            c.rope.high_freq_factor = c.rope.low_freq_factor;
            break;
          default:
            c.rope.scaling = RK_ROPE_YARN;
            c.rope.factor = 0.0;
            break;
        }
      }
      rk_store* s = nullptr;
      const int got = rk_store_create(&c, map, &s);
      expect(got, want, "rk_store_create (bad config)");
      if (got == RK_OK)
        FZ_CHECK(rk_store_destroy(s) == RK_OK);
      else
        FZ_CHECK(s == nullptr, "out written on failure");
    }
    expect(rk_store_create(&cfg, map, &store_), RK_OK, "rk_store_create");
    evictions_ = 0;
    chunks_.clear();
    // The oracle's policies: the effective ones of the store's map, cross-checked with what we asked for.
    pol_.assign(static_cast<std::size_t>(L_ * H_), Policy{});
    rk_head_map* copy = nullptr;
    expect(rk_store_get_head_map(store_, &copy), RK_OK, "rk_store_get_head_map");
    for (int l = 0; l < L_; ++l)
      for (int h = 0; h < H_; ++h) {
        rk_head_policy p{};
        expect(rk_head_map_get_policy(copy, l, h, &p), RK_OK, "rk_head_map_get_policy");
        pol_[static_cast<std::size_t>(l * H_ + h)] = Policy{p.head_class, p.window, p.sink};
        if (map_kind >= 2) {
          const Policy& want = json_pol_[static_cast<std::size_t>(l * H_ + h)];
          const int cls = l < json_dense_prefix_ ? RK_HEAD_DENSE : want.cls;
          FZ_CHECK(p.head_class == cls, "effective class differs from the JSON");
          if (cls == RK_HEAD_LOCAL) FZ_CHECK(p.window == want.window && p.sink == want.sink, "window/sink");
        }
      }
    FZ_CHECK(rk_head_map_destroy(copy) == RK_OK);
    FZ_CHECK(rk_head_map_destroy(map) == RK_OK);
    // Use after destroy and double destroy of a head map (checked at once: a new map may reuse the address).
    rk_head_map_info info{};
    expect(rk_head_map_get_info(map, &info), RK_ERR_INVALID_ARGUMENT, "rk_head_map_get_info after destroy");
    expect(rk_head_map_destroy(map), RK_ERR_INVALID_ARGUMENT, "double rk_head_map_destroy");
    return true;
  }

  // The RoPE spec of the store from 5 + 4 spare bits: none (3/8), or default / linear / llama3 / yarn
  // scaling, rotate-half or interleaved pairs, full or partial rotary_dim, theta 10000 / 500000 / 100 / 1.5.
  void set_rope(rk_store_config& cfg, int a, int b) {
    static const int scalings[] = {RK_ROPE_NONE,   RK_ROPE_NONE,   RK_ROPE_NONE, RK_ROPE_DEFAULT,
                                   RK_ROPE_LINEAR, RK_ROPE_LLAMA3, RK_ROPE_YARN, RK_ROPE_DEFAULT};
    static const double thetas[] = {10000.0, 500000.0, 100.0, 1.5};
    static const double factors[] = {8.0, 2.0, 4.0, 1.5};
    static const int original[] = {8192, 64, 256, 32};
    cfg.rope.scaling = scalings[a % 8];
    cfg.rope.pairing = (a >> 3) % 2 ? RK_ROPE_INTERLEAVED : RK_ROPE_ROTATE_HALF;
    cfg.rope.rotary_dim = (a >> 4) % 2 ? (D_ / 2 + 1) / 2 * 2 : 0;  // partial: about half of head_dim, even
    cfg.rope.theta = thetas[b % 4];
    cfg.rope.factor = factors[(b >> 1) % 4];
    cfg.rope.original_max_position = original[(b >> 2) % 4];
    has_rope_ = cfg.rope.scaling != RK_ROPE_NONE;
    if (!has_rope_) return;
    rope_ = redknot::RopeConfig{};
    rope_.head_dim = D_;
    rope_.rotary_dim = cfg.rope.rotary_dim;
    rope_.theta = cfg.rope.theta;
    rope_.pairing = static_cast<redknot::RopePairing>(cfg.rope.pairing);
    rope_.scaling = static_cast<redknot::RopeScaling>(cfg.rope.scaling);
    rope_.factor = cfg.rope.factor;
    rope_.low_freq_factor = cfg.rope.low_freq_factor;
    rope_.high_freq_factor = cfg.rope.high_freq_factor;
    rope_.original_max_position = cfg.rope.original_max_position;
    rope_.beta_fast = cfg.rope.beta_fast;
    rope_.beta_slow = cfg.rope.beta_slow;
    inv_freq_ = redknot::rope_inv_freq(rope_);
  }

  // Rotates one head vector by delta positions in fp32 (what the library does; delta 0: unchanged).
  void rotate(float* x, std::int64_t delta) const {
    if (delta != 0) redknot::rope_rotate(rope_, inv_freq_, x, delta);
  }
  // x rounded to the store dtype.
  float rnd(float x) const {
    float buf[2];
    put(buf, 0, dt_, x);
    return get(buf, 0, dt_);
  }

  std::string map_json() {
    json_dense_prefix_ = in_.in(0, 3) == 0 ? in_.in(0, L_) : 0;
    json_pol_.assign(static_cast<std::size_t>(L_ * H_), Policy{});
    static const char* names[] = {"local", "global", "retrieval", "dense"};
    std::string cls = "[", win = "[", sink = "[";
    for (int l = 0; l < L_; ++l) {
      cls += l ? ",[" : "[";
      win += l ? ",[" : "[";
      sink += l ? ",[" : "[";
      for (int h = 0; h < H_; ++h) {
        const int b = in_.u8();
        Policy p;
        p.cls = b % 8 < 5      ? RK_HEAD_LOCAL
                : b % 8 < 7    ? RK_HEAD_GLOBAL
                : (b >> 3) % 2 ? RK_HEAD_RETRIEVAL
                               : RK_HEAD_DENSE;
        p.window = p.cls == RK_HEAD_LOCAL ? in_.in(1, 64) : -1;
        p.sink = p.cls == RK_HEAD_LOCAL ? in_.in(0, 8) : 0;
        json_pol_[static_cast<std::size_t>(l * H_ + h)] = p;
        cls += std::string(h ? "," : "") + "\"" + names[p.cls] + "\"";
        win += std::string(h ? "," : "") + std::to_string(p.window);
        sink += std::string(h ? "," : "") + std::to_string(p.sink);
      }
      cls += "]";
      win += "]";
      sink += "]";
    }
    return "{\"num_layers\":" + std::to_string(L_) + ",\"num_kv_heads\":" + std::to_string(H_) +
           ",\"dense_prefix_layers\":" + std::to_string(json_dense_prefix_) +
           ",\"kv_head_classification\":" + cls + "],\"kv_head_max_distance\":" + win +
           "],\"kv_head_sink_size\":" + sink + "]}";
  }

  void destroy_store() {
    if (!store_) return;
    destroy_tiers();
    FZ_CHECK(rk_store_destroy(store_) == RK_OK);
    rk_store_stats st{};
    expect(rk_store_get_stats(store_, &st), RK_ERR_INVALID_ARGUMENT, "rk_store_get_stats after destroy");
    std::int64_t id = 0;
    expect(rk_sequence_create(store_, &id), RK_ERR_INVALID_ARGUMENT, "rk_sequence_create after destroy");
    expect(rk_store_destroy(store_), RK_ERR_INVALID_ARGUMENT, "double rk_store_destroy");
    store_ = nullptr;
    seqs_.clear();
    chunks_.clear();
  }

  // ---- helpers
  // ---------------------------------------------------------------------------------------------

  // A live sequence id (or, with some probability or when none is live, a dead / never created one).
  std::int64_t pick_seq(bool* live) {
    const int b = in_.u8();
    if (!seqs_.empty() && b % 16 != 0) {
      auto it = seqs_.begin();
      std::advance(it, static_cast<long>((b >> 4) % seqs_.size()));
      *live = true;
      return it->first;
    }
    *live = false;
    if (!dead_.empty() && b % 2) return dead_[static_cast<std::size_t>(b >> 1) % dead_.size()];
    return 1000000 + b;
  }

  // ---- one call
  // --------------------------------------------------------------------------------------------

  void step() {
    const int b = in_.u8();
    if (b >= 240) {  // the chunk API (the other ops keep their share: 12 or 13 of 256 each before)
      op_chunk(b - 240);
      check_model();
      return;
    }
    const int op = b % 20;
    switch (op) {
      case 0:
      case 1:
        op_create();
        break;
      case 2:
        op_fork();
        break;
      case 3:
        op_free();
        break;
      case 4:
      case 5:
      case 6:
        op_append();
        break;
      case 7:
        op_retire();
        break;
      case 8:
      case 9:
        op_plan();
        break;
      case 10:
      case 11:
        op_attention();
        break;
      case 12:
        op_stats();
        break;
      case 13:
        op_export();
        break;
      case 14:
        op_head_map();
        break;
      default: {  // 15..19: the engine step, the way most attention calls succeed
        const int e = in_.u8() % 32;
        if (e == 0)
          op_recreate();
        else if (e <= 3)
          op_append_batch();  // valid or with one defect
        else if (e >= 28)
          op_tier();  // tiers: swap, chunks through tiers, corrupt files
        else
          op_plan_and_attend();
        break;
      }
    }
    check_model();
  }

  void op_create() {
    std::int64_t id = -1;
    expect(rk_sequence_create(store_, &id), RK_OK, "rk_sequence_create");
    FZ_CHECK(seqs_.count(id) == 0, "sequence id reused");
    seqs_[id].layers.assign(static_cast<std::size_t>(L_), LayerShadow{});
  }

  void op_fork() {
    bool live = false;
    const std::int64_t parent = pick_seq(&live);
    std::int64_t id = -7;
    const Snap before = snap();
    const int st = rk_sequence_fork(store_, parent, &id);
    expect(st, live ? RK_OK : RK_ERR_NOT_FOUND, "rk_sequence_fork");
    if (st != RK_OK) {
      FZ_CHECK(id == -7, "out written on failure");
      same(before, snap());
      return;
    }
    seqs_[id] = seqs_.at(parent);  // the chunks spliced into the parent gain a user each
    ++g_reached.forks;
  }

  void op_free() {
    bool live = false;
    const std::int64_t id = pick_seq(&live);
    const Snap before = snap();
    const int st = rk_sequence_free(store_, id);
    expect(st, live ? RK_OK : RK_ERR_NOT_FOUND, "rk_sequence_free");
    if (st != RK_OK) {
      same(before, snap());
      return;
    }
    seqs_.erase(id);
    dead_.push_back(id);
  }

  // forced_id >= 0: a valid append to that live sequence in forced_layer (the engine step).
  void op_append(std::int64_t forced_id = -1, int forced_layer = 0) {
    bool live = forced_id >= 0;
    const std::int64_t id = forced_id >= 0 ? forced_id : pick_seq(&live);
    int layer = forced_id >= 0 ? forced_layer : in_.in(0, L_ - 1);
    const int n = in_.in(1, 24);
    int defect = forced_id >= 0 ? 0 : in_.u8();
    defect = defect < 160 ? 0 : defect % 14;
    const bool store_dtype_in = in_.u8() % 2;  // k/v in the store dtype (zero copy) or f32 (converted)
    Rng rng{in_.u8() * 2654435761u + 1};
    // Positions: from next (or a little beyond: a jump) with gaps. Beyond the largest position (a chunk
    // spliced up to INT32_MAX) they saturate: the append is invalid.
    std::int64_t p = live ? seqs_.at(id).layers[static_cast<std::size_t>(layer)].next : 0;
    p += in_.u8() % 4 == 0 ? in_.in(0, 40) : 0;
    std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
    bool too_large = false;
    for (int i = 0; i < n; ++i) {
      too_large = too_large || p >= std::numeric_limits<std::int32_t>::max();
      pos[static_cast<std::size_t>(i)] = sat(p);
      p += in_.u8() % 8 == 0 ? in_.in(2, 5) : 1;
    }
    int want = live ? RK_OK : RK_ERR_NOT_FOUND;
    std::int64_t n_tokens = n;
    std::int64_t rows = n;
    DLDataType kdt = store_dtype_in ? dl_of(dt_) : kF32;
    std::int64_t shape_h = H_, shape_d = D_;
    const std::int32_t* pos_ptr = pos.data();
    std::int32_t bad_dev = kDLCPU;
    bool null_k = false;
    switch (defect) {
      case 1:
        layer = in_.u8() % 2 ? L_ + in_.in(0, 3) : -1 - in_.in(0, 3);
        if (live) want = RK_ERR_INVALID_ARGUMENT;  // a dead sequence is NOT_FOUND first
        break;
      case 2:  // stale position: not beyond what was appended
        if (live && seqs_.at(id).layers[static_cast<std::size_t>(layer)].next > 0) {
          pos[0] = seqs_.at(id).layers[static_cast<std::size_t>(layer)].next - 1 - in_.in(0, 3);
          want = RK_ERR_INVALID_ARGUMENT;
        }
        break;
      case 3:  // not strictly increasing
        if (n >= 2) {
          const int i = in_.in(1, n - 1);
          pos[static_cast<std::size_t>(i)] = pos[static_cast<std::size_t>(i - 1)] - in_.in(0, 1);
          if (live) want = RK_ERR_INVALID_ARGUMENT;
        }
        break;
      case 4:  // wrong shape
        shape_d = D_ + 8;
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 5:  // rows != n_tokens
        rows = n + 1;
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 6:  // wrong dtype
        kdt = in_.u8() % 2 ? kI32 : (dt_ == RK_DTYPE_BF16 ? kF16 : kBF16);
        if (kdt.code == dl_of(dt_).code && kdt.bits == dl_of(dt_).bits) kdt = kI32;
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 7:  // huge n_tokens, the tensors stay small
        n_tokens = in_.u8() % 2 ? (std::int64_t{1} << 40) : std::numeric_limits<std::int64_t>::max();
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 8:
        n_tokens = 0;
        rows = 0;
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 9:
        pos_ptr = nullptr;
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 10: {  // device type outside the enum, or a non-host device
        bad_dev = static_cast<std::int32_t>(in_.u32());
        if (bad_dev != kDLCPU && bad_dev != kDLCUDAHost) want = RK_ERR_INVALID_ARGUMENT;
        break;
      }
      case 11:  // the last position too large
        pos[static_cast<std::size_t>(n - 1)] = std::numeric_limits<std::int32_t>::max();
        if (live && (n == 1 || pos[static_cast<std::size_t>(n - 2)] < pos[static_cast<std::size_t>(n - 1)]) &&
            pos[0] >= seqs_.at(id).layers[static_cast<std::size_t>(layer)].next)
          want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 12:
        null_k = true;
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 13:
        n_tokens = -1 - in_.in(0, 100);
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      default:
        break;
    }
    Tensor kt, vt;
    const std::size_t es = kdt.bits / 8 ? kdt.bits / 8 : 1;
    const auto elems = static_cast<std::size_t>(rows * shape_h * shape_d);
    const bool flat = in_.u8() % 4 == 0;
    std::vector<std::int64_t> shp = flat ? std::vector<std::int64_t>{rows, shape_h * shape_d}
                                         : std::vector<std::int64_t>{rows, shape_h, shape_d};
    DLTensor* k = kt.make(shp, kdt, elems, es);
    DLTensor* v = vt.make(shp, kdt, elems, es);
    std::memcpy(&v->device.device_type, &bad_dev, sizeof bad_dev);
    std::vector<float> kf(elems), vf(elems);
    for (std::size_t i = 0; i < elems; ++i) {
      kf[i] = rng.val();
      vf[i] = rng.val();
      if (kdt.code == kDLFloat && kdt.bits == 32) {
        put(kt.buf.data(), i, RK_DTYPE_F32, kf[i]);
        put(vt.buf.data(), i, RK_DTYPE_F32, vf[i]);
      } else if (kdt.code == dl_of(dt_).code && kdt.bits == dl_of(dt_).bits) {
        put(kt.buf.data(), i, dt_, kf[i]);
        put(vt.buf.data(), i, dt_, vf[i]);
      }
    }
    // Check order of the C ABI: NULL tensors, n_tokens, positions, shapes/dtypes/devices, then the sequence.
    if (want == RK_ERR_NOT_FOUND && defect != 0 && defect != 1 && defect != 2 && defect != 3 && defect != 11)
      want = RK_ERR_INVALID_ARGUMENT;  // argument checks come before the sequence lookup
    if (!live && (defect == 10) && (bad_dev == kDLCPU || bad_dev == kDLCUDAHost)) want = RK_ERR_NOT_FOUND;
    if (too_large && want == RK_OK) want = RK_ERR_INVALID_ARGUMENT;
    const Snap before = snap();
    int st = rk_append(store_, id, layer, null_k ? nullptr : k, v, pos_ptr, n_tokens, nullptr);
    if (want == RK_OK && st == RK_ERR_POOL_EXHAUSTED) {
      ++g_reached.pool_full;
      same(before, snap());  // a valid append that does not fit: nothing changed
      return;
    }
    expect(st, want, "rk_append");
    if (st != RK_OK) {
      same(before, snap());
      return;
    }
    LayerShadow& ls = seqs_.at(id).layers[static_cast<std::size_t>(layer)];
    const std::size_t hd = static_cast<std::size_t>(H_ * D_);
    for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i)
      ls.push(pos[i], &kf[i * hd], &vf[i * hd], hd);
    ls.next = pos[static_cast<std::size_t>(n - 1)] + 1;
    ls.floor = pos[0];
    ++g_reached.appends;
  }

  // rk_append_batch of one layer: a random subset of the live sequences in random order, some items empty,
  // positions with jumps and gaps; valid (forced_layer >= 0: the engine step, always valid) or with one
  // defect: batch_size < 0, NULL seq_ids / token_offsets / positions / k / v, token_offsets[0] != 0,
  // decreasing offsets, a dead id, a duplicate, a stale or non-increasing position, INT32_MAX, wrong k/v row
  // counts, a bad layer. Checked exactly as rk_append: predicted status (a valid batch may also be
  // RK_ERR_POOL_EXHAUSTED), nothing changed on failure, the shadow updated for every item on success.
  void op_append_batch(int forced_layer = -1) {
    const bool forced = forced_layer >= 0;
    int layer = forced ? forced_layer : in_.in(0, L_ - 1);
    int defect = forced ? 0 : in_.u8();
    defect = defect < 112 ? 0 : defect % 16;  // 0 and 15: valid
    // The items: distinct live sequences, a partial Fisher-Yates shuffle picks B of them in random order.
    std::vector<std::int64_t> ids;
    for (const auto& kv : seqs_) ids.push_back(kv.first);
    const int B = in_.in(0, static_cast<int>(std::min<std::size_t>(ids.size(), 6)));
    for (int i = 0; i < B; ++i) {
      const std::size_t j =
          static_cast<std::size_t>(i) + in_.u8() % (ids.size() - static_cast<std::size_t>(i));
      std::swap(ids[static_cast<std::size_t>(i)], ids[j]);
    }
    ids.resize(static_cast<std::size_t>(B));
    std::vector<std::int32_t> offsets{0};
    std::vector<std::int32_t> pos;
    for (int i = 0; i < B; ++i) {
      const int b = in_.u8();
      const int len = b % 4 == 0 ? 0 : b % 16 == 1 ? in_.in(9, 24) : in_.in(1, 6);
      std::int64_t p =
          seqs_.at(ids[static_cast<std::size_t>(i)]).layers[static_cast<std::size_t>(layer)].next;
      if (len > 0) p += in_.u8() % 4 == 0 ? in_.in(0, 40) : 0;
      const std::size_t first = pos.size();
      for (int j = 0; j < len; ++j) {
        pos.push_back(sat(p));
        p += in_.u8() % 8 == 0 ? in_.in(2, 5) : 1;
      }
      // Beyond the largest position (a chunk spliced up to INT32_MAX): an empty item instead.
      if (len > 0 && pos.back() == std::numeric_limits<std::int32_t>::max()) pos.resize(first);
      offsets.push_back(static_cast<std::int32_t>(pos.size()));
    }
    const auto total = static_cast<std::int64_t>(pos.size());
    const bool store_dtype_in = in_.u8() % 2;
    const bool flat = in_.u8() % 4 == 0;
    Rng rng{in_.u8() * 2654435761u + 3};
    const std::vector<std::int32_t> pos_ok = pos;  // what the model takes on success
    int want = RK_OK;
    std::int32_t batch_arg = B;
    bool null_ids = false, null_offsets = false, null_pos = false, null_k = false, null_v = false;
    std::int64_t rows_k = total, rows_v = total;
    // The item of the defect (and its first row).
    const int item = B > 0 ? in_.u8() % B : 0;
    auto item_len = [&](int i) {
      return offsets[static_cast<std::size_t>(i) + 1] - offsets[static_cast<std::size_t>(i)];
    };
    switch (defect) {
      case 1:
        batch_arg = -1 - in_.in(0, 3);
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 2:
        null_ids = true;
        if (B > 0) want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 3:
        null_offsets = true;
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 4:
        null_pos = true;
        if (total > 0) want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 5:
        (in_.u8() % 2 ? null_k : null_v) = true;
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 6: {
        static const std::int32_t firsts[] = {1, -1, 3, std::numeric_limits<std::int32_t>::min()};
        offsets[0] = firsts[in_.u8() % 4];
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      }
      case 7:  // decreasing offsets (the last one too: a negative total)
        if (B > 0) {
          const auto i = static_cast<std::size_t>(in_.in(1, B));
          offsets[i] = offsets[i - 1] - 1 - in_.in(0, 2);
          want = RK_ERR_INVALID_ARGUMENT;
        }
        break;
      case 8:  // a dead or never created id (maybe an empty item)
        if (B > 0) {
          const int b = in_.u8();
          ids[static_cast<std::size_t>(item)] =
              !dead_.empty() && b % 2 ? dead_[static_cast<std::size_t>(b >> 1) % dead_.size()] : 1000000 + b;
          want = RK_ERR_NOT_FOUND;
        }
        break;
      case 9:  // a duplicate (maybe of or as an empty item)
        if (B >= 2) {
          const int j = in_.in(0, B - 1);
          if (j != item) {
            ids[static_cast<std::size_t>(std::max(j, item))] =
                ids[static_cast<std::size_t>(std::min(j, item))];
            want = RK_ERR_INVALID_ARGUMENT;
          }
        }
        break;
      case 10:  // stale first position of an item
        if (B > 0 && item_len(item) > 0) {
          const std::int32_t next =
              seqs_.at(ids[static_cast<std::size_t>(item)]).layers[static_cast<std::size_t>(layer)].next;
          if (next > 0) {
            pos[static_cast<std::size_t>(offsets[static_cast<std::size_t>(item)])] = next - 1 - in_.in(0, 3);
            want = RK_ERR_INVALID_ARGUMENT;
          }
        }
        break;
      case 11:  // not strictly increasing inside an item
        if (B > 0 && item_len(item) >= 2) {
          const auto r = static_cast<std::size_t>(offsets[static_cast<std::size_t>(item)] +
                                                  in_.in(1, item_len(item) - 1));
          pos[r] = pos[r - 1] - in_.in(0, 1);
          want = RK_ERR_INVALID_ARGUMENT;
        }
        break;
      case 12: {  // k / v rows != token_offsets[batch_size]
        const std::int64_t delta = total > 0 && in_.u8() % 2 ? -1 : 1 + in_.in(0, 2);
        const int which = in_.u8() % 3;
        if (which != 1) rows_k += delta;
        if (which != 0) rows_v += delta;
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      }
      case 13:
        layer = in_.u8() % 2 ? L_ + in_.in(0, 3) : -1 - in_.in(0, 3);
        want = RK_ERR_INVALID_ARGUMENT;
        break;
      case 14:  // the last position of an item too large
        if (B > 0 && item_len(item) > 0) {
          pos[static_cast<std::size_t>(offsets[static_cast<std::size_t>(item) + 1] - 1)] =
              std::numeric_limits<std::int32_t>::max();
          want = RK_ERR_INVALID_ARGUMENT;
        }
        break;
      default:
        break;
    }
    const DLDataType kdt = store_dtype_in ? dl_of(dt_) : kF32;
    const int kst = store_dtype_in ? dt_ : RK_DTYPE_F32;
    const std::size_t row = static_cast<std::size_t>(H_) * static_cast<std::size_t>(D_);
    Tensor kt, vt;
    auto shape_of = [&](std::int64_t rows) {
      return flat ? std::vector<std::int64_t>{rows, static_cast<std::int64_t>(row)}
                  : std::vector<std::int64_t>{rows, H_, D_};
    };
    DLTensor* k = kt.make(shape_of(rows_k), kdt, static_cast<std::size_t>(rows_k) * row, elem_size(kst));
    DLTensor* v = vt.make(shape_of(rows_v), kdt, static_cast<std::size_t>(rows_v) * row, elem_size(kst));
    std::vector<float> kf(static_cast<std::size_t>(std::max(rows_k, rows_v)) * row), vf(kf.size());
    for (std::size_t i = 0; i < kf.size(); ++i) {
      kf[i] = rng.val();
      vf[i] = rng.val();
      if (i < static_cast<std::size_t>(rows_k) * row) put(kt.buf.data(), i, kst, kf[i]);
      if (i < static_cast<std::size_t>(rows_v) * row) put(vt.buf.data(), i, kst, vf[i]);
    }
    const Snap before = snap();
    const int st =
        rk_append_batch(store_, layer, null_ids || ids.empty() ? nullptr : ids.data(), batch_arg,
                        null_offsets ? nullptr : offsets.data(), null_k ? nullptr : k, null_v ? nullptr : v,
                        null_pos || pos.empty() ? nullptr : pos.data(), nullptr);
    if (want == RK_OK && st == RK_ERR_POOL_EXHAUSTED) {
      FZ_CHECK(rk_last_error()[0] != '\0', "empty error message");
      ++g_reached.pool_full;
      same(before, snap());  // a valid batch that does not fit: nothing changed
      return;
    }
    if (st != want)
      std::fprintf(stderr, "fuzz_c_api: rk_append_batch defect %d, batch %d, total %lld, layer %d\n", defect,
                   B, static_cast<long long>(total), layer);
    expect(st, want, "rk_append_batch");
    if (st != RK_OK) {
      same(before, snap());
      return;
    }
    for (int i = 0; i < B; ++i) {
      const auto r0 = static_cast<std::size_t>(offsets[static_cast<std::size_t>(i)]);
      const auto r1 = static_cast<std::size_t>(offsets[static_cast<std::size_t>(i) + 1]);
      if (r0 == r1) continue;
      LayerShadow& ls = seqs_.at(ids[static_cast<std::size_t>(i)]).layers[static_cast<std::size_t>(layer)];
      for (std::size_t r = r0; r < r1; ++r) ls.push(pos_ok[r], &kf[r * row], &vf[r * row], row);
      ls.next = pos_ok[r1 - 1] + 1;
      ls.floor = pos_ok[r0];
      ++g_reached.batch_items;
    }
    ++g_reached.batch_appends;
  }

  void op_retire() {
    bool live = false;
    const std::int64_t id = pick_seq(&live);
    const int layer = in_.u8() % 3 == 0 ? -1 : in_.in(-2, L_);
    std::int32_t nqp = 0;
    int want = live ? RK_OK : RK_ERR_NOT_FOUND;
    if (live) {
      const SeqModel& m = seqs_.at(id);
      const int l = layer >= 0 && layer < L_ ? layer : 0;
      const LayerShadow& ls = m.layers[static_cast<std::size_t>(l)];
      nqp = sat(std::int64_t{ls.floor} + in_.in(-2, std::max(0, ls.next - ls.floor + 1)));
      if (layer != -1 && (layer < 0 || layer >= L_)) {
        want = RK_ERR_INVALID_ARGUMENT;
      } else {
        for (int q = layer == -1 ? 0 : layer; q < (layer == -1 ? L_ : layer + 1); ++q)
          if (nqp > m.layers[static_cast<std::size_t>(q)].next) want = RK_ERR_INVALID_ARGUMENT;
      }
    }
    const Snap before = snap();
    const int st = rk_sequence_retire_queries(store_, id, nqp, layer);
    expect(st, want, "rk_sequence_retire_queries");
    if (st != RK_OK) {
      same(before, snap());
      return;
    }
    for (int q = layer == -1 ? 0 : layer; q < (layer == -1 ? L_ : layer + 1); ++q) {
      auto& f = seqs_.at(id).layers[static_cast<std::size_t>(q)].floor;
      f = std::max(f, nqp);
    }
    ++g_reached.retires;
  }

  // A batch; target_layer >= 0 makes its query positions valid for that layer (where possible).
  void op_plan(int target_layer = -1) {
    const int batch = in_.in(0, 4);
    std::vector<std::int64_t> ids;
    std::vector<std::int32_t> lens;
    std::vector<std::int32_t> qpos;
    int want = RK_OK;
    const int layer = target_layer >= 0 ? target_layer : in_.in(0, L_ - 1);
    for (int i = 0; i < batch; ++i) {
      bool live = false;
      std::int64_t id = pick_seq(&live);
      if (!ids.empty() && in_.u8() % 16 == 0) {
        id = ids[0];  // duplicate
        live = seqs_.count(id) != 0;
        if (want == RK_OK) want = RK_ERR_INVALID_ARGUMENT;
      } else {
        bool dup = false;
        for (auto x : ids) dup |= x == id;
        if (dup && want == RK_OK) want = RK_ERR_INVALID_ARGUMENT;
        if (!dup && !live && want == RK_OK) want = RK_ERR_NOT_FOUND;
      }
      const int b = in_.u8();
      int len = b % 4 == 0 ? 0 : b % 16 == 1 ? in_.in(12, 20) : in_.in(1, 3);
      if (live && target_layer >= 0) {  // nothing to attend to in this layer: a zero-query item
        const LayerShadow& ls = seqs_.at(id).layers[static_cast<std::size_t>(layer)];
        if (ls.next == ls.floor && b % 32 != 3) len = 0;
      }
      ids.push_back(id);
      lens.push_back(len);
      for (int j = 0; j < len; ++j) {
        std::int32_t p = in_.in(0, 30);
        if (live) {
          const LayerShadow& ls = seqs_.at(id).layers[static_cast<std::size_t>(layer)];
          if (ls.next > ls.floor && in_.u8() % 8 != 0)
            p = ls.floor + static_cast<std::int32_t>(in_.u8()) % (ls.next - ls.floor);
        }
        qpos.push_back(p);
      }
    }
    std::int64_t total = static_cast<std::int64_t>(qpos.size());
    int bad = in_.u8();
    bad = bad < 200 ? 0 : bad % 6;
    std::int32_t batch_arg = batch;
    const std::int32_t* lens_ptr = lens.data();
    if (bad == 1 && total > 0) {  // total_q disagrees with sum(q_lens)
      total -= 1;
      want = RK_ERR_INVALID_ARGUMENT;
    } else if (bad == 2) {
      batch_arg = -1;
      want = RK_ERR_INVALID_ARGUMENT;
    } else if (bad == 3 && batch > 0) {
      lens[0] = -1 - in_.in(0, 5);
      want = RK_ERR_INVALID_ARGUMENT;
    } else if (bad == 4 && total > 0) {
      qpos[0] = -1;
      want = RK_ERR_INVALID_ARGUMENT;
    } else if (bad == 5) {
      total = std::numeric_limits<std::int64_t>::max();
      want = RK_ERR_INVALID_ARGUMENT;
    }
    if (batch == 0) lens_ptr = nullptr;
    const Snap before = snap();
    const int st = rk_plan(store_, ids.empty() ? nullptr : ids.data(), lens_ptr, batch_arg,
                           qpos.empty() ? nullptr : qpos.data(), total);
    expect(st, want, "rk_plan");
    same(before, snap());  // rk_plan never changes the store
    if (st == RK_OK) {
      ++g_reached.plans;
      planned_ = true;
      plan_ids_ = ids;
      plan_lens_ = lens;
      plan_pos_ = qpos;
    }
  }

  void op_attention(int layer_arg = -100) {
    int layer = layer_arg != -100 ? layer_arg : in_.in(0, L_ - 1);
    if (layer_arg == -100 && in_.u8() % 16 == 0) layer = in_.u8() % 2 ? L_ : -1;
    const int Hq = H_ * G_;
    const std::int64_t total = planned_ ? static_cast<std::int64_t>(plan_pos_.size()) : 0;
    const bool q_store = in_.u8() % 3 == 0;  // q/out in the store dtype, else f32
    const int qdt = q_store ? dt_ : RK_DTYPE_F32;
    const bool with_lse = in_.u8() % 2;
    int want = RK_OK;
    rk_attention_params params{0.f, 0};
    const rk_attention_params* pp = nullptr;
    const int pk = in_.u8() % 16;
    if (pk >= 1 && pk <= 10) {
      static const float scales[] = {0.f, 0.5f, 0.125f, 1.f};
      params.sm_scale = scales[in_.u8() % 4];
      params.num_threads = in_.in(0, 3);
      pp = &params;
    } else if (pk == 11) {
      static const std::int32_t bad_threads[] = {-1,
                                                 RK_MAX_NUM_THREADS + 1,
                                                 40000,
                                                 65536,
                                                 70000,
                                                 std::numeric_limits<std::int32_t>::max(),
                                                 std::numeric_limits<std::int32_t>::min()};
      params.num_threads = bad_threads[in_.u8() % 7];
      pp = &params;
      want = RK_ERR_INVALID_ARGUMENT;
    } else if (pk == 12) {
      static const float bad_scales[] = {-1.f, std::numeric_limits<float>::quiet_NaN(),
                                         std::numeric_limits<float>::infinity()};
      params.sm_scale = bad_scales[in_.u8() % 3];
      pp = &params;
      want = RK_ERR_INVALID_ARGUMENT;
    }
    if (layer < 0 || layer >= L_) want = RK_ERR_INVALID_ARGUMENT;
    std::int64_t rows = total;
    const int shape_bad = in_.u8() % 16 == 0;
    if (shape_bad) rows += 1;
    if (!planned_ && want == RK_OK) want = RK_ERR_INVALID_ARGUMENT;
    if (shape_bad && want == RK_OK) want = RK_ERR_INVALID_ARGUMENT;
    // The model's verdict on the planned batch in this layer (the order AttentionPlan::update checks in).
    if (want == RK_OK) {
      bool any_dead = false;
      for (std::size_t i = 0, row = 0; i < plan_ids_.size() && want == RK_OK; ++i) {
        auto it = seqs_.find(plan_ids_[i]);
        if (it == seqs_.end()) {
          any_dead = true;
          if (plan_lens_[i] > 0) want = RK_ERR_NOT_FOUND;
        } else {
          const LayerShadow& ls = it->second.layers[static_cast<std::size_t>(layer)];
          for (int j = 0; j < plan_lens_[i]; ++j) {
            const std::int32_t p = plan_pos_[row + static_cast<std::size_t>(j)];
            if (p < ls.floor || p >= ls.next) want = RK_ERR_INVALID_ARGUMENT;
          }
        }
        row += static_cast<std::size_t>(plan_lens_[i]);
      }
      if (want == RK_OK && any_dead) want = RK_ERR_NOT_FOUND;
    }
    Rng rng{in_.u8() * 2246822519u + 7};
    Tensor qt, ot, lt;
    const auto elems = static_cast<std::size_t>(rows * Hq * D_);
    DLTensor* q = qt.make({rows, Hq, D_}, dl_of(qdt), elems, elem_size(qdt));
    DLTensor* out = ot.make({rows, static_cast<std::int64_t>(Hq) * D_}, dl_of(qdt), elems, elem_size(qdt));
    DLTensor* lse = with_lse ? lt.make({rows, Hq}, kF32, static_cast<std::size_t>(rows * Hq), 4) : nullptr;
    std::vector<float> qf(elems);
    for (std::size_t i = 0; i < elems; ++i) {
      qf[i] = rng.val();
      put(qt.buf.data(), i, qdt, qf[i]);
      put(ot.buf.data(), i, qdt, -3.f);  // sentinel: outputs untouched on failure
    }
    const Snap before = snap();
    const int st = rk_attention(store_, layer, q, out, lse, pp, nullptr);
    expect(st, want, "rk_attention");
    same(before, snap());  // attention never changes the store
    if (st != RK_OK) {
      ++g_reached.attention_err;
      for (std::size_t i = 0; i < elems; ++i)
        FZ_CHECK(get(ot.buf.data(), i, qdt) == -3.f, "out written on failure");
      return;
    }
    ++g_reached.attention_ok;
    g_reached.attention_rows += total;
    // Oracle.
    const double scale =
        params.sm_scale > 0.f && pp ? params.sm_scale : 1.0 / std::sqrt(static_cast<double>(D_));
    const double tol = qdt == RK_DTYPE_F32 ? 2e-4 : qdt == RK_DTYPE_F16 ? 3e-3 : 2e-2;
    std::vector<double> s;
    for (std::size_t i = 0, row = 0; i < plan_ids_.size(); ++i) {
      const SeqModel& m = seqs_.at(plan_ids_[i]);
      const LayerShadow& ls = m.layers[static_cast<std::size_t>(layer)];
      for (int j = 0; j < plan_lens_[i]; ++j, ++row) {
        const std::int32_t qp = plan_pos_[row];
        for (int qh = 0; qh < Hq; ++qh) {
          const int h = qh / G_;
          const Policy& pol = pol_[static_cast<std::size_t>(layer * H_ + h)];
          const std::size_t qrow = (row * static_cast<std::size_t>(Hq) + static_cast<std::size_t>(qh)) * D_;
          s.assign(ls.pos.size(), 0.0);
          double mx = -std::numeric_limits<double>::infinity();
          bool relocated = false;  // the row scores keys stored rotated for other positions
          for (std::size_t t = 0; t < ls.pos.size(); ++t) {
            if (!visible(pol, qp, ls.pos[t])) {
              s[t] = -std::numeric_limits<double>::infinity();
              continue;
            }
            relocated = relocated || ls.delta[t] != 0;
            double dot = 0;
            for (int d = 0; d < D_; ++d)
              dot += static_cast<double>(qf[qrow + static_cast<std::size_t>(d)]) *
                     ls.ke[(t * static_cast<std::size_t>(H_) + static_cast<std::size_t>(h)) * D_ +
                           static_cast<std::size_t>(d)];
            s[t] = dot * scale;
            mx = std::max(mx, s[t]);
          }
          g_reached.relocated_rows += relocated;
          // The kernel counter-rotates the query in fp32 for relocated keys (the oracle rotated the keys).
          const double row_tol = relocated ? 2 * tol : tol;
          std::vector<double> o(static_cast<std::size_t>(D_), 0.0);
          double sum = 0;
          if (mx != -std::numeric_limits<double>::infinity())
            for (std::size_t t = 0; t < ls.pos.size(); ++t) {
              if (s[t] == -std::numeric_limits<double>::infinity()) continue;
              const double w = std::exp(s[t] - mx);
              sum += w;
              for (int d = 0; d < D_; ++d)
                o[static_cast<std::size_t>(d)] +=
                    w * ls.v[(t * static_cast<std::size_t>(H_) + static_cast<std::size_t>(h)) * D_ +
                             static_cast<std::size_t>(d)];
            }
          for (int d = 0; d < D_; ++d) {
            const double want_o = sum > 0 ? o[static_cast<std::size_t>(d)] / sum : 0.0;
            const double got = get(ot.buf.data(), qrow + static_cast<std::size_t>(d), qdt);
            const double err = std::fabs(got - want_o);
            if (!(err <= row_tol)) {
              std::fprintf(
                  stderr,
                  "fuzz_c_api: attention mismatch seq %lld layer %d qpos %d qhead %d dim %d: got %g, "
                  "oracle %g (dtype %d, q dtype %d)\n",
                  static_cast<long long>(plan_ids_[i]), layer, qp, qh, d, got, want_o, dt_, qdt);
              die("attention output");
            }
          }
          if (lse) {
            const double got = static_cast<const float*>(
                lt.t.data)[row * static_cast<std::size_t>(Hq) + static_cast<std::size_t>(qh)];
            if (sum > 0) {
              const double want_l = mx + std::log(sum);
              FZ_CHECK(std::fabs(got - want_l) <= (relocated ? 2e-3 : 1e-3) + 1e-4 * std::fabs(want_l),
                       "lse");
            } else {
              FZ_CHECK(std::isinf(got) && got < 0, "lse of a row that sees nothing");
            }
          }
        }
      }
    }
  }

  // plan for one layer, then attend in it: the common engine step (most attention calls succeed this way).
  // An engine step: appends to a few live sequences in one layer, then (usually) plan and attention there.
  // Several steps may run with one plan (the plan object of a layer stays incremental across steps).
  void op_plan_and_attend() {
    const int layer = in_.in(0, L_ - 1);
    const int k = in_.u8();
    int appended = 0;
    if ((k & 0x70) == 0x70)  // the step's appends as one rk_append_batch (valid)
      op_append_batch(layer);
    else
      for (auto it = seqs_.begin(); it != seqs_.end() && appended < 3; ++it)
        if (k & (1 << appended++)) op_append(it->first, layer);
    if (k & 0x80) op_plan(layer);
    op_attention(layer);
  }

  void op_stats() {
    const int k = in_.u8() % 4;
    if (k == 0) {
      bool live = false;
      const std::int64_t id = pick_seq(&live);
      rk_sequence_stats ss{};
      expect(rk_sequence_get_stats(store_, id, &ss), live ? RK_OK : RK_ERR_NOT_FOUND,
             "rk_sequence_get_stats");
      if (live) FZ_CHECK(ss.pages_global >= 0 && ss.pages_local >= 0 && ss.tokens_global >= 0);
    } else if (k == 1 || k == 2) {
      static const std::int64_t tokens[] = {
          0, 1, 7, 100, 4096, RK_MAX_TOKENS, RK_MAX_TOKENS + 1, -1, std::numeric_limits<std::int64_t>::max()};
      const std::int64_t t = tokens[in_.u8() % 9];
      const int want = t >= 0 && t <= RK_MAX_TOKENS ? RK_OK : RK_ERR_INVALID_ARGUMENT;
      std::int64_t out = -1;
      expect(k == 1 ? rk_store_pages_per_sequence(store_, t, &out)
                    : rk_store_sequences_that_fit(store_, t, &out),
             want, "capacity query");
      if (want == RK_OK)
        FZ_CHECK(out >= 0);
      else
        FZ_CHECK(out == -1, "out written on failure");
    } else {
      DLTensor pool{};
      expect(rk_store_get_kv_pool(store_, &pool), RK_OK, "rk_store_get_kv_pool");
      FZ_CHECK(pool.ndim == 4 && pool.shape[0] == num_pages_ && pool.shape[1] == 2 && pool.shape[2] == ps_ &&
               pool.shape[3] == D_);
      rk_store_config c{};
      expect(rk_store_get_config(store_, &c), RK_OK, "rk_store_get_config");
      FZ_CHECK(c.num_pages == num_pages_ && c.page_size == ps_ && c.dtype == dt_ && c.head_dim == D_);
      FZ_CHECK((c.rope.scaling != RK_ROPE_NONE) == has_rope_, "RoPE spec lost");
      if (has_rope_)
        FZ_CHECK(c.rope.scaling == static_cast<int>(rope_.scaling) &&
                     c.rope.pairing == static_cast<int>(rope_.pairing) &&
                     c.rope.rotary_dim == rope_.rotary_dim && c.rope.theta == rope_.theta &&
                     c.rope.factor == rope_.factor,
                 "RoPE spec differs from the one configured");
    }
  }

  void op_export() {
    int layer = in_.in(0, L_ - 1);
    if (in_.u8() % 16 == 0) layer = L_;
    const int batch = in_.in(0, 3);
    std::vector<std::int64_t> ids;
    int want = layer < L_ ? RK_OK : RK_ERR_INVALID_ARGUMENT;
    for (int i = 0; i < batch; ++i) {
      bool live = false;
      ids.push_back(pick_seq(&live));
      if (!live && want == RK_OK) want = RK_ERR_NOT_FOUND;
    }
    std::int64_t n = -1;
    const Snap before = snap();
    int st = rk_export_page_table(store_, layer, ids.empty() ? nullptr : ids.data(), batch, nullptr, nullptr,
                                  0, nullptr, nullptr, &n);
    // A row FlashInfer's CSR cannot express: an error for a live sequence (possibly before a dead one).
    if ((want == RK_OK || want == RK_ERR_NOT_FOUND) && st == RK_ERR_INVALID_ARGUMENT &&
        (std::strstr(rk_last_error(), "cannot express") || std::strstr(rk_last_error(), "partial page"))) {
      FZ_CHECK(n == -1, "out written on failure");
      same(before, snap());
      return;
    }
    expect(st, want, "rk_export_page_table (size query)");
    same(before, snap());
    if (st != RK_OK) return;
    const std::size_t rows = ids.size() * static_cast<std::size_t>(H_);
    std::vector<std::int32_t> indptr(rows + 1, -1), indices(static_cast<std::size_t>(n) + 1, -1),
        last(rows + 1, -1), pos0(static_cast<std::size_t>(n) + 1, -1);
    if (n > 0 && in_.u8() % 8 == 0) {  // too small a buffer
      expect(rk_export_page_table(store_, layer, ids.data(), batch, indptr.data(), indices.data(), n - 1,
                                  last.data(), pos0.data(), nullptr),
             RK_ERR_INVALID_ARGUMENT, "rk_export_page_table (small capacity)");
      FZ_CHECK(indices[0] == -1, "written on failure");
    }
    st = rk_export_page_table(store_, layer, ids.empty() ? nullptr : ids.data(), batch, indptr.data(),
                              indices.data(), n, last.data(), pos0.data(), nullptr);
    expect(st, RK_OK, "rk_export_page_table");
    FZ_CHECK(indptr[0] == 0 && indptr[rows] == n, "indptr ends");
    ++g_reached.exports;
    DLTensor pool{};
    FZ_CHECK(rk_store_get_kv_pool(store_, &pool) == RK_OK);
    for (std::size_t r = 0; r < rows; ++r) {
      FZ_CHECK(indptr[r] <= indptr[r + 1], "indptr not monotonic");
      const bool empty = indptr[r] == indptr[r + 1];
      FZ_CHECK(empty ? last[r] == 0 : (last[r] >= 1 && last[r] <= ps_), "last_page_len");
      const LayerShadow& ls =
          seqs_.at(ids[r / static_cast<std::size_t>(H_)]).layers[static_cast<std::size_t>(layer)];
      const int h = static_cast<int>(r % static_cast<std::size_t>(H_));
      for (std::int32_t j = indptr[r]; j < indptr[r + 1]; ++j) {
        const std::int32_t page = indices[static_cast<std::size_t>(j)];
        FZ_CHECK(page >= 0 && page < num_pages_, "page id out of range");
        const int used = j + 1 == indptr[r + 1] ? last[r] : ps_;
        for (int slot = 0; slot < used; ++slot) {
          const std::int32_t p = pos0[static_cast<std::size_t>(j)] + slot;
          std::size_t t = 0;
          while (t < ls.pos.size() && ls.pos[t] != p) ++t;
          FZ_CHECK(t < ls.pos.size(), "a CSR slot holds a position never appended");
          for (int d = 0; d < D_; ++d) {
            const std::size_t kidx = ((static_cast<std::size_t>(page) * 2 + 0) * ps_ + slot) * D_ + d;
            const std::size_t vidx = ((static_cast<std::size_t>(page) * 2 + 1) * ps_ + slot) * D_ + d;
            const std::size_t sidx = (t * H_ + h) * D_ + d;
            FZ_CHECK(get(pool.data, kidx, dt_) == ls.k[sidx], "pool K differs from what was appended");
            FZ_CHECK(get(pool.data, vidx, dt_) == ls.v[sidx], "pool V differs from what was appended");
          }
        }
      }
    }
  }

  void op_head_map() {
    const int k = in_.u8() % 4;
    rk_head_map* m = nullptr;
    if (k == 0) {  // huge grids: an error, never INTERNAL
      static const std::int32_t big[] = {std::numeric_limits<std::int32_t>::max(), 1 << 16, 1 << 20, -1, 0};
      const std::int32_t a = big[in_.u8() % 5], b = big[in_.u8() % 5];
      const int st = in_.u8() % 2 ? rk_head_map_uniform(a, b, RK_HEAD_GLOBAL, -1, 0, &m)
                                  : rk_head_map_with_global_ratio(a, b, 0.5, 4, 0, &m);
      expect(st, RK_ERR_INVALID_ARGUMENT, "huge head map");
      FZ_CHECK(m == nullptr);
      return;
    }
    expect(rk_store_get_head_map(store_, &m), RK_OK, "rk_store_get_head_map");
    if (k == 1) {
      size_t len = 0;
      const int indent = in_.in(-1, 4);
      expect(rk_head_map_to_json(m, indent, nullptr, 0, &len), RK_OK, "to_json size");
      std::string buf(len + 1, '\0');
      const std::size_t cap = buf.size() - (in_.u8() % 2);
      expect(rk_head_map_to_json(m, indent, buf.data(), cap, nullptr),
             cap == len + 1 ? RK_OK : RK_ERR_INVALID_ARGUMENT, "to_json");
      if (cap == len + 1) {  // round trip
        rk_head_map* again = nullptr;
        expect(rk_head_map_from_json(buf.c_str(), static_cast<size_t>(-1), &again), RK_OK,
               "from_json(to_json)");
        FZ_CHECK(rk_head_map_destroy(again) == RK_OK);
      }
    } else if (k == 2) {
      std::int64_t peak = -1;
      const std::int64_t tokens =
          in_.u8() % 8 == 0 ? std::numeric_limits<std::int64_t>::max() : in_.in(0, 200);
      const std::int64_t chunk = in_.in(0, 32);
      const int want = tokens <= RK_MAX_TOKENS && chunk >= 1 ? RK_OK : RK_ERR_INVALID_ARGUMENT;
      expect(rk_head_map_peak_sequence_pages(m, ps_, tokens, chunk, &peak), want, "peak_sequence_pages");
    } else {
      rk_head_map_info info{};
      expect(rk_head_map_get_info(m, &info), RK_OK, "get_info");
      FZ_CHECK(info.num_layers == L_ && info.num_kv_heads == H_ &&
               info.num_local + info.num_global_like == L_ * H_);
      rk_head_policy p{};
      const int l = in_.in(-1, L_), h = in_.in(-1, H_);
      expect(rk_head_map_get_policy(m, l, h, &p),
             l >= 0 && l < L_ && h >= 0 && h < H_ ? RK_OK : RK_ERR_INVALID_ARGUMENT, "get_policy");
    }
    FZ_CHECK(rk_head_map_destroy(m) == RK_OK);
    expect(rk_head_map_destroy(m), RK_ERR_INVALID_ARGUMENT, "double rk_head_map_destroy");
  }

  // ---- chunks (position-independent reuse)
  // ---------------------------------------------------------------------

  void op_chunk(int sub) {
    switch (sub) {
      case 0:
      case 1:
        op_make_chunk();
        break;
      case 2: {  // any live (or dead) sequence: registrable only if it holds exactly 0..n-1 everywhere
        bool live = false;
        const std::int64_t id = pick_seq(&live);
        do_register(id, live);
        break;
      }
      case 3:
        op_lookup();
        break;
      case 4:
      case 5:
      case 6:
        op_splice(false);
        break;
      case 7:
      case 8:
        op_splice(true);
        break;
      case 9:
        op_drop();
        break;
      case 10:
      case 11:
        op_overwrite();
        break;
      case 12:
      case 13:
        op_read_rows();
        break;
      case 14:
        op_select_recompute();
        break;
      default:
        op_key_make();
        break;
    }
  }

  // A key from rk_chunk_key_make over a few tokens (usually unknown to the store).
  rk_chunk_key made_key() {
    static const char* models[] = {"llama", "m", ""};
    const char* model = models[in_.u8() % 3];
    std::vector<std::int32_t> toks(static_cast<std::size_t>(in_.in(0, 6)));
    for (auto& t : toks) t = in_.u8();
    rk_chunk_key k{~0ull, ~0ull};
    expect(rk_chunk_key_make(store_, model, toks.empty() ? nullptr : toks.data(),
                             static_cast<std::int64_t>(toks.size()), &k),
           RK_OK, "rk_chunk_key_make");
    return k;
  }

  // A registered key (when there is one, mostly), or a made or raw one.
  rk_chunk_key pick_key() {
    const int b = in_.u8();
    if (!chunks_.empty() && b % 4 != 0) {
      auto it = chunks_.begin();
      std::advance(it, static_cast<long>((b >> 2) % chunks_.size()));
      return rk_chunk_key{it->first.first, it->first.second};
    }
    if (b % 2) return made_key();
    return rk_chunk_key{static_cast<std::uint64_t>(b >> 1), in_.u32()};
  }

  // A valid rk_append of rows at `pos` to (id, layer); false when the pool is full (nothing changed).
  bool append_rows(std::int64_t id, int layer, const std::vector<std::int32_t>& pos, Rng& rng,
                   bool store_dt) {
    const auto n = static_cast<std::int64_t>(pos.size());
    const std::size_t hd = static_cast<std::size_t>(H_ * D_);
    Tensor kt, vt;
    std::vector<float> kf, vf;
    fill_kv(kt, vt, n, store_dt, rng, kf, vf);
    const Snap before = snap();
    const int st = rk_append(store_, id, layer, &kt.t, &vt.t, pos.data(), n, nullptr);
    if (st == RK_ERR_POOL_EXHAUSTED) {
      ++g_reached.pool_full;
      same(before, snap());
      return false;
    }
    expect(st, RK_OK, "rk_append (chunk prefill)");
    LayerShadow& ls = seqs_.at(id).layers[static_cast<std::size_t>(layer)];
    for (std::size_t i = 0; i < pos.size(); ++i) ls.push(pos[i], &kf[i * hd], &vf[i * hd], hd);
    ls.next = pos.back() + 1;
    ls.floor = pos.front();
    ++g_reached.appends;
    return true;
  }

  // k and v [rows, H, D] in f32 or the store dtype, values (multiples of 1/16) also in kf / vf.
  void fill_kv(Tensor& kt, Tensor& vt, std::int64_t rows, bool store_dt, Rng& rng, std::vector<float>& kf,
               std::vector<float>& vf, std::int64_t d = -1) {
    if (d < 0) d = D_;
    const int edt = store_dt ? dt_ : RK_DTYPE_F32;
    const auto elems = static_cast<std::size_t>(rows * H_ * d);
    kt.make({rows, H_, d}, dl_of(edt), elems, elem_size(edt));
    vt.make({rows, H_, d}, dl_of(edt), elems, elem_size(edt));
    kf.resize(elems);
    vf.resize(elems);
    for (std::size_t i = 0; i < elems; ++i) {
      kf[i] = rng.val();
      vf[i] = rng.val();
      put(kt.buf.data(), i, edt, kf[i]);
      put(vt.buf.data(), i, edt, vf[i]);
    }
  }

  // The engine's way to make a chunk: a new sequence, positions 0..n-1 appended to every layer in one call
  // each (sometimes one layer short, or a token short: then registering fails), then registered.
  void op_make_chunk() {
    const int n = in_.in(1, 24);
    const int b = in_.u8();
    Rng rng{in_.u8() * 2654435761u + 11};
    std::int64_t id = -1;
    expect(rk_sequence_create(store_, &id), RK_OK, "rk_sequence_create");
    seqs_[id].layers.assign(static_cast<std::size_t>(L_), LayerShadow{});
    const int layers = b % 16 == 1 ? L_ - 1 : L_;
    for (int l = 0; l < layers; ++l) {
      std::vector<std::int32_t> pos(static_cast<std::size_t>(n));
      for (int i = 0; i < n; ++i) pos[static_cast<std::size_t>(i)] = i;
      if (b % 16 == 2 && l == layers - 1 && n >= 2) pos.pop_back();  // one layer a token short
      if (!append_rows(id, l, pos, rng, (b >> 4) % 2)) return;       // pool full: the sequence stays live
    }
    check_chunks();  // the appends may have evicted unused chunks
    do_register(id, true);
  }

  // rk_chunk_register of sequence id (live or not) under a made, raw or already registered key.
  void do_register(std::int64_t id, bool live) {
    const rk_chunk_key key = pick_key();
    const KeyId kid = id_of(key);
    // 0: invalid, 1: valid, 2: the model cannot tell (a local head may have evicted a page of [0, n)).
    int verdict = 1;
    if (live) {
      const SeqModel& m = seqs_.at(id);
      const std::int32_t n = m.layers[0].next;
      if (!m.chunks.empty() || n <= 0) verdict = 0;
      for (int l = 0; l < L_ && verdict; ++l) {
        const LayerShadow& ls = m.layers[static_cast<std::size_t>(l)];
        if (ls.next != n || static_cast<std::int32_t>(ls.pos.size()) != n) verdict = 0;
      }
      for (int l = 0; l < L_ && verdict == 1; ++l)
        for (int h = 0; h < H_; ++h) {
          const Policy& pol = pol_[static_cast<std::size_t>(l * H_ + h)];
          const std::int32_t fl = m.layers[static_cast<std::size_t>(l)].floor;
          if (pol.cls != RK_HEAD_LOCAL) continue;
          for (std::int32_t p = 0; p < n; ++p)
            if (!visible(pol, std::max(p, fl), p)) verdict = 2;  // invisible to every later query
        }
    }
    int want = !live                ? RK_ERR_NOT_FOUND
               : chunks_.count(kid) ? RK_ERR_INVALID_ARGUMENT
               : verdict == 0       ? RK_ERR_INVALID_ARGUMENT
                                    : RK_OK;
    const Snap before = snap();
    const int st = rk_chunk_register(store_, key, id);
    if (want == RK_OK && verdict == 2 && st == RK_ERR_INVALID_ARGUMENT) want = st;
    if (st != want && live)
      for (int l = 0; l < L_; ++l) {
        const LayerShadow& ls = seqs_.at(id).layers[static_cast<std::size_t>(l)];
        std::fprintf(stderr,
                     "fuzz_c_api: register verdict %d: layer %d next %d floor %d tokens %zu chunks %zu\n",
                     verdict, l, ls.next, ls.floor, ls.pos.size(), seqs_.at(id).chunks.size());
      }
    expect(st, want, "rk_chunk_register");
    if (st != RK_OK) {
      ++g_reached.register_err;
      same(before, snap());
      return;
    }
    ChunkModel c;
    c.layers = std::move(seqs_.at(id).layers);
    c.n = c.layers[0].next;
    seqs_.erase(id);
    dead_.push_back(id);
    rk_store_stats st2{};
    FZ_CHECK(rk_store_get_stats(store_, &st2) == RK_OK && st2.pages_in_use == before.pages,
             "registering changed pages in use");
    std::int32_t got = -2;
    expect(rk_chunk_lookup(store_, key, &got), RK_OK, "rk_chunk_lookup");
    FZ_CHECKV(got == c.n, "registered chunk length", got, c.n);
    chunks_[kid] = std::move(c);
    ++g_reached.registers;
  }

  void op_lookup() {
    const rk_chunk_key key = pick_key();
    const auto it = chunks_.find(id_of(key));
    std::int32_t n = -2;
    if (in_.u8() % 8 == 0) {
      expect(rk_chunk_lookup(store_, key, nullptr), RK_ERR_INVALID_ARGUMENT, "rk_chunk_lookup(NULL)");
      return;
    }
    expect(rk_chunk_lookup(store_, key, &n), RK_OK, "rk_chunk_lookup");
    FZ_CHECKV(n == (it == chunks_.end() ? -1 : it->second.n), "rk_chunk_lookup length", n);
    ++g_reached.lookups;
  }

  // rk_chunk_splice (zero copy) or rk_chunk_relocate (copies, keys rotated by at) of a registered or unknown
  // chunk into a live or dead sequence, at a valid, overlapping or huge `at`, first_query valid or not.
  void op_splice(bool relocate) {
    const rk_chunk_key key = pick_key();
    const KeyId kid = id_of(key);
    bool live = false;
    const std::int64_t id = pick_seq(&live);
    const auto cit = chunks_.find(kid);
    const std::int32_t n = cit != chunks_.end() ? cit->second.n : 1;
    std::int32_t top = 0;  // at must be >= next of every layer
    if (live)
      for (const LayerShadow& ls : seqs_.at(id).layers) top = std::max(top, ls.next);
    const int b = in_.u8();
    std::int64_t at = top;
    switch (b % 8) {
      case 0:
      case 1:
      case 2:
        break;
      case 3:
        at = std::int64_t{top} + in_.in(0, 3);
        break;
      case 4:
        at = std::int64_t{top} + in_.in(0, 40);
        break;
      case 5:  // overlapping what the sequence holds
        at = std::int64_t{top} - 1 - in_.in(0, 3);
        break;
      case 6:  // ends at the largest position (or one past it)
        at = std::numeric_limits<std::int32_t>::max() - static_cast<std::int64_t>(n) + in_.in(0, 1);
        break;
      default:
        at = (b >> 3) % 2 ? std::numeric_limits<std::int32_t>::max()
                          : std::numeric_limits<std::int32_t>::min();
        break;
    }
    at = std::clamp<std::int64_t>(at, std::numeric_limits<std::int32_t>::min(),
                                  std::numeric_limits<std::int32_t>::max());
    const std::int64_t end = at + n;
    std::int64_t fq = -1;
    const int f = (b >> 4) % 8;
    if (f == 4 || f == 5) fq = at + in_.in(0, n);
    if (f == 6) fq = at - 1 - in_.in(0, 2);
    if (f == 7) fq = end + 1 + in_.in(0, 2);
    fq = std::clamp<std::int64_t>(fq, std::numeric_limits<std::int32_t>::min(),
                                  std::numeric_limits<std::int32_t>::max());
    int want = RK_OK;
    if (!live || cit == chunks_.end())
      want = RK_ERR_NOT_FOUND;
    else if (at < 0 || end > std::numeric_limits<std::int32_t>::max() || at < top)
      want = RK_ERR_INVALID_ARGUMENT;
    else if (!(fq == -1 || (fq >= at && fq <= end)))
      want = RK_ERR_INVALID_ARGUMENT;
    else if (at != 0 && !has_rope_)
      want = RK_ERR_INVALID_ARGUMENT;
    const Snap before = snap();
    const auto at32 = static_cast<std::int32_t>(at), fq32 = static_cast<std::int32_t>(fq);
    const int st = relocate ? rk_chunk_relocate(store_, id, key, at32, fq32)
                            : rk_chunk_splice(store_, id, key, at32, fq32);
    if (relocate && want == RK_OK && st == RK_ERR_POOL_EXHAUSTED) {
      ++g_reached.pool_full;
      ++g_reached.relocate_err;
      FZ_CHECK(rk_last_error()[0] != '\0', "empty error message");
      same(before, snap());
      return;
    }
    if (st != want)
      std::fprintf(stderr, "fuzz_c_api: %s at=%d first_query=%d n=%d top=%d live=%d known=%d rope=%d\n",
                   relocate ? "relocate" : "splice", at32, fq32, n, top, live, cit != chunks_.end(),
                   has_rope_);
    expect(st, want, relocate ? "rk_chunk_relocate" : "rk_chunk_splice");
    if (st != RK_OK) {
      ++(relocate ? g_reached.relocate_err : g_reached.splice_err);
      same(before, snap());
      return;
    }
    const ChunkModel& c = cit->second;
    SeqModel& m = seqs_.at(id);
    const std::size_t H = static_cast<std::size_t>(H_), D = static_cast<std::size_t>(D_);
    std::vector<float> row(D);
    for (int l = 0; l < L_; ++l) {
      const LayerShadow& src = c.layers[static_cast<std::size_t>(l)];
      LayerShadow& dst = m.layers[static_cast<std::size_t>(l)];
      for (std::size_t t = 0; t < src.pos.size(); ++t) {
        const auto p = static_cast<std::int32_t>(at + src.pos[t]);
        dst.pos.push_back(p);
        dst.delta.push_back(relocate ? 0 : at32);
        for (std::size_t h = 0; h < H; ++h) {
          const std::size_t off = (t * H + h) * D;
          std::copy(src.k.begin() + static_cast<std::ptrdiff_t>(off),
                    src.k.begin() + static_cast<std::ptrdiff_t>(off + D), row.begin());
          rotate(row.data(), at);  // relocate: stored rotated (and rounded); splice: stored as is
          if (relocate)
            for (float& x : row) x = rnd(x);
          for (std::size_t d = 0; d < D; ++d) {
            dst.k.push_back(relocate ? row[d] : src.k[off + d]);
            dst.ke.push_back(row[d]);
            dst.v.push_back(src.v[off + d]);
          }
        }
      }
      dst.next = static_cast<std::int32_t>(end);
      dst.floor = fq == -1 ? static_cast<std::int32_t>(end) : fq32;
    }
    if (!relocate) m.chunks.push_back(kid);
    ++(relocate ? g_reached.relocates : g_reached.splices);
    if (in_.u8() % 2) attend_seq(id);
  }

  // An engine step on one sequence (e.g. right after a splice): an append to one layer when no query could
  // run there yet, a plan of a few queries of that sequence alone, and attention in that layer.
  void attend_seq(std::int64_t id) {
    const int layer = in_.in(0, L_ - 1);
    const int q = in_.in(1, 4);
    const LayerShadow& ls = seqs_.at(id).layers[static_cast<std::size_t>(layer)];
    if (ls.next == ls.floor) op_append(id, layer);
    if (ls.next == ls.floor) return;  // the pool was full, or positions ran out
    std::vector<std::int32_t> qpos;
    for (int j = 0; j < q; ++j)
      qpos.push_back(ls.floor + static_cast<std::int32_t>(in_.u8()) % (ls.next - ls.floor));
    const std::int32_t len = q;
    expect(rk_plan(store_, &id, &len, 1, qpos.data(), q), RK_OK, "rk_plan (one sequence)");
    ++g_reached.plans;
    planned_ = true;
    plan_ids_.assign(1, id);
    plan_lens_.assign(1, len);
    plan_pos_ = qpos;
    op_attention(layer);
  }

  void op_drop() {
    const rk_chunk_key key = pick_key();
    const KeyId kid = id_of(key);
    const bool known = chunks_.count(kid) != 0;
    std::int32_t dropped = -2;
    if (in_.u8() % 8 == 0) {
      expect(rk_chunk_drop(store_, key, nullptr), RK_ERR_INVALID_ARGUMENT, "rk_chunk_drop(NULL)");
      return;
    }
    const int want = known && users(kid) > 0 ? RK_ERR_INVALID_ARGUMENT : RK_OK;
    const Snap before = snap();
    const int st = rk_chunk_drop(store_, key, &dropped);
    expect(st, want, "rk_chunk_drop");
    if (st != RK_OK) {
      FZ_CHECK(dropped == -2, "out written on failure");
      same(before, snap());
      ++g_reached.drop_err;
      return;
    }
    FZ_CHECKV(dropped == (known ? 1 : 0), "rk_chunk_drop result", dropped);
    chunks_.erase(kid);
    ++g_reached.drops;
  }

  // rk_overwrite of held positions of one (sequence, layer), valid or with one defect.
  void op_overwrite() {
    bool live = false;
    const std::int64_t id = pick_seq(&live);
    int layer = in_.in(0, L_ - 1);
    int n = in_.in(1, 8);
    const int defect_b = in_.u8();
    const int defect = defect_b < 160 ? 0 : defect_b % 8;
    const bool store_dt = in_.u8() % 2;
    Rng rng{in_.u8() * 2246822519u + 13};
    std::vector<std::int32_t> pos;
    const LayerShadow* ls = live ? &seqs_.at(id).layers[static_cast<std::size_t>(layer)] : nullptr;
    if (ls && !ls->pos.empty()) {  // a run of held positions with strides 1..3
      std::size_t t = in_.u8() % ls->pos.size();
      for (int i = 0; i < n && t < ls->pos.size(); ++i, t += static_cast<std::size_t>(in_.in(1, 3)))
        pos.push_back(ls->pos[t]);
    } else {
      for (int i = 0, p = in_.in(0, 8); i < n; ++i, p += in_.in(1, 3)) pos.push_back(p);
    }
    n = static_cast<int>(pos.size());
    std::int64_t n_arg = n, rows = n, d = D_;
    bool null_k = false;
    switch (defect) {
      case 1:
        layer = in_.u8() % 2 ? L_ + in_.in(0, 3) : -1 - in_.in(0, 3);
        break;
      case 2:  // not held: beyond next, or negative
        pos[static_cast<std::size_t>(in_.u8()) % pos.size()] =
            in_.u8() % 2 ? sat(std::int64_t{ls ? ls->next : 0} + in_.in(0, 3)) : -1 - in_.in(0, 2);
        std::sort(pos.begin(), pos.end());
        pos.erase(std::unique(pos.begin(), pos.end()), pos.end());
        n_arg = rows = static_cast<std::int64_t>(pos.size());
        break;
      case 3:  // not strictly increasing
        if (n >= 2) {
          const auto i = static_cast<std::size_t>(in_.in(1, n - 1));
          pos[i] = pos[i - 1] - in_.in(0, 1);
        }
        break;
      case 4:
        (in_.u8() % 2 ? rows : d) += 1 + in_.in(0, 7);
        break;
      case 5:
        n_arg = rows = 0;
        break;
      case 6:
        null_k = true;
        break;
      case 7:  // a position in a gap of the layer (held by no head)
        if (ls && ls->next > 0) {
          const std::int32_t p = static_cast<std::int32_t>(in_.u8()) % ls->next;
          if (ls->find(p) < 0) pos.assign(1, p);
          n_arg = rows = static_cast<std::int64_t>(pos.size());
        }
        break;
      default:
        break;
    }
    // The verdict, in the C ABI's order: NULL tensors, n_tokens, tensor shapes, then the sequence, the layer
    // and the positions (a global-like head must hold every one; a local head may have dropped it).
    int want = RK_OK;
    if (null_k || n_arg <= 0 || rows != n_arg || d != D_) {
      want = RK_ERR_INVALID_ARGUMENT;
    } else if (!live) {
      want = RK_ERR_NOT_FOUND;
    } else if (layer < 0 || layer >= L_) {
      want = RK_ERR_INVALID_ARGUMENT;
    } else {
      const LayerShadow& lz = seqs_.at(id).layers[static_cast<std::size_t>(layer)];
      bool any_global = false;
      for (int h = 0; h < H_; ++h)
        any_global |= pol_[static_cast<std::size_t>(layer * H_ + h)].cls != RK_HEAD_LOCAL;
      for (std::size_t i = 0; i < pos.size(); ++i) {
        if (pos[i] < 0 || pos[i] >= lz.next || (i > 0 && pos[i] <= pos[i - 1]))
          want = RK_ERR_INVALID_ARGUMENT;
        if (any_global && lz.find(pos[i]) < 0) want = RK_ERR_INVALID_ARGUMENT;
      }
    }
    Tensor kt, vt;
    std::vector<float> kf, vf;
    fill_kv(kt, vt, rows, store_dt, rng, kf, vf, d);
    const Snap before = snap();
    const int st = rk_overwrite(store_, id, layer, null_k ? nullptr : &kt.t, &vt.t,
                                pos.empty() ? nullptr : pos.data(), n_arg);
    if (want == RK_OK && st == RK_ERR_POOL_EXHAUSTED) {  // copying pages shared with a chunk or a fork
      ++g_reached.pool_full;
      ++g_reached.overwrite_err;
      FZ_CHECK(rk_last_error()[0] != '\0', "empty error message");
      same(before, snap());
      return;
    }
    expect(st, want, "rk_overwrite");
    if (st != RK_OK) {
      ++g_reached.overwrite_err;
      same(before, snap());
      return;
    }
    // A stored key that sits rotated for another position (delta != 0) was rotated by -delta and rounded.
    LayerShadow& lz = seqs_.at(id).layers[static_cast<std::size_t>(layer)];
    const std::size_t H = static_cast<std::size_t>(H_), D = static_cast<std::size_t>(D_);
    for (std::size_t i = 0; i < pos.size(); ++i) {
      const std::int64_t t = lz.find(pos[i]);
      if (t < 0) continue;  // held by no head (a local-only layer): skipped
      const std::int32_t delta = lz.delta[static_cast<std::size_t>(t)];
      for (std::size_t h = 0; h < H; ++h) {
        const std::size_t src = (i * H + h) * D, off = (static_cast<std::size_t>(t) * H + h) * D;
        std::vector<float> row(kf.begin() + static_cast<std::ptrdiff_t>(src),
                               kf.begin() + static_cast<std::ptrdiff_t>(src + D));
        if (delta != 0) {
          rotate(row.data(), -static_cast<std::int64_t>(delta));
          for (float& x : row) x = rnd(x);
        }
        std::copy(row.begin(), row.end(), lz.k.begin() + static_cast<std::ptrdiff_t>(off));
        rotate(row.data(), delta);
        std::copy(row.begin(), row.end(), lz.ke.begin() + static_cast<std::ptrdiff_t>(off));
        std::copy(vf.begin() + static_cast<std::ptrdiff_t>(src),
                  vf.begin() + static_cast<std::ptrdiff_t>(src + D),
                  lz.v.begin() + static_cast<std::ptrdiff_t>(off));
      }
    }
    ++g_reached.overwrites;
  }

  // rk_read_rows of held, gap, negative and future positions, compared with the shadow (keys at their true
  // positions); a NaN row only where the head's retention rule lets it be gone.
  void op_read_rows() {
    bool live = false;
    const std::int64_t id = pick_seq(&live);
    int layer = in_.in(0, L_ - 1);
    if (in_.u8() % 16 == 0) layer = in_.u8() % 2 ? L_ : -1;
    const int n = in_.in(0, 12);
    const LayerShadow* ls =
        live && layer >= 0 && layer < L_ ? &seqs_.at(id).layers[static_cast<std::size_t>(layer)] : nullptr;
    std::vector<std::int32_t> pos(static_cast<std::size_t>(n) + 1, 0);
    for (int i = 0; i < n; ++i) {
      const int b = in_.u8();
      std::int32_t p = in_.in(-2, 40);
      if (ls && !ls->pos.empty() && b % 4 != 0)
        p = ls->pos[static_cast<std::size_t>(b >> 2) % ls->pos.size()];
      if (ls && b % 16 == 4) p = sat(std::int64_t{ls->next} + in_.in(0, 3));
      pos[static_cast<std::size_t>(i)] = p;
    }
    const int defect_b = in_.u8();
    const int defect = defect_b < 224 ? 0 : defect_b % 5;
    std::int64_t n_arg = n;
    bool null_pos = false, null_k = false;
    int want = RK_OK;
    if (defect == 1) {
      n_arg = -1 - in_.in(0, 3);
      want = RK_ERR_INVALID_ARGUMENT;
    } else if (defect == 2 && n > 0) {
      null_pos = true;
      want = RK_ERR_INVALID_ARGUMENT;
    } else if (defect == 3 && n > 0) {
      null_k = true;
      want = RK_ERR_INVALID_ARGUMENT;
    } else if (defect == 4) {  // a count no positions array can hold (the buffers stay small)
      static const std::int64_t huge[] = {RK_MAX_TOKENS + 1, std::int64_t{1} << 40,
                                          std::numeric_limits<std::int64_t>::max()};
      n_arg = huge[in_.u8() % 3];
      want = RK_ERR_INVALID_ARGUMENT;
    }
    if (want == RK_OK && !live) want = RK_ERR_NOT_FOUND;
    if (want == RK_OK && (layer < 0 || layer >= L_)) want = RK_ERR_INVALID_ARGUMENT;
    const std::size_t hd = static_cast<std::size_t>(H_ * D_);
    std::vector<float> k(static_cast<std::size_t>(n) * hd + 1, -7.f), v(k.size(), -7.f);
    const Snap before = snap();
    const int st = rk_read_rows(store_, id, layer, null_pos ? nullptr : pos.data(), n_arg,
                                null_k ? nullptr : k.data(), v.data());
    expect(st, want, "rk_read_rows");
    same(before, snap());
    if (st != RK_OK) {
      for (std::size_t i = 0; i < k.size(); ++i) FZ_CHECK(k[i] == -7.f && v[i] == -7.f, "written on failure");
      return;
    }
    FZ_CHECK(k[k.size() - 1] == -7.f && v[v.size() - 1] == -7.f, "rk_read_rows wrote past n rows");
    ++g_reached.read_rows;
    const std::size_t D = static_cast<std::size_t>(D_);
    for (std::size_t i = 0; i < static_cast<std::size_t>(n); ++i) {
      const std::int64_t t = ls->find(pos[i]);
      for (std::size_t h = 0; h < static_cast<std::size_t>(H_); ++h) {
        const float* kr = &k[i * hd + h * D];
        const float* vr = &v[i * hd + h * D];
        const Policy& pol = pol_[static_cast<std::size_t>(layer * H_) + h];
        if (std::isnan(kr[0])) {
          for (std::size_t x = 0; x < D; ++x)
            FZ_CHECK(std::isnan(kr[x]) && std::isnan(vr[x]), "partly NaN row");
          // Gone: never held, or a local head's row no query at or after the floor can see.
          FZ_CHECKV(t < 0 || (pol.cls == RK_HEAD_LOCAL && !visible(pol, std::max(pos[i], ls->floor), pos[i])),
                    "rk_read_rows: a row the head must still hold is NaN", pos[i], static_cast<long long>(h));
          ++g_reached.read_rows_nan;
          continue;
        }
        FZ_CHECKV(t >= 0, "rk_read_rows: a row of a position never held", pos[i]);
        const std::size_t off = (static_cast<std::size_t>(t) * static_cast<std::size_t>(H_) + h) * D;
        for (std::size_t x = 0; x < D; ++x) {
          FZ_CHECKV(std::fabs(kr[x] - ls->ke[off + x]) <= 1e-5f * (1.f + std::fabs(ls->ke[off + x])),
                    "rk_read_rows: K differs from the shadow rotated to its position", pos[i],
                    static_cast<long long>(h));
          FZ_CHECKV(vr[x] == ls->v[off + x], "rk_read_rows: V differs from the shadow", pos[i]);
        }
      }
    }
  }

  // rk_select_recompute (a pure function) against a reference of recompute.hpp's strategies.
  void op_select_recompute() {
    static const char* names[] = {"none",       "first_k", "deviation_topk", "global_deviation_topk",
                                  "query_topk", "bogus"};
    const int si = in_.in(0, 6);
    const char* strategy = si < 6 ? names[si] : nullptr;
    const int rb = in_.u8() % 8;
    const double ratio = rb <= 4   ? in_.in(0, 20) / 20.0
                         : rb == 5 ? -0.125
                         : rb == 6 ? 1.5
                                   : std::numeric_limits<double>::quiet_NaN();
    const int first_k = in_.in(-2, 10);
    const int n = in_.in(-1, 12);
    const int H = in_.in(0, 3);
    const int flags = in_.u8();
    const std::size_t cells = static_cast<std::size_t>(std::max(n, 0) * H);
    std::vector<float> dev(cells + 1), qa(static_cast<std::size_t>(std::max(n, 0)) + 1);
    std::vector<std::int32_t> local(static_cast<std::size_t>(H) + 1);
    for (auto& x : dev) x = static_cast<float>(in_.in(0, 9)) / 4.f;
    for (auto& x : qa) x = static_cast<float>(in_.in(0, 9)) / 8.f;
    for (auto& x : local) x = in_.u8() % 2;
    if (flags & 0x08 && cells > 0) {  // one odd deviation: NaN (a dropped row), negative or inf
      static const float odd[] = {std::numeric_limits<float>::quiet_NaN(), -1.f,
                                  std::numeric_limits<float>::infinity()};
      dev[static_cast<std::size_t>(in_.u8()) % cells] = odd[in_.u8() % 3];
    }
    if (flags & 0x10 && n > 0)
      qa[static_cast<std::size_t>(in_.u8()) % static_cast<std::size_t>(n)] =
          in_.u8() % 2 ? std::numeric_limits<float>::quiet_NaN() : std::numeric_limits<float>::infinity();
    const bool with_dev = !(flags & 1), with_local = !(flags & 2), with_qa = !(flags & 4);
    const bool null_out = flags >= 0xF0, null_count = flags >= 0xE0 && flags < 0xE8;
    // Reference.
    bool ok = strategy != nullptr && !null_count && n >= 0 && si < 5 && ratio >= 0.0 && ratio <= 1.0 &&
              first_k >= 0;
    std::vector<std::int32_t> expect_out;
    if (ok) {
      std::vector<double> score(static_cast<std::size_t>(n), 0.0);
      std::int64_t count = 0;
      int fk = 0;
      if (si == 1) fk = first_k;
      if (si == 2 || si == 3) {
        const std::size_t have = with_dev ? cells : 0;
        ok = H > 0 && have == cells;
        bool any_global = false;
        for (int h = 0; h < H; ++h) any_global |= !(with_local && local[static_cast<std::size_t>(h)]);
        const bool global_only = si == 3 && any_global;
        for (int t = 0; t < n && ok; ++t)
          for (int h = 0; h < H; ++h) {
            if (global_only && with_local && local[static_cast<std::size_t>(h)]) continue;
            const float x = dev[static_cast<std::size_t>(t * H + h)];
            if (std::isnan(x)) continue;
            if (!(std::isfinite(x) && x >= 0.f)) ok = false;
            score[static_cast<std::size_t>(t)] += x;
          }
        count = static_cast<std::int64_t>(std::ceil(ratio * static_cast<double>(n) - 1e-9));
        if (si == 3) fk = first_k;
      }
      if (si == 4) {
        ok = with_qa || n == 0;
        for (int t = 0; t < n && ok; ++t) {
          if (!std::isfinite(qa[static_cast<std::size_t>(t)])) ok = false;
          score[static_cast<std::size_t>(t)] = qa[static_cast<std::size_t>(t)];
        }
        count = static_cast<std::int64_t>(std::ceil(ratio * static_cast<double>(n) - 1e-9));
      }
      std::vector<std::int32_t> order(static_cast<std::size_t>(n));
      for (int i = 0; i < n; ++i) order[static_cast<std::size_t>(i)] = i;
      std::stable_sort(order.begin(), order.end(), [&](std::int32_t a, std::int32_t b) {
        return score[static_cast<std::size_t>(a)] > score[static_cast<std::size_t>(b)];
      });
      count = std::clamp<std::int64_t>(si == 0 || si == 1 ? 0 : count, 0, n);
      std::vector<bool> pick(static_cast<std::size_t>(n), false);
      for (std::int64_t i = 0; i < count; ++i)
        pick[static_cast<std::size_t>(order[static_cast<std::size_t>(i)])] = true;
      for (int i = 0; i < std::min(fk, n); ++i) pick[static_cast<std::size_t>(i)] = true;
      for (int i = 0; i < n; ++i)
        if (pick[static_cast<std::size_t>(i)]) expect_out.push_back(i);
      if (si == 0) expect_out.clear();
      if (null_out && !expect_out.empty()) ok = false;
    }
    std::vector<std::int32_t> out(static_cast<std::size_t>(std::max(n, 0)) + 1, -5);
    std::int32_t count = -9;
    const int st = rk_select_recompute(strategy, ratio, first_k, n, with_dev ? dev.data() : nullptr, H,
                                       with_local ? local.data() : nullptr, with_qa ? qa.data() : nullptr,
                                       null_out ? nullptr : out.data(), null_count ? nullptr : &count);
    expect(st, ok ? RK_OK : RK_ERR_INVALID_ARGUMENT, "rk_select_recompute");
    if (st != RK_OK) {
      ++g_reached.recompute_err;
      FZ_CHECK(count == -9 && out[0] == -5, "out written on failure");
      return;
    }
    ++g_reached.recompute;
    FZ_CHECKV(count == static_cast<std::int32_t>(expect_out.size()), "select_recompute count", count,
              static_cast<long long>(expect_out.size()));
    for (std::size_t i = 0; i < expect_out.size(); ++i)
      FZ_CHECKV(out[i] == expect_out[i], "select_recompute token", out[i], expect_out[i]);
    FZ_CHECK(out[expect_out.size()] == -5, "select_recompute wrote past its count");
  }

  // rk_chunk_key_make: deterministic, token-sensitive, and its argument errors; rk_chunk_get_stats(NULL).
  void op_key_make() {
    const int k = in_.u8() % 5;
    std::vector<std::int32_t> toks(static_cast<std::size_t>(in_.in(1, 6)));
    for (auto& t : toks) t = in_.u8();
    rk_chunk_key a{1, 2}, b{3, 4};
    const auto n = static_cast<std::int64_t>(toks.size());
    if (k == 0) {
      expect(rk_chunk_key_make(store_, nullptr, toks.data(), n, &a), RK_ERR_INVALID_ARGUMENT,
             "key_make(NULL id)");
    } else if (k == 1) {
      expect(rk_chunk_key_make(store_, "m", toks.data(), n, nullptr), RK_ERR_INVALID_ARGUMENT,
             "key_make(NULL out)");
    } else if (k == 2) {  // NULL tokens with n > 0, or n < 0
      const bool null_toks = in_.u8() % 2;
      expect(rk_chunk_key_make(store_, "m", null_toks ? nullptr : toks.data(), null_toks ? n : -1 - n, &a),
             RK_ERR_INVALID_ARGUMENT, "key_make(bad tokens)");
    } else if (k == 3) {
      expect(rk_chunk_key_make(store_, "m", toks.data(), n, &a), RK_OK, "key_make");
      expect(rk_chunk_key_make(store_, "m", toks.data(), n, &b), RK_OK, "key_make");
      FZ_CHECK(a.hi == b.hi && a.lo == b.lo, "rk_chunk_key_make is not deterministic");
      toks[static_cast<std::size_t>(in_.u8()) % toks.size()] += 1;
      expect(rk_chunk_key_make(store_, "m", toks.data(), n, &b), RK_OK, "key_make");
      FZ_CHECK(a.hi != b.hi || a.lo != b.lo, "rk_chunk_key_make ignores a token");
      return;
    } else {
      expect(rk_chunk_get_stats(store_, nullptr), RK_ERR_INVALID_ARGUMENT, "rk_chunk_get_stats(NULL)");
      return;
    }
    FZ_CHECK(a.hi == 1 && a.lo == 2, "out written on failure");
  }

  // ---- tiers: swap, chunks through tiers, corrupt files (op bytes of the engine step's sub-choice 30, 31)
  // ----------------------------------------------------------------------------------------------------------

  struct TicketModel {
    rk_swap_ticket* t = nullptr;
    SeqModel seq;  // what swap_in restores (no chunk spliced: a restored sequence shares no page)
    std::string name;
    bool used = false;
    bool separate_cold = false;  // written with cold = the disk tier (else everything in hot)
    bool damaged = false;        // a file may be corrupt or an object gone: a swap_in may miss
    std::int64_t evictions = 0;  // both tiers' evictions when written: more since, a swap_in may miss
  };

  std::int64_t tier_evictions() {
    std::int64_t n = 0;
    for (rk_tier* t : {hot_, cold_}) {
      rk_tier_stats st{};
      FZ_CHECK(rk_tier_get_stats(t, &st) == RK_OK);
      FZ_CHECK(st.bytes_held >= 0 && st.objects >= 0 && st.bytes_held <= st.capacity_bytes + (1 << 22));
      n += st.evictions + st.corrupt;
    }
    return n;
  }

  // The tiers of this store, made on first use: capacities from the input (0 up to a few MB), the disk tier
  // in a fresh directory of this process.
  void ensure_tiers() {
    if (hot_) return;
    static const std::int64_t caps[] = {0, 300, 4096, 1 << 16, 1 << 22};
    dir_ = std::filesystem::temp_directory_path() / ("redknot-fuzz-tiers-" + std::to_string(::getpid()));
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    FZ_CHECK(rk_tier_host_create(caps[in_.u8() % 5], &hot_) == RK_OK);
    FZ_CHECK(rk_tier_disk_create(dir_.c_str(), caps[1 + in_.u8() % 4], 1, 0, &cold_) == RK_OK);
    if (in_.u8() % 2) FZ_CHECK(rk_prefetcher_create(1 + in_.u8() % 2, &pf_) == RK_OK);
    const int b = in_.u8();
    rk_tier* const both[2] = {hot_, cold_};
    rk_tier* const disk_only[1] = {cold_};
    const bool two = b % 2;
    expect(rk_chunk_tiers_create(store_, "fuzz-model", two ? both : disk_only, two ? 2 : 1, (b >> 1) % 3,
                                 (b & 8) ? pf_ : nullptr, &ct_),
           RK_OK, "rk_chunk_tiers_create");
  }

  void destroy_tiers() {
    if (ct_) {
      rk_chunk_tier_stats cs{};
      FZ_CHECK(rk_chunk_tiers_get_stats(ct_, &cs) == RK_OK);
      g_reached.promote_failures += cs.promote_failures;
      g_reached.rejected += cs.rejected;
      expect(rk_tier_destroy(cold_), RK_ERR_INVALID_ARGUMENT, "rk_tier_destroy of a tier in use");
      expect(rk_store_destroy(store_), RK_ERR_INVALID_ARGUMENT, "rk_store_destroy of a store in use");
      FZ_CHECK(rk_chunk_tiers_destroy(ct_) == RK_OK);
      expect(rk_chunk_tiers_destroy(ct_), RK_ERR_INVALID_ARGUMENT, "double rk_chunk_tiers_destroy");
      ct_ = nullptr;
    }
    for (TicketModel& t : tickets_) FZ_CHECK(rk_swap_ticket_destroy(t.t) == RK_OK);
    tickets_.clear();
    demoted_.clear();
    FZ_CHECK(rk_prefetcher_destroy(pf_) == RK_OK);
    FZ_CHECK(rk_tier_destroy(hot_) == RK_OK);
    FZ_CHECK(rk_tier_destroy(cold_) == RK_OK);
    if (hot_) expect(rk_tier_destroy(hot_), RK_ERR_INVALID_ARGUMENT, "double rk_tier_destroy");
    pf_ = nullptr;
    hot_ = cold_ = nullptr;
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  // One to four tier calls.
  void op_tier() {
    ensure_tiers();
    for (int n = 1 + in_.u8() % 4; n > 0; --n) {
      switch (in_.u8() % 8) {
        case 0:
        case 1:
          op_swap_out();
          break;
        case 2:
        case 3:
          op_swap_in();
          break;
        case 4:
        case 5:
          op_chunk_tiers();
          break;
        case 6:
          op_damage();
          break;
        default:
          op_tier_bad_args();
          break;
      }
      check_model();
    }
  }

  void op_swap_out() {
    bool live = false;
    const std::int64_t id = pick_seq(&live);
    const int b = in_.u8();
    const bool separate = b % 3 != 0;
    const bool bad_name = b % 16 == 15;
    const std::string name = bad_name ? (b & 16 ? "../x" : "") : "s" + std::to_string(name_counter_++);
    rk_swap_ticket* t = nullptr;
    const Snap before = snap();
    const int st = rk_swap_out(store_, id, hot_, separate ? cold_ : nullptr, "fuzz-model", name.c_str(), &t);
    if (!live) {
      expect(st, RK_ERR_NOT_FOUND, "rk_swap_out of a dead sequence");
    } else if (bad_name) {
      expect(st, RK_ERR_INVALID_ARGUMENT, "rk_swap_out with a bad name");
    } else if (st == RK_ERR_TIER_REFUSED) {
      ++g_reached.swap_refused;
    } else {
      expect(st, RK_OK, "rk_swap_out");
    }
    if (st != RK_OK) {
      FZ_CHECK(t == nullptr, "out written on failure");
      same(before, snap());
      return;
    }
    ++g_reached.swap_out;
    rk_swap_ticket_info info{};
    FZ_CHECK(rk_swap_ticket_get_info(t, &info) == RK_OK);
    FZ_CHECK(info.num_layers == L_ && info.used == 0 && info.objects <= 2 * L_ && info.bytes >= 0);
    TicketModel m;
    m.t = t;
    m.seq = seqs_.at(id);
    m.seq.chunks.clear();
    m.name = name;
    m.separate_cold = separate;
    m.evictions = tier_evictions();
    tickets_.push_back(std::move(m));
    seqs_.erase(id);
    dead_.push_back(id);
  }

  void op_swap_in() {
    if (tickets_.empty()) return;
    const int pick = in_.u8();
    std::size_t i = static_cast<std::size_t>(pick) % tickets_.size();
    if (pick % 4 != 0)  // mostly the first unused ticket from there
      for (std::size_t j = 0; j < tickets_.size() && tickets_[i].used; ++j) i = (i + 1) % tickets_.size();
    TicketModel& m = tickets_[i];
    const int b = in_.u8();
    // Other tiers than the ticket's (b % 8 == 7): an argument error that keeps the objects.
    const bool wrong_tiers = b % 8 == 7;
    rk_tier* cold = m.separate_cold ? cold_ : nullptr;
    rk_tier* hot = hot_;
    if (wrong_tiers) {
      if (b & 8)
        cold = m.separate_cold ? nullptr : cold_;
      else
        hot = cold_;
    }
    std::int64_t id = -7;
    const Snap before = snap();
    const bool may_miss = m.damaged || tier_evictions() != m.evictions;
    const int st = rk_swap_in(store_, m.t, hot, cold, b & 16 ? pf_ : nullptr, &id);
    if (m.used || wrong_tiers) {
      expect(st, RK_ERR_INVALID_ARGUMENT, "rk_swap_in of a used ticket or with other tiers");
      ++g_reached.tier_errors;
    } else if (st == RK_ERR_POOL_EXHAUSTED) {
      ++g_reached.swap_full;
    } else if (st == RK_ERR_TIER_MISS && may_miss) {
      ++g_reached.swap_miss;
      m.used = true;
    } else {
      expect(st, RK_OK, "rk_swap_in");
    }
    rk_swap_ticket_info info{};
    FZ_CHECK(rk_swap_ticket_get_info(m.t, &info) == RK_OK);
    if (st != RK_OK) {
      FZ_CHECK(id == -7, "out written on failure");
      FZ_CHECK(info.used == (m.used ? 1 : 0), "ticket use differs from the model");
      same(before, snap());
      return;
    }
    ++g_reached.swap_in;
    FZ_CHECK(info.used == 1);
    m.used = true;
    FZ_CHECK(seqs_.count(id) == 0, "restored sequence id reused");
    seqs_[id] = m.seq;
  }

  // Chunks in the model the store no longer holds after a cache call: demoted (a copy in a tier), dropped by
  // the cache, or evicted by the store; the counts must add up.
  void reconcile_chunks(const rk_chunk_tier_stats& c0) {
    rk_chunk_tier_stats c1{};
    FZ_CHECK(rk_chunk_tiers_get_stats(ct_, &c1) == RK_OK);
    rk_chunk_stats cs{};
    FZ_CHECK(rk_chunk_get_stats(store_, &cs) == RK_OK);
    std::int64_t gone = 0;
    for (auto it = chunks_.begin(); it != chunks_.end();) {
      std::int32_t n = -2;
      FZ_CHECK(rk_chunk_lookup(store_, rk_chunk_key{it->first.first, it->first.second}, &n) == RK_OK);
      if (n != -1) {
        ++it;
        continue;
      }
      FZ_CHECK(users(it->first) == 0, "a chunk in use left the store");
      std::int32_t in = 0;
      FZ_CHECK(rk_chunk_tiers_contains(ct_, rk_chunk_key{it->first.first, it->first.second}, &in) == RK_OK);
      if (in) demoted_[it->first] = std::move(it->second);
      it = chunks_.erase(it);
      ++gone;
    }
    const std::int64_t removed = (c1.demotions - c0.demotions) + (c1.dropped - c0.dropped);
    FZ_CHECKV(gone == removed + (cs.evictions - evictions_), "chunks gone differ from demotions + evictions",
              gone, removed);
    g_reached.demotions += c1.demotions - c0.demotions;
    evictions_ = cs.evictions;
  }

  void op_chunk_tiers() {
    const int b = in_.u8();
    rk_chunk_tier_stats c0{};
    FZ_CHECK(rk_chunk_tiers_get_stats(ct_, &c0) == RK_OK);
    // A key: a demoted chunk, one of the store's chunks, or unknown.
    rk_chunk_key key{0x1234, static_cast<std::uint64_t>(in_.u8())};
    const int kb = in_.u8();
    if (kb % 2 == 0 && !demoted_.empty()) {
      auto it = demoted_.begin();
      std::advance(it, static_cast<long>(kb / 2 % demoted_.size()));
      key = rk_chunk_key{it->first.first, it->first.second};
    } else if (kb % 4 != 3 && !chunks_.empty()) {
      auto it = chunks_.begin();
      std::advance(it, static_cast<long>(kb / 4 % chunks_.size()));
      key = rk_chunk_key{it->first.first, it->first.second};
    }
    const KeyId kid = id_of(key);
    const Snap before = snap();
    switch ((b >> 1) % 5) {
      case 0: {  // make room for some pages (or more than the pool has)
        std::int64_t freed = -1;
        const std::int64_t pages = b & 64 ? num_pages_ : in_.u8() % 16;
        expect(rk_chunk_tiers_make_room(ct_, pages, &freed), RK_OK, "rk_chunk_tiers_make_room");
        FZ_CHECK(freed >= 0);
        break;
      }
      case 1: {
        std::int32_t written = -1;
        const int st = rk_chunk_tiers_demote(ct_, key, &written);
        const bool known = chunks_.count(kid) != 0;
        expect(st,
               !known           ? RK_ERR_NOT_FOUND
               : users(kid) > 0 ? RK_ERR_INVALID_ARGUMENT
                                : RK_OK,
               "rk_chunk_tiers_demote");
        if (st != RK_OK) {
          FZ_CHECK(written == -1, "out written on failure");
          same(before, snap());
          return;
        }
        break;
      }
      case 2:
      case 3:
        tier_lookup(key);
        break;
      default: {
        std::int32_t started = -1, in = -1;
        expect(rk_chunk_tiers_prefetch(ct_, key, &started), RK_OK, "rk_chunk_tiers_prefetch");
        expect(rk_chunk_tiers_contains(ct_, key, &in), RK_OK, "rk_chunk_tiers_contains");
        FZ_CHECK(!started || (pf_ != nullptr && in == 1), "a prefetch started for nothing");
        break;
      }
    }
    reconcile_chunks(c0);
    forget_lost_copies();
    if (b & 128 && !demoted_.empty()) {  // and often a demoted chunk comes back right away
      FZ_CHECK(rk_chunk_tiers_get_stats(ct_, &c0) == RK_OK);
      auto it = demoted_.begin();
      std::advance(it, static_cast<long>(kb % demoted_.size()));
      tier_lookup(rk_chunk_key{it->first.first, it->first.second});
      reconcile_chunks(c0);
      forget_lost_copies();
    }
  }

  // Demoted chunks whose copy is gone (evicted, corrupt and removed) cannot come back.
  void forget_lost_copies() {
    for (auto it = demoted_.begin(); it != demoted_.end();) {
      std::int32_t in = 0;
      FZ_CHECK(rk_chunk_tiers_contains(ct_, rk_chunk_key{it->first.first, it->first.second}, &in) == RK_OK);
      it = in ? std::next(it) : demoted_.erase(it);
    }
  }

  // rk_chunk_tiers_lookup: a chunk in the store, a demoted one that comes back as it was, or a miss.
  void tier_lookup(rk_chunk_key key) {
    const KeyId kid = id_of(key);
    std::int32_t n = -2;
    expect(rk_chunk_tiers_lookup(ct_, key, &n), RK_OK, "rk_chunk_tiers_lookup");
    if (chunks_.count(kid)) {
      FZ_CHECK(n == chunks_.at(kid).n, "lookup of a chunk in the store");
    } else if (n >= 0) {
      FZ_CHECK(demoted_.count(kid) != 0, "a chunk that was never demoted came back");
      FZ_CHECK(n == demoted_.at(kid).n, "a promoted chunk's length differs");
      chunks_[kid] = std::move(demoted_.at(kid));
      demoted_.erase(kid);
      ++g_reached.promotions;
    } else {
      FZ_CHECK(n == -1);
      ++g_reached.tier_misses;
    }
  }

  // Flips a byte of (or truncates) a file of the disk tier: whatever it held becomes a miss.
  void op_damage() {
    std::vector<std::filesystem::path> files;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) files.push_back(e.path());
    if (files.empty()) return;
    std::sort(files.begin(), files.end());
    const std::filesystem::path& f = files[in_.u8() % files.size()];
    const auto size = std::filesystem::file_size(f, ec);
    if (ec || size == 0) return;
    const int b = in_.u8();
    if (b % 4 == 0) {
      std::filesystem::resize_file(f, size * static_cast<unsigned>(b % 3) / 3, ec);
    } else {
      std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
      const auto at = static_cast<std::streamoff>((static_cast<std::uint64_t>(in_.u16()) * 7919u) % size);
      io.seekg(at);
      char c = 0;
      io.get(c);
      io.seekp(at);
      io.put(static_cast<char>(c ^ (1 << (b % 8))));
    }
    ++g_reached.corruptions;
    const std::string file = f.filename().string();
    for (TicketModel& t : tickets_)
      if (file.rfind(t.name + ".l", 0) == 0) t.damaged = true;
  }

  // Argument errors of the tier calls: a status, nothing changed.
  void op_tier_bad_args() {
    ++g_reached.tier_errors;
    const Snap before = snap();
    rk_tier* dead = nullptr;
    FZ_CHECK(rk_tier_host_create(1, &dead) == RK_OK);
    FZ_CHECK(rk_tier_destroy(dead) == RK_OK);
    rk_swap_ticket* t = nullptr;
    std::int64_t id = -7;
    std::int32_t flag = -7;
    bool live = false;
    const std::int64_t seq = pick_seq(&live);
    switch (in_.u8() % 12) {
      case 0:
        expect(rk_swap_out(store_, seq, nullptr, cold_, "m", "n", &t), RK_ERR_INVALID_ARGUMENT, "hot NULL");
        break;
      case 1:
        expect(rk_swap_out(store_, seq, dead, cold_, "m", "n", &t), RK_ERR_INVALID_ARGUMENT, "hot dead");
        break;
      case 2:
        expect(rk_swap_out(store_, seq, hot_, cold_, nullptr, "n", &t), RK_ERR_INVALID_ARGUMENT,
               "model NULL");
        break;
      case 3:
        expect(rk_swap_out(store_, seq, hot_, cold_, "m", "n", nullptr), RK_ERR_INVALID_ARGUMENT, "out NULL");
        break;
      case 4:
        expect(rk_swap_in(store_, nullptr, hot_, cold_, nullptr, &id), RK_ERR_INVALID_ARGUMENT,
               "ticket NULL");
        break;
      case 5:
        expect(rk_swap_in(store_, reinterpret_cast<rk_swap_ticket*>(hot_), hot_, cold_, nullptr, &id),
               RK_ERR_INVALID_ARGUMENT, "a tier as a ticket");
        break;
      case 6:
        expect(rk_tier_contains(hot_, in_.u8() % 2 ? "../x" : ".x", &flag), RK_ERR_INVALID_ARGUMENT,
               "bad object name");
        break;
      case 7: {
        rk_tier* const dup[2] = {cold_, cold_};
        rk_chunk_tiers* c = nullptr;
        expect(rk_chunk_tiers_create(store_, "m", dup, 2, 0, nullptr, &c), RK_ERR_INVALID_ARGUMENT,
               "dup tiers");
        FZ_CHECK(c == nullptr);
        break;
      }
      case 8: {
        rk_chunk_tiers* c = nullptr;
        expect(rk_chunk_tiers_create(store_, "m", &dead, 1, 0, nullptr, &c), RK_ERR_INVALID_ARGUMENT,
               "dead tier");
        expect(rk_chunk_tiers_create(store_, "m", &hot_, 1, -1 - in_.u8(), nullptr, &c),
               RK_ERR_INVALID_ARGUMENT, "min_splices < 0");
        FZ_CHECK(c == nullptr);
        break;
      }
      case 9:
        expect(rk_tier_host_create(-1 - in_.u8(), &dead), RK_ERR_INVALID_ARGUMENT, "capacity < 0");
        expect(rk_prefetcher_create(in_.u8() % 2 ? 0 : 65, nullptr), RK_ERR_INVALID_ARGUMENT, "threads");
        break;
      case 10:
        if (!tickets_.empty()) {
          TicketModel& m = tickets_[in_.u8() % tickets_.size()];
          const int st = rk_swap_discard(m.t, hot_, m.separate_cold ? cold_ : nullptr);
          expect(st, m.used ? RK_ERR_INVALID_ARGUMENT : RK_OK, "rk_swap_discard");
          m.used = true;
          same(before, snap());
          return;
        }
        break;
      default:
        if (ct_) expect(rk_tier_destroy(cold_), RK_ERR_INVALID_ARGUMENT, "destroy of a tier in use");
        break;
    }
    FZ_CHECK(t == nullptr && id == -7 && flag == -7, "out written on failure");
    same(before, snap());
  }

  // Destroy the store (checking the dead handle) and build another from the following bytes.
  void op_recreate() {
    destroy_store();
    dead_.clear();
    planned_ = false;
    plan_ids_.clear();
    plan_lens_.clear();
    plan_pos_.clear();
    create_store();
  }

  Bytes& in_;
  rk_store* store_ = nullptr;
  int dt_ = 0, L_ = 1, H_ = 1, G_ = 1, D_ = 8, ps_ = 1, num_pages_ = 1;
  std::vector<Policy> pol_;
  std::vector<Policy> json_pol_;
  int json_dense_prefix_ = 0;
  std::map<std::int64_t, SeqModel> seqs_;
  std::map<KeyId, ChunkModel> chunks_;
  std::int64_t evictions_ = 0;
  bool has_rope_ = false;
  redknot::RopeConfig rope_{};
  std::vector<double> inv_freq_;
  std::vector<std::int64_t> dead_;
  bool planned_ = false;
  std::vector<std::int64_t> plan_ids_;
  std::vector<std::int32_t> plan_lens_;
  std::vector<std::int32_t> plan_pos_;
  // Tiers (made on the first tier op of a store, destroyed with it).
  rk_tier* hot_ = nullptr;
  rk_tier* cold_ = nullptr;
  rk_prefetcher* pf_ = nullptr;
  rk_chunk_tiers* ct_ = nullptr;
  std::filesystem::path dir_;
  std::vector<TicketModel> tickets_;
  std::map<KeyId, ChunkModel> demoted_;  // chunks with a copy in a tier (may still be evicted or corrupt)
  int name_counter_ = 0;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  Bytes in{data, size};
  Fuzzer f(in);
  f.run();
  return 0;
}

// The C ABI (c_api.h) over AnyStore and HeadMap.
//
// Every entry point runs its body inside guard(), which turns each exception into a status code plus the
// thread-local message, so no exception crosses the C boundary. Out-parameters are assigned only after the
// C++ call succeeded, which gives the "written only on success" rule for free.
//
// Value rules (ranges, limits, ids, the attention parameters) are the core's: this layer checks only what a
// C caller adds — NULL pointers, array lengths, handles, struct sizes and C enums — and passes values
// through, so that C, C++ and Python reject the same inputs with the same message.
#include "redknot/c_api.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <unordered_set>
#include <vector>

#include "redknot/any_store.hpp"
#include "redknot/any_tiers.hpp"
#include "redknot/error.hpp"
#include "redknot/flashinfer_csr.hpp"
#include "redknot/head_map.hpp"
#include "redknot/limits.hpp"
#include "redknot/pool_sizing.hpp"
#include "redknot/recompute.hpp"
#include "redknot/tiers.hpp"
#include "redknot/version.hpp"

struct rk_head_map {
  redknot::HeadMap map;
};

// users: live rk_chunk_tiers holding the handle (guarded by the registry's mutex); destroy refuses while > 0.
struct rk_store {
  std::unique_ptr<redknot::AnyStore> impl;
  std::int64_t users = 0;
};

struct rk_tier {
  std::unique_ptr<redknot::KvTier> impl;
  std::int64_t users = 0;
};

struct rk_prefetcher {
  std::unique_ptr<redknot::TierPrefetcher> impl;
  std::int64_t users = 0;
};

struct rk_swap_ticket {
  std::unique_ptr<redknot::AnySwapTicket> impl;
};

struct rk_chunk_tiers {
  rk_store* store;
  std::vector<rk_tier*> tiers;
  rk_prefetcher* prefetcher;
  std::unique_ptr<redknot::AnyChunkTiers> impl;
};

static_assert(RK_MAX_NUM_THREADS == redknot::kMaxAttentionThreads);
static_assert(RK_MAX_NUM_Q_HEADS == redknot::kMaxNumQHeads);
static_assert(RK_MAX_LAYERS_X_KV_HEADS == redknot::kMaxLayersTimesKvHeads);
static_assert(RK_MAX_TOKENS == redknot::kMaxTokens);

namespace {

using redknot::require;

thread_local std::string t_last_error;
std::atomic<std::int64_t> g_live_maps{0};

int fail(int status, const char* what) {
  try {
    t_last_error = what;
  } catch (...) {
    // Out of memory while saving the message: keep the status, the message stays stale.
  }
  return status;
}

// Runs f, mapping exceptions to status codes. Order matters: the redknot types first, then the std bases
// they derive from (a std::invalid_argument from elsewhere is still bad input, a std::out_of_range from a
// container .at() would be a bug).
template <class F>
int guard(F&& f) noexcept {
  try {
    f();
    return RK_OK;
  } catch (const redknot::InvalidArgument& e) {
    return fail(RK_ERR_INVALID_ARGUMENT, e.what());
  } catch (const redknot::NotFound& e) {
    return fail(RK_ERR_NOT_FOUND, e.what());
  } catch (const redknot::PoolExhausted& e) {
    return fail(RK_ERR_POOL_EXHAUSTED, e.what());
  } catch (const redknot::Unavailable& e) {
    return fail(RK_ERR_UNAVAILABLE, e.what());
  } catch (const redknot::TierRefused& e) {
    return fail(RK_ERR_TIER_REFUSED, e.what());
  } catch (const redknot::TierMiss& e) {
    return fail(RK_ERR_TIER_MISS, e.what());
  } catch (const std::invalid_argument& e) {
    return fail(RK_ERR_INVALID_ARGUMENT, e.what());
  } catch (const std::bad_alloc&) {
    return fail(RK_ERR_POOL_EXHAUSTED,
                "out of memory: a host allocation failed (free sequences or stores and retry)");
  } catch (const std::length_error& e) {
    // A container asked for more than max_size(): an allocation no host can satisfy, i.e. out of memory.
    return fail(
        RK_ERR_POOL_EXHAUSTED,
        (std::string("out of memory: a host allocation larger than the address space was requested (") +
         e.what() + ")")
            .c_str());
  } catch (const std::exception& e) {
    return fail(RK_ERR_INTERNAL, (std::string("internal error: ") + e.what()).c_str());
  } catch (...) {
    return fail(RK_ERR_INTERNAL, "internal error: unknown exception");
  }
}

template <class P>
void require_out(P* p, const char* fn, const char* name) {
  require(p != nullptr, fn, ": ", name, " is NULL");
}

// Registry of live handles: every handle this library returned and has not destroyed yet. Each entry point
// checks its handle against it first, so use-after-destroy and double destroy are an RK_ERR_INVALID_ARGUMENT
// instead of a crash (as long as the address was not reused by a newer handle of the same kind, and no other
// thread destroys the handle during the call: that remains the caller's race). Never destroyed, so handles
// destroyed from static destructors at exit still find it.
struct Registry {
  std::mutex mu;
  std::unordered_set<const void*> stores;
  std::unordered_set<const void*> maps;
  std::unordered_set<const void*> tiers;
  std::unordered_set<const void*> prefetchers;
  std::unordered_set<const void*> tickets;
  std::unordered_set<const void*> chunk_tiers;
};

Registry& registry() {
  static Registry* r = new Registry;
  return *r;
}

bool is_live(const std::unordered_set<const void*>& set, const void* p) {
  std::lock_guard lk(registry().mu);
  return set.count(p) != 0;
}

const redknot::HeadMap& map_of(const rk_head_map* m, const char* fn, const char* name = "head map handle") {
  require(m != nullptr, fn, ": ", name, " is NULL");
  require(is_live(registry().maps, m), fn, ": ", name, " ", static_cast<const void*>(m),
          " is not live (destroyed or never created)");
  return m->map;
}

redknot::AnyStore& store_of(const rk_store* s, const char* fn) {
  require(s != nullptr, fn, ": store handle is NULL");
  require(is_live(registry().stores, s), fn, ": store handle ", static_cast<const void*>(s),
          " is not live (destroyed or never created)");
  return *s->impl;
}

// Removes p from set; throws (nothing removed) when it is not there.
void unregister(std::unordered_set<const void*>& set, const void* p, const char* fn, const char* what) {
  std::lock_guard lk(registry().mu);
  require(set.erase(p) == 1, fn, ": ", what, " ", p, " is not live (destroyed or never created)");
}

// As unregister, for a handle an rk_chunk_tiers may hold: throws (nothing removed) while one does.
template <class H>
void unregister_unused(std::unordered_set<const void*>& set, const H* p, const char* fn, const char* what) {
  std::lock_guard lk(registry().mu);
  require(set.count(p) == 1, fn, ": ", what, " ", static_cast<const void*>(p),
          " is not live (destroyed or never created)");
  require(p->users == 0, fn, ": ", what, " ", static_cast<const void*>(p), " is used by ", p->users,
          " live rk_chunk_tiers cache(s): destroy them first");
  set.erase(p);
}

template <class H>
H* register_handle(std::unordered_set<const void*>& set, std::unique_ptr<H> h) {
  std::lock_guard lk(registry().mu);
  set.insert(h.get());
  return h.release();
}

// A live handle of a tier-layer kind; `name` names the argument.
template <class H>
H& live(const std::unordered_set<const void*>& set, H* h, const char* fn, const char* name) {
  require(h != nullptr, fn, ": ", name, " is NULL");
  require(is_live(set, h), fn, ": ", name, " ", static_cast<const void*>(h),
          " is not live (destroyed or never created)");
  return *h;
}

redknot::KvTier& tier_of(const rk_tier* t, const char* fn, const char* name = "tier handle") {
  return *live(registry().tiers, t, fn, name).impl;
}

// An optional tier (NULL: none).
redknot::KvTier* opt_tier(const rk_tier* t, const char* fn, const char* name) {
  return t == nullptr ? nullptr : &tier_of(t, fn, name);
}

redknot::TierPrefetcher* opt_prefetcher(const rk_prefetcher* p, const char* fn) {
  return p == nullptr ? nullptr : live(registry().prefetchers, p, fn, "prefetcher handle").impl.get();
}

redknot::AnySwapTicket& ticket_of(const rk_swap_ticket* t, const char* fn) {
  return *live(registry().tickets, t, fn, "swap ticket handle").impl;
}

redknot::AnyChunkTiers& chunk_tiers_of(const rk_chunk_tiers* c, const char* fn) {
  return *live(registry().chunk_tiers, c, fn, "chunk tiers handle").impl;
}

// A host array of n elements: NULL only when n == 0.
template <class T>
std::span<const T> host_array(const T* p, std::int64_t n, const char* fn, const char* name) {
  require(n >= 0, fn, ": length of ", name, " is ", n, ", must be >= 0");
  require(p != nullptr || n == 0, fn, ": ", name, " is NULL but its length is ", n);
  return {p, static_cast<std::size_t>(n)};
}

rk_rope_config to_c(const redknot::RopeConfig& r) {
  rk_rope_config c{};
  c.scaling = static_cast<int32_t>(r.scaling);
  c.pairing = static_cast<int32_t>(r.pairing);
  c.rotary_dim = r.rotary_dim;
  c.original_max_position = r.original_max_position;
  c.theta = r.theta;
  c.factor = r.factor;
  c.low_freq_factor = r.low_freq_factor;
  c.high_freq_factor = r.high_freq_factor;
  c.beta_fast = r.beta_fast;
  c.beta_slow = r.beta_slow;
  return c;
}

// The store's RoPE spec from the C struct (the core validates the values); RK_ROPE_NONE: none.
std::optional<redknot::RopeConfig> from_c(const rk_rope_config& c, int32_t head_dim) {
  if (c.scaling == RK_ROPE_NONE) return std::nullopt;
  require(c.scaling >= RK_ROPE_DEFAULT && c.scaling <= RK_ROPE_YARN,
          "rk_store_create: cfg->rope.scaling=", c.scaling, " is not an rk_rope_scaling (-1..3)");
  require(c.pairing == RK_ROPE_ROTATE_HALF || c.pairing == RK_ROPE_INTERLEAVED,
          "rk_store_create: cfg->rope.pairing=", c.pairing, " is not an rk_rope_pairing (0 or 1)");
  redknot::RopeConfig r;
  r.head_dim = head_dim;
  r.scaling = static_cast<redknot::RopeScaling>(c.scaling);
  r.pairing = static_cast<redknot::RopePairing>(c.pairing);
  r.rotary_dim = c.rotary_dim;
  r.original_max_position = c.original_max_position;
  r.theta = c.theta;
  r.factor = c.factor;
  r.low_freq_factor = c.low_freq_factor;
  r.high_freq_factor = c.high_freq_factor;
  r.beta_fast = c.beta_fast;
  r.beta_slow = c.beta_slow;
  return r;
}

redknot::ChunkKey key_of(rk_chunk_key k) { return redknot::ChunkKey{k.hi, k.lo}; }

rk_head_map* new_map(redknot::HeadMap m) {
  auto h = std::make_unique<rk_head_map>(rk_head_map{std::move(m)});
  {
    std::lock_guard lk(registry().mu);
    registry().maps.insert(h.get());
  }
  g_live_maps.fetch_add(1, std::memory_order_relaxed);
  return h.release();
}

redknot::HeadClass head_class_of(std::int32_t c) {
  require(c >= RK_HEAD_LOCAL && c <= RK_HEAD_DENSE, "head_class=", c,
          " is not one of RK_HEAD_LOCAL(0), RK_HEAD_GLOBAL(1), RK_HEAD_RETRIEVAL(2), RK_HEAD_DENSE(3)");
  return static_cast<redknot::HeadClass>(c);
}

}  // namespace

extern "C" {

uint32_t rk_abi_version(void) { return RK_ABI_VERSION; }

const char* rk_version(void) {
  static const std::string v = redknot::version_string();
  return v.c_str();
}

const char* rk_last_error(void) { return t_last_error.c_str(); }

const char* rk_status_string(int status) {
  switch (status) {
    case RK_OK:
      return "RK_OK";
    case RK_ERR_INVALID_ARGUMENT:
      return "RK_ERR_INVALID_ARGUMENT";
    case RK_ERR_NOT_FOUND:
      return "RK_ERR_NOT_FOUND";
    case RK_ERR_POOL_EXHAUSTED:
      return "RK_ERR_POOL_EXHAUSTED";
    case RK_ERR_UNAVAILABLE:
      return "RK_ERR_UNAVAILABLE";
    case RK_ERR_INTERNAL:
      return "RK_ERR_INTERNAL";
    case RK_ERR_TIER_REFUSED:
      return "RK_ERR_TIER_REFUSED";
    case RK_ERR_TIER_MISS:
      return "RK_ERR_TIER_MISS";
    default:
      return "RK_ERR_UNKNOWN_STATUS";
  }
}

int rk_live_handles(int64_t* num_stores, int64_t* num_head_maps) {
  return guard([&] {
    if (num_stores) *num_stores = redknot::AnyStore::live_count();
    if (num_head_maps) *num_head_maps = g_live_maps.load(std::memory_order_relaxed);
  });
}

// ---- head maps -------------------------------------------------------------------------------------------

int rk_head_map_load(const char* path, rk_head_map** out) {
  return guard([&] {
    require(path != nullptr, "rk_head_map_load: path is NULL");
    require_out(out, "rk_head_map_load", "out");
    *out = new_map(redknot::HeadMap::load(path));
  });
}

int rk_head_map_from_json(const char* json, size_t len, rk_head_map** out) {
  return guard([&] {
    require(json != nullptr, "rk_head_map_from_json: json is NULL");
    require_out(out, "rk_head_map_from_json", "out");
    const std::size_t n = len == static_cast<size_t>(-1) ? std::strlen(json) : len;
    *out = new_map(redknot::HeadMap::from_json(std::string_view(json, n)));
  });
}

int rk_head_map_uniform(int32_t num_layers, int32_t num_kv_heads, int32_t head_class, int32_t window,
                        int32_t sink, rk_head_map** out) {
  return guard([&] {
    require_out(out, "rk_head_map_uniform", "out");
    *out =
        new_map(redknot::HeadMap::uniform(num_layers, num_kv_heads, head_class_of(head_class), window, sink));
  });
}

int rk_head_map_with_global_ratio(int32_t num_layers, int32_t num_kv_heads, double global_ratio,
                                  int32_t window, int32_t sink, rk_head_map** out) {
  return guard([&] {
    require_out(out, "rk_head_map_with_global_ratio", "out");
    *out = new_map(redknot::HeadMap::with_global_ratio(num_layers, num_kv_heads, global_ratio, window, sink));
  });
}

int rk_head_map_destroy(rk_head_map* map) {
  return guard([&] {
    if (!map) return;
    unregister(registry().maps, map, "rk_head_map_destroy", "head map handle");
    delete map;
    g_live_maps.fetch_sub(1, std::memory_order_relaxed);
  });
}

int rk_head_map_get_info(const rk_head_map* map, rk_head_map_info* out) {
  return guard([&] {
    const redknot::HeadMap& m = map_of(map, "rk_head_map_get_info");
    require_out(out, "rk_head_map_get_info", "out");
    rk_head_map_info info{};
    info.num_layers = m.num_layers();
    info.num_kv_heads = m.num_kv_heads();
    info.dense_prefix_layers = m.dense_prefix_layers();
    info.num_local = m.count_local();
    info.num_global_like = m.count_global_like();
    info.retrieval_top_p = m.retrieval_top_p();
    *out = info;
  });
}

int rk_head_map_get_policy(const rk_head_map* map, int32_t layer, int32_t kv_head, rk_head_policy* out) {
  return guard([&] {
    const redknot::HeadMap& m = map_of(map, "rk_head_map_get_policy");
    require_out(out, "rk_head_map_get_policy", "out");
    const redknot::HeadPolicy p = m.policy(layer, kv_head);
    *out = rk_head_policy{static_cast<int32_t>(p.cls), p.is_local() ? p.window : -1, p.sink};
  });
}

int rk_head_map_peak_sequence_pages(const rk_head_map* map, int32_t page_size, int64_t num_tokens,
                                    int64_t chunk, int64_t* out) {
  return guard([&] {
    const redknot::HeadMap& m = map_of(map, "rk_head_map_peak_sequence_pages");
    require_out(out, "rk_head_map_peak_sequence_pages", "out");
    *out = redknot::peak_sequence_pages(m, page_size, num_tokens, chunk);
  });
}

int rk_head_map_to_json(const rk_head_map* map, int32_t indent, char* buf, size_t buf_size, size_t* len_out) {
  return guard([&] {
    const redknot::HeadMap& m = map_of(map, "rk_head_map_to_json");
    const std::string s = m.to_json(indent);
    if (buf != nullptr || buf_size != 0) {
      require(buf != nullptr, "rk_head_map_to_json: buf is NULL but buf_size=", buf_size);
      require(buf_size >= s.size() + 1, "rk_head_map_to_json: buf_size=", buf_size, " is too small, need ",
              s.size() + 1, " bytes (the JSON plus its NUL)");
      std::memcpy(buf, s.c_str(), s.size() + 1);
    }
    if (len_out) *len_out = s.size();
  });
}

// ---- stores ----------------------------------------------------------------------------------------------

int rk_store_config_init(rk_store_config* cfg) {
  return guard([&] {
    require_out(cfg, "rk_store_config_init", "cfg");
    rk_store_config c{};
    c.struct_size = sizeof(rk_store_config);
    c.dtype = RK_DTYPE_BF16;
    c.page_size = 16;
    c.device = DLDevice{kDLCPU, 0};
    c.rope = to_c(redknot::RopeConfig{});
    c.rope.scaling = RK_ROPE_NONE;
    *cfg = c;
  });
}

int rk_store_create(const rk_store_config* cfg, const rk_head_map* map, rk_store** out) {
  return guard([&] {
    require(cfg != nullptr, "rk_store_create: cfg is NULL");
    require(cfg->struct_size == sizeof(rk_store_config),
            "rk_store_create: cfg->struct_size=", cfg->struct_size, ", expected ", sizeof(rk_store_config),
            " (call rk_store_config_init, and check the header matches ", "the library: RK_ABI_VERSION ",
            RK_ABI_VERSION, ")");
    const redknot::HeadMap& m = map_of(map, "rk_store_create");
    require_out(out, "rk_store_create", "out");
    require(cfg->dtype >= RK_DTYPE_F32 && cfg->dtype <= RK_DTYPE_BF16, "rk_store_create: dtype=", cfg->dtype,
            " is not one of RK_DTYPE_F32(0), RK_DTYPE_F16(1), RK_DTYPE_BF16(2)");
    redknot::ModelShape shape;
    shape.num_layers = cfg->num_layers;
    shape.num_q_heads = cfg->num_q_heads;
    shape.num_kv_heads = cfg->num_kv_heads;
    shape.head_dim = cfg->head_dim;
    shape.dtype = static_cast<redknot::DType>(cfg->dtype);
    redknot::StoreConfig sc;
    sc.page_size = cfg->page_size;
    sc.num_pages = cfg->num_pages;
    auto h = std::make_unique<rk_store>(
        rk_store{redknot::make_store(shape, m, sc, cfg->device, from_c(cfg->rope, cfg->head_dim))});
    {
      std::lock_guard lk(registry().mu);
      registry().stores.insert(h.get());
    }
    *out = h.release();
  });
}

int rk_store_destroy(rk_store* store) {
  return guard([&] {
    if (!store) return;
    unregister_unused(registry().stores, store, "rk_store_destroy", "store handle");
    delete store;
  });
}

int rk_store_get_config(const rk_store* store, rk_store_config* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_store_get_config");
    require_out(out, "rk_store_get_config", "out");
    rk_store_config c{};
    c.struct_size = sizeof(rk_store_config);
    c.num_layers = s.shape().num_layers;
    c.num_q_heads = s.shape().num_q_heads;
    c.num_kv_heads = s.shape().num_kv_heads;
    c.head_dim = s.shape().head_dim;
    c.dtype = static_cast<int32_t>(s.shape().dtype);
    c.page_size = s.page_size();
    c.num_pages = s.num_pages();
    c.device = s.device();
    c.rope = to_c(s.rope() ? *s.rope() : redknot::RopeConfig{});
    if (!s.rope()) c.rope.scaling = RK_ROPE_NONE;
    *out = c;
  });
}

int rk_store_get_head_map(const rk_store* store, rk_head_map** out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_store_get_head_map");
    require_out(out, "rk_store_get_head_map", "out");
    *out = new_map(s.head_map());
  });
}

// ---- sequences -------------------------------------------------------------------------------------------

int rk_sequence_create(rk_store* store, int64_t* out_id) {
  return guard([&] {
    redknot::AnyStore& s = store_of(store, "rk_sequence_create");
    require_out(out_id, "rk_sequence_create", "out_id");
    *out_id = s.create_sequence();
  });
}

int rk_sequence_fork(rk_store* store, int64_t parent, int64_t* out_id) {
  return guard([&] {
    redknot::AnyStore& s = store_of(store, "rk_sequence_fork");
    require_out(out_id, "rk_sequence_fork", "out_id");
    *out_id = s.fork(parent);
  });
}

int rk_sequence_free(rk_store* store, int64_t id) {
  return guard([&] { store_of(store, "rk_sequence_free").free_sequence(id); });
}

int rk_sequence_contains(const rk_store* store, int64_t id, int32_t* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_sequence_contains");
    require_out(out, "rk_sequence_contains", "out");
    *out = s.contains(id) ? 1 : 0;
  });
}

int rk_sequence_next_position(const rk_store* store, int64_t id, int32_t layer, int32_t* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_sequence_next_position");
    require_out(out, "rk_sequence_next_position", "out");
    *out = s.next_position(id, layer);
  });
}

int rk_sequence_retire_queries(rk_store* store, int64_t id, int32_t next_query_pos, int32_t layer) {
  return guard(
      [&] { store_of(store, "rk_sequence_retire_queries").retire_queries(id, next_query_pos, layer); });
}

// ---- data path -------------------------------------------------------------------------------------------

int rk_append(rk_store* store, int64_t seq, int32_t layer, const DLTensor* k, const DLTensor* v,
              const int32_t* positions, int64_t n_tokens, void* /*stream: CPU stores ignore it*/) {
  return guard([&] {
    redknot::AnyStore& s = store_of(store, "rk_append");
    require(k != nullptr, "rk_append: k is NULL");
    require(v != nullptr, "rk_append: v is NULL");
    const auto pos = host_array(positions, n_tokens, "rk_append", "positions");
    s.append(seq, layer, *k, *v, pos);
  });
}

int rk_append_batch(rk_store* store, int32_t layer, const int64_t* seq_ids, int32_t batch_size,
                    const int32_t* token_offsets, const DLTensor* k, const DLTensor* v,
                    const int32_t* positions, void* /*stream: CPU stores ignore it*/) {
  return guard([&] {
    redknot::AnyStore& s = store_of(store, "rk_append_batch");
    require(k != nullptr, "rk_append_batch: k is NULL");
    require(v != nullptr, "rk_append_batch: v is NULL");
    require(batch_size >= 0, "rk_append_batch: batch_size=", batch_size, " must be >= 0");
    const auto ids = host_array(seq_ids, batch_size, "rk_append_batch", "seq_ids");
    const auto offsets =
        host_array(token_offsets, std::int64_t{batch_size} + 1, "rk_append_batch", "token_offsets");
    // positions holds token_offsets[batch_size] entries; the offsets' values are the core's to check.
    const auto pos = host_array(positions, offsets.back(), "rk_append_batch", "positions");
    s.append_batch(layer, ids, offsets, *k, *v, pos);
  });
}

int rk_plan(rk_store* store, const int64_t* seq_ids, const int32_t* q_lens, int32_t batch_size,
            const int32_t* q_positions, int64_t total_q) {
  return guard([&] {
    redknot::AnyStore& s = store_of(store, "rk_plan");
    const auto ids = host_array(seq_ids, batch_size, "rk_plan", "seq_ids");
    const auto lens = host_array(q_lens, batch_size, "rk_plan", "q_lens");
    const auto pos = host_array(q_positions, total_q, "rk_plan", "q_positions");
    s.plan(ids, lens, pos);
  });
}

int rk_attention(rk_store* store, int32_t layer, const DLTensor* q, DLTensor* out, DLTensor* lse,
                 const rk_attention_params* params, void* /*stream: CPU stores ignore it*/) {
  return guard([&] {
    redknot::AnyStore& s = store_of(store, "rk_attention");
    require(q != nullptr, "rk_attention: q is NULL");
    require(out != nullptr, "rk_attention: out is NULL");
    redknot::AttentionParams p;
    if (params) {  // both checked by check_attention_params (AnyStore::run), like every binding's
      p.scale = params->sm_scale;
      p.num_threads = params->num_threads;
    }
    s.run(layer, *q, *out, lse, p);
  });
}

// ---- accounting ------------------------------------------------------------------------------------------

int rk_store_get_stats(const rk_store* store, rk_store_stats* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_store_get_stats");
    require_out(out, "rk_store_get_stats", "out");
    const redknot::StoreStats st = s.stats();
    *out = rk_store_stats{st.num_sequences, st.pages_total,  st.pages_in_use, st.pages_global,
                          st.pages_local,   st.bytes_in_use, st.bytes_global, st.bytes_local};
  });
}

int rk_sequence_get_stats(const rk_store* store, int64_t id, rk_sequence_stats* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_sequence_get_stats");
    require_out(out, "rk_sequence_get_stats", "out");
    const redknot::SequenceStats st = s.sequence_stats(id);
    *out = rk_sequence_stats{st.pages_global, st.pages_local,  st.tokens_global,
                             st.tokens_local, st.bytes_global, st.bytes_local};
  });
}

int rk_store_pages_per_sequence(const rk_store* store, int64_t num_tokens, int64_t* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_store_pages_per_sequence");
    require_out(out, "rk_store_pages_per_sequence", "out");
    *out = s.pages_per_sequence(num_tokens);
  });
}

int rk_store_sequences_that_fit(const rk_store* store, int64_t num_tokens, int64_t* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_store_sequences_that_fit");
    require_out(out, "rk_store_sequences_that_fit", "out");
    *out = s.sequences_that_fit(num_tokens);
  });
}

// ---- page-table interchange ------------------------------------------------------------------------------

int rk_export_page_table(const rk_store* store, int32_t layer, const int64_t* seq_ids, int32_t batch_size,
                         int32_t* indptr, int32_t* indices, int64_t indices_capacity, int32_t* last_page_len,
                         int32_t* page_pos0, int64_t* num_indices_out) {
  return guard([&] {
    const char* fn = "rk_export_page_table";
    const redknot::AnyStore& s = store_of(store, fn);
    const auto ids = host_array(seq_ids, batch_size, fn, "seq_ids");
    require(indices_capacity >= 0, fn, ": indices_capacity=", indices_capacity, " must be >= 0");
    const bool query_only = indices == nullptr;
    require(!query_only || indices_capacity == 0, fn,
            ": indices is NULL but indices_capacity=", indices_capacity);
    if (!query_only) {
      require(indptr != nullptr, fn, ": indptr is NULL (it needs batch_size * num_kv_heads + 1 entries)");
      require(last_page_len != nullptr, fn,
              ": last_page_len is NULL (it needs batch_size * num_kv_heads entries)");
    }
    const redknot::PageTableCsr csr = s.export_page_table(layer, ids);
    const auto n = static_cast<std::int64_t>(csr.indices.size());
    if (!query_only) {
      require(n <= indices_capacity, fn, ": indices_capacity=", indices_capacity, " is too small, need ", n,
              " (call with indices=NULL to query the size)");
      std::copy(csr.indptr.begin(), csr.indptr.end(), indptr);
      std::copy(csr.indices.begin(), csr.indices.end(), indices);
      std::copy(csr.last_page_len.begin(), csr.last_page_len.end(), last_page_len);
      if (page_pos0) std::copy(csr.page_pos0.begin(), csr.page_pos0.end(), page_pos0);
    } else {
      if (indptr) std::copy(csr.indptr.begin(), csr.indptr.end(), indptr);
      if (last_page_len) std::copy(csr.last_page_len.begin(), csr.last_page_len.end(), last_page_len);
    }
    if (num_indices_out) *num_indices_out = n;
  });
}

int rk_store_get_kv_pool(const rk_store* store, DLTensor* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_store_get_kv_pool");
    require_out(out, "rk_store_get_kv_pool", "out");
    *out = s.kv_pool();
  });
}

}  // extern "C"

// ---- chunks
// ---------------------------------------------------------------------------------------------------

int rk_chunk_key_make(const rk_store* store, const char* model_id, const int32_t* tokens, int64_t n_tokens,
                      rk_chunk_key* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_chunk_key_make");
    require(model_id != nullptr, "rk_chunk_key_make: model_id is NULL");
    require_out(out, "rk_chunk_key_make", "out");
    const auto toks = host_array(tokens, n_tokens, "rk_chunk_key_make", "tokens");
    const redknot::ChunkKey k = s.chunk_key(model_id, toks);
    *out = rk_chunk_key{k.hi, k.lo};
  });
}

int rk_chunk_register(rk_store* store, rk_chunk_key key, int64_t seq) {
  return guard([&] { store_of(store, "rk_chunk_register").register_chunk(key_of(key), seq); });
}

int rk_chunk_lookup(rk_store* store, rk_chunk_key key, int32_t* out_n_tokens) {
  return guard([&] {
    redknot::AnyStore& s = store_of(store, "rk_chunk_lookup");
    require_out(out_n_tokens, "rk_chunk_lookup", "out_n_tokens");
    *out_n_tokens = s.lookup_chunk(key_of(key));
  });
}

int rk_chunk_splice(rk_store* store, int64_t seq, rk_chunk_key key, int32_t at, int32_t first_query) {
  return guard([&] { store_of(store, "rk_chunk_splice").splice(seq, key_of(key), at, first_query); });
}

int rk_chunk_relocate(rk_store* store, int64_t seq, rk_chunk_key key, int32_t at, int32_t first_query) {
  return guard([&] { store_of(store, "rk_chunk_relocate").relocate(seq, key_of(key), at, first_query); });
}

int rk_chunk_drop(rk_store* store, rk_chunk_key key, int32_t* out_dropped) {
  return guard([&] {
    redknot::AnyStore& s = store_of(store, "rk_chunk_drop");
    require_out(out_dropped, "rk_chunk_drop", "out_dropped");
    *out_dropped = s.drop_chunk(key_of(key)) ? 1 : 0;
  });
}

int rk_chunk_get_stats(const rk_store* store, rk_chunk_stats* out) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_chunk_get_stats");
    require_out(out, "rk_chunk_get_stats", "out");
    const redknot::ChunkStats st = s.chunk_stats();
    *out = rk_chunk_stats{st.chunks, st.chunks_in_use, st.pages_held, st.hits,
                          st.misses, st.splices,       st.evictions};
  });
}

int rk_overwrite(rk_store* store, int64_t seq, int32_t layer, const DLTensor* k, const DLTensor* v,
                 const int32_t* positions, int64_t n_tokens) {
  return guard([&] {
    redknot::AnyStore& s = store_of(store, "rk_overwrite");
    require(k != nullptr, "rk_overwrite: k is NULL");
    require(v != nullptr, "rk_overwrite: v is NULL");
    s.overwrite(seq, layer, *k, *v, host_array(positions, n_tokens, "rk_overwrite", "positions"));
  });
}

int rk_read_rows(const rk_store* store, int64_t seq, int32_t layer, const int32_t* positions,
                 int64_t n_tokens, float* k, float* v) {
  return guard([&] {
    const redknot::AnyStore& s = store_of(store, "rk_read_rows");
    const auto pos = host_array(positions, n_tokens, "rk_read_rows", "positions");
    // n_tokens is bounded here, before the product: host_array checks only n_tokens >= 0, and n_tokens near
    // INT64_MAX overflowed the product (signed overflow, UB; found by fuzz_c_api, UBSan).
    require(n_tokens <= redknot::kMaxTokens, "rk_read_rows: n_tokens=", n_tokens, " exceeds ",
            redknot::kMaxTokens);
    const std::int64_t rows = n_tokens * s.shape().num_kv_heads * s.shape().head_dim;
    require((k != nullptr && v != nullptr) || rows == 0, "rk_read_rows: k or v is NULL");
    s.read_rows(seq, layer, pos, std::span<float>(k, static_cast<std::size_t>(rows)),
                std::span<float>(v, static_cast<std::size_t>(rows)));
  });
}

int rk_select_recompute(const char* strategy, double ratio, int32_t first_k, int32_t n_tokens,
                        const float* deviation, int32_t num_kv_heads, const int32_t* head_is_local,
                        const float* query_attention, int32_t* out_tokens, int32_t* out_count) {
  return guard([&] {
    constexpr const char* fn = "rk_select_recompute";
    require(strategy != nullptr, fn, ": strategy is NULL");
    require_out(out_count, fn, "out_count");
    require(n_tokens >= 0, fn, ": n_tokens=", n_tokens, " must be >= 0");
    require(num_kv_heads >= 0 && num_kv_heads <= redknot::kMaxLayersTimesKvHeads, fn,
            ": num_kv_heads=", num_kv_heads, " must be in [0, ", redknot::kMaxLayersTimesKvHeads, "]");
    const std::int64_t cells = std::int64_t{n_tokens} * num_kv_heads;
    std::vector<redknot::HeadPolicy> heads(static_cast<std::size_t>(num_kv_heads));
    const auto local = host_array(head_is_local, head_is_local ? num_kv_heads : 0, fn, "head_is_local");
    for (std::size_t h = 0; h < local.size(); ++h)
      if (local[h]) heads[h] = redknot::HeadPolicy{redknot::HeadClass::kLocal, 1, 0};
    redknot::RecomputeConfig cfg{redknot::parse_recompute_strategy(strategy), ratio, first_k};
    redknot::RecomputeInputs in{
        n_tokens, host_array(deviation, deviation ? cells : 0, fn, "deviation"), heads,
        host_array(query_attention, query_attention ? n_tokens : 0, fn, "query_attention")};
    const std::vector<std::int32_t> picked = redknot::select_recompute(cfg, in);
    require(out_tokens != nullptr || picked.empty(), fn, ": out_tokens is NULL");
    std::copy(picked.begin(), picked.end(), out_tokens);
    *out_count = static_cast<int32_t>(picked.size());
  });
}

// ---- tiers
// -------------------------------------------------------------------------------------------------

int rk_tier_host_create(int64_t capacity_bytes, rk_tier** out) {
  return guard([&] {
    require_out(out, "rk_tier_host_create", "out");
    auto h = std::make_unique<rk_tier>(rk_tier{std::make_unique<redknot::HostTier>(capacity_bytes)});
    *out = register_handle(registry().tiers, std::move(h));
  });
}

int rk_tier_disk_create(const char* dir, int64_t capacity_bytes, int32_t create, int32_t fsync,
                        rk_tier** out) {
  return guard([&] {
    require(dir != nullptr, "rk_tier_disk_create: dir is NULL");
    require(*dir != '\0', "rk_tier_disk_create: dir is empty");
    require_out(out, "rk_tier_disk_create", "out");
    auto h = std::make_unique<rk_tier>(
        rk_tier{std::make_unique<redknot::DiskTier>(dir, capacity_bytes, create != 0, fsync != 0)});
    *out = register_handle(registry().tiers, std::move(h));
  });
}

int rk_tier_destroy(rk_tier* tier) {
  return guard([&] {
    if (!tier) return;
    unregister_unused(registry().tiers, tier, "rk_tier_destroy", "tier handle");
    delete tier;
  });
}

int rk_tier_get_stats(const rk_tier* tier, rk_tier_stats* out) {
  return guard([&] {
    const redknot::KvTier& t = tier_of(tier, "rk_tier_get_stats");
    require_out(out, "rk_tier_get_stats", "out");
    const redknot::TierStats s = t.stats();
    *out = rk_tier_stats{s.capacity_bytes, s.bytes_held,    s.objects,       s.hits,         s.misses,
                         s.evictions,      s.evicted_bytes, s.bytes_written, s.bytes_read,   s.put_failures,
                         s.corrupt,        s.get_ns,        s.spilled,       s.spilled_bytes};
  });
}

int rk_tier_contains(const rk_tier* tier, const char* name, int32_t* out) {
  return guard([&] {
    const redknot::KvTier& t = tier_of(tier, "rk_tier_contains");
    require(name != nullptr, "rk_tier_contains: name is NULL");
    require_out(out, "rk_tier_contains", "out");
    *out = t.contains(name) ? 1 : 0;
  });
}

int rk_tier_remove(rk_tier* tier, const char* name, int32_t* out_removed) {
  return guard([&] {
    redknot::KvTier& t = tier_of(tier, "rk_tier_remove");
    require(name != nullptr, "rk_tier_remove: name is NULL");
    const bool removed = t.remove(name);
    if (out_removed) *out_removed = removed ? 1 : 0;
  });
}

int rk_prefetcher_create(int32_t threads, rk_prefetcher** out) {
  return guard([&] {
    require_out(out, "rk_prefetcher_create", "out");
    auto h =
        std::make_unique<rk_prefetcher>(rk_prefetcher{std::make_unique<redknot::TierPrefetcher>(threads)});
    *out = register_handle(registry().prefetchers, std::move(h));
  });
}

int rk_prefetcher_destroy(rk_prefetcher* prefetcher) {
  return guard([&] {
    if (!prefetcher) return;
    unregister_unused(registry().prefetchers, prefetcher, "rk_prefetcher_destroy", "prefetcher handle");
    delete prefetcher;
  });
}

// ---- swap
// --------------------------------------------------------------------------------------------------

int rk_swap_out(rk_store* store, int64_t seq, rk_tier* hot, rk_tier* cold, const char* model_id,
                const char* name, rk_swap_ticket** out_ticket) {
  return guard([&] {
    constexpr const char* fn = "rk_swap_out";
    redknot::AnyStore& s = store_of(store, fn);
    redknot::KvTier& h = tier_of(hot, fn, "hot tier handle");
    redknot::KvTier* c = opt_tier(cold, fn, "cold tier handle");
    require(model_id != nullptr, fn, ": model_id is NULL");
    require(name != nullptr, fn, ": name is NULL");
    require_out(out_ticket, fn, "out_ticket");
    auto t =
        std::make_unique<rk_swap_ticket>(rk_swap_ticket{redknot::any_swap_out(s, seq, h, c, model_id, name)});
    *out_ticket = register_handle(registry().tickets, std::move(t));
  });
}

int rk_swap_in(rk_store* store, rk_swap_ticket* ticket, rk_tier* hot, rk_tier* cold,
               rk_prefetcher* prefetcher, int64_t* out_seq) {
  return guard([&] {
    constexpr const char* fn = "rk_swap_in";
    redknot::AnyStore& s = store_of(store, fn);
    redknot::AnySwapTicket& t = ticket_of(ticket, fn);
    redknot::KvTier& h = tier_of(hot, fn, "hot tier handle");
    redknot::KvTier* c = opt_tier(cold, fn, "cold tier handle");
    redknot::TierPrefetcher* p = opt_prefetcher(prefetcher, fn);
    require_out(out_seq, fn, "out_seq");
    *out_seq = redknot::any_swap_in(s, t, h, c, p);
  });
}

int rk_swap_discard(rk_swap_ticket* ticket, rk_tier* hot, rk_tier* cold) {
  return guard([&] {
    constexpr const char* fn = "rk_swap_discard";
    redknot::AnySwapTicket& t = ticket_of(ticket, fn);
    redknot::any_discard_swap(t, tier_of(hot, fn, "hot tier handle"), opt_tier(cold, fn, "cold tier handle"));
  });
}

int rk_swap_ticket_get_info(const rk_swap_ticket* ticket, rk_swap_ticket_info* out) {
  return guard([&] {
    const redknot::AnySwapTicket& t = ticket_of(ticket, "rk_swap_ticket_get_info");
    require_out(out, "rk_swap_ticket_get_info", "out");
    *out = rk_swap_ticket_info{t.bytes(), t.num_objects(), t.num_cold_objects(), t.num_layers(),
                               t.used() ? 1 : 0};
  });
}

int rk_swap_ticket_destroy(rk_swap_ticket* ticket) {
  return guard([&] {
    if (!ticket) return;
    unregister(registry().tickets, ticket, "rk_swap_ticket_destroy", "swap ticket handle");
    delete ticket;
  });
}

// ---- chunks through tiers
// ----------------------------------------------------------------------------------

int rk_chunk_tiers_create(rk_store* store, const char* model_id, rk_tier* const* tiers, int32_t n_tiers,
                          int64_t min_splices, rk_prefetcher* prefetcher, rk_chunk_tiers** out) {
  return guard([&] {
    constexpr const char* fn = "rk_chunk_tiers_create";
    redknot::AnyStore& s = store_of(store, fn);
    require(model_id != nullptr, fn, ": model_id is NULL");
    require(n_tiers >= 1, fn, ": n_tiers=", n_tiers, " must be >= 1");
    require(tiers != nullptr, fn, ": tiers is NULL but n_tiers is ", n_tiers);
    require_out(out, fn, "out");
    std::vector<rk_tier*> handles(tiers, tiers + n_tiers);
    std::vector<redknot::KvTier*> impls;
    for (std::size_t i = 0; i < handles.size(); ++i) {
      const std::string name = "tiers[" + std::to_string(i) + "]";
      impls.push_back(&tier_of(handles[i], fn, name.c_str()));
      for (std::size_t j = 0; j < i; ++j)
        require(handles[j] != handles[i], fn, ": tiers[", j, "] and tiers[", i, "] are the same tier ",
                static_cast<const void*>(handles[i]));
    }
    redknot::TierPrefetcher* p = opt_prefetcher(prefetcher, fn);
    auto h = std::make_unique<rk_chunk_tiers>(rk_chunk_tiers{
        store, handles, prefetcher,
        s.make_chunk_tiers(redknot::model_fingerprint(model_id), std::move(impls), min_splices, p)});
    // What the cache holds must still be live when it is counted (another thread may have destroyed a handle
    // since it was checked): count under the registry's lock.
    std::lock_guard lk(registry().mu);
    Registry& r = registry();
    require(r.stores.count(store) == 1, fn, ": store handle was destroyed during the call");
    for (rk_tier* t : handles)
      require(r.tiers.count(t) == 1, fn, ": a tier handle was destroyed during the call");
    require(!prefetcher || r.prefetchers.count(prefetcher) == 1, fn,
            ": the prefetcher handle was destroyed during the call");
    ++store->users;
    for (rk_tier* t : handles) ++t->users;
    if (prefetcher) ++prefetcher->users;
    r.chunk_tiers.insert(h.get());
    *out = h.release();
  });
}

int rk_chunk_tiers_destroy(rk_chunk_tiers* cache) {
  return guard([&] {
    if (!cache) return;
    {
      std::lock_guard lk(registry().mu);
      require(registry().chunk_tiers.erase(cache) == 1, "rk_chunk_tiers_destroy: chunk tiers handle ",
              static_cast<const void*>(cache), " is not live (destroyed or never created)");
    }
    cache->impl.reset();  // waits for its reads in flight, which use the tiers and the prefetcher
    std::lock_guard lk(registry().mu);
    --cache->store->users;
    for (rk_tier* t : cache->tiers) --t->users;
    if (cache->prefetcher) --cache->prefetcher->users;
    delete cache;
  });
}

int rk_chunk_tiers_make_room(rk_chunk_tiers* cache, int64_t pages, int64_t* out_freed) {
  return guard([&] {
    const std::int64_t freed = chunk_tiers_of(cache, "rk_chunk_tiers_make_room").make_room(pages);
    if (out_freed) *out_freed = freed;
  });
}

int rk_chunk_tiers_demote(rk_chunk_tiers* cache, rk_chunk_key key, int32_t* out_written) {
  return guard([&] {
    const bool written = chunk_tiers_of(cache, "rk_chunk_tiers_demote").demote(key_of(key));
    if (out_written) *out_written = written ? 1 : 0;
  });
}

int rk_chunk_tiers_lookup(rk_chunk_tiers* cache, rk_chunk_key key, int32_t* out_n_tokens) {
  return guard([&] {
    redknot::AnyChunkTiers& c = chunk_tiers_of(cache, "rk_chunk_tiers_lookup");
    require_out(out_n_tokens, "rk_chunk_tiers_lookup", "out_n_tokens");
    *out_n_tokens = c.lookup(key_of(key));
  });
}

int rk_chunk_tiers_prefetch(rk_chunk_tiers* cache, rk_chunk_key key, int32_t* out_started) {
  return guard([&] {
    const bool started = chunk_tiers_of(cache, "rk_chunk_tiers_prefetch").prefetch(key_of(key));
    if (out_started) *out_started = started ? 1 : 0;
  });
}

int rk_chunk_tiers_contains(const rk_chunk_tiers* cache, rk_chunk_key key, int32_t* out) {
  return guard([&] {
    const redknot::AnyChunkTiers& c = chunk_tiers_of(cache, "rk_chunk_tiers_contains");
    require_out(out, "rk_chunk_tiers_contains", "out");
    *out = c.in_tiers(key_of(key)) ? 1 : 0;
  });
}

int rk_chunk_tiers_get_stats(const rk_chunk_tiers* cache, rk_chunk_tier_stats* out) {
  return guard([&] {
    const redknot::AnyChunkTiers& c = chunk_tiers_of(cache, "rk_chunk_tiers_get_stats");
    require_out(out, "rk_chunk_tiers_get_stats", "out");
    const redknot::ChunkTierStats s = c.stats();
    *out = rk_chunk_tier_stats{s.demotions,        s.dropped,    s.write_failures, s.promotions,
                               s.promote_failures, s.rejected,   s.misses,         s.bytes_down,
                               s.bytes_up,         s.prefetches, s.read_wait_ns,   s.promote_ns};
  });
}

int rk_live_tier_handles(int64_t* num_tiers, int64_t* num_prefetchers, int64_t* num_tickets,
                         int64_t* num_chunk_tiers) {
  return guard([&] {
    std::lock_guard lk(registry().mu);
    const Registry& r = registry();
    if (num_tiers) *num_tiers = static_cast<int64_t>(r.tiers.size());
    if (num_prefetchers) *num_prefetchers = static_cast<int64_t>(r.prefetchers.size());
    if (num_tickets) *num_tickets = static_cast<int64_t>(r.tickets.size());
    if (num_chunk_tiers) *num_chunk_tiers = static_cast<int64_t>(r.chunk_tiers.size());
  });
}

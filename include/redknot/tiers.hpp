// Byte tiers below the page pool, and what moves through them: registered chunks that are evicted (they move
// down instead of being dropped, and come back on lookup) and preempted sequences (swap out / swap in).
//
// A tier stores named byte objects (KvTier): HostTier in RAM, DiskTier as one file per object in a
// directory. Both have a byte capacity and evict the least recently used object to make room (an evicted
// object is gone; stats count it). What goes in is the verified slice format of kv_slice.hpp, packed several
// slices to an object: whatever comes back is decoded and checked against the store (model, head map, dtype,
// shape, chunk key) before it becomes KV, so a corrupt, truncated or foreign object is a miss, never KV. A
// tier never throws for I/O: a put that cannot be done (larger than the tier, read-only or full directory)
// returns false and counts a failure; a get that cannot be read or verified is a miss. Bad arguments (an
// invalid object name) throw InvalidArgument as everywhere else.
//
// Thread safety: a tier's calls are serialised by its own mutex. TieredChunkCache, swap_out and swap_in write
// to the store: one writer at a time, as for every store call.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <future>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include "redknot/chunk_key.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/kv_slice.hpp"

namespace redknot {

// Counters of one tier; totals since it was created, except bytes_held and objects.
struct TierStats {
  std::int64_t capacity_bytes = 0;
  std::int64_t bytes_held = 0;  // what the objects take in the tier (DiskTier: file sizes, headers included)
  std::int64_t objects = 0;
  std::int64_t hits = 0;
  std::int64_t misses = 0;     // absent, unreadable or failed verification
  std::int64_t evictions = 0;  // objects dropped to make room (least recently used first)
  std::int64_t evicted_bytes = 0;
  std::int64_t spilled = 0;  // evicted objects the tier below took (HostTier with spill_to); others are gone
  std::int64_t spilled_bytes = 0;
  std::int64_t bytes_written = 0;
  std::int64_t bytes_read = 0;
  std::int64_t put_failures =
      0;                     // puts refused: larger than the tier, or an I/O error (the old object stays)
  std::int64_t corrupt = 0;  // objects that failed verification on read (removed)
  std::int64_t get_ns = 0;   // time spent in get()
};

// A named-object store. Names are 1..200 characters of [A-Za-z0-9._-], not starting with '.'
// (InvalidArgument otherwise). put() replaces an object of the same name, or returns false and leaves the
// tier as it was; get() gives the bytes put() was given, or nullopt.
class KvTier {
 public:
  virtual ~KvTier() = default;
  virtual bool put(std::string_view name, std::span<const std::byte> bytes) = 0;
  virtual std::optional<std::vector<std::byte>> get(std::string_view name) = 0;
  virtual bool remove(std::string_view name) = 0;  // false when absent
  virtual bool contains(std::string_view name) const = 0;
  virtual TierStats stats() const = 0;
};

// Throws InvalidArgument unless `name` is a valid object name (see KvTier).
void check_object_name(std::string_view name);

namespace tier_detail {

// Names by recency of use, with their sizes: the one LRU of both tiers.
class LruIndex {
 public:
  bool contains(const std::string& name) const { return items_.count(name) != 0; }
  void insert(const std::string& name, std::int64_t bytes);  // most recent; replaces
  void touch(const std::string& name);                       // most recent
  std::optional<std::int64_t> erase(const std::string& name);
  const std::string* oldest() const { return order_.empty() ? nullptr : &order_.front(); }
  std::int64_t bytes() const { return bytes_; }
  std::int64_t size() const { return static_cast<std::int64_t>(items_.size()); }

 private:
  struct Item {
    std::list<std::string>::iterator it;
    std::int64_t bytes;
  };
  std::list<std::string> order_;  // front: least recently used
  std::unordered_map<std::string, Item> items_;
  std::int64_t bytes_ = 0;
};

}  // namespace tier_detail

namespace tier_detail {

// What both tiers share: the lock, the LRU index and the counters, contains() and stats() over them, and
// eviction.
class LruTier : public KvTier {
 public:
  bool contains(std::string_view name) const override;
  TierStats stats() const override;

 protected:
  LruTier(std::int64_t capacity_bytes, const char* what);
  // Drops least recently used objects until `room` more bytes fit, calling drop(name) to release each one's
  // storage. The caller holds mu_.
  template <class Drop>
  void evict_until(std::int64_t room, Drop&& drop) {
    while (lru_.size() > 0 && lru_.bytes() + room > st_.capacity_bytes) {
      const std::string victim = *lru_.oldest();
      st_.evicted_bytes += *lru_.erase(victim);
      ++st_.evictions;
      drop(victim);
    }
  }
  mutable std::mutex mu_;
  LruIndex lru_;
  TierStats st_;
};

}  // namespace tier_detail

// Objects in RAM, evicted least recently used first when a put needs room. spill_to (optional; it must
// outlive this tier): an evicted object is put there instead of being dropped — a host tier over a disk tier
// keeps what falls out of RAM. The put runs under this tier's lock, so spill chains must not loop back.
class HostTier final : public tier_detail::LruTier {
 public:
  explicit HostTier(std::int64_t capacity_bytes, KvTier* spill_to = nullptr);
  bool put(std::string_view name, std::span<const std::byte> bytes) override;
  std::optional<std::vector<std::byte>> get(std::string_view name) override;
  bool remove(std::string_view name) override;

 private:
  std::unordered_map<std::string, std::vector<std::byte>> data_;
  KvTier* spill_to_;
};

// Objects as files `<name>.rkt` in one directory: a 32-byte header (magic "RKTO", version, payload length,
// XXH3-64 of the payload, XXH3-64 of the name) and the bytes. A put writes a temporary file and renames it
// over the object (atomic: a reader sees the old object or the new one, a crash leaves a temporary the next
// DiskTier on the directory removes). A get reads with pread and verifies; a file that fails (truncated,
// corrupt, written under another name) is a miss and is removed. The LRU order is kept in memory; objects
// found in the directory at construction are adopted, oldest modification first. Capacity counts file
// sizes; a put evicts after its rename succeeded, so the directory may exceed it by one object meanwhile.
class DiskTier final : public tier_detail::LruTier {
 public:
  // A missing directory is created when `create` (else NotFound); one that cannot be created, or a path that
  // is not a directory, is Unavailable. fsync: flush each object to the device before renaming it.
  DiskTier(std::filesystem::path dir, std::int64_t capacity_bytes, bool create = true, bool fsync = false);
  bool put(std::string_view name, std::span<const std::byte> bytes) override;
  std::optional<std::vector<std::byte>> get(std::string_view name) override;
  bool remove(std::string_view name) override;
  const std::filesystem::path& dir() const { return dir_; }
  // The file that holds object `name` (it may not exist).
  std::filesystem::path path_of(std::string_view name) const;

 private:
  void unlink_object(const std::string& name) const;
  std::filesystem::path dir_;
  bool fsync_;
  std::uint64_t tmp_counter_ = 0;
};

// Several encoded slices as one object: "RKPK", count (u32), then each slice as its length (u64) and its
// bytes, little-endian. unpack_slices gives views into `bytes`, or nullopt when the framing does not add up
// (the slices themselves are verified by decode_slice).
std::vector<std::byte> pack_slices(std::span<const std::vector<std::byte>> slices);
std::optional<std::vector<std::span<const std::byte>>> unpack_slices(std::span<const std::byte> bytes);

// XXH3-64 of an object's bytes (a swap ticket's end-to-end check).
std::uint64_t object_digest(std::span<const std::byte> bytes);

// Reads tier objects ahead of their use on a few threads of its own, so that the next object's I/O overlaps
// the work on this one (promoting a request's documents, restoring a swapped-out sequence layer after layer).
// A read is KvTier::get() run on a worker: its result (or exception) comes back through the future. The
// tiers must outlive the reads queued on them; the destructor finishes the reads in flight and drops the
// queued ones (their futures give nullopt).
class TierPrefetcher {
 public:
  using Read = std::future<std::optional<std::vector<std::byte>>>;
  explicit TierPrefetcher(int threads = 2);
  ~TierPrefetcher();
  TierPrefetcher(const TierPrefetcher&) = delete;
  TierPrefetcher& operator=(const TierPrefetcher&) = delete;

  Read get(KvTier& tier, std::string name);
  // Any other work for the threads (a pipelined swap-in reads, checks and decodes a layer's objects): f()
  // runs on a worker, its result or exception comes back through the future. A task still queued when the
  // destructor runs is dropped: its future throws std::future_error (broken promise).
  template <class F>
  auto run(F f) -> std::future<decltype(f())> {
    auto task = std::make_shared<std::packaged_task<decltype(f())()>>(std::move(f));
    auto result = task->get_future();
    enqueue(Job{[task] { (*task)(); }, [] {}});
    return result;
  }
  int threads() const { return static_cast<int>(workers_.size()); }

  static void wait_all(std::vector<Read>& reads) {
    for (Read& r : reads)
      if (r.valid()) r.wait();
  }
  // Waits for every read of a vector when the scope ends.
  struct WaitAll {
    std::vector<Read>& reads;
    ~WaitAll() { wait_all(reads); }
  };

 private:
  struct Job {
    std::function<void()> run;   // on a worker
    std::function<void()> drop;  // instead of run, when the prefetcher stops first
  };
  void enqueue(Job job);
  void work();
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

// ---- chunks move down instead of being dropped
// ------------------------------------------------------------------

struct ChunkTierPolicy {
  // Admission: only chunks spliced at least this many times are written down; others are dropped.
  std::int64_t min_splices = 0;
};

struct ChunkTierStats {
  std::int64_t demotions = 0;       // chunks written down and dropped from the store
  std::int64_t dropped = 0;         // chunks dropped without a copy below (not admitted, or no tier took it)
  std::int64_t write_failures = 0;  // demotions every tier refused (counted in dropped too)
  std::int64_t promotions = 0;      // chunks read back, verified and registered again
  std::int64_t promote_failures = 0;  // a verified copy that did not fit in the pool (it stays below)
  std::int64_t rejected = 0;          // objects that failed verification (removed)
  std::int64_t misses = 0;            // lookups found nowhere
  std::int64_t bytes_down = 0;
  std::int64_t bytes_up = 0;
  std::int64_t prefetches = 0;    // reads started by prefetch()
  std::int64_t read_wait_ns = 0;  // lookups waiting on tier reads (a read not prefetched is waited in full)
  std::int64_t promote_ns = 0;    // lookups promoting: reads waited on, checks, import
};

// Keeps a store's chunk registry over a stack of tiers (fastest first). The store's own eviction (an append
// that finds no free page drops unused chunks) is untouched: the engine calls make_room() before its next
// appends (e.g. when free pages fall below a watermark), and that writes the least recently used unused
// chunks down before dropping them. lookup() finds a chunk in the store or promotes it from a tier: read,
// verify every slice (model, head map, dtype, shape, chunk key), import, register. A chunk moves: it is
// removed from the tier once it is back in the store.
template <StorageType T>
class TieredChunkCache {
 public:
  // prefetcher (optional): reads for prefetch(); it must outlive this cache.
  TieredChunkCache(KVHeadStore<T>& store, std::uint64_t model_fp, std::vector<KvTier*> tiers,
                   ChunkTierPolicy policy = {}, TierPrefetcher* prefetcher = nullptr)
      : store_(store),
        model_fp_(model_fp),
        tiers_(std::move(tiers)),
        policy_(policy),
        prefetcher_(prefetcher) {
    require(!tiers_.empty(), "TieredChunkCache: no tier");
    for (std::size_t i = 0; i < tiers_.size(); ++i)
      require(tiers_[i] != nullptr, "TieredChunkCache: tier ", i, " is null");
    require(policy_.min_splices >= 0, "TieredChunkCache: min_splices=", policy_.min_splices, " must be >= 0");
  }
  ~TieredChunkCache() {
    for (auto& [key, p] : pending_) p.read.wait();  // reads in flight name the tiers
  }
  TieredChunkCache(const TieredChunkCache&) = delete;
  TieredChunkCache& operator=(const TieredChunkCache&) = delete;

  static std::string object_name(const ChunkKey& key) { return "chunk-" + to_hex(key); }

  // Demotes unused chunks, least recently used first, until `pages` pages are free or no unused chunk is
  // left. Returns the number of pages that became free.
  // `keep`: chunks not to demote although unused — the documents of a request being assembled, found but not
  // spliced yet.
  std::int64_t make_room(std::int64_t pages, std::span<const ChunkKey> keep = {}) {
    const std::int64_t free0 = store_.pool().free_pages();
    while (store_.pool().free_pages() < pages) {
      std::optional<ChunkKey> victim;
      std::uint64_t oldest = 0;
      for (const ChunkKey& k : store_.chunk_keys()) {
        const ChunkInfo c = store_.chunk_info(k);
        if (c.users == 0 && std::find(keep.begin(), keep.end(), k) == keep.end() &&
            (!victim || c.last_used < oldest))
          victim = k, oldest = c.last_used;
      }
      if (!victim) break;
      demote(*victim);
    }
    return store_.pool().free_pages() - free0;
  }

  // Writes chunk `key` to the first tier that takes it (when admitted) and drops it from the store. Returns
  // whether a copy landed below. NotFound when not registered; InvalidArgument when a live sequence uses it.
  bool demote(const ChunkKey& key) {
    const ChunkInfo info = store_.chunk_info(key);
    require(info.users == 0, "demote: chunk ", to_hex(key), " is spliced into ", info.users,
            " live sequence(s)");
    bool written = false;
    if (info.splices >= policy_.min_splices) {
      const auto bytes = pack_slices(export_slices(store_, key, model_fp_));
      for (KvTier* t : tiers_)
        if ((written = t->put(object_name(key), bytes))) break;
      if (written) {
        ++st_.demotions;
        st_.bytes_down += static_cast<std::int64_t>(bytes.size());
      } else {
        ++st_.write_failures;
      }
    }
    if (!written) ++st_.dropped;
    store_.drop_chunk(key);
    return written;
  }

  // Tokens of chunk `key`: from the store (a hit there), or promoted from the first tier holding a verified
  // copy. nullopt: a miss (found nowhere, or no copy verified or fitted).
  // keep: as for make_room(), for the room a promotion makes.
  std::optional<std::int32_t> lookup(const ChunkKey& key, std::span<const ChunkKey> keep = {}) {
    std::optional<Pending> ahead;
    if (const auto it = pending_.find(key); it != pending_.end()) {
      ahead = std::move(it->second);
      pending_.erase(it);
    }
    if (store_.has_chunk(key)) {
      if (ahead) ahead->read.wait();
      return store_.lookup_chunk(key);
    }
    const auto t0 = std::chrono::steady_clock::now();
    bool found = false;
    if (ahead) found = promote(*tiers_[ahead->tier], key, &ahead->read, keep);
    for (std::size_t i = 0; !found && i < tiers_.size(); ++i) found = promote(*tiers_[i], key, nullptr, keep);
    if (found) {
      st_.promote_ns += elapsed_ns(t0);
      return store_.lookup_chunk(key);
    }
    ++st_.misses;
    return std::nullopt;
  }

  // Starts reading chunk `key` from the first tier holding it, on the prefetcher, so that a lookup() later
  // (e.g. of a request's next document, while this one is spliced and recomputed) finds the bytes read.
  // Returns whether a read started: not when there is no prefetcher, the chunk is in the store, in no tier,
  // or already being read.
  bool prefetch(const ChunkKey& key) {
    if (prefetcher_ == nullptr || store_.has_chunk(key) || pending_.count(key) != 0) return false;
    for (std::size_t i = 0; i < tiers_.size(); ++i)
      if (tiers_[i]->contains(object_name(key))) {
        pending_.emplace(key, Pending{i, prefetcher_->get(*tiers_[i], object_name(key))});
        ++st_.prefetches;
        return true;
      }
    return false;
  }

  bool in_tiers(const ChunkKey& key) const {
    for (const KvTier* t : tiers_)
      if (t->contains(object_name(key))) return true;
    return false;
  }

  ChunkTierStats stats() const { return st_; }

 private:
  struct Pending {
    std::size_t tier;
    TierPrefetcher::Read read;
  };

  static std::int64_t elapsed_ns(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0)
        .count();
  }

  // From `tier`: the bytes `ahead` reads, or a read now.
  bool promote(KvTier& tier, const ChunkKey& key, TierPrefetcher::Read* ahead,
               std::span<const ChunkKey> keep) {
    const std::string name = object_name(key);
    if (ahead == nullptr && !tier.contains(name)) return false;
    const auto w0 = std::chrono::steady_clock::now();
    const auto bytes = ahead != nullptr ? ahead->get() : tier.get(name);
    st_.read_wait_ns += elapsed_ns(w0);
    if (!bytes) return false;  // the tier counted the miss (and removed a file that failed its check)
    const auto parts = unpack_slices(*bytes);
    std::vector<DecodedSlice> slices;
    const SliceExpect expect = slice_expect(store_, model_fp_, key);
    bool ok = parts.has_value() && !parts->empty();
    for (std::size_t i = 0; ok && i < parts->size(); ++i) {
      auto d = decode_slice((*parts)[i], expect);
      ok = d.has_value();
      if (ok) slices.push_back(*d);
    }
    if (!ok) return reject(tier, name);
    // Room first, so that the import's appends need not drop (rather than demote) other chunks.
    std::int32_t n = 0;
    for (const DecodedSlice& s : slices) n = std::max(n, s.header.pos0 + s.header.count);
    const std::int64_t per_head =
        (static_cast<std::int64_t>(n) + store_.page_size() - 1) / store_.page_size();
    make_room(per_head * store_.shape().num_layers * store_.shape().num_kv_heads, keep);
    try {
      import_chunk(store_, std::span<const DecodedSlice>(slices));
    } catch (const PoolExhausted&) {
      ++st_.promote_failures;
      return false;
    } catch (const InvalidArgument&) {  // verified slices that do not make a chunk (heads missing, gaps)
      return reject(tier, name);
    }
    tier.remove(name);
    ++st_.promotions;
    st_.bytes_up += static_cast<std::int64_t>(bytes->size());
    return true;
  }

  bool reject(KvTier& tier, const std::string& name) {
    tier.remove(name);
    ++st_.rejected;
    return false;
  }

  KVHeadStore<T>& store_;
  std::uint64_t model_fp_;
  std::vector<KvTier*> tiers_;
  ChunkTierPolicy policy_;
  TierPrefetcher* prefetcher_;
  std::map<ChunkKey, Pending> pending_;
  ChunkTierStats st_;
};

// ---- sequence swap-out / swap-in (preemption)
// -----------------------------------------------------------------

// One run of positions of one kv_head inside a swap object (the layout of its slices, known before the object
// is read: a pipelined swap-in reserves the sequence's pages from it and checks every slice against it).
struct SwapRun {
  std::int32_t kv_head = 0;
  std::int32_t pos0 = 0;       // first position
  std::int32_t count = 0;      // rows
  std::int32_t rope_pos0 = 0;  // position the first key is rotated for
  friend bool operator==(const SwapRun&, const SwapRun&) = default;
};

struct SwapObject {
  std::string name;
  int layer = 0;
  bool local = false;  // the layer's local heads (else its global-like heads)
  bool cold = false;   // written to the cold tier (global heads; local ones the hot tier refused)
  std::int64_t bytes = 0;
  std::uint64_t digest = 0;   // object_digest of what was written
  std::vector<SwapRun> runs;  // its slices, in order
};

// What swap_in needs to restore a swapped-out sequence: its objects (hottest first: every layer's local
// heads, then the global-like heads) and the sequence's next positions and query floors per layer.
struct SwapTicket {
  std::uint64_t model_fp = 0;
  std::vector<std::int32_t> next_pos;
  std::vector<std::int32_t> query_floor;
  std::vector<SwapObject> objects;
  std::int64_t bytes() const {
    std::int64_t n = 0;
    for (const SwapObject& o : objects) n += o.bytes;
    return n;
  }
};

// Removes a ticket's objects from the tiers (a sequence the engine gives up on).
void discard_swap(const SwapTicket& ticket, KvTier& hot, KvTier& cold);
inline void discard_swap(const SwapTicket& ticket, KvTier& tier) { discard_swap(ticket, tier, tier); }

// Writes every row sequence `seq` holds (local heads: their sink and window runs; global-like heads:
// everything; spliced chunks' keys with their rotation) as objects "<name>.l<layer>.local" and
// "<name>.l<layer>.global", then frees the sequence. Placement by head class: local heads' objects (small:
// sink + window, and what a restore needs first) go to `hot`, or to `cold` when `hot` refuses them; global
// heads' long histories go to `cold`. nullopt when a tier refuses an object: what was written is removed
// again and the sequence stays as it was. InvalidArgument (nothing written) when an object of that name is
// already in either tier: each swapped-out sequence needs a name of its own.
template <StorageType T>
std::optional<SwapTicket> swap_out(KVHeadStore<T>& store, SeqId seq, KvTier& hot, KvTier& cold,
                                   std::uint64_t model_fp, std::string_view name) {
  require<NotFound>(store.contains(seq), "swap_out: sequence id=", seq, " is not live");
  const ModelShape& sh = store.shape();
  check_object_name(detail::concat(name, ".l", sh.num_layers - 1, ".global"));  // the longest name it writes
  // A name in use would replace another swapped-out sequence's objects: both would be lost (the other
  // ticket's digests no longer match, and this one's miss would remove what the other wrote).
  for (int l = 0; l < sh.num_layers; ++l)
    for (const char* part : {".local", ".global"}) {
      const std::string n = detail::concat(name, ".l", l, part);
      require(!hot.contains(n) && !cold.contains(n), "swap_out: tier object '", n, "' already exists (name '",
              name, "' is in use by another swapped-out sequence): pick a unique name");
    }
  SwapTicket t;
  t.model_fp = model_fp;
  std::vector<SwapObject> global;
  SliceHeader h;
  h.model_fp = model_fp;
  h.map_fp = head_map_fingerprint(store.head_map());
  h.dtype = dtype_of<T>();
  h.head_dim = sh.head_dim;
  for (int l = 0; l < sh.num_layers; ++l) {
    t.next_pos.push_back(store.next_position(seq, l));
    t.query_floor.push_back(store.query_floor(seq, l));
    for (const bool local : {true, false}) {
      std::vector<std::vector<std::byte>> slices;
      std::vector<SwapRun> runs;
      std::vector<SliceHeader> headers;
      h.layer = l;
      for (int kh = 0; kh < sh.num_kv_heads; ++kh) {
        if (store.policy(l, kh).is_local() != local) continue;
        h.kv_head = kh;
        headers.clear();
        slice_detail::export_table(store, store.table(seq, l, kh), h, 0, slices, &headers);
        for (const SliceHeader& e : headers) runs.push_back(SwapRun{kh, e.pos0, e.count, e.rope_pos0});
      }
      if (slices.empty()) continue;
      const auto bytes = pack_slices(slices);
      SwapObject o{detail::concat(name, ".l", l, local ? ".local" : ".global"),
                   l,
                   local,
                   !local,
                   static_cast<std::int64_t>(bytes.size()),
                   object_digest(bytes),
                   std::move(runs)};
      bool put = !o.cold && hot.put(o.name, bytes);
      if (!put) o.cold = true, put = cold.put(o.name, bytes);
      (local ? t.objects : global).push_back(std::move(o));
      if (!put) {
        t.objects.insert(t.objects.end(), global.begin(), global.end());
        discard_swap(t, hot, cold);
        return std::nullopt;
      }
    }
  }
  t.objects.insert(t.objects.end(), global.begin(), global.end());
  // A tier that made room for later objects by evicting earlier ones of this ticket: refused as a whole.
  const bool all_there = std::all_of(t.objects.begin(), t.objects.end(), [&](const SwapObject& o) {
    return hot.contains(o.name) || cold.contains(o.name);  // a hot tier may spill to the cold one
  });
  if (!all_there) {
    discard_swap(t, hot, cold);
    return std::nullopt;
  }
  store.free_sequence(seq);
  return t;
}

// swap_out with every object in one tier.
template <StorageType T>
std::optional<SwapTicket> swap_out(KVHeadStore<T>& store, SeqId seq, KvTier& tier, std::uint64_t model_fp,
                                   std::string_view name) {
  return swap_out(store, seq, tier, tier, model_fp, name);
}

// What a swap-in may use and report.
struct SwapInOptions {
  // Reads the ticket's objects ahead (all of them queued at once, hottest first): object i + 1 is read while
  // object i is checked and decoded. nullptr: read one by one.
  TierPrefetcher* prefetcher = nullptr;
  std::string* why = nullptr;  // the reason of a nullopt
};
struct SwapInStats {
  std::int64_t bytes = 0;    // read from the tiers
  std::int64_t wait_ns = 0;  // spent waiting for tier reads
  std::int64_t total_ns = 0;
};

// Restores a swapped-out sequence into `store` (the one it left, or another of the same model, map, dtype and
// shape): reads the ticket's objects hottest first (each from the tier swap_out put it in), checks each
// against its digest and every slice against the store, and rebuilds the head tables with
// restore_sequence(): the same positions with the same rotations, the same next positions and query floors.
// The objects are removed afterwards. nullopt (reason in *opt.why) when an object is missing or fails a
// check: the sequence cannot come back, its objects are removed and the store is unchanged. PoolExhausted
// when the pool lacks pages (objects and store unchanged: make room and retry).
template <StorageType T>
std::optional<SeqId> swap_in(KVHeadStore<T>& store, const SwapTicket& ticket, KvTier& hot, KvTier& cold,
                             SwapInOptions opt = {}, SwapInStats* stats = nullptr) {
  const auto t0 = std::chrono::steady_clock::now();
  SwapInStats st;
  const ModelShape& sh = store.shape();
  const std::size_t D = static_cast<std::size_t>(sh.head_dim);
  require(ticket.next_pos.size() == static_cast<std::size_t>(sh.num_layers), "swap_in: the ticket has ",
          ticket.next_pos.size(), " layers, the store ", sh.num_layers);
  std::vector<TierPrefetcher::Read> ahead;
  const TierPrefetcher::WaitAll settle{ahead};  // no read in flight outlives the call (an exception included)
  if (opt.prefetcher != nullptr)
    for (const SwapObject& o : ticket.objects)
      ahead.push_back(opt.prefetcher->get(o.cold ? cold : hot, o.name));
  const auto miss = [&](const auto&... parts) -> std::optional<SeqId> {
    if (opt.why != nullptr) *opt.why = detail::concat("swap_in: ", parts...);
    TierPrefetcher::wait_all(ahead);  // the reads first, then the objects go
    discard_swap(ticket, hot, cold);
    return std::nullopt;
  };
  SliceExpect expect = slice_expect(store, ticket.model_fp, ChunkKey{});
  std::vector<std::vector<std::byte>> objects;  // kept alive: decoded slices view them
  std::vector<DecodedSlice> slices;
  std::size_t rows = 0;
  for (std::size_t i = 0; i < ticket.objects.size(); ++i) {
    const SwapObject& o = ticket.objects[i];
    std::optional<std::vector<std::byte>> bytes;
    {
      const auto w0 = std::chrono::steady_clock::now();
      bytes = ahead.empty() ? (o.cold ? cold : hot).get(o.name) : ahead[i].get();
      if (!bytes && &hot != &cold && !o.cold) bytes = cold.get(o.name);  // spilled from hot to cold
      st.wait_ns +=
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - w0).count();
    }
    if (!bytes) return miss("object ", o.name, " is not in the tier (evicted, removed or unreadable)");
    if (static_cast<std::int64_t>(bytes->size()) != o.bytes || object_digest(*bytes) != o.digest)
      return miss("object ", o.name, " is not what swap_out wrote (size or digest)");
    st.bytes += o.bytes;
    objects.push_back(std::move(*bytes));
    const auto parts = unpack_slices(objects.back());
    if (!parts) return miss("object ", o.name, " is not a pack of slices");
    if (parts->size() != o.runs.size())
      return miss("object ", o.name, " holds ", parts->size(), " slices, the ticket lists ", o.runs.size());
    for (std::size_t j = 0; j < parts->size(); ++j) {
      const auto& p = (*parts)[j];
      std::string reason;
      auto d = decode_slice(p, expect, &reason);
      if (!d) return miss("object ", o.name, ": ", reason);
      if (d->header.layer != o.layer || store.policy(o.layer, d->header.kv_head).is_local() != o.local)
        return miss("object ", o.name, " holds a slice of layer ", d->header.layer, " kv_head ",
                    d->header.kv_head);
      if (SwapRun{d->header.kv_head, d->header.pos0, d->header.count, d->header.rope_pos0} != o.runs[j])
        return miss("object ", o.name, ": slice ", j, " is not the run the ticket lists");
      rows += static_cast<std::size_t>(d->header.count);
      slices.push_back(*d);
    }
  }
  std::vector<T> k(rows * D), v(rows * D);
  std::vector<RestoreRun<T>> runs;
  std::size_t at = 0;
  for (const DecodedSlice& s : slices) {
    const std::size_t n = static_cast<std::size_t>(s.header.count) * D;
    slice_detail::load_rows(s.k.data(), n, k.data() + at);
    slice_detail::load_rows(s.v.data(), n, v.data() + at);
    runs.push_back(RestoreRun<T>{s.header.layer, s.header.kv_head, s.header.pos0, s.header.count,
                                 s.header.rope_pos0, std::span<const T>(k).subspan(at, n),
                                 std::span<const T>(v).subspan(at, n)});
    at += n;
  }
  const SeqId id = store.restore_sequence(std::span<const RestoreRun<T>>(runs),
                                          std::span<const std::int32_t>(ticket.next_pos),
                                          std::span<const std::int32_t>(ticket.query_floor));
  discard_swap(ticket, hot, cold);
  st.total_ns =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
  if (stats != nullptr) *stats = st;
  return id;
}

// A swap_in whose sequence is usable layer by layer: the engine runs the restored sequence's next step while
// the rest is still arriving. The constructor lays the sequence out from the ticket (begin_restore: every
// page taken up front, so PoolExhausted comes now, with nothing changed) and queues one task per layer on the
// mover's threads: read that layer's objects, check size, digest and every slice (against the store and the
// ticket's runs), decode the rows. ensure_layer(l) waits for layer l's task and writes its rows
// (write_restored_layer: a copy into pages already taken), so while the engine computes layer l the movers
// read and check layers l + 1, l + 2, ... The restored attention is the never-moved one bit for bit, as
// swap_in's.
//
// A failed layer (an object missing or failing a check) fails the restore: the sequence is freed, the
// ticket's objects are removed, ensure_layer() returns false with the reason and so does every later call
// (the engine recomputes the sequence). Destroying an unfinished pipeline frees the partly restored
// sequence and leaves the objects in their tiers (swap in again later). The store, the tiers and the mover
// must outlive the pipeline; the store sees one writer at a time, the engine's thread (the movers never touch
// it). Not movable: its tasks refer to it.
template <StorageType T>
class SwapInPipeline {
 public:
  SwapInPipeline(KVHeadStore<T>& store, SwapTicket ticket, KvTier& hot, KvTier& cold, TierPrefetcher& mover)
      : store_(store),
        ticket_(std::move(ticket)),
        hot_(hot),
        cold_(cold),
        expect_(slice_expect(store, ticket_.model_fp, ChunkKey{})),
        t0_(std::chrono::steady_clock::now()) {
    const ModelShape& sh = store.shape();
    const auto L = static_cast<std::size_t>(sh.num_layers);
    require(ticket_.next_pos.size() == L && ticket_.query_floor.size() == L,
            "SwapInPipeline: the ticket has ", ticket_.next_pos.size(), " layers, the store ", L);
    objects_of_.resize(L);
    std::vector<RestoreRun<T>> layout;
    for (std::size_t i = 0; i < ticket_.objects.size(); ++i) {
      const SwapObject& o = ticket_.objects[i];
      require(o.layer >= 0 && o.layer < sh.num_layers, "SwapInPipeline: object ", o.name, " has layer ",
              o.layer, ", the store has ", sh.num_layers);
      objects_of_[static_cast<std::size_t>(o.layer)].push_back(i);
      for (const SwapRun& r : o.runs)
        layout.push_back(RestoreRun<T>{o.layer, r.kv_head, r.pos0, r.count, r.rope_pos0, {}, {}});
    }
    seq_ = store.begin_restore(std::span<const RestoreRun<T>>(layout),
                               std::span<const std::int32_t>(ticket_.next_pos),
                               std::span<const std::int32_t>(ticket_.query_floor));
    layers_.reserve(L);
    try {
      for (std::size_t l = 0; l < L; ++l) layers_.push_back(mover.run([this, l] { return load_layer(l); }));
    } catch (...) {
      settle();
      store_.free_sequence(seq_);
      throw;
    }
  }
  ~SwapInPipeline() {
    settle();
    if (!done_ && !failed_) store_.free_sequence(seq_);
  }
  SwapInPipeline(const SwapInPipeline&) = delete;
  SwapInPipeline& operator=(const SwapInPipeline&) = delete;

  // The restored sequence (pending layers until ensure_layer / finish).
  SeqId sequence() const { return seq_; }
  bool done() const { return done_; }
  bool failed() const { return failed_; }

  // Makes layer `layer`'s rows present (waiting for its task). false, with the reason in *why, when the
  // restore failed (now or before): the sequence is gone.
  bool ensure_layer(int layer, std::string* why = nullptr) {
    require(layer >= 0 && static_cast<std::size_t>(layer) < layers_.size(),
            "SwapInPipeline::ensure_layer: layer=", layer, " out of range [0, ", layers_.size(), ")");
    if (!failed_ && !done_ && store_.layer_pending(seq_, layer)) {
      const auto w0 = std::chrono::steady_clock::now();
      LayerRows rows;
      try {
        rows = layers_[static_cast<std::size_t>(layer)].get();
      } catch (const std::exception& e) {  // a tier that threw, or a mover that stopped first
        rows.why = detail::concat("swap_in: reading layer ", layer, " failed: ", e.what());
      }
      stats_.wait_ns += elapsed_ns(w0);
      stats_.bytes += rows.bytes;
      if (!rows.why.empty()) {
        fail(std::move(rows.why));
      } else {
        store_.write_restored_layer(seq_, layer, std::span<const RestoreRun<T>>(rows.runs));
        if (store_.pending_layers(seq_) == 0) complete();
      }
    }
    if (failed_ && why != nullptr) *why = why_;
    return !failed_;
  }
  // Every layer (ensure_layer of each); the objects are removed once all are written.
  bool finish(std::string* why = nullptr) {
    for (std::size_t l = 0; l < layers_.size() && !failed_ && !done_; ++l) ensure_layer(static_cast<int>(l));
    if (failed_ && why != nullptr) *why = why_;
    return !failed_;
  }
  // bytes read, time the engine's thread waited in ensure_layer, and construction to the last layer written.
  const SwapInStats& stats() const { return stats_; }

 private:
  struct LayerRows {
    std::vector<T> k, v;
    std::vector<RestoreRun<T>> runs;  // views of k and v
    std::int64_t bytes = 0;
    std::string why;  // non-empty: the layer cannot be restored
  };

  // On a mover thread: reads nothing of the store but its (immutable) shape and policies.
  LayerRows load_layer(std::size_t l) const {
    LayerRows out;
    const std::size_t D = static_cast<std::size_t>(store_.shape().head_dim);
    std::vector<std::vector<std::byte>> objects;
    std::vector<std::pair<const SwapObject*, DecodedSlice>> slices;
    std::size_t rows = 0;
    for (const std::size_t i : objects_of_[l]) {
      const SwapObject& o = ticket_.objects[i];
      auto bytes = (o.cold ? cold_ : hot_).get(o.name);
      if (!bytes && &hot_ != &cold_ && !o.cold) bytes = cold_.get(o.name);  // spilled from hot to cold
      if (!bytes)
        return fail_layer(out, "object ", o.name, " is not in the tier (evicted, removed or unreadable)");
      out.bytes += static_cast<std::int64_t>(bytes->size());
      if (static_cast<std::int64_t>(bytes->size()) != o.bytes || object_digest(*bytes) != o.digest)
        return fail_layer(out, "object ", o.name, " is not what swap_out wrote (size or digest)");
      objects.push_back(std::move(*bytes));
      const auto parts = unpack_slices(objects.back());
      if (!parts || parts->size() != o.runs.size())
        return fail_layer(out, "object ", o.name, " is not the pack of ", o.runs.size(),
                          " slices swap_out wrote");
      for (std::size_t j = 0; j < parts->size(); ++j) {
        std::string reason;
        auto d = decode_slice((*parts)[j], expect_, &reason);
        if (!d) return fail_layer(out, "object ", o.name, ": ", reason);
        const SliceHeader& h = d->header;
        if (h.layer != o.layer || store_.policy(o.layer, h.kv_head).is_local() != o.local ||
            SwapRun{h.kv_head, h.pos0, h.count, h.rope_pos0} != o.runs[j])
          return fail_layer(out, "object ", o.name, ": slice ", j, " is not the run the ticket lists");
        rows += static_cast<std::size_t>(h.count);
        slices.emplace_back(&o, *d);
      }
    }
    out.k.resize(rows * D);
    out.v.resize(rows * D);
    std::size_t at = 0;
    for (const auto& [o, sl] : slices) {
      const std::size_t n = static_cast<std::size_t>(sl.header.count) * D;
      slice_detail::load_rows(sl.k.data(), n, out.k.data() + at);
      slice_detail::load_rows(sl.v.data(), n, out.v.data() + at);
      out.runs.push_back(RestoreRun<T>{sl.header.layer, sl.header.kv_head, sl.header.pos0, sl.header.count,
                                       sl.header.rope_pos0, std::span<const T>(out.k).subspan(at, n),
                                       std::span<const T>(out.v).subspan(at, n)});
      at += n;
    }
    return out;
  }
  template <class... Parts>
  static LayerRows fail_layer(LayerRows& out, const Parts&... parts) {
    out.why = detail::concat("swap_in: ", parts...);
    return std::move(out);
  }
  static std::int64_t elapsed_ns(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t).count();
  }
  void fail(std::string why) {
    failed_ = true;
    why_ = std::move(why);
    settle();  // no task reads an object while it is removed
    store_.free_sequence(seq_);
    discard_swap(ticket_, hot_, cold_);
  }
  void complete() {
    done_ = true;
    settle();
    discard_swap(ticket_, hot_, cold_);
    stats_.total_ns = elapsed_ns(t0_);
  }
  void settle() {
    for (auto& f : layers_)
      if (f.valid()) f.wait();
  }

  KVHeadStore<T>& store_;
  const SwapTicket ticket_;
  KvTier& hot_;
  KvTier& cold_;
  const SliceExpect expect_;
  std::chrono::steady_clock::time_point t0_;
  std::vector<std::vector<std::size_t>> objects_of_;  // [layer] -> indices into ticket_.objects
  std::vector<std::future<LayerRows>> layers_;
  SeqId seq_ = 0;
  bool done_ = false;
  bool failed_ = false;
  std::string why_;
  SwapInStats stats_;
};

// swap_in from one tier.
template <StorageType T>
std::optional<SeqId> swap_in(KVHeadStore<T>& store, const SwapTicket& ticket, KvTier& tier,
                             std::string* why = nullptr) {
  return swap_in(store, ticket, tier, tier, SwapInOptions{nullptr, why});
}

}  // namespace redknot

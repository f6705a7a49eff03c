// AnyStore implementation: KVHeadStore<T, HostAllocator> behind a runtime interface (see any_store.hpp).
// The one translation unit that compiles the store and kernel templates for the bindings.
#include "redknot/any_store.hpp"

#include <array>
#include <atomic>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>

#include "redknot/any_tiers.hpp"
#include "redknot/attention_plan.hpp"
#include "redknot/cpu_attention.hpp"
#include "redknot/flashinfer_csr.hpp"
#include "redknot/head_map.hpp"
#include "redknot/head_table.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/kv_slice.hpp"
#include "redknot/query_batch.hpp"
#include "redknot/tiers.hpp"
#include "tensor_view.hpp"

namespace redknot {

namespace {
std::atomic<std::int64_t> g_live_stores{0};
}  // namespace

AnyStore::AnyStore() { g_live_stores.fetch_add(1, std::memory_order_relaxed); }
AnyStore::~AnyStore() { g_live_stores.fetch_sub(1, std::memory_order_relaxed); }
std::int64_t AnyStore::live_count() { return g_live_stores.load(std::memory_order_relaxed); }

std::string device_name(const DLDevice& d) {
  const std::int32_t t = device_type_int(d);
  switch (t) {
    case kDLCPU:
      return "cpu";
    case kDLCUDA:
      return "cuda:" + std::to_string(d.device_id);
    case kDLCUDAHost:
      return "cuda_host";
    case kDLCUDAManaged:
      return "cuda_managed:" + std::to_string(d.device_id);
    case kDLROCM:
      return "rocm:" + std::to_string(d.device_id);
    default:
      return "device_type_" + std::to_string(t) + ":" + std::to_string(d.device_id);
  }
}

std::string dl_dtype_name(DLDataType t) {
  std::string base;
  switch (t.code) {
    case kDLInt:
      base = "int";
      break;
    case kDLUInt:
      base = "uint";
      break;
    case kDLFloat:
      base = "float";
      break;
    case kDLBfloat:
      base = "bfloat";
      break;
    case kDLComplex:
      base = "complex";
      break;
    case kDLBool:
      base = "bool";
      break;
    default:
      base = "code" + std::to_string(t.code) + "_";
      break;
  }
  std::string s = base + std::to_string(t.bits);
  if (t.lanes != 1) s += "x" + std::to_string(t.lanes);
  return s;
}

namespace {

using detail::ElemType;

// TieredChunkCache<T> on a StoreImpl's store, each call under the store's mutex.
template <StorageType T>
class ChunkTiersImpl final : public AnyChunkTiers {
 public:
  ChunkTiersImpl(KVHeadStore<T, HostAllocator>& store, std::mutex& mu, std::uint64_t model_fp,
                 std::vector<KvTier*> tiers, std::int64_t min_splices, TierPrefetcher* prefetcher)
      : mu_(mu), cache_(store, model_fp, std::move(tiers), ChunkTierPolicy{min_splices}, prefetcher) {}

  std::int64_t make_room(std::int64_t pages) override {
    std::lock_guard lk(mu_);
    return cache_.make_room(pages);
  }
  bool demote(const ChunkKey& key) override {
    std::lock_guard lk(mu_);
    return cache_.demote(key);
  }
  std::int32_t lookup(const ChunkKey& key) override {
    std::lock_guard lk(mu_);
    return cache_.lookup(key).value_or(-1);
  }
  bool prefetch(const ChunkKey& key) override {
    std::lock_guard lk(mu_);
    return cache_.prefetch(key);
  }
  bool in_tiers(const ChunkKey& key) const override {
    std::lock_guard lk(mu_);
    return cache_.in_tiers(key);
  }
  ChunkTierStats stats() const override {
    std::lock_guard lk(mu_);
    return cache_.stats();
  }

 private:
  std::mutex& mu_;
  TieredChunkCache<T> cache_;
};

template <StorageType T>
class StoreImpl final : public AnyStore {
 public:
  StoreImpl(const ModelShape& shape, HeadMap map, StoreConfig cfg, std::optional<RopeConfig> rope)
      : store_(shape, std::move(map), cfg, std::move(rope)),
        plans_(static_cast<std::size_t>(shape.num_layers)),
        pool_shape_{store_.pool().num_pages(), 2, store_.page_size(), shape.head_dim} {}

  const ModelShape& shape() const override { return store_.shape(); }
  const HeadMap& head_map() const override { return store_.head_map(); }
  int page_size() const override { return store_.page_size(); }
  std::int32_t num_pages() const override { return store_.pool().num_pages(); }
  DLDevice device() const override { return DLDevice{kDLCPU, 0}; }
  const RopeConfig* rope() const override { return store_.rope(); }

  SeqId create_sequence() override {
    std::lock_guard lk(mu_);
    return store_.create_sequence();
  }
  SeqId fork(SeqId parent) override {
    std::lock_guard lk(mu_);
    return store_.fork(parent);
  }
  void free_sequence(SeqId id) override {
    std::lock_guard lk(mu_);
    store_.free_sequence(id);
  }
  bool contains(SeqId id) const override {
    std::lock_guard lk(mu_);
    return store_.contains(id);
  }
  std::vector<SeqId> sequences() const override {
    std::lock_guard lk(mu_);
    return store_.sequences();
  }
  std::int32_t next_position(SeqId id, int layer) const override {
    std::lock_guard lk(mu_);
    return store_.next_position(id, layer);
  }
  std::int32_t query_floor(SeqId id, int layer) const override {
    std::lock_guard lk(mu_);
    return store_.query_floor(id, layer);
  }
  void retire_queries(SeqId id, std::int32_t next_query_pos, int layer) override {
    std::lock_guard lk(mu_);
    store_.retire_queries(id, next_query_pos, layer);
  }
  std::vector<PageEntry> table(SeqId id, int layer, int kv_head) const override {
    std::lock_guard lk(mu_);
    const HeadTable& t = store_.table(id, layer, kv_head);
    std::vector<PageEntry> out;
    out.reserve(t.size());
    for (std::size_t i = 0; i < t.size(); ++i) out.push_back(t[i]);
    return out;
  }

  void append(SeqId id, int layer, const DLTensor& k, const DLTensor& v,
              std::span<const std::int32_t> positions) override {
    const auto n = static_cast<std::int64_t>(positions.size());
    check_token_count(n, "append");  // before the tensors are read against n
    with_kv(k, v, n, "append: k", "append: v", [&](std::span<const T> ks, std::span<const T> vs) {
      store_.append(id, layer, ks, vs, positions);
    });
  }

  void append_batch(int layer, std::span<const SeqId> seqs, std::span<const std::int32_t> token_offsets,
                    const DLTensor& k, const DLTensor& v, std::span<const std::int32_t> positions) override {
    with_kv(k, v, static_cast<std::int64_t>(positions.size()), "append_batch: k", "append_batch: v",
            [&](std::span<const T> ks, std::span<const T> vs) {
              store_.append_batch(layer, seqs, token_offsets, ks, vs, positions);
            });
  }

  // Checks k and v hold n rows, views them in the store's dtype (converting f32 when needed) and calls f with
  // the store locked.
  template <class F>
  void with_kv(const DLTensor& k, const DLTensor& v, std::int64_t n, const char* k_name, const char* v_name,
               F&& f) {
    check_kv(k, k_name, n);
    check_kv(v, v_name, n);
    std::vector<T> kbuf, vbuf;
    const std::span<const T> ks = as_store_elems(k, kbuf);
    const std::span<const T> vs = as_store_elems(v, vbuf);
    std::lock_guard lk(mu_);
    f(ks, vs);
  }

  void plan(std::span<const SeqId> seqs, std::span<const std::int32_t> q_lens,
            std::span<const std::int32_t> q_positions) override {
    std::lock_guard lk(mu_);
    const std::int64_t total = check_query_batch(store_, seqs, q_lens, q_positions, "plan");
    seqs_.assign(seqs.begin(), seqs.end());
    q_lens_.assign(q_lens.begin(), q_lens.end());
    q_positions_.assign(q_positions.begin(), q_positions.end());
    planned_total_ = total;
  }

  std::int64_t planned_queries() const override {
    std::lock_guard lk(mu_);
    return planned_total_;
  }

  void run(int layer, const DLTensor& q, const DLTensor& out, const DLTensor* lse,
           AttentionParams params) override {
    const ModelShape& sh = store_.shape();
    sh.check_layer(layer, "run");
    check_attention_params(params, "run");  // also when the plan has no query to run
    detail::check_tensor(&q, "run: q");
    detail::check_tensor(&out, "run: out");
    if (lse) detail::check_tensor(lse, "run: lse");
    const ElemType qt = detail::elem_type(q.dtype);
    const ElemType st = detail::elem_type(sh.dtype);
    REDKNOT_CHECK(qt == ElemType::kF32 || qt == st, InvalidArgument, "run: q has dtype ",
                  dl_dtype_name(q.dtype), ", expected float32 or the store dtype ",
                  detail::elem_type_name(st));
    REDKNOT_CHECK(detail::elem_type(out.dtype) == qt, InvalidArgument, "run: out has dtype ",
                  dl_dtype_name(out.dtype), ", expected the dtype of q (", dl_dtype_name(q.dtype), ")");
    if (lse)
      REDKNOT_CHECK(detail::elem_type(lse->dtype) == ElemType::kF32, InvalidArgument, "run: lse has dtype ",
                    dl_dtype_name(lse->dtype), ", expected float32");

    std::lock_guard lk(mu_);
    REDKNOT_CHECK(planned_total_ >= 0, InvalidArgument,
                  "run: no batch planned; call plan(seq_ids, q_lens, q_positions) first");
    detail::check_rows(q, "run: q", planned_total_, sh.num_q_heads, sh.head_dim, "total_q", "num_q_heads");
    detail::check_rows(out, "run: out", planned_total_, sh.num_q_heads, sh.head_dim, "total_q",
                       "num_q_heads");
    if (lse)
      REDKNOT_CHECK(lse->ndim == 2 && lse->shape[0] == planned_total_ && lse->shape[1] == sh.num_q_heads,
                    InvalidArgument, "run: lse has shape ", detail::shape_string(*lse),
                    ", expected [total_q=", planned_total_, ", num_q_heads=", sh.num_q_heads, "]");
    // Brings this layer's mirror up to date; validates every query position against what was appended.
    AttentionPlan& p = plans_[static_cast<std::size_t>(layer)];
    p.update(store_, layer, seqs_, q_lens_, q_positions_);
    if (qt == ElemType::kF32)
      attend<float>(p, q, out, lse, params);
    else
      attend<T>(p, q, out, lse, params);
  }

  DLTensor kv_pool() const override {
    DLTensor t{};
    t.data = const_cast<T*>(store_.pool().data());  // DLTensor has no const; the contract says read-only
    t.device = DLDevice{kDLCPU, 0};
    t.ndim = 4;
    switch (detail::elem_type(dtype_of<T>())) {
      case ElemType::kF32:
        t.dtype = DLDataType{kDLFloat, 32, 1};
        break;
      case ElemType::kF16:
        t.dtype = DLDataType{kDLFloat, 16, 1};
        break;
      default:
        t.dtype = DLDataType{kDLBfloat, 16, 1};
        break;
    }
    t.shape = const_cast<std::int64_t*>(pool_shape_.data());
    t.strides = nullptr;
    t.byte_offset = 0;
    return t;
  }

  StoreStats stats() const override { return store_.stats(); }  // atomics: no lock (usable during a write)
  SequenceStats sequence_stats(SeqId id) const override {
    std::lock_guard lk(mu_);
    return store_.sequence_stats(id);
  }
  std::int64_t pages_per_sequence(std::int64_t num_tokens) const override {
    return store_.pages_per_sequence(num_tokens);  // policies and pool counters only: no lock
  }
  std::int64_t sequences_that_fit(std::int64_t num_tokens) const override {
    return store_.sequences_that_fit(num_tokens);
  }

  PageTableCsr export_page_table(int layer, std::span<const SeqId> seqs) const override {
    std::lock_guard lk(mu_);
    return flashinfer_csr(store_, layer, seqs);
  }

  ChunkKey chunk_key(std::string_view model_id, std::span<const std::int32_t> tokens) const override {
    return store_.chunk_key(model_id, tokens);  // shape and map only: no lock
  }
  void register_chunk(const ChunkKey& key, SeqId seq) override {
    std::lock_guard lk(mu_);
    store_.register_chunk(key, seq);
  }
  std::int32_t lookup_chunk(const ChunkKey& key) override {
    std::lock_guard lk(mu_);
    return store_.lookup_chunk(key).value_or(-1);
  }
  void splice(SeqId dst, const ChunkKey& key, std::int32_t at, std::int32_t first_query) override {
    std::lock_guard lk(mu_);
    store_.splice(dst, key, at, first_query);
  }
  void relocate(SeqId dst, const ChunkKey& key, std::int32_t at, std::int32_t first_query) override {
    std::lock_guard lk(mu_);
    store_.relocate(dst, key, at, first_query);
  }
  bool drop_chunk(const ChunkKey& key) override {
    std::lock_guard lk(mu_);
    return store_.drop_chunk(key);
  }
  ChunkStats chunk_stats() const override {
    std::lock_guard lk(mu_);
    return store_.chunk_stats();
  }
  void overwrite(SeqId id, int layer, const DLTensor& k, const DLTensor& v,
                 std::span<const std::int32_t> positions) override {
    const auto n = static_cast<std::int64_t>(positions.size());
    check_token_count(n, "overwrite");
    with_kv(k, v, n, "overwrite: k", "overwrite: v", [&](std::span<const T> ks, std::span<const T> vs) {
      store_.overwrite(id, layer, ks, vs, positions);
    });
  }
  void read_rows(SeqId id, int layer, std::span<const std::int32_t> positions, std::span<float> k,
                 std::span<float> v) const override {
    std::lock_guard lk(mu_);
    store_.read_rows(id, layer, positions, k, v);
  }

  bool swap_out(SeqId seq, KvTier& hot, KvTier& cold, std::uint64_t model_fp, std::string_view name,
                SwapTicket& out) override {
    std::lock_guard lk(mu_);
    auto t = redknot::swap_out(store_, seq, hot, cold, model_fp, name);
    if (!t) return false;
    out = std::move(*t);
    return true;
  }
  std::optional<SeqId> swap_in(const SwapTicket& ticket, KvTier& hot, KvTier& cold,
                               TierPrefetcher* prefetcher, std::string* why) override {
    std::lock_guard lk(mu_);
    return redknot::swap_in(store_, ticket, hot, cold, SwapInOptions{prefetcher, why});
  }
  std::unique_ptr<AnyChunkTiers> make_chunk_tiers(std::uint64_t model_fp, std::vector<KvTier*> tiers,
                                                  std::int64_t min_splices,
                                                  TierPrefetcher* prefetcher) override {
    return std::make_unique<ChunkTiersImpl<T>>(store_, mu_, model_fp, std::move(tiers), min_splices,
                                               prefetcher);
  }

 private:
  void check_kv(const DLTensor& t, const char* name, std::int64_t n) const {
    const ModelShape& sh = store_.shape();
    detail::check_tensor(&t, name);
    const ElemType et = detail::elem_type(t.dtype);
    const ElemType st = detail::elem_type(sh.dtype);
    REDKNOT_CHECK(et == st || et == ElemType::kF32, InvalidArgument, name, " has dtype ",
                  dl_dtype_name(t.dtype), ", expected the store dtype ", detail::elem_type_name(st),
                  " (or float32, converted)");
    detail::check_rows(t, name, n, sh.num_kv_heads, sh.head_dim, "n_tokens", "num_kv_heads");
  }

  // The tensor's elements as the store type: a view when it already is (compact), else a converted copy.
  std::span<const T> as_store_elems(const DLTensor& t, std::vector<T>& buf) const {
    const auto n = static_cast<std::size_t>(detail::numel(t));
    if (detail::elem_type(t.dtype) == detail::elem_type(dtype_of<T>())) {
      if (detail::is_compact(t)) return {reinterpret_cast<const T*>(detail::base_ptr(t)), n};
      buf.resize(n);
      detail::gather(t, buf.data());
      return buf;
    }
    std::vector<float> f(n);
    detail::gather(t, f.data());
    buf.resize(n);
    for (std::size_t i = 0; i < n; ++i) buf[i] = from_float<T>(f[i]);
    return buf;
  }

  template <class QT>
  void attend(const AttentionPlan& p, const DLTensor& q, const DLTensor& out, const DLTensor* lse,
              AttentionParams params) {
    const auto nq = static_cast<std::size_t>(detail::numel(q));
    std::vector<QT> qbuf, obuf;
    std::vector<float> lbuf;
    std::span<const QT> qs;
    if (detail::is_compact(q)) {
      qs = {reinterpret_cast<const QT*>(detail::base_ptr(q)), nq};
    } else {
      qbuf.resize(nq);
      detail::gather(q, qbuf.data());
      qs = qbuf;
    }
    const bool out_direct = detail::is_compact(out);
    if (!out_direct) obuf.resize(nq);
    const std::span<QT> os =
        out_direct ? std::span<QT>(reinterpret_cast<QT*>(detail::base_ptr(out)), nq) : std::span<QT>(obuf);
    std::span<float> ls;
    const bool lse_direct = lse && detail::is_compact(*lse);
    if (lse) {
      const auto nl = static_cast<std::size_t>(detail::numel(*lse));
      if (lse_direct) {
        ls = {reinterpret_cast<float*>(detail::base_ptr(*lse)), nl};
      } else {
        lbuf.resize(nl);
        ls = lbuf;
      }
    }
    if (nq > 0) cpu_attention<QT>(store_, p, qs, os, ls, params);
    if (!out_direct) detail::scatter(obuf.data(), out);
    if (lse && !lse_direct) detail::scatter(lbuf.data(), *lse);
  }

  KVHeadStore<T, HostAllocator> store_;
  mutable std::mutex mu_;
  std::vector<AttentionPlan> plans_;  // one per layer: each stays incremental across steps
  std::vector<SeqId> seqs_;           // the planned batch
  std::vector<std::int32_t> q_lens_;
  std::vector<std::int32_t> q_positions_;
  std::int64_t planned_total_ = -1;         // -1: nothing planned yet
  std::array<std::int64_t, 4> pool_shape_;  // kv_pool()'s shape: [num_pages, 2, page_size, head_dim]
};

}  // namespace

std::unique_ptr<AnyStore> make_store(const ModelShape& shape, HeadMap map, StoreConfig config,
                                     DLDevice device, std::optional<RopeConfig> rope) {
  const std::int32_t dev = device_type_int(device);
  require(is_known_device_type(dev), "store device: device_type=", dev,
          " is not a DLDeviceType (kDLCPU=1, kDLCUDA=2, ...)");
  require<Unavailable>(
      dev != kDLCUDA && dev != kDLCUDAManaged, "store device ", device_name(device),
      " is not available: the CUDA backend (device page pool + attention kernels) is not part of "
      "this build of the bindings yet; use device='cpu'");
  require(dev == kDLCPU, "store device ", device_name(device), " is not supported (only cpu)");
  shape.validate();  // before the dtype picks an instantiation (the store checks it again)
  // The pool is allocated up front: a size the host cannot allocate is out of memory, reported as such.
  try {
    switch (shape.dtype) {
      case DType::kF32:
        return std::make_unique<StoreImpl<float>>(shape, std::move(map), config, std::move(rope));
      case DType::kF16:
        return std::make_unique<StoreImpl<Half>>(shape, std::move(map), config, std::move(rope));
      case DType::kBF16:
        return std::make_unique<StoreImpl<BFloat16>>(shape, std::move(map), config, std::move(rope));
    }
  } catch (const PoolExhausted& e) {
    throw PoolExhausted(detail::concat("out of memory creating the store (num_pages=", config.num_pages,
                                       ", page_size=", config.page_size, ", head_dim=", shape.head_dim,
                                       "): ", e.what()));
  } catch (const std::bad_alloc&) {
    throw PoolExhausted(detail::concat("out of memory creating the store (num_pages=", config.num_pages,
                                       ", page_size=", config.page_size, ", head_dim=", shape.head_dim, ")"));
  } catch (const std::length_error& e) {
    throw PoolExhausted(detail::concat("out of memory creating the store (num_pages=", config.num_pages,
                                       ", page_size=", config.page_size, ", head_dim=", shape.head_dim,
                                       "): ", e.what()));
  }
  throw InvalidArgument(
      detail::concat("dtype code ", static_cast<int>(shape.dtype), " is not f32, f16 or bf16"));
}

// ---- tiers for bindings (any_tiers.hpp)
// --------------------------------------------------------------------

std::int64_t AnySwapTicket::num_cold_objects() const {
  std::int64_t n = 0;
  for (const SwapObject& o : ticket_.objects) n += o.cold ? 1 : 0;
  return n;
}

void AnySwapTicket::check_usable(const char* fn, const KvTier& hot, const KvTier& cold) const {
  require(!used_, fn, ": the swap ticket was already used (swapped in, discarded or lost to a miss)");
  require(&hot == hot_, fn, ": hot tier ", static_cast<const void*>(&hot),
          " is not the tier the ticket's objects were written to (", static_cast<const void*>(hot_), ")");
  require(&cold == cold_, fn, ": cold tier ", static_cast<const void*>(&cold),
          " is not the tier the ticket's objects were written to (", static_cast<const void*>(cold_),
          cold_ == hot_ ? ", the hot tier: pass it, or none" : "", ")");
}

std::unique_ptr<AnySwapTicket> any_swap_out(AnyStore& store, SeqId seq, KvTier& hot, KvTier* cold,
                                            std::string_view model_id, std::string_view name) {
  KvTier& c = cold != nullptr ? *cold : hot;
  auto t = std::make_unique<AnySwapTicket>();
  if (!store.swap_out(seq, hot, c, model_fingerprint(model_id), name, t->ticket_)) {
    const TierStats hs = hot.stats(), cs = c.stats();
    throw TierRefused(detail::concat(
        "swap_out: a tier refused an object of sequence id=", seq, " (hot tier: ", hs.bytes_held, " of ",
        hs.capacity_bytes, " bytes held",
        &c == &hot ? ""
                   : detail::concat("; cold tier: ", cs.bytes_held, " of ", cs.capacity_bytes, " bytes held"),
        "); the sequence stays live and nothing of it stays in the tiers"));
  }
  t->shape_ = store.shape();
  t->map_fp_ = head_map_fingerprint(store.head_map());
  t->hot_ = &hot;
  t->cold_ = &c;
  return t;
}

SeqId any_swap_in(AnyStore& store, AnySwapTicket& ticket, KvTier& hot, KvTier* cold,
                  TierPrefetcher* prefetcher) {
  KvTier& c = cold != nullptr ? *cold : hot;
  ticket.check_usable("swap_in", hot, c);
  const ModelShape& a = ticket.shape_;
  const ModelShape& b = store.shape();
  require(a.num_layers == b.num_layers && a.num_kv_heads == b.num_kv_heads && a.head_dim == b.head_dim &&
              a.dtype == b.dtype,
          "swap_in: the ticket is of a store with num_layers=", a.num_layers,
          ", num_kv_heads=", a.num_kv_heads, ", head_dim=", a.head_dim, ", dtype=", dtype_name(a.dtype),
          "; this store has num_layers=", b.num_layers, ", num_kv_heads=", b.num_kv_heads,
          ", head_dim=", b.head_dim, ", dtype=", dtype_name(b.dtype));
  require(ticket.map_fp_ == head_map_fingerprint(store.head_map()),
          "swap_in: the ticket is of a store with another head map (its sequence cannot come back here)");
  std::string why;
  const std::optional<SeqId> id = store.swap_in(ticket.ticket_, hot, c, prefetcher, &why);
  if (!id) {
    ticket.used_ = true;  // swap_in removed the objects
    throw TierMiss(why + "; the sequence cannot come back (the ticket is used up)");
  }
  ticket.used_ = true;
  return *id;
}

void any_discard_swap(AnySwapTicket& ticket, KvTier& hot, KvTier* cold) {
  KvTier& c = cold != nullptr ? *cold : hot;
  ticket.check_usable("discard_swap", hot, c);
  discard_swap(ticket.ticket_, hot, c);
  ticket.used_ = true;
}

}  // namespace redknot

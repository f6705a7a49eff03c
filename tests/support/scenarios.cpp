// The scenario list (scenarios.hpp): a few scripts, each played over several shapes, maps, page sizes and
// dtypes so that together they cover every combination the backends must get right.
#include "scenarios.hpp"

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <set>
#include <stdexcept>
#include <string_view>

#include "redknot/error.hpp"

namespace rktest {

using namespace redknot;
using redknot::detail::concat;

namespace {

std::vector<std::int32_t> iota(std::int32_t p0, int n) {
  std::vector<std::int32_t> v(static_cast<std::size_t>(n));
  for (int i = 0; i < n; ++i) v[static_cast<std::size_t>(i)] = p0 + i;
  return v;
}

// n positions from p0 in runs of `run` consecutive positions separated by `gap` skipped ones: every run is
// its own page entry, so a head collects many entries from few tokens.
std::vector<std::int32_t> runs(std::int32_t p0, int n, int run, int gap) {
  std::vector<std::int32_t> v;
  for (std::int32_t p = p0; static_cast<int>(v.size()) < n; p += run + gap)
    for (int i = 0; i < run && static_cast<int>(v.size()) < n; ++i) v.push_back(p + i);
  return v;
}

// Builds a script and checks, as it goes, that every operation is legal under the store's contract.
class Script {
 public:
  explicit Script(int layers) : layers_(layers) {}

  int create() {
    seqs_.push_back(Seq{true, 0, std::vector<std::int32_t>(static_cast<std::size_t>(layers_), 0)});
    const int h = static_cast<int>(seqs_.size()) - 1;
    ops_.push_back(Op{Op::Kind::kCreate, h, -1, 0, -1, {}});
    return h;
  }
  int fork(int parent) {
    Seq child = live(parent);
    seqs_.push_back(child);
    const int h = static_cast<int>(seqs_.size()) - 1;
    ops_.push_back(Op{Op::Kind::kFork, parent, h, 0, -1, {}});
    return h;
  }
  void free(int seq) {
    live(seq).live = false;
    ops_.push_back(Op{Op::Kind::kFree, seq, -1, 0, -1, {}});
  }
  // Every query of `seq` (in `layer`, or all layers) before next_query_pos has run.
  void retire(int seq, std::int32_t next_query_pos, int layer = -1) {
    Seq& s = live(seq);
    check(next_query_pos <= s.next, "retire beyond the next position");
    for (int l = 0; l < layers_; ++l)
      if (layer == -1 || layer == l) s.floor[l] = std::max(s.floor[l], next_query_pos);
    ops_.push_back(Op{Op::Kind::kRetire, seq, -1, next_query_pos, layer, {}});
  }

  std::int32_t next(int seq) const { return seqs_.at(static_cast<std::size_t>(seq)).next; }

  // `seq` is swapped out to tiers and back in: same positions, next positions and query floors.
  void swap(int seq) {
    const Seq& s = live(seq);
    swaps_ = true;
    // The restore copies pages the sequence shared (a fork's, a chunk's) into private ones: pool room as
    // for an append of everything it holds.
    if (s.next > 0) appended_.push_back(s.next);
    ops_.push_back(Op{Op::Kind::kSwap, seq, -1, 0, -1, {}});
  }

  // `seq`, which must hold positions 0..n-1 appended in one step (so that no head dropped a key), becomes
  // chunk `chunk`; the handle is no longer live.
  void register_chunk(int seq, int chunk) {
    Seq& s = live(seq);
    check(chunk == static_cast<int>(chunk_len_.size()), "chunks are numbered 0, 1, ... in order");
    check(s.next > 0, "an empty chunk");
    chunk_len_.push_back(s.next);
    s.live = false;
    Op op{Op::Kind::kRegister, seq, -1, 0, -1, {}};
    op.chunk = chunk;
    ops_.push_back(op);
  }
  // Chunk `chunk` becomes positions [at, at + n) of `seq` (shared pages, or a rotated copy with relocate);
  // queries from first_query (-1: at + n) on may run.
  void splice(int seq, int chunk, std::int32_t at, std::int32_t first_query = -1, bool relocate = false) {
    Seq& s = live(seq);
    check(chunk >= 0 && chunk < static_cast<int>(chunk_len_.size()), "an unregistered chunk");
    const std::int32_t n = chunk_len_[static_cast<std::size_t>(chunk)];
    check(at >= s.next, "splice below the next position");
    check(first_query < 0 || (first_query >= at && first_query <= at + n), "first_query outside the chunk");
    s.next = at + n;
    std::fill(s.floor.begin(), s.floor.end(), first_query < 0 ? at + n : first_query);
    if (relocate) appended_.push_back(n);
    Op op{Op::Kind::kSplice, seq, -1, 0, -1, {}};
    op.chunk = chunk;
    op.at = at;
    op.first_query = first_query;
    op.relocate = relocate;
    ops_.push_back(op);
  }

  // An item appending `positions`, whose last `queries` positions attend (-1: all of them).
  static StepItem at(int seq, std::vector<std::int32_t> positions, int queries = -1) {
    StepItem it{seq, std::move(positions), {}};
    const std::size_t nq =
        queries < 0 ? it.append.size() : std::min(it.append.size(), static_cast<std::size_t>(queries));
    it.query.assign(it.append.end() - static_cast<std::ptrdiff_t>(nq), it.append.end());
    return it;
  }
  // n positions from next(seq) + gap (a position jump: a spliced chunk).
  StepItem chunk(int seq, int n, int queries = -1, std::int32_t gap = 0) const {
    return at(seq, iota(next(seq) + gap, n), queries);
  }
  // An item that appends nothing and queries `query` (empty: a zero-query item).
  static StepItem query_only(int seq, std::vector<std::int32_t> query = {}) {
    return StepItem{seq, {}, std::move(query)};
  }

  void step(std::vector<StepItem> items) {
    std::set<int> in_batch;
    int queries = 0, tokens = 0;
    for (const StepItem& it : items) {
      check(in_batch.insert(it.seq).second, "a sequence twice in one step");
      Seq& s = live(it.seq);
      if (!it.append.empty()) {
        check(it.append.front() >= s.next, "append below the next position");
        for (std::size_t i = 1; i < it.append.size(); ++i)
          check(it.append[i] > it.append[i - 1], "append positions not increasing");
        s.next = it.append.back() + 1;
        std::fill(s.floor.begin(), s.floor.end(), it.append.front());
        appended_.push_back(static_cast<int>(it.append.size()));
      }
      const std::int32_t floor = *std::max_element(s.floor.begin(), s.floor.end());
      for (std::int32_t q : it.query) check(q >= floor && q < s.next, "query outside [query_floor, next)");
      queries += static_cast<int>(it.query.size());
      tokens += static_cast<int>(it.append.size());
    }
    max_batch_ = std::max(max_batch_, static_cast<int>(items.size()));
    max_queries_ = std::max(max_queries_, queries);
    max_tokens_ = std::max(max_tokens_, tokens);
    ops_.push_back(Op{Op::Kind::kStep, -1, -1, 0, -1, std::move(items)});
  }
  // One decode step of every sequence in seqs (one token each, which attends), `steps` times.
  void decode(const std::vector<int>& seqs, int steps = 1) {
    for (int t = 0; t < steps; ++t) {
      std::vector<StepItem> items;
      for (int s : seqs) items.push_back(chunk(s, 1));
      step(std::move(items));
    }
  }

  // Moves the script into `sc` and sizes its pool: an append of n tokens takes at most ceil(n / page) + 1
  // fresh pages per (layer, kv_head), plus one copy-on-write page, and nothing is counted back.
  void finish(Scenario& sc) {
    std::int64_t pages = 16;
    for (int n : appended_)
      pages += static_cast<std::int64_t>(layers_) * sc.shape.num_kv_heads *
               ((n + sc.page_size - 1) / sc.page_size + 2);
    sc.num_pages = static_cast<std::int32_t>(pages);
    sc.ops = ops_;
    sc.num_handles = static_cast<int>(seqs_.size());
    sc.max_batch = max_batch_;
    sc.max_queries = max_queries_;
    sc.max_tokens = max_tokens_;
    sc.num_chunks = static_cast<int>(chunk_len_.size());
    sc.swaps = swaps_;
  }

 private:
  struct Seq {
    bool live = true;
    std::int32_t next = 0;
    std::vector<std::int32_t> floor;  // per layer
  };
  static void check(bool ok, const char* what) {
    if (!ok) throw std::logic_error(std::string("scenario script: ") + what);
  }
  Seq& live(int seq) {
    check(seq >= 0 && seq < static_cast<int>(seqs_.size()) && seqs_[static_cast<std::size_t>(seq)].live,
          "a handle that is not live");
    return seqs_[static_cast<std::size_t>(seq)];
  }

  int layers_;
  std::vector<Seq> seqs_;
  std::vector<Op> ops_;
  std::vector<int> appended_;
  std::vector<std::int32_t> chunk_len_;
  int max_batch_ = 0, max_queries_ = 0, max_tokens_ = 0;
  bool swaps_ = false;
};

// ---- scripts -------------------------------------------------------------------------------------------

// Chunked prefill of two sequences of different lengths in one batch, decode, a spliced chunk (position
// jump), a fork whose parent and child diverge (copy-on-write of partial tail pages), the fork's own
// prefill, and the parent freed while the child keeps the shared pages.
void prefill_decode_fork(Script& s) {
  const int a = s.create(), b = s.create();
  s.step({s.chunk(a, 37), s.chunk(b, 70)});
  s.step({s.chunk(a, 29), s.chunk(b, 5)});
  s.decode({a, b}, 4);
  s.step({s.chunk(a, 23, -1, 130)});
  const int c = s.fork(b);
  s.decode({a, b, c}, 3);
  s.step({s.chunk(c, 19)});
  s.decode({b, c});
  s.free(b);
  s.decode({c, a});
}

// Three histories with partial pages, a spliced jump and a context shorter than every sink and window; the
// last chunks attend as prefill, then a fork of the longest joins decode steps, one of which jumps.
void spliced_histories(Script& s) {
  const int s0 = s.create(), s1 = s.create(), s2 = s.create();
  s.step({s.chunk(s0, 37), s.chunk(s1, 50), s.chunk(s2, 5)});
  s.step({s.chunk(s0, 163, 40), s.chunk(s1, 131, -1, 70)});  // s1: 50 -> 120
  s.step({s.chunk(s0, 100, 70)});
  const int s3 = s.fork(s0);
  s.decode({s0, s1, s2, s3}, 2);
  s.step({s.chunk(s0, 1), s.chunk(s1, 1, -1, 7), s.chunk(s2, 1), s.chunk(s3, 1)});
}

// A fork of a fork before any divergence, per-layer and all-layer retires, appends without attention, a
// zero-query item, a query-only item (re-attending positions of its last append), the root freed under its
// forks, and a fork taken after a retire.
void fork_tree_retire(Script& s) {
  const int a = s.create();
  s.step({s.chunk(a, 45)});
  const int b = s.fork(a);
  const int c = s.fork(b);
  s.step({s.chunk(a, 3), s.chunk(b, 7), s.chunk(c, 1)});
  s.retire(a, s.next(a), 1);
  s.step({s.chunk(b, 6, 0), Script::query_only(a), s.chunk(c, 5)});
  s.step({Script::query_only(b, {s.next(b) - 2, s.next(b) - 1})});
  s.free(a);
  const int d = s.fork(c);
  s.retire(c, s.next(c));
  s.decode({b, c, d}, 3);
  s.step({s.chunk(b, 9), s.chunk(d, 4, 1, 30)});
  s.free(c);
  s.decode({b, d}, 2);
}

// A batch of five sequences of very different lengths (1 to 300 tokens; the long ones attend only their last
// queries), decode steps, a decode batch with zero-query items, and a reordered sub-batch.
void varied_batch(Script& s) {
  std::vector<int> seqs;
  for (int i = 0; i < 5; ++i) seqs.push_back(s.create());
  s.step({s.chunk(seqs[0], 1), s.chunk(seqs[1], 17), s.chunk(seqs[2], 64), s.chunk(seqs[3], 130, 8),
          s.chunk(seqs[4], 300, 8)});
  s.decode(seqs, 3);
  s.step({s.chunk(seqs[0], 1), s.chunk(seqs[1], 1, 0), Script::query_only(seqs[2]), s.chunk(seqs[3], 1),
          s.chunk(seqs[4], 1)});
  s.decode({seqs[4], seqs[2], seqs[0]}, 2);
}

// Positions in runs of 2 with gaps of 3: every run is its own entry, so a global head holds more than 128
// entries (several staging rounds of the CUDA decode) from 300 tokens, whatever the page size.
void many_jumps(Script& s) {
  const int a = s.create(), b = s.create();
  for (int i = 0; i < 5; ++i) s.step({Script::at(a, runs(s.next(a) + 3, 60, 2, 3), 2), s.chunk(b, 7, 1)});
  s.decode({a, b}, 2);
}

// A context of 2100+ tokens (page 1 gives a global head one entry per token: 17 staging rounds of the CUDA
// decode) appended in chunks without attention, one spliced jump, then queries at the end and decode steps.
void long_context(Script& s) {
  const int a = s.create(), b = s.create();
  s.step({s.chunk(a, 509, 0), s.chunk(b, 3)});
  s.step({s.chunk(a, 509, 0)});
  s.step({s.chunk(a, 509, 0, 100)});
  s.step({s.chunk(a, 600, 4)});
  s.decode({a, b}, 3);
}

// A 32K-token context (appended in 4K chunks without attention) decoded beside a short sequence: the CUDA
// decode's long split-KV partitions and merges, at the context length the bandwidth targets are set for.
void decode_32k(Script& s) {
  const int a = s.create(), b = s.create();
  s.step({s.chunk(a, 4096, 0), s.chunk(b, 40)});
  for (int i = 1; i < 8; ++i) s.step({s.chunk(a, 4096, i == 7 ? 2 : 0)});
  s.decode({a, b}, 3);
}

// Chunked prefill of a 1.5K context in which every query of every chunk attends (the prefill kernels' long
// key loops), then decode steps.
void long_prefill(Script& s) {
  const int a = s.create();
  for (int i = 0; i < 6; ++i) s.step({s.chunk(a, 256)});
  s.decode({a}, 2);
}

// Position-independent reuse, as a RAG server runs it: two documents prefilled alone and registered as
// chunks; requests splice them after their own system prompts, in other orders and at other offsets (one far
// beyond the documents' positions), so every head scores keys rotated for other positions; one request's
// queries run inside a spliced chunk (first_query: recomputed tokens attending over the chunk), then
// questions, decode, a fork of a request with spliced chunks, and requests freed before their chunks.
// `relocate` makes the first request copy its documents with rotated keys instead (the classic path).
template <bool kRelocate>
void rag_reuse(Script& s) {
  const int d0 = s.create(), d1 = s.create();
  s.step({s.chunk(d0, 45), s.chunk(d1, 70)});  // each document alone, from position 0
  s.register_chunk(d0, 0);
  s.register_chunk(d1, 1);
  const int r0 = s.create(), r1 = s.create(), r2 = s.create();
  s.step({s.chunk(r0, 9), s.chunk(r1, 17), s.chunk(r2, 3)});  // system prompts
  s.splice(r0, 1, s.next(r0), -1, kRelocate);                 // doc1 at 9
  s.splice(r0, 0, s.next(r0), -1, kRelocate);                 // doc0 at 79
  s.splice(r1, 0, s.next(r1) + 5, s.next(r1) + 5 + 40);       // doc0 at 22, its last 5 queries run
  s.splice(r2, 1, 100000);                                    // doc1 far away
  s.step({s.chunk(r0, 12), Script::query_only(r1, iota(62, 5)), s.chunk(r2, 6)});
  s.splice(r1, 1, s.next(r1));  // doc1 right after doc0
  s.step({s.chunk(r1, 8), Script::query_only(r0), s.chunk(r2, 1)});
  s.decode({r0, r1, r2}, 3);
  const int r3 = s.fork(r0);
  s.decode({r0, r3}, 2);
  s.free(r0);
  s.decode({r3, r2, r1});
  s.free(r1);
}

// Preemption at awkward moments, as an engine's scheduler swaps: a sequence with a spliced chunk (keys
// rotated for other positions) swapped out mid-decode, a fork swapped while its parent keeps the shared pages
// (and the parent swapped too), a sequence swapped right after retire_queries of one layer (per-layer query
// floors), an empty sequence, a sequence swapped twice in a row and then forked, one swapped between two
// chunks of its prefill; decode and prefill continue on every restored sequence.
void swap_preempt(Script& s) {
  const int d = s.create();
  s.step({s.chunk(d, 41)});  // a document alone, from position 0
  s.register_chunk(d, 0);
  const int a = s.create(), b = s.create(), e = s.create();
  s.step({s.chunk(a, 13), s.chunk(b, 60)});
  s.splice(a, 0, s.next(a) + 3);
  s.swap(e);  // nothing in it yet
  s.step({s.chunk(a, 5), s.chunk(b, 21, 4), s.chunk(e, 7)});
  s.decode({a, b}, 2);
  s.swap(a);
  s.decode({a, b, e});
  const int c = s.fork(b);
  s.decode({b, c}, 2);
  s.swap(c);
  s.swap(b);
  s.decode({c, b, a}, 2);
  s.retire(b, s.next(b), 1);  // layer 1 retired up to its next position: floors differ per layer
  s.swap(b);
  s.step({s.chunk(b, 9), Script::query_only(c)});
  s.swap(e);
  s.swap(e);
  const int f = s.fork(e);
  s.step({s.chunk(e, 30, 2), s.chunk(f, 3)});
  s.swap(f);
  s.step({s.chunk(f, 50, 5), s.chunk(a, 1)});
  s.free(c);
  s.decode({a, b, e, f});
}

// ---- head maps -----------------------------------------------------------------------------------------

// The kinds of head every map draws from.
const HeadPolicy kKinds[] = {
    {HeadClass::kGlobal, -1, 0},  {HeadClass::kLocal, 8, 4}, {HeadClass::kLocal, 24, 0},  // sink 0
    {HeadClass::kLocal, 1, 0},     // window 1, sink 0: a query sees itself only
    {HeadClass::kLocal, 40, 64},   // sink larger than the window
    {HeadClass::kLocal, 4096, 8},  // window larger than any context here
    {HeadClass::kLocal, 1, 2},     // window 1 with a sink
    {HeadClass::kLocal, 16, 16},
};
constexpr int kNumKinds = static_cast<int>(std::size(kKinds));

// Layer 0 is a dense prefix layer; layer l >= 1 head h takes kind (offset + (l - 1) * kv_heads + h) mod 8, so
// layers differ and `offset` rotates which kinds a small grid gets.
HeadMap mixed_map(int layers, int kv_heads, int offset) {
  HeadMap m = HeadMap::all_global(layers, kv_heads);
  for (int l = 0; l < layers; ++l)
    for (int h = 0; h < kv_heads; ++h)
      m.set(l, h, kKinds[(offset + std::max(l - 1, 0) * kv_heads + h) % kNumKinds]);
  m.set_dense_prefix_layers(1);
  return m;
}

// Two layers of five heads: layer 1 holds one head of each kind the kernels treat differently (global, small
// window with sink, window beyond the context, sink 0, window 1); layer 0 differs on purpose (layer mix-ups).
HeadMap layer_mix_map() {
  HeadMap m = HeadMap::all_global(2, 5);
  m.set(1, 1, HeadPolicy{HeadClass::kLocal, 24, 4});
  m.set(1, 2, HeadPolicy{HeadClass::kLocal, 4096, 8});
  m.set(1, 3, HeadPolicy{HeadClass::kLocal, 40, 0});
  m.set(1, 4, HeadPolicy{HeadClass::kLocal, 1, 2});
  m.set(0, 0, HeadPolicy{HeadClass::kLocal, 2, 0});
  return m;
}

// ---- the list ------------------------------------------------------------------------------------------

struct Variant {
  DType storage, activation;
  int head_dim, group, page_size;
  int kv_chunk = 0;
};

std::uint32_t fnv1a(std::string_view s) {
  std::uint32_t h = 2166136261u;
  for (char c : s) h = (h ^ static_cast<unsigned char>(c)) * 16777619u;
  return h;
}

Scenario make(const char* script_name, void (*script)(Script&), HeadMap map, Variant v,
              SizeClass size = SizeClass::kSmall, std::optional<RopeConfig> rope = std::nullopt) {
  Scenario sc;
  sc.name = concat(script_name, "/", dtype_name(v.storage), "-", dtype_name(v.activation), "/d", v.head_dim,
                   "/g", v.group, "/p", v.page_size, v.kv_chunk ? concat("/kv", v.kv_chunk) : "");
  if (rope) {
    rope->head_dim = v.head_dim;
    sc.rope = rope;
  }
  sc.shape =
      ModelShape{map.num_layers(), map.num_kv_heads() * v.group, map.num_kv_heads(), v.head_dim, v.storage};
  sc.map = std::move(map);
  sc.page_size = v.page_size;
  sc.activation = v.activation;
  sc.kv_chunk = v.kv_chunk;
  sc.size = size;
  sc.seed = fnv1a(sc.name);
  Script s(sc.shape.num_layers);
  script(s);
  s.finish(sc);
  return sc;
}

std::vector<Scenario> build() {
  constexpr DType F32 = DType::kF32, F16 = DType::kF16, BF16 = DType::kBF16;
  std::vector<Scenario> v;
  const auto add = [&](const char* name, void (*script)(Script&), HeadMap map, Variant var,
                       SizeClass size = SizeClass::kSmall, std::optional<RopeConfig> rope = std::nullopt) {
    v.push_back(make(name, script, std::move(map), var, size, rope));
  };
  // RoPE specs of the reuse scenarios: HF Llama (rotate-half), GGUF/Meta llama3 (interleaved, scaled), and
  // partial rotary with YaRN.
  RopeConfig half_rope;
  RopeConfig llama3_rope;
  llama3_rope.pairing = RopePairing::kInterleaved;
  llama3_rope.theta = 500000.0;
  llama3_rope.scaling = RopeScaling::kLlama3;
  llama3_rope.factor = 8.0;
  RopeConfig partial_yarn;
  partial_yarn.rotary_dim = 32;
  partial_yarn.scaling = RopeScaling::kYarn;
  partial_yarn.factor = 4.0;
  // Host-only dtypes (f32 storage or activations) and head_dims the micro-kernel handles with a tail.
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 0), {F32, F32, 64, 1, 16});
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 2), {F16, F32, 128, 4, 64});
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 4), {BF16, F32, 64, 8, 1});
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 6), {F32, F32, 24, 2, 16});
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 1), {BF16, F32, 40, 4, 64});
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 3), {F32, F32, 8, 2, 5});
  // Split-KV on the CPU: every tile cut into several entry ranges merged by log-sum-exp.
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 5), {F32, F32, 64, 4, 16, 7});
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 7), {BF16, BF16, 128, 1, 64, 40});
  // Everything below also runs on the CUDA kernels.
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 0), {F16, F16, 128, 1, 16});
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 4, 0), {BF16, BF16, 64, 2, 64});
  add("prefill_decode_fork", prefill_decode_fork, mixed_map(3, 2, 4), {BF16, BF16, 128, 8, 16});
  add("spliced_histories", spliced_histories, layer_mix_map(), {F16, F16, 64, 4, 32});
  add("spliced_histories", spliced_histories, layer_mix_map(), {BF16, BF16, 128, 8, 16});
  add("spliced_histories", spliced_histories, layer_mix_map(), {BF16, BF16, 64, 1, 64});
  add("fork_tree_retire", fork_tree_retire, mixed_map(3, 4, 0), {F16, F16, 64, 2, 1});
  add("fork_tree_retire", fork_tree_retire, mixed_map(3, 2, 3), {BF16, BF16, 128, 4, 16});
  add("fork_tree_retire", fork_tree_retire, mixed_map(2, 3, 5), {F32, F32, 16, 1, 3});
  add("varied_batch", varied_batch, mixed_map(3, 2, 1), {BF16, BF16, 128, 4, 16});
  add("varied_batch", varied_batch, mixed_map(3, 2, 6), {F16, F32, 64, 8, 5});
  add("many_jumps", many_jumps, mixed_map(3, 2, 0), {F16, F16, 64, 8, 16});
  add("many_jumps", many_jumps, HeadMap::all_global(2, 2), {F32, F32, 64, 2, 4, 7});
  add("long_context", long_context, mixed_map(3, 2, 0), {BF16, BF16, 128, 2, 1});
  add("long_context", long_context, mixed_map(2, 4, 2), {F16, F16, 64, 4, 1});
  add("long_context", long_context, HeadMap::all_global(2, 1), {F32, F32, 128, 8, 16, 64});
  // Chunk reuse: spliced (every backend) and relocated (host: f32 storage, so the rotated copies are exact
  // enough for the fp64 oracle).
  add("rag_relocate", rag_reuse<true>, mixed_map(3, 2, 1), {F32, F32, 64, 2, 16}, SizeClass::kSmall,
      half_rope);
  add("rag_relocate", rag_reuse<true>, mixed_map(2, 2, 3), {F32, F32, 64, 1, 5}, SizeClass::kSmall,
      partial_yarn);
  add("rag_splice", rag_reuse<false>, mixed_map(3, 2, 2), {F32, F32, 64, 2, 16}, SizeClass::kSmall,
      llama3_rope);
  add("rag_splice", rag_reuse<false>, mixed_map(3, 2, 0), {BF16, BF16, 128, 4, 16}, SizeClass::kSmall,
      half_rope);
  add("rag_splice", rag_reuse<false>, layer_mix_map(), {F16, F16, 64, 2, 1}, SizeClass::kSmall, llama3_rope);
  add("rag_splice", rag_reuse<false>, mixed_map(3, 2, 5), {BF16, BF16, 64, 8, 64}, SizeClass::kSmall,
      partial_yarn);
  // Preemption through the tiers (host stores: the CPU core, the C ABI).
  add("swap_preempt", swap_preempt, mixed_map(3, 2, 0), {F32, F32, 64, 2, 16}, SizeClass::kSmall, half_rope);
  add("swap_preempt", swap_preempt, mixed_map(3, 2, 3), {BF16, BF16, 128, 4, 16}, SizeClass::kSmall,
      llama3_rope);
  add("swap_preempt", swap_preempt, layer_mix_map(), {F16, F16, 64, 2, 1}, SizeClass::kSmall, partial_yarn);
  add("swap_preempt", swap_preempt, mixed_map(3, 2, 6), {F16, F32, 40, 8, 5}, SizeClass::kSmall, half_rope);
  // Large: skipped under REDKNOT_SCENARIO_SIZE=small.
  add("long_prefill", long_prefill, mixed_map(2, 2, 1), {F16, F16, 64, 2, 16}, SizeClass::kLarge);
  add("long_prefill", long_prefill, mixed_map(2, 2, 5), {BF16, F32, 128, 1, 64}, SizeClass::kLarge);
  add("decode_32k", decode_32k, mixed_map(2, 2, 0), {BF16, BF16, 128, 4, 16}, SizeClass::kLarge);

  std::set<std::string> names;
  for (const Scenario& sc : v)
    if (!names.insert(sc.name).second) throw std::logic_error("duplicate scenario name " + sc.name);
  return v;
}

}  // namespace

bool Scenario::applies_to(BackendKind b) const {
  if (swaps) return b == BackendKind::kCpu;  // the C ABI has no swap calls yet; device stores do not swap
  if (b != BackendKind::kCuda) return true;  // the host kernel and the C ABI take every shape and dtype
  const int g = shape.group_size();
  return shape.dtype != DType::kF32 && activation == shape.dtype &&
         (shape.head_dim == 64 || shape.head_dim == 128) && (g == 1 || g == 2 || g == 4 || g == 8);
}

const std::vector<Scenario>& all_scenarios() {
  static const std::vector<Scenario> list = build();
  return list;
}

bool small_scenarios_only() {
  const char* e = std::getenv("REDKNOT_SCENARIO_SIZE");
  return e != nullptr && std::string_view(e) == "small";
}

std::vector<const Scenario*> scenarios_for(BackendKind b, SizeClass size) {
  const char* filter = std::getenv("REDKNOT_SCENARIO");
  std::vector<const Scenario*> out;
  for (const Scenario& sc : all_scenarios())
    if (sc.size == size && sc.applies_to(b) &&
        (filter == nullptr || sc.name.find(filter) != std::string::npos))
      out.push_back(&sc);
  return out;
}

}  // namespace rktest

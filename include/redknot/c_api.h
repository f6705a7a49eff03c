/* redknot C ABI: what inference engines written in any language link against (shared library libredknot).
 *
 * Rules every function follows:
 *   - It returns an int status (rk_status). RK_OK is 0; on any other value rk_last_error() holds a message
 *     naming the argument and value at fault. The message is thread-local and stays valid until the next call
 *     that fails on the same thread.
 *   - No C++ exception crosses this boundary and bad input never aborts the process.
 *   - A call that fails leaves every handle exactly as it was (no leaked or half-written pages).
 *   - Out-parameters are written only on success.
 *   - Handles are opaque. One writer at a time per store is the core contract; this layer additionally
 *     serialises calls on one store with a mutex, so concurrent calls on one store are safe (not parallel).
 *     Independent stores run fully in parallel.
 *
 * Tensors are DLPack DLTensors (dlpack_types.h): pointer + shape + strides (elements, NULL = row-major) +
 * dtype + device. Non-contiguous tensors are accepted and copied. A `stream` argument (a cudaStream_t, or
 * NULL) is part of every data-path call so that the signature stays when device stores land; stores on the
 * CPU ignore it.
 *
 * Typical step of an engine (layer-by-layer forward):
 *   rk_plan(store, seq_ids, q_lens, batch, q_positions, total_q);       once per step
 *   for each layer l:
 *     rk_append_batch(store, l, seq_ids, batch, token_offsets, k, v, positions, stream);
 *                                                                       the step's new K/V of every sequence
 *       (or rk_append(store, seq, l, k, v, positions, n, stream) per sequence)
 *     rk_attention(store, l, q, out, lse_or_NULL, NULL, stream);        the batch's attention in layer l
 */
#ifndef REDKNOT_C_API_H_
#define REDKNOT_C_API_H_

#include <stddef.h>
#include <stdint.h>

#include "redknot/dlpack_types.h"

#if defined(_WIN32)
#if defined(REDKNOT_C_BUILDING)
#define RK_API __declspec(dllexport)
#else
#define RK_API __declspec(dllimport)
#endif
#else
#define RK_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped on any incompatible change of a signature or struct layout in this header. */
#define RK_ABI_VERSION 2

/* Limits every entry point checks (RK_ERR_INVALID_ARGUMENT, naming the argument and value, beyond them). The
 * C++ core enforces them (redknot/limits.hpp): C++ and Python reject the same values with the same message.
 *   RK_MAX_NUM_THREADS        rk_attention_params.num_threads is 0 (the OpenMP default) or in [1, 1024].
 *   RK_MAX_LAYERS_X_KV_HEADS  num_layers * num_kv_heads of a head map (rk_head_map_uniform,
 *                             rk_head_map_with_global_ratio, JSON) or a store: at most 2^20 (1048576) heads.
 *   RK_MAX_NUM_Q_HEADS        num_q_heads of a store: at most 65536.
 *   RK_MAX_TOKENS             token counts (n_tokens of rk_append, num_tokens and chunk of the capacity
 *                             queries): at most 2^31, since positions are int32.
 * A request within the limits that the host cannot satisfy (e.g. a page pool larger than RAM) is
 * RK_ERR_POOL_EXHAUSTED with a message starting "out of memory"; it is never RK_ERR_INTERNAL.
 *
 * Handles: every rk_store / rk_head_map handle is checked against a registry of live handles. NULL, a
 * destroyed handle (use after destroy, double destroy) or a pointer this library never returned is
 * RK_ERR_INVALID_ARGUMENT ("store handle 0x... is not live (destroyed or never created)"); only the *_destroy
 * functions accept NULL (ignored). The same holds for the tier handles (rk_tier, rk_prefetcher,
 * rk_swap_ticket, rk_chunk_tiers). The check cannot catch a handle destroyed by another thread during the
 * call, nor a dead address already reused by a newer handle of the same kind. */
#define RK_MAX_NUM_THREADS 1024
#define RK_MAX_LAYERS_X_KV_HEADS (1 << 20)
#define RK_MAX_NUM_Q_HEADS 65536
#define RK_MAX_TOKENS ((int64_t)1 << 31)

typedef enum rk_status {
  RK_OK = 0,
  RK_ERR_INVALID_ARGUMENT =
      1,                     /* out of range, mis-shaped, wrong dtype/device, NULL where a value is needed */
  RK_ERR_NOT_FOUND = 2,      /* a sequence id that is not live */
  RK_ERR_POOL_EXHAUSTED = 3, /* the page pool (or host memory) is full; free sequences and retry */
  RK_ERR_UNAVAILABLE = 4,    /* the requested backend (e.g. CUDA) is not available */
  RK_ERR_INTERNAL = 5,       /* a bug in redknot; the message says what */
  RK_ERR_TIER_REFUSED = 6,   /* a tier did not take an object (larger than the tier, full device, read-only
                                directory): nothing moved (rk_swap_out: the sequence stays live) */
  RK_ERR_TIER_MISS = 7       /* a tier object is missing (evicted, removed) or failed verification (corrupt,
                                truncated, another model): what it held cannot come back from there */
} rk_status;

typedef enum rk_dtype { RK_DTYPE_F32 = 0, RK_DTYPE_F16 = 1, RK_DTYPE_BF16 = 2 } rk_dtype;

typedef enum rk_head_class {
  RK_HEAD_LOCAL = 0,
  RK_HEAD_GLOBAL = 1,
  RK_HEAD_RETRIEVAL = 2,
  RK_HEAD_DENSE = 3
} rk_head_class;

typedef struct rk_head_map rk_head_map;
typedef struct rk_store rk_store;
typedef struct rk_tier rk_tier;
typedef struct rk_prefetcher rk_prefetcher;
typedef struct rk_swap_ticket rk_swap_ticket;
typedef struct rk_chunk_tiers rk_chunk_tiers;

/* ---- library ------------------------------------------------------------------------------------------- */

/* RK_ABI_VERSION of the loaded library: compare with the header's to detect a mismatched libredknot. */
RK_API uint32_t rk_abi_version(void);
/* Library version, "major.minor.patch". */
RK_API const char* rk_version(void);
/* Message of the last failed call on this thread ("" if none). */
RK_API const char* rk_last_error(void);
/* Static name of a status code ("RK_ERR_NOT_FOUND", ...). */
RK_API const char* rk_status_string(int status);
/* Live handles in this process (leak checks in tests). Either pointer may be NULL. */
RK_API int rk_live_handles(int64_t* num_stores, int64_t* num_head_maps);

/* ---- head maps (RedKnot JSON, head_map.hpp) --------------------------------------------------------- */

/* Loads the published RedKnot JSON schema from a file. */
RK_API int rk_head_map_load(const char* path, rk_head_map** out);
/* Parses the JSON text json[0, len); len == (size_t)-1 means json is NUL-terminated. */
RK_API int rk_head_map_from_json(const char* json, size_t len, rk_head_map** out);
/* Every head the same class (window and sink matter for RK_HEAD_LOCAL only). */
RK_API int rk_head_map_uniform(int32_t num_layers, int32_t num_kv_heads, int32_t head_class, int32_t window,
                               int32_t sink, rk_head_map** out);
/* round(ratio * L * H) global heads spread evenly, the rest local with the given window and sink. */
RK_API int rk_head_map_with_global_ratio(int32_t num_layers, int32_t num_kv_heads, double global_ratio,
                                         int32_t window, int32_t sink, rk_head_map** out);
/* NULL is accepted and ignored; a handle that is not live (already destroyed) is RK_ERR_INVALID_ARGUMENT. */
RK_API int rk_head_map_destroy(rk_head_map* map);

typedef struct rk_head_map_info {
  int32_t num_layers;
  int32_t num_kv_heads;
  int32_t dense_prefix_layers;
  int32_t num_local;       /* effective classes, after the dense-prefix override */
  int32_t num_global_like; /* global, retrieval and dense */
  double retrieval_top_p;
} rk_head_map_info;

typedef struct rk_head_policy {
  int32_t head_class; /* rk_head_class */
  int32_t window;     /* local: visible recent positions, the query included; -1 otherwise */
  int32_t sink;       /* local: positions [0, sink) stay visible */
} rk_head_policy;

RK_API int rk_head_map_get_info(const rk_head_map* map, rk_head_map_info* out);
/* Effective policy of (layer, kv_head): layers below dense_prefix_layers report RK_HEAD_DENSE. */
RK_API int rk_head_map_get_policy(const rk_head_map* map, int32_t layer, int32_t kv_head,
                                  rk_head_policy* out);
/* Serialises to JSON, indented by `indent` spaces in [0, 16] or compact (-1). Writes at most buf_size bytes
 * including the NUL; *len_out (optional) receives the full length without the NUL. buf may be NULL with
 * buf_size 0 to query the length. A buffer that is too small is RK_ERR_INVALID_ARGUMENT and nothing is
 * written. */
/* Pages to reserve per sequence so that num_tokens positions appended in chunks of at most `chunk` positions
 * (decode: 1) never exhaust the pool: the peak of a chunked prefill, per head sink + window + chunk, bounded
 * by every page of the context (redknot/pool_sizing.hpp). */
RK_API int rk_head_map_peak_sequence_pages(const rk_head_map* map, int32_t page_size, int64_t num_tokens,
                                           int64_t chunk, int64_t* out);
RK_API int rk_head_map_to_json(const rk_head_map* map, int32_t indent, char* buf, size_t buf_size,
                               size_t* len_out);

/* ---- stores ----------------------------------------------------------------------------------------------
 */

/* The model's RoPE as the engine applies it to K and Q (rope.hpp). A store needs it to splice a chunk at
 * other positions than it was computed at (the kernel counter-rotates queries), to relocate and to overwrite.
 */
enum rk_rope_scaling {
  RK_ROPE_NONE = -1, /* the store has no RoPE spec */
  RK_ROPE_DEFAULT = 0,
  RK_ROPE_LINEAR = 1,
  RK_ROPE_LLAMA3 = 2,
  RK_ROPE_YARN = 3
};
enum rk_rope_pairing { RK_ROPE_ROTATE_HALF = 0, RK_ROPE_INTERLEAVED = 1 };

typedef struct rk_rope_config {
  int32_t scaling;    /* rk_rope_scaling; RK_ROPE_NONE (the default of rk_store_config_init): no RoPE spec */
  int32_t pairing;    /* rk_rope_pairing */
  int32_t rotary_dim; /* 0: head_dim; partial rotary rotates dims [0, rotary_dim) */
  int32_t original_max_position; /* llama3, yarn */
  double theta;
  double factor;           /* linear, llama3, yarn */
  double low_freq_factor;  /* llama3 */
  double high_freq_factor; /* llama3 */
  double beta_fast;        /* yarn */
  double beta_slow;        /* yarn */
} rk_rope_config;

typedef struct rk_store_config {
  uint32_t struct_size; /* sizeof(rk_store_config); set by rk_store_config_init */
  int32_t num_layers;
  int32_t num_q_heads;
  int32_t num_kv_heads;
  int32_t head_dim;    /* multiple of 8 in [8, 1024] */
  int32_t dtype;       /* rk_dtype of the stored K/V */
  int32_t page_size;   /* tokens of one kv head per page, [1, 4096] */
  int32_t num_pages;   /* pool capacity, fixed for the store's lifetime */
  DLDevice device;     /* kDLCPU; kDLCUDA is RK_ERR_UNAVAILABLE until the CUDA backend lands; a device_type
                          outside DLDeviceType is RK_ERR_INVALID_ARGUMENT */
  rk_rope_config rope; /* RK_ROPE_NONE by default */
} rk_store_config;

/* Fills defaults: bf16, page_size 16, device CPU, no RoPE spec (rope.scaling = RK_ROPE_NONE; its other fields
 * hold the HF defaults: theta 10000, factor 1, low/high freq factor 1/4, original_max_position 8192, beta
 * fast/slow 32/1), everything else 0 (must be set). */
RK_API int rk_store_config_init(rk_store_config* cfg);
/* The store copies the head map; map may be destroyed right after. */
RK_API int rk_store_create(const rk_store_config* cfg, const rk_head_map* map, rk_store** out);
/* Frees every page and the pool. NULL is accepted and ignored; a handle that is not live (already destroyed)
 * is RK_ERR_INVALID_ARGUMENT. */
RK_API int rk_store_destroy(rk_store* store);
RK_API int rk_store_get_config(const rk_store* store, rk_store_config* out);
/* A new head map handle (a copy of the store's), owned by the caller. */
RK_API int rk_store_get_head_map(const rk_store* store, rk_head_map** out);

/* ---- sequences --------------------------------------------------------------------------------------------
 */

RK_API int rk_sequence_create(rk_store* store, int64_t* out_id);
/* A new sequence sharing every page of parent (copy-on-write of partial last pages). */
RK_API int rk_sequence_fork(rk_store* store, int64_t parent, int64_t* out_id);
/* Returns every page the sequence holds to the pool (shared pages when their last holder goes). */
RK_API int rk_sequence_free(rk_store* store, int64_t id);
/* 1 if id is live, 0 otherwise (never RK_ERR_NOT_FOUND). */
RK_API int rk_sequence_contains(const rk_store* store, int64_t id, int32_t* out);
/* The position the next append to (id, layer) must start at or after. */
RK_API int rk_sequence_next_position(const rk_store* store, int64_t id, int32_t layer, int32_t* out);
/* Declares that every query of (id, layer) before next_query_pos has run (layer -1: all layers), letting
 * local heads drop pages no later query can see. */
RK_API int rk_sequence_retire_queries(rk_store* store, int64_t id, int32_t next_query_pos, int32_t layer);

/* ---- data path --------------------------------------------------------------------------------------------
 */

/* Appends n_tokens tokens of one layer. k and v: [n_tokens, num_kv_heads, head_dim] (or
 * [n_tokens, num_kv_heads * head_dim]), dtype = the store's (zero copy) or f32 (converted, round to nearest
 * even); host memory. positions: n_tokens host int32, strictly increasing, beyond every position appended
 * to (id, layer) so far. */
RK_API int rk_append(rk_store* store, int64_t seq, int32_t layer, const DLTensor* k, const DLTensor* v,
                     const int32_t* positions, int64_t n_tokens, void* stream);

/* Batched append of one layer (vLLM's reshape_and_cache over a batch): sequence seq_ids[i] takes rows
 * [token_offsets[i], token_offsets[i + 1]) of k, v and positions; token_offsets has batch_size + 1 entries,
 * token_offsets[0] == 0, non-decreasing (a sequence may take no tokens), and token_offsets[batch_size] rows
 * in k and v ([n, num_kv_heads, head_dim] or [n, num_kv_heads * head_dim], as for rk_append). Each sequence
 * at most once. All-or-nothing: on any error no sequence of the batch changed. */
RK_API int rk_append_batch(rk_store* store, int32_t layer, const int64_t* seq_ids, int32_t batch_size,
                           const int32_t* token_offsets, const DLTensor* k, const DLTensor* v,
                           const int32_t* positions, void* stream);

/* Describes the step's batch once: batch_size sequences, sequence i has q_lens[i] queries (1 for decode, the
 * chunk length for prefill) at the positions q_positions[sum(q_lens[:i]) ...]; total_q = sum(q_lens). Only
 * the description is checked here (sizes, live and distinct sequences): the K/V of the queries' own positions
 * are usually appended later in the step, layer by layer, and are checked by rk_attention. */
RK_API int rk_plan(rk_store* store, const int64_t* seq_ids, const int32_t* q_lens, int32_t batch_size,
                   const int32_t* q_positions, int64_t total_q);

typedef struct rk_attention_params {
  float sm_scale;      /* softmax scale; 0 selects 1/sqrt(head_dim); negative, NaN, inf: INVALID_ARGUMENT */
  int32_t num_threads; /* CPU threads: 0 selects the OpenMP default, else [1, RK_MAX_NUM_THREADS] */
} rk_attention_params;

/* Attention of the planned batch in one layer (prefill, decode or a mix). q and out: [total_q, num_q_heads,
 * head_dim] (or [total_q, num_q_heads * head_dim]), both f32 or both the store dtype, host memory. lse
 * (optional, may be NULL): f32 [total_q, num_q_heads], natural-log sum of exp of the scaled scores. params
 * may be NULL (defaults). The layer's page-table mirror is kept across steps, so a decode step costs metadata
 * proportional to what changed. */
RK_API int rk_attention(rk_store* store, int32_t layer, const DLTensor* q, DLTensor* out, DLTensor* lse,
                        const rk_attention_params* params, void* stream);

/* ---- accounting -------------------------------------------------------------------------------------------
 */

typedef struct rk_store_stats {
  int64_t num_sequences;
  int64_t pages_total;
  int64_t pages_in_use;
  int64_t pages_global; /* pages held by global-like heads (global, retrieval, dense) */
  int64_t pages_local;
  int64_t bytes_in_use;
  int64_t bytes_global;
  int64_t bytes_local;
} rk_store_stats;

typedef struct rk_sequence_stats {
  int64_t pages_global; /* pages shared with a fork are counted in each sequence */
  int64_t pages_local;
  int64_t tokens_global; /* stored (layer, head, position) triples */
  int64_t tokens_local;
  int64_t bytes_global;
  int64_t bytes_local;
} rk_sequence_stats;

/* Safe to call from any thread at any time, also during a write on another thread. */
RK_API int rk_store_get_stats(const rk_store* store, rk_store_stats* out);
RK_API int rk_sequence_get_stats(const rk_store* store, int64_t id, rk_sequence_stats* out);
/* Pages one sequence of num_tokens tokens holds at steady state (decoding), by the retention rule. */
RK_API int rk_store_pages_per_sequence(const rk_store* store, int64_t num_tokens, int64_t* out);
/* How many more such sequences fit in the free pages (INT64_MAX when a sequence needs no page). */
RK_API int rk_store_sequences_that_fit(const rk_store* store, int64_t num_tokens, int64_t* out);

/* ---- page-table interchange (FlashInfer CSR)
 * --------------------------------------------------------------- */

/* Exports the page tables of one layer for a batch of sequences in FlashInfer's paged-KV CSR layout.
 * Rows are (sequence, kv_head) pairs, sequence-major: row r = i * num_kv_heads + h.
 *   indptr[batch_size * num_kv_heads + 1]: row r's pages are indices[indptr[r], indptr[r + 1]).
 *   indices[*num_indices_out]: page ids into the store's pool ([num_pages][2][page_size][head_dim]).
 *   last_page_len[batch_size * num_kv_heads]: used slots of the row's last page, in [1, page_size]; 0 for a
 *     row with no pages.
 *   page_pos0[*num_indices_out] (optional, may be NULL): the position held by slot 0 of each page. Positions
 *     are consecutive within a page but may jump between pages (a local head keeps its sink pages and its
 *     window pages), so FlashInfer's implicit "token j is at position j" holds only where page_pos0[j] ==
 *     (j - indptr[r]) * page_size.
 * The CSR lists exactly the stored tokens, which for a local head is a page-granular superset of what the
 * canonical rule lets a query see (sink + window masks are the consumer's job).
 * A row is expressible only if every page is used from slot 0 by one run of consecutive positions and every
 * page but the last is full; otherwise (e.g. a partial sink page kept after eviction when sink is not a
 * multiple of page_size, or a position jump inside a page) the call fails with RK_ERR_INVALID_ARGUMENT naming
 * the sequence, head and page, and writes nothing.
 * Call with indices == NULL (indices_capacity 0) to learn *num_indices_out; indptr and last_page_len may then
 * also be NULL. */
RK_API int rk_export_page_table(const rk_store* store, int32_t layer, const int64_t* seq_ids,
                                int32_t batch_size, int32_t* indptr, int32_t* indices,
                                int64_t indices_capacity, int32_t* last_page_len, int32_t* page_pos0,
                                int64_t* num_indices_out);

/* The page pool as one DLTensor [num_pages, 2, page_size, head_dim] in the store dtype (K = [:, 0], V = [:,
 * 1]), row-major (strides NULL), on the store's device. With rk_export_page_table it is what FlashInfer's
 * paged kernels read, one kv head per CSR row. out->shape points into the store and stays valid until
 * rk_store_destroy. Read-only, and only while no call mutates the store. */
RK_API int rk_store_get_kv_pool(const rk_store* store, DLTensor* out);

/* ---- chunks: position-independent reuse
 * --------------------------------------------------------------------- A document prefilled alone at
 * positions 0..n-1 into a sequence (one rk_append per layer) is registered under a content key and spliced
 * into any number of sequences at any offset without copying (kv_head_store.hpp). */

typedef struct rk_chunk_key {
  uint64_t hi;
  uint64_t lo;
} rk_chunk_key;

typedef struct rk_chunk_stats {
  int64_t chunks;
  int64_t chunks_in_use; /* spliced into a live sequence: never dropped or evicted */
  int64_t pages_held;
  int64_t hits;
  int64_t misses;
  int64_t splices;
  int64_t evictions; /* unused chunks dropped under pool pressure, least recently used first */
} rk_chunk_stats;

/* XXH3-128 of (model_id, the store's shape, dtype and head map, tokens). model_id: NUL-terminated. */
RK_API int rk_chunk_key_make(const rk_store* store, const char* model_id, const int32_t* tokens,
                             int64_t n_tokens, rk_chunk_key* out);
/* The sequence (every position 0..n-1 on every head) becomes the chunk; its id is no longer live. */
RK_API int rk_chunk_register(rk_store* store, rk_chunk_key key, int64_t seq);
/* *out_n_tokens = the chunk's token count, or -1 when the key is not registered (not an error). */
RK_API int rk_chunk_lookup(rk_store* store, rk_chunk_key key, int32_t* out_n_tokens);
/* Zero-copy: the chunk joins seq at positions [at, at + n). first_query: the first position whose query will
 * run (-1: at + n). at != 0 needs the store's RoPE spec. */
RK_API int rk_chunk_splice(rk_store* store, int64_t seq, rk_chunk_key key, int32_t at, int32_t first_query);
/* The copying path: the chunk's keys are rotated to their new positions (needs pages like an append). */
RK_API int rk_chunk_relocate(rk_store* store, int64_t seq, rk_chunk_key key, int32_t at, int32_t first_query);
/* *out_dropped = 1 if the chunk was dropped, 0 if the key was not registered; a chunk in use is an error. */
RK_API int rk_chunk_drop(rk_store* store, rk_chunk_key key, int32_t* out_dropped);
RK_API int rk_chunk_get_stats(const rk_store* store, rk_chunk_stats* out);
/* Fresh K/V of recomputed tokens for this sequence only (copy-on-write of shared pages): k and v as for
 * rk_append, positions strictly increasing and already held. */
RK_API int rk_overwrite(rk_store* store, int64_t seq, int32_t layer, const DLTensor* k, const DLTensor* v,
                        const int32_t* positions, int64_t n_tokens);
/* Cached rows as fp32 into k and v (n_tokens * num_kv_heads * head_dim floats each), keys rotated for their
 * current positions; NaN rows where a head no longer holds the token. */
RK_API int rk_read_rows(const rk_store* store, int64_t seq, int32_t layer, const int32_t* positions,
                        int64_t n_tokens, float* k, float* v);
/* Which tokens of a chunk to recompute (recompute.hpp). strategy: "none", "first_k", "deviation_topk",
 * "global_deviation_topk", "query_topk". deviation: [n_tokens * num_kv_heads] or NULL; head_is_local:
 * [num_kv_heads] (0/1) or NULL (all global); query_attention: [n_tokens] or NULL. out_tokens has room for
 * n_tokens entries; *out_count receives how many were written (sorted token indices). */
RK_API int rk_select_recompute(const char* strategy, double ratio, int32_t first_k, int32_t n_tokens,
                               const float* deviation, int32_t num_kv_heads, const int32_t* head_is_local,
                               const float* query_attention, int32_t* out_tokens, int32_t* out_count);

/* ---- tiers: KV below the page pool (tiers.hpp)
 * ------------------------------------------------------------- A tier stores named byte objects: a host tier
 * in RAM, a disk tier as one file <name>.rkt per object in a directory. Both have a byte capacity and evict
 * the least recently used object when a put needs room (an evicted object is gone; the stats count it). What
 * goes in is the verified slice format (kv_slice.hpp): whatever comes back is checked against the store that
 * takes it, so a corrupt, truncated or foreign object is RK_ERR_TIER_MISS (or a lookup miss), never KV.
 *
 * Lifetimes: an rk_chunk_tiers holds its store, tiers and prefetcher: rk_store_destroy, rk_tier_destroy and
 * rk_prefetcher_destroy refuse (RK_ERR_INVALID_ARGUMENT, naming how many caches use the handle) while a live
 * rk_chunk_tiers uses them; destroy the cache first. An rk_swap_ticket holds nothing: it names the tiers its
 * objects went to (rk_swap_in and rk_swap_discard check that they are passed the same ones) and is plain data
 * otherwise; destroying it does not remove its objects (rk_swap_discard does). Calls on one tier are
 * serialised by the tier; swap and chunk-tier calls take the store's lock. */

typedef struct rk_tier_stats {
  int64_t capacity_bytes;
  int64_t bytes_held; /* what the objects take (disk: file sizes, headers included) */
  int64_t objects;
  int64_t hits;
  int64_t misses; /* absent, unreadable or failed verification */
  int64_t evictions;
  int64_t evicted_bytes;
  int64_t bytes_written;
  int64_t bytes_read;
  int64_t put_failures; /* puts refused: larger than the tier, or an I/O error */
  int64_t corrupt;      /* objects that failed verification on read (removed) */
  int64_t get_ns;       /* time spent reading */
  int64_t spilled; /* evicted objects the tier below took (a host tier with a spill target; none yet in C) */
  int64_t spilled_bytes;
} rk_tier_stats;

/* A tier in host memory holding at most capacity_bytes (>= 0) of objects. */
RK_API int rk_tier_host_create(int64_t capacity_bytes, rk_tier** out);
/* A tier in directory dir (NUL-terminated) holding at most capacity_bytes (>= 0) of files. A missing
 * directory is created when create != 0, else RK_ERR_NOT_FOUND; one that cannot be created, or a path that is
 * not a directory, is RK_ERR_UNAVAILABLE. Objects already in the directory are adopted (oldest first),
 * leftover temporaries removed. fsync != 0: each object is flushed to the device before it replaces the old
 * one. A directory that becomes unwritable later makes puts fail (RK_ERR_TIER_REFUSED from the calls that
 * put). */
RK_API int rk_tier_disk_create(const char* dir, int64_t capacity_bytes, int32_t create, int32_t fsync,
                               rk_tier** out);
/* NULL is accepted and ignored; a handle that is not live, or one a live rk_chunk_tiers uses, is
 * RK_ERR_INVALID_ARGUMENT. A disk tier's files stay in its directory. */
RK_API int rk_tier_destroy(rk_tier* tier);
RK_API int rk_tier_get_stats(const rk_tier* tier, rk_tier_stats* out);
/* *out = 1 if the tier holds an object named `name` ([A-Za-z0-9._-]{1,200}, not starting with '.'), else 0.
 */
RK_API int rk_tier_contains(const rk_tier* tier, const char* name, int32_t* out);
/* *out_removed (optional) = 1 if an object was removed, 0 if there was none. */
RK_API int rk_tier_remove(rk_tier* tier, const char* name, int32_t* out_removed);

/* Reads tier objects ahead of their use on `threads` ([1, 64]) worker threads (rk_swap_in,
 * rk_chunk_tiers_prefetch). */
RK_API int rk_prefetcher_create(int32_t threads, rk_prefetcher** out);
/* NULL is accepted and ignored; one a live rk_chunk_tiers uses is RK_ERR_INVALID_ARGUMENT. */
RK_API int rk_prefetcher_destroy(rk_prefetcher* prefetcher);

/* ---- sequence swap (preemption) ----
 * rk_swap_out writes every row sequence `seq` holds as objects "<name>.l<layer>.local" (each layer's local
 * heads: sink + window, small, needed first) to `hot` and "<name>.l<layer>.global" (global-like heads: the
 * whole history) to `cold`, then frees the sequence (a spliced chunk keeps its pages). cold may be NULL: the
 * same as hot. A local object the hot tier refuses goes to cold. name: [A-Za-z0-9._-], not starting with '.',
 * short enough for the longest object name (200 characters). model_id (NUL-terminated) is the engine's model
 * id: rk_swap_in accepts only slices of the same model.
 *   RK_ERR_TIER_REFUSED: a tier refused an object (or evicted one of this ticket's objects for a later one):
 *     what was written is removed again, the sequence stays live and unchanged. Free room and retry, or pick
 *     another victim.
 *   RK_ERR_NOT_FOUND: seq is not live. */
RK_API int rk_swap_out(rk_store* store, int64_t seq, rk_tier* hot, rk_tier* cold, const char* model_id,
                       const char* name, rk_swap_ticket** out_ticket);
/* Restores the ticket's sequence into `store` (the one it left, or another store of the same num_layers,
 * num_kv_heads, head_dim, dtype and head map) as a new sequence *out_seq: the same positions with the same
 * rotations, next positions and query floors; attention over it equals the never-moved sequence bit for bit.
 * hot and cold (NULL: hot) must be the tiers rk_swap_out was given. prefetcher (optional) reads the objects
 * ahead. The objects are removed and the ticket is used up (rk_swap_ticket_destroy it).
 *   RK_ERR_TIER_MISS: an object is missing or fails its digest / slice checks: the sequence cannot come back;
 *     its objects are removed, the ticket is used up, the store is unchanged.
 *   RK_ERR_POOL_EXHAUSTED: not enough free pages: store, ticket and objects unchanged (make room, retry).
 *   RK_ERR_INVALID_ARGUMENT (nothing changed): a used ticket, a store of another layout, other tiers. */
RK_API int rk_swap_in(rk_store* store, rk_swap_ticket* ticket, rk_tier* hot, rk_tier* cold,
                      rk_prefetcher* prefetcher, int64_t* out_seq);
/* Removes an unused ticket's objects from its tiers (a sequence the engine gives up on); the ticket is used
 * up. A used ticket or other tiers are RK_ERR_INVALID_ARGUMENT. */
RK_API int rk_swap_discard(rk_swap_ticket* ticket, rk_tier* hot, rk_tier* cold);

typedef struct rk_swap_ticket_info {
  int64_t bytes;        /* what the objects take (before a disk tier's file headers) */
  int64_t objects;      /* number of objects */
  int64_t cold_objects; /* of which in the cold tier */
  int32_t num_layers;
  int32_t used; /* 1 once swapped in, discarded or lost to RK_ERR_TIER_MISS */
} rk_swap_ticket_info;

RK_API int rk_swap_ticket_get_info(const rk_swap_ticket* ticket, rk_swap_ticket_info* out);
/* Frees the ticket (NULL ignored; a handle that is not live is RK_ERR_INVALID_ARGUMENT). The objects of an
 * unused ticket stay in the tiers until evicted: rk_swap_discard first to remove them. */
RK_API int rk_swap_ticket_destroy(rk_swap_ticket* ticket);

/* ---- chunks through tiers ----
 * A tiered chunk cache keeps the store's chunk registry over a stack of tiers (fastest first): chunks the
 * engine makes room from move down instead of being dropped, and a lookup promotes them back (read, verify
 * every slice, import, register; the object is removed from the tier). The store's own eviction (an append
 * that finds no free page drops unused chunks) is unchanged: call rk_chunk_tiers_make_room before appends. */

typedef struct rk_chunk_tier_stats {
  int64_t demotions;        /* chunks written down and dropped from the store */
  int64_t dropped;          /* chunks dropped without a copy below (not admitted, or no tier took it) */
  int64_t write_failures;   /* demotions every tier refused (counted in dropped too) */
  int64_t promotions;       /* chunks read back, verified and registered again */
  int64_t promote_failures; /* a verified copy that did not fit in the pool (it stays below) */
  int64_t rejected;         /* objects that failed verification (removed) */
  int64_t misses;           /* lookups found nowhere */
  int64_t bytes_down;
  int64_t bytes_up;
  int64_t prefetches; /* reads started by rk_chunk_tiers_prefetch */
  int64_t read_wait_ns;
  int64_t promote_ns;
} rk_chunk_tier_stats;

/* A cache over `store` and tiers[0, n_tiers) (n_tiers >= 1, distinct, fastest first) for model model_id
 * (NUL-terminated; what rk_chunk_key_make was given). min_splices (>= 0): only chunks spliced at least that
 * many times are written down; others are dropped. prefetcher may be NULL (rk_chunk_tiers_prefetch then
 * starts nothing). The cache holds the store, the tiers and the prefetcher (see "Lifetimes" above). */
RK_API int rk_chunk_tiers_create(rk_store* store, const char* model_id, rk_tier* const* tiers,
                                 int32_t n_tiers, int64_t min_splices, rk_prefetcher* prefetcher,
                                 rk_chunk_tiers** out);
/* NULL is accepted and ignored; a handle that is not live is RK_ERR_INVALID_ARGUMENT. */
RK_API int rk_chunk_tiers_destroy(rk_chunk_tiers* cache);
/* Demotes unused chunks, least recently used first, until `pages` pages are free or no unused chunk is left;
 * *out_freed (optional): the pages that became free. */
RK_API int rk_chunk_tiers_make_room(rk_chunk_tiers* cache, int64_t pages, int64_t* out_freed);
/* Writes chunk `key` to the first tier that takes it (when admitted) and drops it from the store;
 * *out_written (optional) = 1 when a copy landed below. RK_ERR_NOT_FOUND: not registered;
 * RK_ERR_INVALID_ARGUMENT: a live sequence uses it. */
RK_API int rk_chunk_tiers_demote(rk_chunk_tiers* cache, rk_chunk_key key, int32_t* out_written);
/* *out_n_tokens = the chunk's tokens, from the store or promoted from the first tier holding a verified
 * copy; -1 for a miss (found nowhere, or no copy verified or fitted: not an error, the stats say which). */
RK_API int rk_chunk_tiers_lookup(rk_chunk_tiers* cache, rk_chunk_key key, int32_t* out_n_tokens);
/* Starts reading chunk `key` from its tier on the prefetcher, so that a later lookup finds the bytes read.
 * *out_started (optional) = 0 when nothing started (no prefetcher, in the store, in no tier, already read).
 */
RK_API int rk_chunk_tiers_prefetch(rk_chunk_tiers* cache, rk_chunk_key key, int32_t* out_started);
/* *out = 1 if a tier holds a copy of chunk `key`. */
RK_API int rk_chunk_tiers_contains(const rk_chunk_tiers* cache, rk_chunk_key key, int32_t* out);
RK_API int rk_chunk_tiers_get_stats(const rk_chunk_tiers* cache, rk_chunk_tier_stats* out);

/* Live tier handles in this process (leak checks). Any pointer may be NULL. */
RK_API int rk_live_tier_handles(int64_t* num_tiers, int64_t* num_prefetchers, int64_t* num_tickets,
                                int64_t* num_chunk_tiers);

#ifdef __cplusplus
}  // extern "C"
#endif

#endif /* REDKNOT_C_API_H_ */

/* Embedding redknot from plain C.
 *
 * Builds a two-layer store whose heads mix global and local (sink + window) classes, runs a prefill of a few
 * tokens and then a few decode steps the way an engine's forward does (plan once per step; per layer: append
 * the step's K/V, then attend), and checks every output against a naive attention computed here from the
 * canonical rule: a query at p sees key k <= p iff the head is global, or k < sink, or k > p - window.
 * Finally it exercises an error path and checks that freeing the sequence returns every page. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "redknot/c_api.h"

enum { kLayers = 2, kQHeads = 4, kKvHeads = 2, kDim = 8, kPageSize = 4, kPrefill = 9, kDecode = 4 };
enum { kMaxTokens = kPrefill + kDecode };

/* Head map: the published RedKnot JSON schema. Layer 0: head 0 global, head 1 local (window 5, sink 2);
 * layer 1: head 0 local (window 4, sink 1), head 1 global. */
static const char* kHeadMapJson =
    "{\"num_layers\": 2, \"num_kv_heads\": 2,"
    " \"kv_head_classification\": [[\"global\", \"local\"], [\"streaming\", \"global\"]],"
    " \"kv_head_max_distance\": [[-1, 5], [4, -1]],"
    " \"kv_head_sink_size\": [[0, 2], [1, 0]]}";

static const int kWindow[kLayers][kKvHeads] = {{-1, 5}, {4, -1}};
static const int kSink[kLayers][kKvHeads] = {{0, 2}, {1, 0}};

/* Everything appended, for the reference: [layer][position][kv_head][dim]. */
static float g_k[kLayers][kMaxTokens][kKvHeads][kDim];
static float g_v[kLayers][kMaxTokens][kKvHeads][kDim];

static unsigned g_rng = 12345u;
static float uniform(void) {
  g_rng = g_rng * 1664525u + 1013904223u;
  return (float)((g_rng >> 8) & 0xffff) / 32768.0f - 1.0f;
}

#define CHECK(call)                                                                                   \
  do {                                                                                                \
    int rc_ = (call);                                                                                 \
    if (rc_ != RK_OK) {                                                                               \
      fprintf(stderr, "%s:%d: %s failed: %s: %s\n", __FILE__, __LINE__, #call, rk_status_string(rc_), \
              rk_last_error());                                                                       \
      exit(1);                                                                                        \
    }                                                                                                 \
  } while (0)

static DLTensor tensor_f32(float* data, int ndim, int64_t* shape) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.device.device_id = 0;
  t.ndim = ndim;
  t.dtype.code = kDLFloat;
  t.dtype.bits = 32;
  t.dtype.lanes = 1;
  t.shape = shape;
  t.strides = NULL; /* row-major */
  t.byte_offset = 0;
  return t;
}

static int visible(int layer, int kv_head, int q, int k) {
  if (k > q) return 0;
  if (kWindow[layer][kv_head] < 0) return 1;
  return k < kSink[layer][kv_head] || k > q - kWindow[layer][kv_head];
}

/* Naive attention of one query row [kQHeads][kDim] at position p in one layer. */
static void reference(int layer, const float* q, int p, double* out) {
  const double scale = 1.0 / sqrt((double)kDim);
  int qh, k, d;
  for (qh = 0; qh < kQHeads; ++qh) {
    const int h = qh / (kQHeads / kKvHeads);
    double mx = -INFINITY, sum = 0.0, s[kMaxTokens];
    for (k = 0; k <= p; ++k) {
      double dot = 0.0;
      if (!visible(layer, h, p, k)) continue;
      for (d = 0; d < kDim; ++d) dot += (double)q[qh * kDim + d] * g_k[layer][k][h][d];
      s[k] = dot * scale;
      if (s[k] > mx) mx = s[k];
    }
    for (d = 0; d < kDim; ++d) out[qh * kDim + d] = 0.0;
    for (k = 0; k <= p; ++k) {
      double w;
      if (!visible(layer, h, p, k)) continue;
      w = exp(s[k] - mx);
      sum += w;
      for (d = 0; d < kDim; ++d) out[qh * kDim + d] += w * g_v[layer][k][h][d];
    }
    for (d = 0; d < kDim; ++d) out[qh * kDim + d] /= sum;
  }
}

/* One engine step for a single sequence: n new tokens starting at position p0. Returns the max abs error. */
static double step(rk_store* store, int64_t seq, int32_t p0, int32_t n) {
  static float q[kMaxTokens][kQHeads][kDim], out[kMaxTokens][kQHeads][kDim];
  int32_t positions[kMaxTokens];
  double ref[kQHeads * kDim], err = 0.0;
  int i, layer, h, d;
  for (i = 0; i < n; ++i) positions[i] = p0 + i;
  CHECK(rk_plan(store, &seq, &n, 1, positions, n));
  for (layer = 0; layer < kLayers; ++layer) {
    int64_t kv_shape[3] = {0, kKvHeads, kDim}, q_shape[3] = {0, kQHeads, kDim};
    DLTensor k_t, v_t, q_t, out_t;
    kv_shape[0] = n;
    q_shape[0] = n;
    /* The step's new K/V: the engine's layout [n_tokens][kv_head][dim], here straight from the shadow. */
    for (i = 0; i < n; ++i)
      for (h = 0; h < kKvHeads; ++h)
        for (d = 0; d < kDim; ++d) {
          g_k[layer][p0 + i][h][d] = uniform();
          g_v[layer][p0 + i][h][d] = uniform();
        }
    k_t = tensor_f32(&g_k[layer][p0][0][0], 3, kv_shape);
    v_t = tensor_f32(&g_v[layer][p0][0][0], 3, kv_shape);
    CHECK(rk_append(store, seq, layer, &k_t, &v_t, positions, n, NULL));

    for (i = 0; i < n; ++i)
      for (h = 0; h < kQHeads; ++h)
        for (d = 0; d < kDim; ++d) q[i][h][d] = uniform();
    q_t = tensor_f32(&q[0][0][0], 3, q_shape);
    out_t = tensor_f32(&out[0][0][0], 3, q_shape);
    CHECK(rk_attention(store, layer, &q_t, &out_t, NULL, NULL, NULL));

    for (i = 0; i < n; ++i) {
      reference(layer, &q[i][0][0], p0 + i, ref);
      for (h = 0; h < kQHeads; ++h)
        for (d = 0; d < kDim; ++d) {
          const double e = fabs(ref[h * kDim + d] - (double)out[i][h][d]);
          if (e > err) err = e;
        }
    }
  }
  return err;
}

int main(void) {
  rk_head_map* map = NULL;
  rk_store* store = NULL;
  rk_store_config cfg;
  rk_store_stats stats;
  int64_t seq = 0;
  double err, worst = 0.0;
  int t, rc, failures = 0;

  if (rk_abi_version() != RK_ABI_VERSION) {
    fprintf(stderr, "libredknot ABI %u does not match the header's %d\n", rk_abi_version(), RK_ABI_VERSION);
    return 1;
  }
  printf("redknot %s (C ABI %u)\n", rk_version(), rk_abi_version());

  CHECK(rk_head_map_from_json(kHeadMapJson, (size_t)-1, &map));
  CHECK(rk_store_config_init(&cfg));
  cfg.num_layers = kLayers;
  cfg.num_q_heads = kQHeads;
  cfg.num_kv_heads = kKvHeads;
  cfg.head_dim = kDim;
  cfg.dtype = RK_DTYPE_F32;
  cfg.page_size = kPageSize;
  cfg.num_pages = 64;
  CHECK(rk_store_create(&cfg, map, &store));
  CHECK(rk_head_map_destroy(map)); /* the store keeps its own copy */

  CHECK(rk_sequence_create(store, &seq));
  err = step(store, seq, 0, kPrefill);
  printf("prefill of %d tokens: max |err| = %.3g\n", kPrefill, err);
  worst = err > worst ? err : worst;
  for (t = 0; t < kDecode; ++t) {
    err = step(store, seq, kPrefill + t, 1);
    printf("decode at position %d: max |err| = %.3g\n", kPrefill + t, err);
    worst = err > worst ? err : worst;
  }
  if (worst > 1e-4) {
    fprintf(stderr, "FAIL: attention differs from the reference by %.3g\n", worst);
    ++failures;
  }

  /* Bad input is a status and a message, never a crash; the store is unchanged. */
  rc = rk_sequence_free(store, 999);
  if (rc != RK_ERR_NOT_FOUND || strlen(rk_last_error()) == 0) {
    fprintf(stderr, "FAIL: freeing an unknown sequence returned %s\n", rk_status_string(rc));
    ++failures;
  } else {
    printf("expected error: %s: %s\n", rk_status_string(rc), rk_last_error());
  }

  CHECK(rk_store_get_stats(store, &stats));
  printf("pages in use: %lld of %lld (global %lld, local %lld)\n", (long long)stats.pages_in_use,
         (long long)stats.pages_total, (long long)stats.pages_global, (long long)stats.pages_local);
  CHECK(rk_sequence_free(store, seq));
  CHECK(rk_store_get_stats(store, &stats));
  if (stats.pages_in_use != 0) {
    fprintf(stderr, "FAIL: %lld pages still in use after freeing the only sequence\n",
            (long long)stats.pages_in_use);
    ++failures;
  }
  CHECK(rk_store_destroy(store));

  printf(failures ? "FAILED\n" : "OK\n");
  return failures ? 1 : 0;
}

#include "session.hpp"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "redknot/cpu_attention.hpp"
#include "redknot/error.hpp"
#include "redknot/pool_sizing.hpp"

namespace redknot::decoder {

namespace {

// y[n, out] (+)= x[n, in] * W[out, in]^T. One token (a decode step) is a matrix-vector product: sgemm would
// pack W for a GEMM on every call (OpenBLAS 0.3.21: 40% of generation time under perf), sgemv streams it
// once.
void matmul(const float* x, const std::vector<float>& w, float* y, int n, int in, int out, bool accumulate) {
  if (n == 1)
    cblas_sgemv(CblasRowMajor, CblasNoTrans, out, in, 1.f, w.data(), in, x, 1, accumulate ? 1.f : 0.f, y, 1);
  else
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.f, x, in, w.data(), in,
                accumulate ? 1.f : 0.f, y, out);
}

void rms_norm(const float* x, const std::vector<float>& w, float* y, int n, int d, float eps) {
  for (int i = 0; i < n; ++i) {
    const float* xr = x + static_cast<std::size_t>(i) * d;
    float* yr = y + static_cast<std::size_t>(i) * d;
    double ss = 0;
    for (int j = 0; j < d; ++j) ss += static_cast<double>(xr[j]) * xr[j];
    const float inv = 1.f / std::sqrt(static_cast<float>(ss / d) + eps);
    for (int j = 0; j < d; ++j) yr[j] = xr[j] * inv * w[static_cast<std::size_t>(j)];
  }
}

}  // namespace

std::int32_t argmax(std::span<const float> logits) {
  return static_cast<std::int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

Session::Session(const LlamaModel& model, HeadMap map, SessionOptions opt) : model_(model), opt_(opt) {
  const LlamaConfig& c = model.config();
  require(opt_.chunk > 0 && opt_.max_context > 0, "session: chunk and max_context must be > 0");
  map.validate_shape(c.n_layers, c.n_kv_heads);
  // The peak of a chunked prefill (sink + window of a chunk's first query + the chunk, per local head).
  const auto pages = peak_sequence_pages(map, opt_.page_size, opt_.max_context, opt_.chunk);
  store_ = make_store(model, std::move(map), opt_.page_size, pages);
  plans_.resize(static_cast<std::size_t>(c.n_layers));
  seq_ = store_->create_sequence();
}

Session::Session(const LlamaModel& model, std::shared_ptr<Store> store, SessionOptions opt)
    : model_(model), opt_(opt), store_(std::move(store)) {
  const LlamaConfig& c = model.config();
  require(store_ != nullptr, "session: no store");
  require(opt_.chunk > 0 && opt_.max_context > 0, "session: chunk and max_context must be > 0");
  const ModelShape& sh = store_->shape();
  require(sh.num_layers == c.n_layers && sh.num_kv_heads == c.n_kv_heads && sh.head_dim == c.head_dim &&
              sh.num_q_heads == c.n_heads,
          "session: the store's shape does not match the model");
  plans_.resize(static_cast<std::size_t>(c.n_layers));
  seq_ = store_->create_sequence();
}

Session::Session(const LlamaModel& model, std::shared_ptr<Store> store, SessionOptions opt, SeqId seq,
                 std::int32_t pos)
    : model_(model), opt_(opt), store_(std::move(store)), seq_(seq), pos_(pos) {
  plans_.resize(static_cast<std::size_t>(model.config().n_layers));
}

Session::~Session() {
  drop_restore();
  if (seq_ != 0 && store_->contains(seq_)) store_->free_sequence(seq_);
}

std::shared_ptr<Store> Session::make_store(const LlamaModel& model, HeadMap map, int page_size,
                                           std::int64_t num_pages) {
  const LlamaConfig& c = model.config();
  map.validate_shape(c.n_layers, c.n_kv_heads);
  require(num_pages > 0 && num_pages <= std::numeric_limits<std::int32_t>::max(),
          "session: num_pages=", num_pages, " out of range");
  const ModelShape shape{c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim, DType::kF32};
  // The store rotates with rope_inv_freq(c.rope); a file's rope_freqs.weight divisors are not part of a
  // RopeConfig, so such a model gets no RoPE spec and the store refuses to move its chunks (nothing silently
  // rotates with the wrong frequencies).
  std::optional<RopeConfig> rope = c.rope;
  const std::vector<double> f = rope_inv_freq(c.rope);
  for (std::size_t i = 0; i < f.size(); ++i)
    if (i >= model.inv_freq().size() || !(std::abs(f[i] - model.inv_freq()[i]) <= 1e-9 * std::abs(f[i])))
      rope.reset();
  return std::make_shared<Store>(shape, std::move(map),
                                 StoreConfig{page_size, static_cast<std::int32_t>(num_pages)}, rope);
}

void Session::reset() {
  drop_restore();
  if (seq_ != 0 && store_->contains(seq_)) store_->free_sequence(seq_);
  seq_ = store_->create_sequence();
  pos_ = 0;
  swapped_out_ = false;
}

SeqId Session::release() {
  require(seq_ != 0, "session: no sequence to release (reset() first)");
  finish_restore();
  const SeqId id = seq_;
  seq_ = 0;
  pos_ = 0;
  return id;
}

std::unique_ptr<Session> Session::fork() const {
  require(seq_ != 0, "session: no sequence to fork");
  const_cast<Session*>(this)->finish_restore();  // the fork shares every layer's pages
  return std::unique_ptr<Session>(new Session(model_, store_, opt_, store_->fork(seq_), pos_));
}

SwapTicket Session::swap_out(KvTier& hot, KvTier& cold, std::uint64_t model_fp, std::string_view name) {
  require(seq_ != 0, "swap_out: no sequence (released or already swapped out)");
  finish_restore();
  auto ticket = redknot::swap_out(*store_, seq_, hot, cold, model_fp, name);
  require<Unavailable>(ticket.has_value(), "swap_out: the tier refused an object of sequence '", name,
                       "' (larger than the tier, or an I/O error); the sequence stays in the store");
  seq_ = 0;  // freed by swap_out: the destructor must not touch it
  swapped_out_ = true;
  return std::move(*ticket);
}

std::int32_t Session::swap_in_position(const SwapTicket& ticket, const char* op) const {
  if (swapped_out_ && seq_ == 0) return pos_;  // its own sequence coming back
  const bool fresh =
      seq_ != 0 && restore_ == nullptr && pos_ == 0 && store_->sequence_stats(seq_).pages() == 0;
  require(fresh, op, ": the session holds a sequence (swap_out first, or use a fresh session)");
  require(!ticket.next_pos.empty() && std::all_of(ticket.next_pos.begin(), ticket.next_pos.end(),
                                                  [&](std::int32_t p) { return p == ticket.next_pos[0]; }),
          op, ": the ticket's layers stop at different positions: not a sequence a forward left");
  require(ticket.next_pos[0] <= opt_.max_context, op, ": the ticket's sequence reaches position ",
          ticket.next_pos[0], ", beyond max_context=", opt_.max_context);
  return ticket.next_pos[0];
}

void Session::adopt(SeqId id, std::int32_t pos) {
  if (seq_ != 0) store_->free_sequence(seq_);  // a fresh session's empty sequence
  seq_ = id;
  pos_ = pos;
  swapped_out_ = false;
  plans_.assign(plans_.size(), AttentionPlan{});  // built for the old sequence id
}

void Session::swap_in(const SwapTicket& ticket, KvTier& hot, KvTier& cold, TierPrefetcher* prefetcher,
                      SwapInStats* stats) {
  const std::int32_t pos = swap_in_position(ticket, "swap_in");
  std::string why;
  const auto id = redknot::swap_in(*store_, ticket, hot, cold, SwapInOptions{prefetcher, &why}, stats);
  if (!id && !swapped_out_) {  // a fresh session loses its (empty) sequence too, as documented
    store_->free_sequence(seq_);
    seq_ = 0;
  }
  require<Unavailable>(id.has_value(), why);
  adopt(*id, pos);
}

void Session::swap_in_pipelined(const SwapTicket& ticket, KvTier& hot, KvTier& cold, TierPrefetcher& mover) {
  const std::int32_t pos = swap_in_position(ticket, "swap_in_pipelined");
  auto pipe = std::make_unique<SwapInPipeline<float>>(*store_, ticket, hot, cold, mover);
  adopt(pipe->sequence(), pos);
  restore_ = std::move(pipe);
}

void Session::restore_layer(int layer) {
  if (!restore_) return;
  std::string why;
  if (!restore_->ensure_layer(layer, &why)) {
    restore_.reset();  // the pipeline freed the sequence
    seq_ = 0;
    throw Unavailable(why + " (the sequence is lost; the session holds none: reset() and recompute)");
  }
  if (restore_->done()) {
    restore_stats_ = restore_->stats();
    restore_.reset();
  }
}

void Session::finish_restore() {
  for (int l = 0; restore_ != nullptr && l < model_.config().n_layers; ++l) restore_layer(l);
}

void Session::drop_restore() {
  if (!restore_) return;
  const bool freed = !restore_->done();  // an unfinished pipeline frees its sequence
  restore_.reset();
  if (freed) seq_ = 0;
}

void Session::rope(float* x, int n_heads, std::size_t n) const {
  const RopeConfig& rc = model_.config().rope;
  const auto half = static_cast<std::size_t>(rc.rot() / 2), D = static_cast<std::size_t>(rc.head_dim);
  for (std::size_t t = 0; t < n; ++t)
    for (std::size_t h = 0; h < static_cast<std::size_t>(n_heads); ++h)
      rope_rotate(rc, rope_cs_.data() + t * half, x + (t * static_cast<std::size_t>(n_heads) + h) * D);
}

void Session::run_layers(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions,
                         KvWrite kv, int stop_layer, ForwardObserver* observer) {
  const LlamaConfig& c = model_.config();
  require(seq_ != 0, "session: no sequence (released; reset() first)");
  const int n = static_cast<int>(tokens.size());
  require(n > 0, "forward: no tokens");
  require(positions.size() == tokens.size(), "forward: ", positions.size(), " positions for ", n, " tokens");
  const int d = c.d_model, kvd = c.n_kv_heads * c.head_dim;
  const auto N = static_cast<std::size_t>(n);
  x_.resize(N * d);
  h_.resize(N * d);
  q_.resize(N * d);
  att_.resize(N * d);
  k_.resize(N * kvd);
  v_.resize(N * kvd);
  gate_.resize(N * c.d_ff);
  up_.resize(N * c.d_ff);
  const std::vector<double>& inv_freq = model_.inv_freq();
  rope_cs_.resize(N * inv_freq.size());
  for (std::size_t t = 0; t < N; ++t)
    for (std::size_t i = 0; i < inv_freq.size(); ++i)
      rope_cs_[t * inv_freq.size() + i] = rope_cos_sin(positions[t], inv_freq[i]);

  for (int i = 0; i < n; ++i) {
    const std::int32_t t = tokens[static_cast<std::size_t>(i)];
    require(t >= 0 && t < c.vocab, "forward: token id ", t, " out of range [0, ", c.vocab, ")");
    std::copy_n(model_.embeddings().data() + static_cast<std::size_t>(t) * d, d,
                x_.data() + static_cast<std::size_t>(i) * d);
  }
  const std::int64_t seq = seq_;
  const std::int32_t q_len = n;
  AttentionParams params;
  params.num_threads = opt_.threads;
  for (int l = 0; l < c.n_layers; ++l) {
    const LlamaLayer& L = model_.layers()[static_cast<std::size_t>(l)];
    restore_layer(l);  // a pipelined swap-in: this layer's rows (the next ones are still being read)
    rms_norm(x_.data(), L.attn_norm, h_.data(), n, d, c.rms_eps);
    if (l == stop_layer) {  // fresh_kv: this layer's K/V are the result
      matmul(h_.data(), L.wk, k_.data(), n, d, kvd, false);
      matmul(h_.data(), L.wv, v_.data(), n, d, kvd, false);
      rope(k_.data(), c.n_kv_heads, N);
      return;
    }
    matmul(h_.data(), L.wq, q_.data(), n, d, d, false);
    matmul(h_.data(), L.wk, k_.data(), n, d, kvd, false);
    matmul(h_.data(), L.wv, v_.data(), n, d, kvd, false);
    rope(q_.data(), c.n_heads, N);
    rope(k_.data(), c.n_kv_heads, N);
    if (kv == KvWrite::kAppend)
      store_->append(seq_, l, k_, v_, positions);
    else if (kv == KvWrite::kOverwrite)
      store_->overwrite(seq_, l, k_, v_, positions);
    if (observer) observer->on_qkv(l, positions, q_, k_, v_);
    AttentionPlan& plan = plans_[static_cast<std::size_t>(l)];
    plan.update(*store_, l, std::span<const std::int64_t>(&seq, 1), std::span<const std::int32_t>(&q_len, 1),
                positions);
    cpu_attention<float>(*store_, plan, q_, att_, {}, params);
    matmul(att_.data(), L.wo, x_.data(), n, d, d, true);

    rms_norm(x_.data(), L.ffn_norm, h_.data(), n, d, c.rms_eps);
    matmul(h_.data(), L.w_gate, gate_.data(), n, d, c.d_ff, false);
    matmul(h_.data(), L.w_up, up_.data(), n, d, c.d_ff, false);
    for (std::size_t i = 0; i < gate_.size(); ++i) {
      const float g = gate_[i];
      gate_[i] = g / (1.f + std::exp(-g)) * up_[i];
    }
    matmul(gate_.data(), L.w_down, x_.data(), n, c.d_ff, d, true);
  }
}

void Session::forward(std::span<const std::int32_t> tokens, bool all_logits, std::vector<float>& logits,
                      ForwardObserver* observer) {
  const LlamaConfig& c = model_.config();
  const int n = static_cast<int>(tokens.size());
  require(n <= opt_.chunk, "forward: ", n,
          " tokens in one call, more than SessionOptions::chunk=", opt_.chunk,
          " (the pool is sized for chunks of at most that many)");
  require(pos_ + n <= opt_.max_context, "forward: ", pos_ + n,
          " positions exceed max_context=", opt_.max_context);
  std::vector<std::int32_t> positions(tokens.size());
  for (int i = 0; i < n; ++i) positions[static_cast<std::size_t>(i)] = pos_ + i;
  run_layers(tokens, positions, KvWrite::kAppend, c.n_layers, observer);
  const int d = c.d_model;
  const int rows = all_logits ? n : 1;
  const float* last = x_.data() + static_cast<std::size_t>(n - rows) * d;
  rms_norm(last, model_.output_norm(), h_.data(), rows, d, c.rms_eps);
  logits.resize(static_cast<std::size_t>(rows) * c.vocab);
  matmul(h_.data(), model_.output(), logits.data(), rows, d, c.vocab, false);
  pos_ += n;
  // Every query before pos_ has run: local heads may drop what only those queries could see now, rather than
  // at the next append, so KV bytes between calls are the steady state (sink + window), not window + chunk.
  store_->retire_queries(seq_, pos_);
}

void Session::prefill_chunk(std::span<const std::int32_t> tokens) {
  const int n = static_cast<int>(tokens.size());
  require(pos_ + n <= opt_.max_context, "prefill_chunk: ", pos_ + n,
          " positions exceed max_context=", opt_.max_context);
  std::vector<std::int32_t> positions(tokens.size());
  for (int i = 0; i < n; ++i) positions[static_cast<std::size_t>(i)] = pos_ + i;
  run_layers(tokens, positions, KvWrite::kAppend, model_.config().n_layers, nullptr);
  pos_ += n;
}

std::int32_t Session::splice(const ChunkKey& key, std::int32_t first_query) {
  require(seq_ != 0, "splice: no sequence (released; reset() first)");
  finish_restore();
  const std::int32_t n = store_->chunk_tokens(key);
  require(static_cast<std::int64_t>(pos_) + n <= opt_.max_context, "splice: ", pos_ + n,
          " positions exceed max_context=", opt_.max_context);
  store_->splice(seq_, key, pos_, first_query);
  pos_ += n;
  return n;
}

void Session::fresh_kv(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions,
                       int layer, std::vector<float>& k, std::vector<float>& v) {
  require(layer >= 0 && layer < model_.config().n_layers, "fresh_kv: layer=", layer, " out of range");
  run_layers(tokens, positions, KvWrite::kNone, layer, nullptr);
  const std::size_t nkv = tokens.size() * static_cast<std::size_t>(model_.config().n_kv_heads) *
                          static_cast<std::size_t>(model_.config().head_dim);
  k.assign(k_.begin(), k_.begin() + static_cast<std::ptrdiff_t>(nkv));
  v.assign(v_.begin(), v_.begin() + static_cast<std::ptrdiff_t>(nkv));
}

void Session::recompute(std::span<const std::int32_t> tokens, std::span<const std::int32_t> positions) {
  run_layers(tokens, positions, KvWrite::kOverwrite, model_.config().n_layers, nullptr);
}

std::vector<float> Session::prefill(std::span<const std::int32_t> tokens,
                                    const std::function<void(std::size_t, std::size_t)>& progress,
                                    ForwardObserver* observer) {
  std::vector<float> logits;
  const std::size_t step = static_cast<std::size_t>(opt_.chunk);
  for (std::size_t i = 0; i < tokens.size(); i += step) {
    const std::size_t n = std::min(step, tokens.size() - i);
    forward(tokens.subspan(i, n), false, logits, observer);
    if (progress) progress(i + n, tokens.size());
  }
  return logits;
}

}  // namespace redknot::decoder

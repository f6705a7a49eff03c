// The decoder on a tiny random model the test writes itself: GGUF loading, tokenizer, and the promise that
// redknot mode with an all-global head map computes exactly what dense mode computes.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_floating_point.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <random>

#include "generate.hpp"
#include "gguf.hpp"
#include "llama_model.hpp"
#include "quant.hpp"
#include "redknot/kv_slice.hpp"
#include "redknot/tiers.hpp"
#include "session.hpp"
#include "tiny_model.hpp"
#include "tokenizer.hpp"

using namespace redknot;
using namespace redknot::decoder;
using testing::random_tokens;

namespace {

const GgufFile& tiny_gguf() {
  static const GgufFile f = GgufFile::parse(testing::tiny_model_gguf(), "tiny");
  return f;
}

// Teacher-forced logits of every position, fed in chunks.
std::vector<float> all_logits(const LlamaModel& m, const HeadMap& map, const std::vector<std::int32_t>& toks,
                              int chunk) {
  SessionOptions o;
  o.max_context = static_cast<int>(toks.size());
  o.chunk = chunk;
  o.page_size = 8;
  Session s(m, map, o);
  std::vector<float> all, part;
  for (std::size_t i = 0; i < toks.size(); i += static_cast<std::size_t>(chunk)) {
    const std::size_t n = std::min<std::size_t>(static_cast<std::size_t>(chunk), toks.size() - i);
    s.forward(std::span<const std::int32_t>(toks).subspan(i, n), true, part);
    all.insert(all.end(), part.begin(), part.end());
  }
  return all;
}

}  // namespace

TEST_CASE("GGUF loader reads metadata, shapes and every tensor type", "[decoder]") {
  const GgufFile& f = tiny_gguf();
  CHECK(f.version() == 3);
  CHECK(f.get_string("general.architecture") == "llama");
  CHECK(f.get_int("llama.block_count") == 2);
  CHECK(f.get("tokenizer.ggml.tokens").arr.size() == 264);
  const auto& emb = f.tensor("token_embd.weight");
  CHECK(emb.type == GgmlType::kQ8_0);
  CHECK(emb.dims == std::vector<std::int64_t>{64, 264});
  CHECK(f.tensor("blk.0.attn_output.weight").type == GgmlType::kBF16);
  CHECK_THROWS(f.tensor("no.such.tensor"));
  CHECK_THROWS(GgufFile::parse({'G', 'G', 'U', 'X', 0, 0, 0, 0}, "bad"));

  const LlamaConfig c = LlamaConfig::from_gguf(f);
  CHECK(c.n_layers == 2);
  CHECK(c.n_heads == 4);
  CHECK(c.n_kv_heads == 2);
  CHECK(c.head_dim == 16);
  CHECK(c.vocab == 264);
}

TEST_CASE("GGUF RoPE metadata maps to the core RopeConfig", "[decoder]") {
  const auto load = [](const std::string& scaling, bool freqs) {
    testing::TinySpec sp;
    sp.rope_scaling = scaling;
    sp.rope_freqs = freqs;
    return LlamaModel::load(GgufFile::parse(testing::tiny_model_gguf(sp), "tiny-rope"));
  };
  // The decoder library is built with reassociation (see its CMakeLists.txt), so its frequencies may differ
  // from this file's in the last bit. Fails on NaN.
  const auto same = [](const std::vector<double>& a, const std::vector<double>& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!(std::abs(a[i] - b[i]) <= 1e-12 * std::abs(b[i]))) return false;
    return true;
  };
  RopeConfig want;
  want.head_dim = 16;
  want.pairing = RopePairing::kInterleaved;  // GGUF llama: adjacent pairs
  want.theta = 10000.0;
  const std::vector<double> base = rope_inv_freq(want);

  const LlamaModel plain = load("", false);
  CHECK(plain.config().rope.pairing == RopePairing::kInterleaved);
  CHECK(plain.config().rope.scaling == RopeScaling::kDefault);
  CHECK(plain.config().rope.rot() == 16);
  CHECK(same(plain.inv_freq(), base));

  const LlamaModel linear = load("linear", false);
  CHECK(linear.config().rope.scaling == RopeScaling::kLinear);
  CHECK(linear.config().rope.factor == 4.0);
  std::vector<double> want_f = base;
  for (double& x : want_f) x /= 4.0;
  CHECK(same(linear.inv_freq(), want_f));

  const LlamaModel llama3 = load("llama3", false);
  want.scaling = RopeScaling::kLlama3;
  want.factor = 8.0;
  want.original_max_position = 64;
  CHECK(llama3.config().rope.original_max_position == 64);
  CHECK(same(llama3.inv_freq(), rope_inv_freq(want)));
  CHECK(!same(llama3.inv_freq(), base));

  // Shipped divisors replace the llama3 rule.
  const LlamaModel divided = load("llama3", true);
  CHECK(divided.config().rope.scaling == RopeScaling::kDefault);
  for (std::size_t i = 0; i < base.size(); ++i) want_f[i] = base[i] / static_cast<double>(i + 1);
  CHECK(same(divided.inv_freq(), want_f));

  CHECK_THROWS_WITH(load("yarn", false), Catch::Matchers::ContainsSubstring("scaling.type='yarn'"));
}

TEST_CASE("quantisation round trips within each format's step", "[decoder]") {
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(256);
  for (auto& v : x) v = nd(rng);
  for (auto [type, tol] : {std::pair{GgmlType::kF32, 0.f},
                           {GgmlType::kF16, 2e-3f},
                           {GgmlType::kBF16, 2e-2f},
                           {GgmlType::kQ8_0, 0.03f},
                           {GgmlType::kQ4_1, 0.4f},
                           {GgmlType::kQ4_0, 0.5f}}) {
    const auto bytes = quantize(type, x);
    CHECK(bytes.size() == x.size() / ggml_block_elems(type) * ggml_block_bytes(type));
    std::vector<float> y(x.size());
    dequantize(type, bytes.data(), static_cast<std::int64_t>(x.size()), y.data());
    float err = 0.f;
    for (std::size_t i = 0; i < x.size(); ++i) err = std::max(err, std::fabs(x[i] - y[i]));
    INFO(ggml_type_name(type));
    CHECK(err <= tol);
  }
}

TEST_CASE("byte-level BPE tokenizer: merges, specials, digits, round trip", "[decoder]") {
  const Tokenizer tok = Tokenizer::from_gguf(tiny_gguf());
  const std::string text = "hello the world 2024!\n\n  tabs\tand ünïcödé ✓";
  const auto ids = tok.encode(text);
  CHECK(tok.decode(ids) == text);
  // "hell" is one token (merges "h e", "l l", "he ll"); " the" too.
  const auto hello = tok.encode("hello");
  REQUIRE(hello.size() == 2);
  CHECK(tok.token_bytes(hello[0]) == "hell");
  CHECK(tok.encode(" the").size() == 1);
  // Digits are split one by one (smollm pre-tokenizer).
  CHECK(tok.encode("2024").size() == 4);
  const auto chat = tok.encode(tok.apply_chat_template("hi"));
  CHECK(chat.front() == 1);  // <|im_start|>
  CHECK(tok.decode(chat) ==
        "<|im_start|>system\nYou are tiny.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n");
  CHECK(tok.is_end_of_generation(2));
}

TEST_CASE("redknot mode with an all-global head map is bit-for-bit dense", "[decoder]") {
  const LlamaModel m = LlamaModel::load(tiny_gguf());
  const auto& c = m.config();
  const auto toks = random_tokens(150, c.vocab, 3);
  const HeadMap dense = HeadMap::all_global(c.n_layers, c.n_kv_heads);
  // The same map as the redknot CLI path would load it: through JSON.
  const HeadMap loaded = HeadMap::from_json(dense.to_json());
  const auto a = all_logits(m, dense, toks, 32);
  const auto b = all_logits(m, loaded, toks, 32);
  REQUIRE(a.size() == b.size());
  CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);

  // Greedy generation through the CLI path agrees token for token too.
  const Tokenizer tok = Tokenizer::from_gguf(tiny_gguf());
  GenerateOptions go;
  go.max_new = 12;
  go.progress = false;
  go.session.chunk = 16;
  const auto ga = generate_tokens(m, tok, toks, dense, go);
  const auto gb = generate_tokens(m, tok, toks, loaded, go);
  CHECK(ga.tokens == gb.tokens);
  CHECK(ga.kv_bytes == gb.kv_bytes);
}

TEST_CASE("local heads change nothing until a query's window is full, then shrink the KV", "[decoder]") {
  const LlamaModel m = LlamaModel::load(tiny_gguf());
  const auto& c = m.config();
  const auto toks = random_tokens(160, c.vocab, 4);
  const int window = 48, sink = 4;
  const HeadMap local = HeadMap::uniform(c.n_layers, c.n_kv_heads, HeadClass::kLocal, window, sink);
  const auto a = all_logits(m, HeadMap::all_global(c.n_layers, c.n_kv_heads), toks, 40);
  const auto b = all_logits(m, local, toks, 40);
  const auto V = static_cast<std::size_t>(c.vocab);
  // Positions p < window + sink see every key under either map.
  CHECK(std::memcmp(a.data(), b.data(), static_cast<std::size_t>(window + sink) * V * sizeof(float)) == 0);
  CHECK(std::memcmp(a.data() + (toks.size() - 1) * V, b.data() + (toks.size() - 1) * V, V * sizeof(float)) !=
        0);

  GenerateOptions go;
  go.max_new = 4;
  go.progress = false;
  go.session.chunk = 32;
  const Tokenizer tok = Tokenizer::from_gguf(tiny_gguf());
  const auto gd = generate_tokens(m, tok, toks, HeadMap::all_global(c.n_layers, c.n_kv_heads), go);
  const auto gl = generate_tokens(m, tok, toks, local, go);
  CHECK(gl.kv_bytes_global == 0);
  CHECK(gl.kv_bytes < gd.kv_bytes);
}

TEST_CASE("chunked prefill matches one-shot prefill", "[decoder]") {
  const LlamaModel m = LlamaModel::load(tiny_gguf());
  const auto& c = m.config();
  const auto toks = random_tokens(96, c.vocab, 5);
  const HeadMap dense = HeadMap::all_global(c.n_layers, c.n_kv_heads);
  const auto a = all_logits(m, dense, toks, 96);
  const auto b = all_logits(m, dense, toks, 7);
  REQUIRE(a.size() == b.size());
  float err = 0.f;
  for (std::size_t i = 0; i < a.size(); ++i) err = std::max(err, std::fabs(a[i] - b[i]));
  CHECK(err < 1e-3f);
  // A call larger than the chunk the pool was sized for is refused up front, naming both numbers.
  SessionOptions so;
  so.max_context = 96;
  so.chunk = 8;
  Session s(m, dense, so);
  std::vector<float> logits;
  CHECK_THROWS_WITH(
      s.forward(std::span<const std::int32_t>(toks).first(9), false, logits),
      Catch::Matchers::ContainsSubstring("9 tokens") && Catch::Matchers::ContainsSubstring("chunk=8"));
  CHECK(s.position() == 0);
}

TEST_CASE("a session swapped out and back in mid-generation decodes on bit for bit", "[decoder][tiers]") {
  const LlamaModel m = LlamaModel::load(tiny_gguf());
  const auto& c = m.config();
  const auto prompt = random_tokens(70, c.vocab, 11);
  // Local heads whose windows are already full: the swap carries sink + window runs and whole global heads.
  const HeadMap map = HeadMap::with_global_ratio(c.n_layers, c.n_kv_heads, 0.5, 20, 2);
  const std::uint64_t fp = model_fingerprint("tiny");
  SessionOptions o;
  o.max_context = 128;
  o.chunk = 32;
  o.page_size = 8;
  const int steps = 16, swap_at = 7;
  // Greedy decoding; before step `swap_at` the sequence goes through `tier` (none: uninterrupted).
  TierPrefetcher prefetcher(2);
  // Before step `swap_at` the sequence goes out by head class: local heads' objects to `hot`, global heads'
  // to `cold` (the same tier for a single-tier swap; none: uninterrupted).
  // pipelined: swap_in_pipelined, so the step after it runs while the layers arrive.
  const auto decode = [&](KvTier* hot, KvTier* cold, const char* name, bool pipelined = false) {
    Session s(m, map, o);
    std::vector<float> logits = s.prefill(prompt), all;
    std::vector<std::int32_t> toks;
    for (int i = 0; i < steps; ++i) {
      if (hot != nullptr && i == swap_at) {
        const std::int32_t pos = s.position();
        const std::int64_t used = s.store().pool().used_pages();
        const SwapTicket t = s.swap_out(*hot, *cold, fp, name);
        CHECK(s.swapped_out());
        CHECK(s.store().pool().used_pages() < used);
        CHECK(t.bytes() > 0);
        CHECK(std::any_of(t.objects.begin(), t.objects.end(), [](const SwapObject& x) { return x.local; }));
        CHECK(std::any_of(t.objects.begin(), t.objects.end(), [](const SwapObject& x) { return !x.local; }));
        CHECK_THROWS(s.forward(std::span<const std::int32_t>(toks).last(1), false, logits));
        for (const SwapObject& x : t.objects) CHECK((x.cold ? cold : hot)->contains(x.name));
        if (hot != cold)
          for (const SwapObject& x : t.objects) CHECK(x.cold == !x.local);
        SwapInStats st;
        if (pipelined)
          s.swap_in_pipelined(t, *hot, *cold, prefetcher);
        else if (hot == cold)
          s.swap_in(t, *hot);
        else
          s.swap_in(t, *hot, *cold, &prefetcher, &st);
        CHECK_FALSE(s.swapped_out());
        CHECK(s.restoring() == pipelined);
        CHECK(s.position() == pos);
        CHECK(s.store().pool().used_pages() <= used);  // rows come back packed into fresh pages
        if (!pipelined) {
          CHECK(hot->stats().objects == 0);  // swap_in removes what it read
          CHECK(cold->stats().objects == 0);
        }
      }
      all.insert(all.end(), logits.begin(), logits.end());
      toks.push_back(argmax(logits));
      s.forward(std::span<const std::int32_t>(&toks.back(), 1), false, logits);
      if (hot != nullptr && i == swap_at) {  // the step after a swap-in finished any restore
        CHECK_FALSE(s.restoring());
        CHECK(hot->stats().objects == 0);
        CHECK(cold->stats().objects == 0);
      }
    }
    return std::make_pair(toks, all);
  };
  const auto [ref_toks, ref_logits] = decode(nullptr, nullptr, "");
  HostTier host(1 << 24);
  const auto dir = std::filesystem::temp_directory_path() / "redknot-test-session-swap";
  std::filesystem::remove_all(dir);
  DiskTier disk(dir, std::int64_t{1} << 26);
  const std::pair<KvTier*, KvTier*> placements[] = {{&host, &host}, {&disk, &disk}, {&host, &disk}};
  for (const bool pipelined : {false, true})
    for (const auto& [hot, cold] : placements) {
      INFO("pipelined " << pipelined);
      const auto [toks, logits] = decode(hot, cold, "seq-1", pipelined);
      CHECK(toks == ref_toks);
      REQUIRE(logits.size() == ref_logits.size());
      CHECK(std::memcmp(logits.data(), ref_logits.data(), logits.size() * sizeof(float)) == 0);
    }

  // A pipelined swap-in whose last layer's object went bad: the step that reaches it throws Unavailable,
  // the session is left empty, every page and object is gone, and the session starts over cleanly.
  {
    Session s(m, map, o);
    std::vector<float> logits = s.prefill(prompt);
    const SwapTicket t = s.swap_out(host, disk, fp, "seq-bad");
    const std::int64_t used = s.store().pool().used_pages();
    const SwapObject& last = t.objects.back();
    REQUIRE(last.layer == c.n_layers - 1);
    auto bytes = *disk.get(last.name);
    bytes[bytes.size() - 1] ^= std::byte{1};
    REQUIRE(disk.put(last.name, bytes));
    s.swap_in_pipelined(t, host, disk, prefetcher);
    const std::int32_t next = argmax(logits);
    CHECK_THROWS_AS(s.forward(std::span<const std::int32_t>(&next, 1), false, logits), Unavailable);
    CHECK_FALSE(s.restoring());
    CHECK(s.sequence() == 0);
    CHECK(s.store().pool().used_pages() == used);
    CHECK(host.stats().objects == 0);
    CHECK(disk.stats().objects == 0);
    CHECK_THROWS(s.forward(std::span<const std::int32_t>(&next, 1), false, logits));  // no sequence
    s.reset();
    CHECK_NOTHROW(s.prefill(std::span<const std::int32_t>(prompt).first(8)));
  }
  // Abandoned mid-restore (the session dies before the next step): pages back, no double free.
  {
    const std::int64_t pages0 = [&] {
      Session s(m, map, o);
      s.prefill(prompt);
      const SwapTicket t = s.swap_out(host, disk, fp, "seq-drop");
      const std::int64_t used = s.store().pool().used_pages();
      s.swap_in_pipelined(t, host, disk, prefetcher);
      CHECK(s.restoring());
      discard_swap(t, host, disk);
      return used;
    }();
    CHECK(pages0 >= 0);
  }
  std::filesystem::remove_all(dir);

  // A tier too small for the sequence: swap_out refuses with a clear error and the session decodes on.
  Session s(m, map, o);
  std::vector<float> logits = s.prefill(prompt);
  HostTier tiny(64);
  CHECK_THROWS_AS(s.swap_out(tiny, fp, "seq-2"), Unavailable);
  CHECK_FALSE(s.swapped_out());
  const std::int32_t next = argmax(logits);
  s.forward(std::span<const std::int32_t>(&next, 1), false, logits);
  CHECK(s.position() == static_cast<std::int32_t>(prompt.size()) + 1);
}

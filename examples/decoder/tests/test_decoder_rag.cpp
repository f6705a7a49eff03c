// RAG mode on the tiny model: documents prefilled alone, spliced at other offsets and recomputed. Recomputing
// every token must give what a full prefill of the same request gives (the reuse machinery changes nothing
// but which K/V are fresh); the cheaper strategies must run and give finite logits.
#include <catch2/catch_test_macros.hpp>
#include <catch2/matchers/catch_matchers_string.hpp>

#include <cmath>

#include "gguf.hpp"
#include "llama_model.hpp"
#include "rag.hpp"
#include "session.hpp"
#include "tiny_model.hpp"

using namespace redknot;
using namespace redknot::decoder;
using testing::random_tokens;

namespace {

const LlamaModel& tiny() {
  static const LlamaModel m = LlamaModel::load(GgufFile::parse(testing::tiny_model_gguf(), "tiny"));
  return m;
}

// Largest |a - b|; NaN anywhere makes it NaN, so `err <= tol` fails.
float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::nanf("");
  float err = 0.f;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const float d = std::fabs(a[i] - b[i]);
    if (!(d <= err)) err = std::isnan(d) ? d : std::max(err, d);
    if (std::isnan(err)) return err;
  }
  return err;
}

bool all_finite(const std::vector<float>& x) {
  for (float v : x)
    if (!std::isfinite(v)) return false;
  return !x.empty();
}

// Last-token logits and the next `steps` teacher-forced logits of a full prefill of `prompt`.
std::vector<std::vector<float>> full_prefill(const HeadMap& map, const std::vector<std::int32_t>& prompt,
                                             const std::vector<std::int32_t>& forced) {
  SessionOptions o;
  o.max_context = 256;
  o.chunk = 16;
  o.page_size = 8;
  Session s(tiny(), map, o);
  std::vector<std::vector<float>> out{s.prefill(prompt)};
  for (std::int32_t t : forced) {
    std::vector<float> l;
    s.forward(std::span<const std::int32_t>(&t, 1), false, l);
    out.push_back(l);
  }
  return out;
}

struct Fixture {
  HeadMap map;
  std::shared_ptr<Store> store;
  DocumentCache cache;
  std::vector<std::int32_t> system, question, forced;
  std::vector<std::vector<std::int32_t>> docs;
  SessionOptions opt;

  explicit Fixture(HeadMap m)
      : map(m),
        store(Session::make_store(tiny(), m, 8, 4096)),
        cache(tiny(), store, "tiny"),
        system(random_tokens(9, tiny().config().vocab, 1)),
        question(random_tokens(6, tiny().config().vocab, 2)),
        forced(random_tokens(3, tiny().config().vocab, 3)),
        docs{random_tokens(40, tiny().config().vocab, 4), random_tokens(27, tiny().config().vocab, 5),
             random_tokens(33, tiny().config().vocab, 6)} {
    opt.max_context = 256;
    opt.chunk = 16;
    opt.page_size = 8;
    for (const auto& d : docs) cache.add(d);
  }

  RagRequest request(std::vector<int> order) const {
    RagRequest r;
    r.system = system;
    for (int i : order) r.documents.push_back(docs[static_cast<std::size_t>(i)]);
    r.question = question;
    return r;
  }

  // prefill_rag's first logits and the teacher-forced ones after it.
  std::pair<RagResult, std::vector<std::vector<float>>> rag(const RagRequest& req,
                                                            const RecomputeSpec& spec) {
    Session s(tiny(), store, opt);
    RagResult r = prefill_rag(s, cache, req, spec);
    std::vector<std::vector<float>> out{r.logits};
    for (std::int32_t t : forced) {
      std::vector<float> l;
      s.forward(std::span<const std::int32_t>(&t, 1), false, l);
      out.push_back(l);
    }
    return {r, out};
  }
};

}  // namespace

TEST_CASE("rag: spliced documents recomputed in full give the logits of a full prefill", "[decoder][rag]") {
  const auto& c = tiny().config();
  const HeadMap maps[] = {
      HeadMap::all_global(c.n_layers, c.n_kv_heads),
      HeadMap::uniform(c.n_layers, c.n_kv_heads, HeadClass::kLocal, 24, 4),
      HeadMap::with_global_ratio(c.n_layers, c.n_kv_heads, 0.5, 20, 2),
  };
  for (const HeadMap& map : maps) {
    INFO("local heads: " << map.count_local());
    Fixture f(map);
    const RecomputeSpec all = parse_recompute_spec("deviation_topk:1");
    // Two orders: the second request reuses chunks the first one recomputed (copy-on-write must have left
    // them intact) and puts them at other offsets.
    for (const std::vector<int>& order : {std::vector<int>{0, 1, 2}, std::vector<int>{2, 0}}) {
      const RagRequest req = f.request(order);
      const auto want = full_prefill(map, req.tokens(), f.forced);
      const auto [r, got] = f.rag(req, all);
      CHECK(r.recomputed == req.document_tokens());
      CHECK(r.document_tokens == req.document_tokens());
      REQUIRE(got.size() == want.size());
      for (std::size_t i = 0; i < got.size(); ++i) {
        INFO("order size " << order.size() << ", logits row " << i);
        const float err = max_abs_diff(got[i], want[i]);
        CHECK(err <= 1e-3f);
      }
    }
    // The chunks stay registered and nothing of the requests is left in the store.
    CHECK(f.store->chunk_stats().chunks == 3);
    CHECK(f.store->stats().num_sequences == 0);
  }
}

TEST_CASE("rag: none, first_k and the deviation strategies run and give finite logits", "[decoder][rag]") {
  const auto& c = tiny().config();
  Fixture f(HeadMap::with_global_ratio(c.n_layers, c.n_kv_heads, 0.5, 20, 2));
  const RagRequest req = f.request({1, 2, 0});
  const auto want = full_prefill(f.map, req.tokens(), f.forced);
  const auto [none, none_logits] = f.rag(req, parse_recompute_spec("none"));
  CHECK(none.recomputed == 0);
  for (const auto& l : none_logits) CHECK(all_finite(l));
  // Documents computed without their context are not what a full prefill computes (the test could fail).
  CHECK(max_abs_diff(none_logits[0], want[0]) > 1e-3f);

  const auto [fk, fk_logits] = f.rag(req, parse_recompute_spec("first_k:4"));
  CHECK(fk.recomputed == 12);  // 4 per document
  for (const auto& l : fk_logits) CHECK(all_finite(l));

  for (const char* spec : {"deviation_topk:0.25", "global_deviation_topk:0.25:2",
                           "global_deviation_topk:0.2@0", "global_deviation_topk:0.25:2/page"}) {
    INFO(spec);
    const auto [r, logits] = f.rag(req, parse_recompute_spec(spec));
    CHECK(r.recomputed > 0);
    CHECK(r.recomputed < req.document_tokens());
    for (const auto& l : logits) CHECK(all_finite(l));
  }
  // The tail: the last 30 document tokens (inside the last document, of 40 tokens, after its first 4), plus
  // the first 4 of each document.
  const auto [tl, tl_logits] = f.rag(req, parse_recompute_spec("first_k:4+tail:30"));
  CHECK(tl.recomputed == 4 + 4 + 4 + 30);
  const auto [nt, nt_logits] = f.rag(req, parse_recompute_spec("none+tail:10"));
  CHECK(nt.recomputed == 10);
  for (const auto& l : nt_logits) CHECK(all_finite(l));
  // Page-aligned: whole pages of 8 tokens (documents of 27, 33 and 40 tokens: 4 + 5 + 5 pages).
  const auto [pg, pg_logits] = f.rag(req, parse_recompute_spec("first_k:9/page"));
  CHECK(pg.recomputed == 3 * 16);  // 9 tokens round up to 2 pages per document
  const auto [pa, pa_logits] = f.rag(req, parse_recompute_spec("deviation_topk:1/page"));
  CHECK(pa.recomputed == req.document_tokens());
  CHECK(max_abs_diff(pa_logits[0], want[0]) <= 1e-3f);
  CHECK(f.store->stats().num_sequences == 0);
}

TEST_CASE("rag: the document cache prefills a document once", "[decoder][rag]") {
  const auto& c = tiny().config();
  const HeadMap dense = HeadMap::all_global(c.n_layers, c.n_kv_heads);
  auto store = Session::make_store(tiny(), dense, 8, 1024);
  DocumentCache cache(tiny(), store, "tiny");
  const auto doc = random_tokens(30, c.vocab, 9);
  CHECK(!cache.contains(doc));
  CHECK(cache.add(doc) > 0);
  CHECK(cache.contains(doc));
  CHECK(cache.add(doc) == 0);
  CHECK(store->chunk_stats().chunks == 1);
  CHECK(store->chunk_tokens(cache.key(doc)) == 30);
  // Another model id is another key.
  DocumentCache other(tiny(), store, "other");
  CHECK(!other.contains(doc));
  // A document not in the cache is refused by name.
  Session s(tiny(), store, SessionOptions{});
  RagRequest req;
  req.documents = {random_tokens(5, c.vocab, 10)};
  req.question = {5, 6};
  CHECK_THROWS_WITH(prefill_rag(s, cache, req, parse_recompute_spec("none")),
                    Catch::Matchers::ContainsSubstring("not cached"));
}

TEST_CASE("rag: recompute specs parse and print", "[decoder][rag]") {
  const auto name = [](const char* s) { return recompute_spec_name(parse_recompute_spec(s)); };
  CHECK(name("none") == "none");
  CHECK(name("first_k:16") == "first_k:16");
  CHECK(name("deviation_topk:0.15") == "deviation_topk:0.15");
  CHECK(name("global_deviation_topk:0.15:16") == "global_deviation_topk:0.15:16");
  CHECK(name("global_deviation_topk:0.1@7") == "global_deviation_topk:0.1@7");
  CHECK(name("global_deviation_topk:0.1:16@7/page") == "global_deviation_topk:0.1:16@7/page");
  CHECK(parse_recompute_spec("deviation_topk:0.2/page").pages);
  CHECK(name("first_k:4+tail:64") == "first_k:4+tail:64");
  CHECK(name("global_deviation_topk:0.1:16@3+tail:512/page") ==
        "global_deviation_topk:0.1:16@3+tail:512/page");
  CHECK(!parse_recompute_spec("deviation_topk:0.2").pages);
  const RecomputeSpec g = parse_recompute_spec("global_deviation_topk:0.15:16@3");
  CHECK(g.cfg.strategy == RecomputeStrategy::kGlobalDeviationTopK);
  CHECK(g.cfg.ratio == 0.15);
  CHECK(g.cfg.first_k == 16);
  CHECK(g.layer == 3);
  CHECK_THROWS_WITH(parse_recompute_spec("cacheblend"), Catch::Matchers::ContainsSubstring("'cacheblend'"));
  CHECK_THROWS_WITH(parse_recompute_spec("deviation_topk:1.5"), Catch::Matchers::ContainsSubstring("[0, 1]"));
  CHECK_THROWS_WITH(parse_recompute_spec("first_k"), Catch::Matchers::ContainsSubstring("first_k:K"));
  CHECK_THROWS_WITH(parse_recompute_spec("first_k:x"), Catch::Matchers::ContainsSubstring("'x'"));
  CHECK_THROWS(parse_recompute_spec("query_topk:0.1"));
}

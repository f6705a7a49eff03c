// Downstream smoke test: compiled against an *installed* redknot. Loads a head map from JSON (compiled code
// in libredknot), builds a store, prefills and decodes one sequence, and checks attention against a hand
// computation: with a window of 1 and no sink, a local head sees only its own token, so its output is that
// token's V row exactly.
#include <redknot/redknot.hpp>

#include <cmath>
#include <iostream>
#include <vector>

int main() {
  using namespace redknot;
  std::cout << "redknot " << version_string() << '\n';
  const HeadMap map =
      HeadMap::from_json(R"({"num_layers":1,"num_kv_heads":2,"kv_head_classification":[["local","global"]],)"
                         R"("kv_head_max_distance":[[1,-1]],"kv_head_sink_size":[[0,0]]})");
  const ModelShape shape{1, 2, 2, 8, DType::kF32};
  KVHeadStore<float> store(shape, map, StoreConfig{4, 16});
  const SeqId s = store.create_sequence();
  std::vector<float> k(6 * 2 * 8), v(6 * 2 * 8), q(2 * 8, 0.5f), out(2 * 8);
  for (std::size_t i = 0; i < k.size(); ++i) k[i] = std::sin(0.1f * i), v[i] = std::cos(0.3f * i);
  const std::vector<std::int32_t> pos{0, 1, 2, 3, 4, 5};
  store.append(s, 0, std::span<const float>(k).first(5 * 16), std::span<const float>(v).first(5 * 16),
               std::span<const std::int32_t>(pos).first(5));
  store.append(s, 0, std::span<const float>(k).last(16), std::span<const float>(v).last(16),
               std::span<const std::int32_t>(pos).last(1));
  AttentionPlan plan;
  const std::vector<SeqId> seqs{s};
  const std::vector<std::int32_t> ql{1}, qp{5};
  plan.update(store, 0, std::span<const SeqId>(seqs), std::span<const std::int32_t>(ql),
              std::span<const std::int32_t>(qp));
  cpu_attention<float>(store, plan, std::span<const float>(q), std::span<float>(out));
  for (int d = 0; d < 8; ++d)
    if (std::abs(out[d] - v[(5 * 2 + 0) * 8 + d]) > 1e-6f) {
      std::cerr << "local head output mismatch at d=" << d << '\n';
      return 1;
    }
  std::cout << "pages in use " << store.stats().pages_in_use << ", attention ok\n";
  return 0;
}

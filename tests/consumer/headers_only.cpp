// Downstream check that redknot::headers works on its own: this program links only redknot::headers (no
// libredknot) and includes every public header that needs no compiled code. Not usable header-only:
// HeadMap's members and head_class_name()/parse_head_class() (head_map.hpp; compiled in src/head_map.cpp, so
// redknot::core), hence pool_sizing.hpp, kv_head_store.hpp, attention_plan.hpp, cpu_attention.hpp, oracle.hpp
// and redknot.hpp; any_store.hpp (redknot::anystore), c_api.h (redknot::c), cuda/*.hpp (redknot::cuda).
// head_map.hpp itself may be included for HeadClass and HeadPolicy.
#include <redknot/allocator.hpp>
#include <redknot/attention_params.hpp>
#include <redknot/dtype.hpp>
#include <redknot/error.hpp>
#include <redknot/flashinfer_csr.hpp>
#include <redknot/head_map.hpp>
#include <redknot/head_table.hpp>
#include <redknot/limits.hpp>
#include <redknot/model_shape.hpp>
#include <redknot/page_pool.hpp>
#include <redknot/policies.hpp>
#include <redknot/query_batch.hpp>
#include <redknot/rope.hpp>
#include <redknot/store_types.hpp>
#include <redknot/version.hpp>
#include <redknot/visibility.hpp>

#include <cmath>
#include <iostream>
#include <string>
#include <vector>

int main() {
  using namespace redknot;
  std::cout << "redknot " << version_string() << " (headers only)\n";
  int failures = 0;
  const auto check = [&](bool ok, const char* what) {
    if (!ok) {
      std::cerr << "headers-only check failed: " << what << '\n';
      ++failures;
    }
  };

  // Visibility: a local head with sink 2 and window 3, query at position 10 sees {0, 1, 8, 9, 10}.
  const HeadPolicy local{HeadClass::kLocal, 3, 2};
  const HeadPolicy global{};
  check(is_visible(local, 10, 1) && !is_visible(local, 10, 2) && is_visible(local, 10, 8),
        "local visibility");
  check(!is_visible(local, 10, 11) && is_visible(global, 10, 0), "causality / global");
  const VisibleRanges r = visible_ranges(local, 10);
  check(r.sink_end == 2 && r.win_begin == 8 && r.win_end == 11, "visible_ranges");
  check(retained_sink_end(local) == 2 && retained_window_begin(local, 10) == 8,
        "retention follows visibility");

  // dtypes: exact round trips of representable values.
  check(static_cast<float>(Half(1.5f)) == 1.5f && static_cast<float>(BFloat16(-2.0f)) == -2.0f,
        "Half/BFloat16");
  check(parse_dtype("bf16") == DType::kBF16, "parse_dtype");

  // Errors carry their message.
  try {
    const ModelShape bad{1, 3, 2, 8, DType::kF32};
    bad.validate();
    check(false, "ModelShape::validate must throw");
  } catch (const InvalidArgument& e) {
    check(std::string(e.what()).find("num_q_heads=3") != std::string::npos, "InvalidArgument message");
  }

  // RoPE: a unit vector in dim 0 at position 1 (rotate-half pairs dim 0 with dim 2; inv_freq[0] = 1 rad).
  RopeConfig rope;
  rope.head_dim = 4;
  const std::vector<double> inv_freq = rope_inv_freq(rope);
  float row[4] = {1.f, 0.f, 0.f, 0.f};
  rope_apply(rope, inv_freq, row, 1);
  check(inv_freq.size() == 2 && row[0] == static_cast<float>(std::cos(1.0)) &&
            row[2] == static_cast<float>(std::sin(1.0)),
        "rope_apply");
  // The one check of AttentionParams names sm_scale and its value.
  try {
    check_attention_params(AttentionParams{-1.5f}, "run");
    check(false, "check_attention_params must throw");
  } catch (const InvalidArgument& e) {
    check(std::string(e.what()).find("sm_scale=-1.5") != std::string::npos, "sm_scale message");
  }

  // Page pool and a head table.
  PagePool<float> pool(4, 16, 8);
  std::vector<PageId> pages;
  pool.alloc(2, pages);
  HeadTable table;
  table.body.push_back(make_entry(pages[0], 0, 16, 0));
  table.body.push_back(make_entry(pages[1], 0, 4, 16));
  check(table.size() == 2 && !table.empty() && table[1].pos0 == 16, "HeadTable");
  check(pool.used_pages() == 2 && pool.decref(pages[0]) && pool.free_pages() == 3, "PagePool");

  if (failures == 0) std::cout << "headers-only ok\n";
  return failures == 0 ? 0 : 1;
}

// The one list of attention scenarios every backend plays (like ggml's test-backend-ops): the CPU core and
// the C ABI in tests/test_backends.cpp, the CUDA kernels in tests/gpu/. runner.hpp plays a scenario on a
// backend (backend.hpp) and compares every attention output with the fp64 oracle.
//
// A scenario is a model shape (layers, query and kv heads, head_dim), a head map, a page size, a storage and
// an activation dtype, an optional RoPE spec, and a script of operations on script-local sequence handles
// 0, 1, 2, ...: create, fork, free, retire_queries, register a sequence as chunk c (chunk reuse), splice or
// relocate chunk c into a sequence at a position, swap a sequence out to tiers and back in (preemption:
// tiers.hpp; the sequence gets a new id and must attend exactly as before), and steps. A step is a
// layer-by-layer forward over a batch: in every layer each item appends its positions (possibly none), then
// the batch attends with every item's queries (possibly none: a zero-query item). The script builder checks
// the store's contract (positions increase, queries in [query_floor, next_position)) when the list is built,
// so every script is legal by construction.
//
// Each scenario says which backends it applies to (the CUDA kernels: f16/bf16 with activations in the
// storage dtype, head_dim 64/128, GQA group 1/2/4/8) and its size class: REDKNOT_SCENARIO_SIZE=small (the
// sanitizer builds) skips the large ones. REDKNOT_SCENARIO=<text> keeps only the scenarios whose name holds
// the text (debugging, short device checks).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "redknot/dtype.hpp"
#include "redknot/head_map.hpp"
#include "redknot/model_shape.hpp"
#include "redknot/rope.hpp"

namespace rktest {

enum class SizeClass { kSmall, kLarge };
enum class BackendKind { kCpu, kCApi, kCuda };

// One batch item of a step: appends `append` in every layer, then attends with queries at `query`.
struct StepItem {
  int seq = 0;  // script handle
  std::vector<std::int32_t> append;
  std::vector<std::int32_t> query;
};

struct Op {
  enum class Kind { kCreate, kFork, kFree, kRetire, kStep, kRegister, kSplice, kSwap };
  Kind kind = Kind::kStep;
  int seq = -1;    // create: the new handle; fork: the parent; free, retire, swap: the sequence
  int child = -1;  // fork: the new handle
  std::int32_t next_query_pos = 0;  // retire
  int layer = -1;                   // retire: one layer, or -1 for all
  std::vector<StepItem> items;      // step
  int chunk = -1;                   // register: the chunk `seq` becomes; splice: the chunk spliced into `seq`
  std::int32_t at = 0;              // splice: the chunk's first position in `seq`
  std::int32_t first_query = -1;    // splice: first position whose query runs (-1: at + chunk length)
  bool relocate = false;            // splice: copy with keys rotated (relocate) instead of sharing pages
};

struct Scenario {
  std::string name;           // "<script>/<storage>-<activation>/d<head_dim>/g<group>/p<page>[/kv<chunk>]"
  redknot::ModelShape shape;  // shape.dtype is the storage dtype
  redknot::HeadMap map;
  std::optional<redknot::RopeConfig> rope;  // the store's RoPE spec (chunks spliced at other offsets)
  int page_size = 16;
  std::int32_t num_pages = 0;  // an upper bound on the pages the script can hold at once
  redknot::DType activation = redknot::DType::kF32;
  int kv_chunk = 0;  // the CPU kernel's split-KV chunk (AttentionParams::kv_chunk); 0: its default
  SizeClass size = SizeClass::kSmall;
  std::uint32_t seed = 0;
  std::vector<Op> ops;
  // Filled by the builder.
  int num_handles = 0;
  int max_batch = 0;    // items of the largest step
  int max_queries = 0;  // queries of the largest step
  int max_tokens = 0;   // tokens one layer of the largest step appends
  int num_chunks = 0;
  bool swaps = false;  // the script swaps sequences out and back in (host stores only)

  bool applies_to(BackendKind b) const;
};

// Every scenario, in a fixed order; names are unique.
const std::vector<Scenario>& all_scenarios();

// REDKNOT_SCENARIO_SIZE=small: only SizeClass::kSmall scenarios run.
bool small_scenarios_only();

// The scenarios of one size class that apply to backend b (and match REDKNOT_SCENARIO when it is set).
std::vector<const Scenario*> scenarios_for(BackendKind b, SizeClass size);

}  // namespace rktest

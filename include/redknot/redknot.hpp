// Umbrella header: everything a C++ engine needs to embed the head-aware KV cache on the CPU.
#pragma once

#include "redknot/allocator.hpp"
#include "redknot/attention_plan.hpp"
#include "redknot/cpu_attention.hpp"
#include "redknot/dtype.hpp"
#include "redknot/error.hpp"
#include "redknot/head_map.hpp"
#include "redknot/head_table.hpp"
#include "redknot/kv_head_store.hpp"
#include "redknot/model_shape.hpp"
#include "redknot/page_pool.hpp"
#include "redknot/policies.hpp"
#include "redknot/pool_sizing.hpp"
#include "redknot/rope.hpp"
#include "redknot/version.hpp"
#include "redknot/visibility.hpp"

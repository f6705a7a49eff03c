"""redknot: a head-aware paged KV cache for LLM serving.

Each (layer, kv_head) owns its own page list: "global" heads keep the whole context, "local" heads keep a sink
and a recent window, so local heads hold a few pages however long the context grows. See ``Store`` for the
step protocol (``plan`` once per step, ``append`` + ``run`` per layer) and ``HeadMap`` for head classes.
"""

import pkgutil as _pkgutil

# The native module may live in another directory named redknot on sys.path (a CMake build tree:
# PYTHONPATH=<build>/python:python). Installed wheels have both halves in one directory.
__path__ = _pkgutil.extend_path(__path__, __name__)

from ._redknot import (  # noqa: E402
    HAS_REDIS,
    DiskTier,
    HeadMap,
    HeadPolicy,
    HostTier,
    InternalError,
    InvalidArgument,
    KvTier,
    NotFound,
    PoolExhausted,
    RedisTier,
    RedknotError,
    SwapTicket,
    TieredChunkCache,
    TierMiss,
    TierPrefetcher,
    TierRefused,
    Unavailable,
    __version__,
    live_stores,
)
from ._redis import (  # noqa: E402
    RedisObject,
    decode_redis_object,
    encode_redis_object,
    read_redis_object,
    redis_object_keys,
    write_redis_object,
)
from ._reuse import RECOMPUTE_STRATEGIES, RopeConfig, kv_deviation, select_recompute  # noqa: E402
from ._store import KVHeadStore, KVPoolView, PageEntry, PageTableCsr, Store  # noqa: E402

__all__ = [
    "HeadMap",
    "HeadPolicy",
    "KVHeadStore",
    "KVPoolView",
    "PageEntry",
    "PageTableCsr",
    "RopeConfig",
    "RECOMPUTE_STRATEGIES",
    "select_recompute",
    "kv_deviation",
    "Store",
    "KvTier",
    "HostTier",
    "DiskTier",
    "RedisTier",
    "HAS_REDIS",
    "RedisObject",
    "redis_object_keys",
    "encode_redis_object",
    "decode_redis_object",
    "write_redis_object",
    "read_redis_object",
    "TierPrefetcher",
    "SwapTicket",
    "TieredChunkCache",
    "RedknotError",
    "InvalidArgument",
    "InternalError",
    "NotFound",
    "PoolExhausted",
    "Unavailable",
    "TierRefused",
    "TierMiss",
    "live_stores",
    "__version__",
]

"""RedisTier's object format as bytes in / bytes out, for engines that talk to Redis themselves.

An object is two keys that hash to one cluster slot (the object's name is the hash tag): a payload key
``<prefix>:{<name>}:p:<nonce>`` holding a 32-byte envelope and the bytes, written first, and an index key
``<prefix>:{<name>}:i`` naming that payload's nonce, written after it. ``redknot.RedisTier`` and a client such
as redis-py's ``redis.cluster.RedisCluster`` read and write the same keys and values, so either side reads
what the other wrote; a value that is missing, truncated, corrupted or written under another name decodes to
None (a miss), as RedisTier.get returns it. The format functions are the C++ ones (src/redis_tier.cpp), not a
copy, so the two cannot drift apart.
"""

from __future__ import annotations

import secrets
from typing import Any, NamedTuple, Optional, Tuple

from . import _redknot


class RedisObject(NamedTuple):
    """The two keys and values of one write (``encode_redis_object``): SET the payload, then the index."""

    payload_key: str
    payload_value: bytes
    index_key: str
    index_value: bytes


def redis_object_keys(name: str, index_value: Optional[bytes] = None, *,
                      prefix: str = "redknot") -> Tuple[Optional[str], str]:
    """``(payload_key, index_key)`` of object ``name``. The index key is fixed; the payload key changes with
    every write, so it is the one ``index_value`` (the index key's value) names, or None when ``index_value``
    is None or not an intact index of ``name``."""
    return _redknot.redis_object_keys(name, index_value, prefix=prefix)


def encode_redis_object(name: str, payload: Any, nonce: Optional[int] = None, *,
                        prefix: str = "redknot") -> RedisObject:
    """The keys and values that store ``payload`` (bytes-like) as object ``name``. ``nonce`` (0..2**64-1)
    names this write's payload key; None draws a random one (writers of one name must not share nonces).
    Write ``payload_value`` at ``payload_key`` first and ``index_value`` at ``index_key`` after it, so that a
    reader never finds an index whose payload is not there yet."""
    if nonce is None:
        nonce = secrets.randbits(64)
    return RedisObject(*_redknot.encode_redis_object(name, payload, nonce, prefix=prefix))


def decode_redis_object(name: str, payload_value: Optional[bytes], index_value: Optional[bytes]) -> Optional[bytes]:
    """The bytes of object ``name`` from its payload and index values (as a client's GET returns them), or None
    when either is None (missing) or fails verification (truncated, corrupted, another name, another write)."""
    return _redknot.decode_redis_object(name, payload_value, index_value)


def write_redis_object(client: Any, name: str, payload: Any, *, prefix: str = "redknot", ttl_ms: int = 0) -> None:
    """Stores ``payload`` as object ``name`` through a redis-py client (``redis.cluster.RedisCluster`` or
    ``redis.Redis``), as RedisTier.put does: payload, then index (``SET ... GET``), then the payload the old
    index named is deleted. ``ttl_ms`` > 0 expires both keys. redis-py's own errors (connection, timeout)
    propagate as they are."""
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int) or ttl_ms < 0:
        raise _redknot.InvalidArgument(f"write_redis_object: ttl_ms must be an integer >= 0, got {ttl_ms!r}")
    obj = encode_redis_object(name, payload, prefix=prefix)
    px = ttl_ms if ttl_ms > 0 else None
    client.set(obj.payload_key, obj.payload_value, px=px)
    old = client.set(obj.index_key, obj.index_value, px=px, get=True)
    if old is not None:
        old_key, _ = redis_object_keys(name, old, prefix=prefix)
        if old_key is not None and old_key != obj.payload_key:
            client.delete(old_key)  # unreferenced now: nothing reads it again


def read_redis_object(client: Any, name: str, *, prefix: str = "redknot") -> Optional[bytes]:
    """Object ``name`` through a redis-py client, as RedisTier.get reads it (index, then the payload it names,
    both verified); None for a miss. Unlike RedisTier.get it deletes nothing and counts nothing."""
    _, index_key = redis_object_keys(name, prefix=prefix)
    index_value = client.get(index_key)
    payload_key, _ = redis_object_keys(name, index_value, prefix=prefix)
    if payload_key is None:
        return None
    return decode_redis_object(name, client.get(payload_key), index_value)

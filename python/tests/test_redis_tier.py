"""redknot.RedisTier and the Redis object format from Python, with redis-py's RedisCluster on the other side.

What is checked: RedisTier's put / get / contains / remove / stats / get_many on a real cluster; an object
written by RedisTier reads back through redis-py + decode_redis_object (and read_redis_object), and one
written through redis-py with encode_redis_object (and write_redis_object) reads back through RedisTier.get;
a sequence swapped out through RedisTier (alone, or as the cold tier under a HostTier, with and without a
prefetcher) comes back bit for bit, and chunks demote to it and promote from it; a corrupted (SETRANGE),
truncated, foreign-name or index-less object is a miss; bad arguments are InvalidArgument naming the
argument and value; an unreachable cluster is no exception at construction (puts return False, gets miss,
within the timeouts). The cluster tests need REDKNOT_REDIS_CLUSTER (comma-separated host:port seeds:
scripts/test.sh starts a loopback cluster and exports it) and redis-py (scripts/install-deps.sh installs it);
without them they skip. The pure-format and argument tests need only a module built with hiredis.
"""

from __future__ import annotations

import os
import socket
import time
import uuid

import numpy as np
import pytest

import redknot
from conftest import make_store
from test_tiers import chunk_rows, decode_outputs, fill, prefilled, register

MODEL = "test-model"

needs_redis_build = pytest.mark.skipif(not redknot.HAS_REDIS,
                                       reason="redknot was built without hiredis (libhiredis-dev): no RedisTier")


def cluster_seeds():
    env = os.environ.get("REDKNOT_REDIS_CLUSTER", "").strip()
    return [s.strip() for s in env.split(",") if s.strip()]


@pytest.fixture(scope="module")
def seeds():
    if not redknot.HAS_REDIS:
        pytest.skip("redknot was built without hiredis (libhiredis-dev): no RedisTier")
    s = cluster_seeds()
    if not s:
        pytest.skip("REDKNOT_REDIS_CLUSTER is not set (comma-separated host:port seeds of a Redis Cluster; "
                    "scripts/test.sh starts one on loopback and exports it)")
    return s


@pytest.fixture(scope="module")
def rc(seeds):
    """redis-py's RedisCluster on the same cluster. With REDKNOT_REDIS_CLUSTER set, a cluster that does not
    answer fails the tests rather than skipping them (as test_redis_tier.cpp does)."""
    try:
        import redis.cluster as redis_cluster
    except ImportError as e:  # absent, or broken: either way these tests cannot talk to the cluster
        pytest.skip(f"redis-py is not importable ({e}): pip install redis (scripts/install-deps.sh does)")
    nodes = []
    for s in seeds:
        host, port = s.rsplit(":", 1)
        nodes.append(redis_cluster.ClusterNode(host, int(port)))
    client = redis_cluster.RedisCluster(startup_nodes=nodes, socket_timeout=5, socket_connect_timeout=5)
    yield client
    client.close()


@pytest.fixture
def prefix(rc):
    """A key prefix of this test only, so that runs and tests sharing the cluster never see each other's keys;
    every key under it is deleted afterwards."""
    p = f"rkpy-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    yield p
    for key in rc.scan_iter(match=f"{p}:*", target_nodes=rc.PRIMARIES):
        rc.delete(key)


@pytest.fixture
def tier(seeds, prefix):
    return redknot.RedisTier(seeds, prefix=prefix)


def keys_under(rc, prefix):
    return sorted(k.decode() for k in rc.scan_iter(match=f"{prefix}:*", target_nodes=rc.PRIMARIES))


def payload(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# ---- RedisTier on the cluster --------------------------------------------------------------------------------


def test_put_get_contains_remove_stats(tier, rc, prefix, seeds):
    assert isinstance(tier, redknot.KvTier) and tier.prefix == prefix and tier.seeds == seeds
    assert len(tier.masters()) >= 1
    data = payload(10_000, 1)
    assert not tier.contains("obj-1") and tier.get("obj-1") is None
    assert tier.put("obj-1", data)
    assert tier.contains("obj-1") and tier.get("obj-1") == data
    assert tier.put("empty", b"") and tier.get("empty") == b""
    assert tier.put("obj-1", bytearray(data[:100]))  # replaces; the old payload key goes
    assert tier.get("obj-1") == data[:100]
    assert len(keys_under(rc, prefix)) == 4  # an index and one payload per object
    assert tier.payload_key("obj-1").startswith(f"{prefix}:{{obj-1}}:p:")
    assert tier.index_key("obj-1") == f"{prefix}:{{obj-1}}:i" and tier.payload_key("absent") is None
    assert tier.get_many(["obj-1", "absent", "empty"]) == [data[:100], None, b""]
    s = tier.stats()
    assert set(s) == set(redknot.HostTier(1).stats())  # the same dict as every tier's
    assert s["hits"] == 5 and s["misses"] == 2 and s["corrupt"] == 0 and s["put_failures"] == 0
    assert s["bytes_written"] == (32 + 10_000 + 48) + (32 + 48) + (32 + 100 + 48)
    assert s["bytes_read"] == (32 + 10_000) + 32 + 2 * (32 + 100) + 32 and s["get_ns"] > 0
    assert tier.remove("obj-1") and not tier.remove("obj-1")
    assert not tier.contains("obj-1") and tier.get("obj-1") is None
    assert keys_under(rc, prefix) == sorted([tier.index_key("empty"), tier.payload_key("empty")])
    cs = tier.cluster_stats()
    assert cs["commands"] > 0 and cs["failed"] == 0 and cs["slot_refreshes"] >= 1
    assert "RedisTier(seeds=" in repr(tier)


def test_max_object_bytes_and_ttl(seeds, prefix, rc):
    small = redknot.RedisTier(seeds, prefix=prefix, max_object_bytes=100, ttl_ms=60_000)
    assert not small.put("big", b"x" * 101) and small.stats()["put_failures"] == 1
    assert small.put("fits", b"x" * 100) and small.get("fits") == b"x" * 100
    for key in keys_under(rc, prefix):
        assert 0 < rc.pttl(key) <= 60_000  # both keys expire


# ---- interop with redis-py ------------------------------------------------------------------------------------


def test_tier_writes_redis_py_reads(tier, rc, prefix):
    data = payload(5000, 2)
    assert tier.put("shared", data)
    payload_key, index_key = redknot.redis_object_keys("shared", prefix=prefix)
    assert payload_key is None and index_key == tier.index_key("shared")
    index_value = rc.get(index_key)
    payload_key, _ = redknot.redis_object_keys("shared", index_value, prefix=prefix)
    assert payload_key == tier.payload_key("shared")
    assert redknot.decode_redis_object("shared", rc.get(payload_key), index_value) == data
    assert redknot.read_redis_object(rc, "shared", prefix=prefix) == data
    assert redknot.read_redis_object(rc, "absent", prefix=prefix) is None


def test_redis_py_writes_tier_reads(tier, rc, prefix):
    data = payload(7000, 3)
    obj = redknot.encode_redis_object("from-py", data, prefix=prefix)
    assert isinstance(obj, redknot.RedisObject)
    assert rc.set(obj.payload_key, obj.payload_value) and rc.set(obj.index_key, obj.index_value)
    assert tier.contains("from-py") and tier.get("from-py") == data
    assert tier.payload_key("from-py") == obj.payload_key
    # write_redis_object replaces it as RedisTier.put would: the old payload key goes.
    redknot.write_redis_object(rc, "from-py", data[:10], prefix=prefix)
    assert tier.get("from-py") == data[:10]
    assert rc.get(obj.payload_key) is None and len(keys_under(rc, prefix)) == 2
    # ... and RedisTier replaces what redis-py wrote the same way.
    assert tier.put("from-py", b"tier")
    assert redknot.read_redis_object(rc, "from-py", prefix=prefix) == b"tier"
    assert len(keys_under(rc, prefix)) == 2
    redknot.write_redis_object(rc, "ttl", b"t", prefix=prefix, ttl_ms=30_000)
    assert all(0 < rc.pttl(k) <= 30_000 for k in keys_under(rc, prefix) if "{ttl}" in k)
    assert tier.get("ttl") == b"t"


# ---- Store swap and chunks through RedisTier --------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "bf16"])
@pytest.mark.parametrize("layout", ["redis-only", "host-over-redis", "prefetcher"])
def test_swap_through_redis_is_bit_exact(tier, rc, prefix, dtype, layout):
    st, s = prefilled(dtype)
    ref = st.fork(s)  # the never-moved copy
    before = decode_outputs(st, [ref], 19, seed=7)
    hot, cold = (tier, None) if layout == "redis-only" else (redknot.HostTier(1 << 20), tier)
    ticket = st.swap_out(s, hot, cold, model_id=MODEL, name="seq-1")
    assert s not in st and ticket.num_objects > 0
    on_redis = [o for o in ticket.objects if layout == "redis-only" or o["cold"]]
    assert on_redis and all(tier.contains(o["name"]) for o in on_redis)
    pf = redknot.TierPrefetcher(2) if layout == "prefetcher" else None
    back = st.swap_in(ticket, hot, cold, prefetcher=pf)
    assert ticket.used and back in st
    assert keys_under(rc, prefix) == []  # swap_in removed its objects
    for (a, la), (b, lb) in zip(decode_outputs(st, [back], 19, seed=7), before):
        assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    for step in range(20, 23):  # decode steps after the swap agree too
        fill(st, back, [step], seed=100 + step)
        fill(st, ref, [step], seed=100 + step)
        for out, lse in decode_outputs(st, [back, ref], step, seed=step):
            assert out[0].tobytes() == out[1].tobytes() and lse[0].tobytes() == lse[1].tobytes()


def test_swap_in_of_a_corrupted_object_is_a_miss(tier, rc, prefix):
    st, s = prefilled()
    ticket = st.swap_out(s, tier, None, model_id=MODEL, name="c")
    name = ticket.objects[0]["name"]
    rc.setrange(tier.payload_key(name), 40, b"\xff\xfe")
    pages = st.stats()["pages_in_use"]
    with pytest.raises(redknot.TierMiss):
        st.swap_in(ticket, tier, None)
    assert st.stats()["pages_in_use"] == pages and tier.stats()["corrupt"] == 1


def test_chunks_demote_to_and_promote_from_redis(tier):
    st = make_store()
    key = register(st, 9, seed=21)
    want = chunk_rows(st, key, 9)
    cache = st.chunk_tiers([tier], MODEL)
    assert cache.demote(key) and cache.in_tiers(key) and st.lookup_chunk(key) is None
    assert cache.lookup(key) == 9 and not cache.in_tiers(key)
    assert chunk_rows(st, key, 9) == want  # the same rows, bit for bit
    assert cache.stats()["promotions"] == 1 and tier.stats()["hits"] == 1


# ---- damaged values are misses -------------------------------------------------------------------------------


def damage_cases():
    return ["setrange-payload", "setrange-index", "truncated-payload", "truncated-index", "wrong-name",
            "no-index", "no-payload"]


@pytest.mark.parametrize("damage", damage_cases())
def test_damaged_objects_are_misses(tier, rc, prefix, damage):
    data = payload(3000, 4)
    assert tier.put("victim", data)
    pk, ik = tier.payload_key("victim"), tier.index_key("victim")
    pv, iv = rc.get(pk), rc.get(ik)
    assert redknot.decode_redis_object("victim", pv, iv) == data
    if damage == "setrange-payload":
        rc.setrange(pk, 32 + 1234, b"\x00" if pv[32 + 1234] else b"\x01")
    elif damage == "setrange-index":
        rc.setrange(ik, 20, b"\x7f")
    elif damage == "truncated-payload":
        rc.set(pk, pv[:-1])
    elif damage == "truncated-index":
        rc.set(ik, iv[:40])
    elif damage == "wrong-name":
        # Another object's intact values at this name's keys (its own payload key, so the index names it).
        other = redknot.encode_redis_object("other", data, prefix=prefix)
        okey, _ = redknot.redis_object_keys("victim", other.index_value, prefix=prefix)
        assert okey is None  # an index of another name names nothing here
        rc.set(pk, other.payload_value)
        rc.set(ik, other.index_value)
    elif damage == "no-index":
        rc.delete(ik)
    elif damage == "no-payload":
        rc.delete(pk)
    assert redknot.decode_redis_object("victim", rc.get(pk), rc.get(ik)) is None
    assert redknot.read_redis_object(rc, "victim", prefix=prefix) is None
    assert tier.get("victim") is None
    # RedisTier drops what can never be read again; a later put works as ever.
    assert tier.put("victim", data) and tier.get("victim") == data


# ---- the format without a cluster ------------------------------------------------------------------------------


@needs_redis_build
def test_format_round_trip_and_damage():
    data = payload(1000, 5)
    obj = redknot.encode_redis_object("n-1", data, nonce=0x0123456789ABCDEF)
    assert obj.payload_key == "redknot:{n-1}:p:0123456789abcdef" and obj.index_key == "redknot:{n-1}:i"
    assert len(obj.payload_value) == 32 + len(data) and obj.payload_value[:4] == b"RKTO"
    assert len(obj.index_value) == 48 and obj.index_value[:4] == b"RKRI"
    assert redknot.redis_object_keys("n-1", obj.index_value) == (obj.payload_key, obj.index_key)
    assert redknot.redis_object_keys("n-1", b"junk", prefix="p") == (None, "p:{n-1}:i")
    for pv, iv in [(obj.payload_value, obj.index_value),
                   (bytearray(obj.payload_value), memoryview(obj.index_value))]:
        assert redknot.decode_redis_object("n-1", pv, iv) == data
    assert redknot.encode_redis_object("n-1", data, nonce=1).payload_value == obj.payload_value  # nonce: key only
    assert redknot.encode_redis_object("n-1", data).index_value != obj.index_value  # a random nonce
    other = redknot.encode_redis_object("n-1", data, nonce=2)
    for pv, iv in [(None, obj.index_value), (obj.payload_value, None), (obj.payload_value[:-1], obj.index_value),
                   (obj.payload_value + b"\x00", obj.index_value), (obj.payload_value, obj.index_value[:-1]),
                   (obj.payload_value[:31], obj.index_value), (b"", obj.index_value),
                   (redknot.encode_redis_object("n-2", data, nonce=0x0123456789ABCDEF).payload_value,
                    obj.index_value)]:
        assert redknot.decode_redis_object("n-1", pv, iv) is None
    assert redknot.decode_redis_object("n-2", obj.payload_value, obj.index_value) is None
    # An index of another write with the same bytes names another key, but the values still verify: the nonce
    # is in the index (and the key), not in the payload envelope.
    assert redknot.decode_redis_object("n-1", obj.payload_value, other.index_value) == data
    for i in range(len(obj.payload_value)):
        bad = bytearray(obj.payload_value)
        bad[i] ^= 0x10
        assert redknot.decode_redis_object("n-1", bytes(bad), obj.index_value) is None, i
    for i in range(len(obj.index_value)):
        bad = bytearray(obj.index_value)
        bad[i] ^= 0x10
        assert redknot.decode_redis_object("n-1", obj.payload_value, bytes(bad)) is None, i
    empty = redknot.encode_redis_object("e", b"", nonce=0)
    assert redknot.decode_redis_object("e", empty.payload_value, empty.index_value) == b""


@needs_redis_build
@pytest.mark.parametrize("call, match", [
    (lambda: redknot.encode_redis_object("a/b", b"x", 1), "tier object name 'a/b'"),
    (lambda: redknot.encode_redis_object("", b"x", 1), "tier object name ''"),
    (lambda: redknot.encode_redis_object("a", "text", 1), "payload must be bytes-like"),
    (lambda: redknot.encode_redis_object("a", b"x", -1), r"nonce must be an integer in \[0, 2\*\*64 - 1\], got int -1"),
    (lambda: redknot.encode_redis_object("a", b"x", 2**64), "nonce must be an integer in"),
    (lambda: redknot.encode_redis_object("a", b"x", 1.0), "nonce must be an integer, got float"),
    (lambda: redknot.encode_redis_object("a", b"x", 1, prefix="a b"), "redis key prefix 'a b'"),
    (lambda: redknot.encode_redis_object("a", b"x", 1, prefix=""), "redis key prefix ''"),
    (lambda: redknot.redis_object_keys("a{b}"), "tier object name 'a{b}'"),
    (lambda: redknot.redis_object_keys("a", 5), "index_value must be bytes-like"),
    (lambda: redknot.redis_object_keys("a", prefix=None), "prefix must be"),
    (lambda: redknot.decode_redis_object("a", 5, b""),
     r"payload_value must be bytes-like \(bytes, bytearray, memoryview\), got int 5"),
    (lambda: redknot.decode_redis_object("a", b"", "s"), "index_value must be bytes-like"),
    (lambda: redknot.decode_redis_object(".a", b"", b""), "tier object name '.a'"),
    (lambda: redknot.write_redis_object(None, "a", b"", ttl_ms=-1), "ttl_ms must be an integer >= 0, got -1"),
])
def test_format_bad_arguments(call, match):
    with pytest.raises(redknot.InvalidArgument, match=match):
        call()


# ---- constructor arguments and an unreachable cluster -------------------------------------------------------


@needs_redis_build
@pytest.mark.parametrize("kwargs, match", [
    (dict(seeds=[]), "seeds is empty"),
    (dict(seeds="127.0.0.1:7000"), "seeds must be a list of 'host:port' strings, got str"),
    (dict(seeds=None), "seeds must be a list"),
    (dict(seeds=[7000]), r"seeds\[0\] must be"),
    (dict(seeds=["127.0.0.1:7000", "nohost"]), r"seeds\[1\]='nohost' is not 'host:port'"),
    (dict(seeds=[":7000"]), r"seeds\[0\]=':7000' is not 'host:port'"),
    (dict(seeds=["h:0"]), r"seeds\[0\]='h:0'"),
    (dict(seeds=["h:65536"]), r"seeds\[0\]='h:65536'"),
    (dict(seeds=["h:70x"]), r"seeds\[0\]='h:70x'"),
    (dict(seeds=["h:"]), r"seeds\[0\]='h:'"),
    (dict(seeds=["h:1"], connect_timeout_ms=-1), "connect_timeout_ms=-1 must be > 0"),
    (dict(seeds=["h:1"], outage_retry_ms=-5), "outage_retry_ms=-5 must be >= 0"),
    (dict(seeds=["h:1"], command_timeout_ms=0), "command_timeout_ms=0 must be > 0"),
    (dict(seeds=["h:1"], request_deadline_ms=-5), "request_deadline_ms=-5 must be > 0"),
    (dict(seeds=["h:1"], connect_timeout_ms=1.5), "connect_timeout_ms must be an integer, got float"),
    (dict(seeds=["h:1"], ttl_ms=-1), "ttl_ms=-1 must be >= 0"),
    (dict(seeds=["h:1"], max_rounds=0), "max_rounds=0 must be in"),
    (dict(seeds=["h:1"], prefix="a{b"), "prefix 'a{b'"),
    (dict(seeds=["h:1"], prefix=""), "prefix ''"),
    (dict(seeds=["h:1"], max_object_bytes=-1), "max_object_bytes=-1 must be in"),
])
def test_constructor_bad_arguments(kwargs, match):
    seeds = kwargs.pop("seeds")
    t0 = time.monotonic()
    with pytest.raises(redknot.InvalidArgument, match=match):
        redknot.RedisTier(seeds, **kwargs)
    assert time.monotonic() - t0 < 2  # rejected before connecting to anything


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_redis_build
def test_unreachable_cluster_is_a_miss_not_an_exception():
    t0 = time.monotonic()
    tier = redknot.RedisTier([f"127.0.0.1:{free_port()}"], connect_timeout_ms=200, command_timeout_ms=200,
                             request_deadline_ms=500, max_rounds=2)
    assert not tier.put("a", b"bytes") and tier.get("a") is None
    assert not tier.contains("a") and not tier.remove("a") and tier.get_many(["a", "b"]) == [None, None]
    assert tier.payload_key("a") is None and tier.masters() == []
    s = tier.stats()
    assert s["put_failures"] == 1 and s["misses"] == 3 and s["hits"] == 0
    assert tier.cluster_stats()["connect_failures"] > 0
    assert tier.cluster_stats()["fast_failures"] > 0  # an outage: later calls fail at once (outage_retry_ms)
    # swap_out refuses (the sequence stays live) rather than losing anything.
    st, seq = prefilled()
    with pytest.raises(redknot.TierRefused):
        st.swap_out(seq, tier, None, model_id=MODEL, name="x")
    assert seq in st
    assert time.monotonic() - t0 < 30  # every call bounded by its deadline


@needs_redis_build
def test_silent_server_is_bounded_by_the_timeouts():
    """A server that accepts connections and never answers (a listening socket nobody reads): every call waits
    at most about its deadline plus one command timeout, and misses."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        t0 = time.monotonic()
        tier = redknot.RedisTier([f"127.0.0.1:{srv.getsockname()[1]}"], connect_timeout_ms=200,
                                 command_timeout_ms=200, request_deadline_ms=400, max_rounds=2)
        built = time.monotonic() - t0
        t0 = time.monotonic()
        assert not tier.put("a", b"x") and tier.get("a") is None and not tier.contains("a")
        calls = time.monotonic() - t0
    assert built < 2.0 and calls < 6.0, (built, calls)  # bound: 0.4 s + 0.2 s per call, with slack for load
    assert tier.cluster_stats()["failed"] > 0


@pytest.mark.skipif(redknot.HAS_REDIS, reason="the module was built with hiredis")
def test_without_hiredis_everything_raises_unavailable():
    with pytest.raises(redknot.Unavailable, match="built without hiredis"):
        redknot.RedisTier(["127.0.0.1:7000"])
    for call in (lambda: redknot.encode_redis_object("a", b"", 1), lambda: redknot.redis_object_keys("a"),
                 lambda: redknot.decode_redis_object("a", b"", b"")):
        with pytest.raises(redknot.Unavailable, match="built without hiredis"):
            call()

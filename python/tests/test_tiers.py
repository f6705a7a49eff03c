"""The tier layer from Python: host and disk tiers, sequence swap (swap_out / swap_in) and chunks through tiers.

What is checked: a swapped sequence comes back bit for bit (attention equals a never-moved copy, f32 / f16 /
bf16, local heads with sinks and windows, decode steps after the swap); local heads' objects go hot and global
ones cold; a refusal leaves the sequence live; a missing or corrupt object is a TierMiss that leaves the store
as it was (no leaked pages); a full pool is PoolExhausted and the ticket stays usable; chunks demote, promote,
and a corrupt copy is a miss; the cache keeps what it uses alive.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest

import redknot
from conftest import live_stores, make_store

F = np.float32
MODEL = "test-model"


def fill(st: redknot.Store, seq: int, positions, seed: int) -> None:
    """Appends deterministic K/V (a function of seed only) at `positions` on every layer."""
    rng = np.random.default_rng(seed)
    for layer in range(st.num_layers):
        k = rng.uniform(-1, 1, (len(positions), st.num_kv_heads, st.head_dim)).astype(F)
        v = rng.uniform(-1, 1, (len(positions), st.num_kv_heads, st.head_dim)).astype(F)
        st.append(seq, layer, k, v, list(positions))


def decode_outputs(st: redknot.Store, seqs, pos: int, seed: int):
    """One query per sequence at `pos` on every layer (same q for all), f32 and store-dtype-free outputs."""
    rng = np.random.default_rng(seed)
    st.plan(seqs, [1] * len(seqs), [pos] * len(seqs))
    outs = []
    for layer in range(st.num_layers):
        q1 = rng.uniform(-1, 1, (1, st.num_q_heads, st.head_dim)).astype(F)
        q = np.concatenate([q1] * len(seqs))
        out, lse = st.run(q, layer, return_lse=True)
        outs.append((out, lse))
    return outs


def prefilled(dtype="f32", num_pages=512, n=20):
    """A store (mixed map: global, local window 7 sink 3, sink_dominant window 5 sink 4, retrieval) with one
    sequence of n tokens whose early queries are retired (local heads dropped pages)."""
    st = make_store(dtype=dtype, num_pages=num_pages)
    s = st.create_sequence()
    fill(st, s, range(n), seed=1)
    st.retire_queries(s, n - 1)
    return st, s


def tier_pair(tmp_path, hot_cap=1 << 20, cold_cap=1 << 22):
    return redknot.HostTier(hot_cap), redknot.DiskTier(tmp_path / "cold", cold_cap)


def rkt_files(disk: redknot.DiskTier):
    return sorted(p for p in os.listdir(disk.path) if p.endswith(".rkt"))


def flip_byte(path: str, offset: int = -5) -> None:
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END if offset < 0 else os.SEEK_SET)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))


# ---- tiers on their own ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["host", "disk"])
def test_tier_bytes_round_trip_and_lru(tmp_path, kind):
    t = redknot.HostTier(100) if kind == "host" else redknot.DiskTier(tmp_path / "d", 100 + 2 * 32)
    assert t.put("a", b"x" * 50) and t.put("b", bytearray(b"y" * 50))
    assert t.get("a") == b"x" * 50  # a is now the most recent
    assert t.put("c", memoryview(b"z" * 10))  # evicts b, the least recently used
    assert t.contains("a") and not t.contains("b") and t.contains("c")
    assert t.get("b") is None
    st = t.stats()
    assert st["evictions"] == 1 and st["objects"] == 2 and st["misses"] == 1 and st["hits"] == 1
    assert not t.put("big", b"q" * 1000)  # larger than the tier: refused, the others stay
    assert t.stats()["put_failures"] == 1 and t.contains("a")
    assert t.remove("a") and not t.remove("a")


def test_disk_tier_adopts_and_checks(tmp_path):
    d = redknot.DiskTier(tmp_path / "d", 1 << 20)
    assert d.put("obj", b"hello world")
    again = redknot.DiskTier(tmp_path / "d", 1 << 20)  # adopts what is there
    assert again.get("obj") == b"hello world"
    flip_byte(again.path_of("obj"))
    assert again.get("obj") is None  # verification failed: a miss, and the file is removed
    assert again.stats()["corrupt"] == 1 and not os.path.exists(again.path_of("obj"))


def test_disk_tier_directories(tmp_path):
    with pytest.raises(redknot.NotFound, match="does not exist"):
        redknot.DiskTier(tmp_path / "missing", 100, create=False)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(redknot.Unavailable, match="not a directory"):
        redknot.DiskTier(tmp_path / "file", 100)
    d = redknot.DiskTier(str(tmp_path / "a" / "b"), 100)  # created, parents included
    assert os.path.isdir(d.path)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root bypasses directory permissions")
def test_read_only_directory_refuses(tmp_path):
    st, s = prefilled()
    ro = tmp_path / "ro"
    ro.mkdir()
    disk = redknot.DiskTier(ro, 1 << 22)
    os.chmod(ro, 0o500)
    try:
        before = st.stats()
        with pytest.raises(redknot.TierRefused, match="stays live"):
            st.swap_out(s, disk, model_id=MODEL, name="s")
        assert s in st and st.stats() == before
        assert disk.stats()["put_failures"] >= 1
    finally:
        os.chmod(ro, 0o700)


# ---- sequence swap -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("prefetch", [False, True], ids=["serial", "prefetcher"])
def test_swap_round_trip_bit_exact(tmp_path, dtype, prefetch):
    st, s = prefilled(dtype)
    ref = st.fork(s)  # the never-moved copy
    before = decode_outputs(st, [ref], 19, seed=7)
    hot, disk = tier_pair(tmp_path)
    pages_before = st.stats()["pages_in_use"]
    ticket = st.swap_out(s, hot, disk, model_id=MODEL, name="seq-1")
    assert s not in st and not ticket.used and ticket.num_layers == 2
    assert ticket.bytes == sum(o["bytes"] for o in ticket.objects) > 0
    pf = redknot.TierPrefetcher(2) if prefetch else None
    back = st.swap_in(ticket, hot, disk, prefetcher=pf)
    assert ticket.used and back in st
    assert hot.stats()["objects"] == 0 and disk.stats()["objects"] == 0 and rkt_files(disk) == []
    assert st.stats()["pages_in_use"] >= pages_before - 1  # restored (packed differently, never fewer rows)
    for l in range(2):
        assert st.next_position(back, l) == st.next_position(ref, l)
        assert st.query_floor(back, l) == st.query_floor(ref, l)
    # Attention of the restored sequence equals the never-moved one bit for bit, now and after decode steps.
    for (a, la), (b, lb) in zip(decode_outputs(st, [back], 19, seed=7), before):
        assert a.tobytes() == b.tobytes() and la.tobytes() == lb.tobytes()
    for step in range(20, 26):
        fill(st, back, [step], seed=100 + step)
        fill(st, ref, [step], seed=100 + step)
        st.retire_queries(back, step)
        st.retire_queries(ref, step)
        outs = decode_outputs(st, [back, ref], step, seed=step)
        for out, lse in outs:
            assert out[0].tobytes() == out[1].tobytes() and lse[0].tobytes() == lse[1].tobytes()


def test_swap_into_another_store_of_the_same_layout(tmp_path):
    st, s = prefilled()
    ref = st.fork(s)
    other = make_store(num_pages=256)  # same model, map, dtype; another page budget
    hot, disk = tier_pair(tmp_path)
    ticket = st.swap_out(s, hot, disk, model_id=MODEL, name="x")
    back = other.swap_in(ticket, hot, disk)
    a = decode_outputs(other, [back], 19, seed=3)
    b = decode_outputs(st, [ref], 19, seed=3)
    for (oa, _), (ob, _) in zip(a, b):
        assert oa.tobytes() == ob.tobytes()


def test_placement_local_hot_global_cold(tmp_path):
    st, s = prefilled()
    hot, disk = tier_pair(tmp_path)
    ticket = st.swap_out(s, hot, disk, model_id=MODEL, name="p")
    objs = ticket.objects
    local = [o for o in objs if o["local"]]
    glob = [o for o in objs if not o["local"]]
    assert local and glob
    assert objs == local + glob  # hottest first: every layer's local heads, then the global-like ones
    for o in local:
        assert not o["cold"] and hot.contains(o["name"]) and not disk.contains(o["name"])
    for o in glob:
        assert o["cold"] and disk.contains(o["name"]) and not hot.contains(o["name"])
    assert sorted(rkt_files(disk)) == sorted(o["name"] + ".rkt" for o in glob)
    assert ticket.num_cold_objects == len(glob)
    st.swap_in(ticket, hot, disk)


def test_hot_refusal_falls_back_cold_and_one_tier(tmp_path):
    st, s = prefilled()
    tiny = redknot.HostTier(16)  # takes no object: local objects fall back to the cold tier
    disk = redknot.DiskTier(tmp_path / "d", 1 << 22)
    ticket = st.swap_out(s, tiny, disk, model_id=MODEL, name="f")
    assert ticket.num_cold_objects == ticket.num_objects and tiny.stats()["put_failures"] >= 1
    back = st.swap_in(ticket, tiny, disk)
    # One tier for everything (cold None).
    one = redknot.HostTier(1 << 22)
    t2 = st.swap_out(back, one, model_id=MODEL, name="g")
    assert one.stats()["objects"] == t2.num_objects
    st.swap_in(t2, one)


def test_refusal_leaves_the_sequence_live(tmp_path):
    st, s = prefilled()
    snapshot = (st.stats(), [st.page_table(s, l, h) for l in range(2) for h in range(2)])
    hot = redknot.HostTier(16)
    cold = redknot.DiskTier(tmp_path / "small", 600)  # takes the first object, not all of them
    with pytest.raises(redknot.TierRefused, match="stays live"):
        st.swap_out(s, hot, cold, model_id=MODEL, name="r")
    assert s in st
    assert (st.stats(), [st.page_table(s, l, h) for l in range(2) for h in range(2)]) == snapshot
    assert hot.stats()["objects"] == 0 and cold.stats()["objects"] == 0 and rkt_files(cold) == []
    assert isinstance(pytest.raises(redknot.RedknotError, st.swap_out, s, hot, None, model_id=MODEL,
                                    name="r").value, RuntimeError)


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "host_remove"])
def test_swap_in_miss_leaves_the_store_unchanged(tmp_path, damage):
    st, s = prefilled()
    other = st.create_sequence()
    fill(st, other, range(5), seed=9)
    hot, disk = tier_pair(tmp_path)
    ticket = st.swap_out(s, hot, disk, model_id=MODEL, name="m")
    glob = [o["name"] for o in ticket.objects if o["cold"]]
    local = [o["name"] for o in ticket.objects if not o["cold"]]
    if damage == "flip":
        flip_byte(disk.path_of(glob[-1]))
    elif damage == "truncate":
        with open(disk.path_of(glob[0]), "r+b") as f:
            f.truncate(40)
    elif damage == "delete":
        os.remove(disk.path_of(glob[0]))
    else:
        hot.remove(local[-1])
    before = (st.stats(), st.sequences(), st.chunk_stats())
    with pytest.raises(redknot.TierMiss, match="cannot come back") as info:
        st.swap_in(ticket, hot, disk)
    assert isinstance(info.value, LookupError)
    assert (st.stats(), st.sequences(), st.chunk_stats()) == before  # no leaked pages, no new sequence
    assert ticket.used
    assert hot.stats()["objects"] == 0 and disk.stats()["objects"] == 0 and rkt_files(disk) == []
    with pytest.raises(redknot.InvalidArgument, match="already used"):
        st.swap_in(ticket, hot, disk)


def test_swap_in_pool_exhausted_keeps_the_ticket(tmp_path):
    st, s = prefilled(num_pages=64)
    hot, disk = tier_pair(tmp_path)
    ticket = st.swap_out(s, hot, disk, model_id=MODEL, name="e")
    hog = st.create_sequence()
    fill(st, hog, range(st.stats()["pages_total"] * st.page_size // 4 - 2), seed=5)  # global heads fill it
    before = st.stats()
    objects_before = (hot.stats()["objects"], disk.stats()["objects"])
    with pytest.raises(redknot.PoolExhausted):
        st.swap_in(ticket, hot, disk)
    assert st.stats() == before and not ticket.used
    assert (hot.stats()["objects"], disk.stats()["objects"]) == objects_before
    st.free(hog)
    back = st.swap_in(ticket, hot, disk)
    assert back in st


def test_ticket_checks(tmp_path):
    st, s = prefilled()
    hot, disk = tier_pair(tmp_path)
    ticket = st.swap_out(s, hot, disk, model_id=MODEL, name="t")
    n_hot, n_disk = hot.stats()["objects"], disk.stats()["objects"]
    other_hot = redknot.HostTier(1 << 20)
    with pytest.raises(redknot.InvalidArgument, match="hot tier"):
        st.swap_in(ticket, other_hot, disk)
    with pytest.raises(redknot.InvalidArgument, match="cold tier"):
        st.swap_in(ticket, hot, None)
    for shape in [dict(dtype="f16"), dict(layers=3, head_map=redknot.HeadMap.all_global(3, 2)), dict(d=32)]:
        with pytest.raises(redknot.InvalidArgument, match="ticket is of a store"):
            make_store(**shape).swap_in(ticket, hot, disk)
    with pytest.raises(redknot.InvalidArgument, match="head map"):
        make_store(head_map=redknot.HeadMap.all_global(2, 2)).swap_in(ticket, hot, disk)
    # Nothing was touched: the objects are all there and the ticket still works.
    assert (hot.stats()["objects"], disk.stats()["objects"]) == (n_hot, n_disk) and not ticket.used
    ticket.discard(hot, disk)
    assert ticket.used and hot.stats()["objects"] == 0 and disk.stats()["objects"] == 0
    with pytest.raises(redknot.InvalidArgument, match="already used"):
        ticket.discard(hot, disk)
    with pytest.raises(redknot.InvalidArgument, match="already used"):
        st.swap_in(ticket, hot, disk)


def test_swap_of_a_spliced_chunk(tmp_path):
    st = make_store()
    c = st.create_sequence()
    fill(st, c, range(8), seed=11)
    key = st.chunk_key(MODEL, list(range(8)))
    st.register_chunk(key, c)
    s = st.create_sequence()
    st.splice(s, key, 0)
    fill(st, s, range(8, 14), seed=12)
    ref = st.fork(s)
    hot, disk = tier_pair(tmp_path)
    t = st.swap_out(s, hot, disk, model_id=MODEL, name="sp")
    assert st.chunk_stats()["chunks"] == 1  # the registry keeps the chunk's pages
    back = st.swap_in(t, hot, disk)
    for (a, _), (b, _) in zip(decode_outputs(st, [back], 13, seed=4), decode_outputs(st, [ref], 13, seed=4)):
        assert a.tobytes() == b.tobytes()


def test_swap_model_mismatch_is_a_miss(tmp_path):
    # A ticket's slices carry the model fingerprint of swap_out; they are checked against it on the way back,
    # so a forged object (another model's bytes under the ticket's name) fails its digest.
    st, s = prefilled()
    st2, s2 = prefilled()
    hot = redknot.HostTier(1 << 22)
    t1 = st.swap_out(s, hot, model_id="model-a", name="a")
    t2 = st2.swap_out(s2, hot, model_id="model-b", name="b")
    # Substitute object bytes of t2 for t1's first object: the digest check refuses them.
    first = t1.objects[0]["name"]
    assert hot.put(first, hot.get(t2.objects[0]["name"]))
    with pytest.raises(redknot.TierMiss):
        st.swap_in(t1, hot)
    st2.swap_in(t2, hot)


# ---- chunks through tiers ------------------------------------------------------------------------------------


def register(st: redknot.Store, n: int, seed: int) -> bytes:
    c = st.create_sequence()
    fill(st, c, range(n), seed=seed)
    key = st.chunk_key(MODEL, [seed] * n)
    st.register_chunk(key, c)
    return key


def chunk_rows(st: redknot.Store, key: bytes, n: int):
    s = st.create_sequence()
    st.splice(s, key, 0)
    rows = [st.read_rows(s, l, list(range(n))) for l in range(st.num_layers)]
    st.free(s)
    return [(k.tobytes(), v.tobytes()) for k, v in rows]


@pytest.mark.parametrize("prefetch", [False, True], ids=["serial", "prefetcher"])
def test_chunk_demote_and_promote(tmp_path, prefetch):
    st = make_store()
    key = register(st, 9, seed=21)
    want = chunk_rows(st, key, 9)
    hot, disk = tier_pair(tmp_path)
    pf = redknot.TierPrefetcher(1) if prefetch else None
    cache = st.chunk_tiers([hot, disk], MODEL, prefetcher=pf)
    pages = st.stats()["pages_in_use"]
    assert cache.demote(key)
    assert st.lookup_chunk(key) is None and cache.in_tiers(key) and st.stats()["pages_in_use"] < pages
    assert hot.stats()["objects"] == 1 and disk.stats()["objects"] == 0  # the first tier that takes it
    if prefetch:
        assert cache.prefetch(key) and not cache.prefetch(key)  # already being read
    assert cache.lookup(key) == 9
    assert not cache.in_tiers(key) and hot.stats()["objects"] == 0  # a chunk lives in one place
    assert chunk_rows(st, key, 9) == want
    s = cache.stats()
    assert s["demotions"] == 1 and s["promotions"] == 1 and s["bytes_down"] == s["bytes_up"] > 0
    assert s["prefetches"] == (1 if prefetch else 0)
    assert cache.lookup(st.chunk_key(MODEL, [1, 2, 3])) is None and cache.stats()["misses"] == 1


def test_chunk_make_room_and_admission(tmp_path):
    st = make_store(num_pages=64)
    a = register(st, 8, seed=1)
    b = register(st, 8, seed=2)
    s = st.create_sequence()
    st.splice(s, b, 0)  # b spliced once, a never
    st.free(s)
    disk = redknot.DiskTier(tmp_path / "d", 1 << 22)
    cache = st.chunk_tiers((disk,), MODEL, min_splices=1)
    freed = cache.make_room(st.num_pages)  # every unused chunk goes
    assert freed > 0 and st.chunk_stats()["chunks"] == 0
    stats = cache.stats()
    assert stats["demotions"] == 1 and stats["dropped"] == 1  # a was not admitted
    assert cache.in_tiers(b) and not cache.in_tiers(a)
    assert cache.lookup(b) == 8 and cache.lookup(a) is None


@pytest.mark.parametrize("damage", ["flip_payload", "flip_header", "truncate"])
def test_chunk_corrupt_copy_is_a_miss(tmp_path, damage):
    st = make_store()
    key = register(st, 7, seed=3)
    disk = redknot.DiskTier(tmp_path / "d", 1 << 22)
    cache = st.chunk_tiers([disk], MODEL)
    assert cache.demote(key)
    (f,) = rkt_files(disk)
    path = os.path.join(disk.path, f)
    if damage == "flip_payload":
        flip_byte(path)
    elif damage == "flip_header":
        flip_byte(path, 3)
    else:
        with open(path, "r+b") as fh:
            fh.truncate(os.path.getsize(path) // 2)
    before = (st.stats(), st.chunk_stats()["chunks"], st.sequences())
    assert cache.lookup(key) is None
    assert (st.stats(), st.chunk_stats()["chunks"], st.sequences()) == before
    assert not cache.in_tiers(key) and rkt_files(disk) == []  # the bad copy is removed
    assert disk.stats()["corrupt"] == 1 and cache.stats()["misses"] == 1


def test_chunk_copy_of_another_model_is_rejected(tmp_path):
    st = make_store()
    key = register(st, 6, seed=4)
    hot = redknot.HostTier(1 << 22)
    assert st.chunk_tiers([hot], "model-a").demote(key)
    cache_b = st.chunk_tiers([hot], "model-b")
    before = st.stats()
    assert cache_b.lookup(key) is None
    assert cache_b.stats()["rejected"] == 1 and st.stats() == before and not cache_b.in_tiers(key)


def test_demote_errors_leave_everything(tmp_path):
    st = make_store()
    key = register(st, 5, seed=6)
    s = st.create_sequence()
    st.splice(s, key, 0)
    hot = redknot.HostTier(1 << 22)
    cache = st.chunk_tiers([hot], MODEL)
    before = (st.stats(), st.chunk_stats())
    with pytest.raises(redknot.InvalidArgument, match="spliced into 1 live"):
        cache.demote(key)
    with pytest.raises(redknot.NotFound):
        cache.demote(st.chunk_key(MODEL, [9, 9]))
    assert (st.stats(), st.chunk_stats()) == before and hot.stats()["objects"] == 0


def test_cache_keeps_what_it_uses_alive(tmp_path):
    gc.collect()
    stores0 = live_stores()
    st = make_store()
    key = register(st, 5, seed=8)
    hot = redknot.HostTier(1 << 22)
    cache = st.chunk_tiers([hot], MODEL, prefetcher=redknot.TierPrefetcher(1))
    assert cache.demote(key)
    st.close()
    del st, hot
    gc.collect()
    assert live_stores() == stores0 + 1  # the cache holds the native store
    assert len(cache.tiers) == 1 and cache.tiers[0].contains("chunk-" + key.hex())
    assert cache.prefetch(key)
    assert cache.lookup(key) == 5
    del cache
    gc.collect()
    assert live_stores() == stores0


def test_swap_name_in_use_is_refused(tmp_path):
    # A second sequence swapped out under a name still in use would replace the first one's objects and both
    # would be lost: refused before anything is written.
    st, s = prefilled()
    other = st.create_sequence()
    fill(st, other, range(6), seed=2)
    hot, disk = tier_pair(tmp_path)
    t1 = st.swap_out(s, hot, disk, model_id=MODEL, name="same")
    before = (st.stats(), hot.stats()["objects"], disk.stats()["objects"])
    with pytest.raises(redknot.InvalidArgument, match="already exists"):
        st.swap_out(other, hot, disk, model_id=MODEL, name="same")
    assert (st.stats(), hot.stats()["objects"], disk.stats()["objects"]) == before and other in st
    back = st.swap_in(t1, hot, disk)
    t2 = st.swap_out(other, hot, disk, model_id=MODEL, name="same")  # free again once swapped in
    assert back in st and st.swap_in(t2, hot, disk) in st


def test_swap_of_an_empty_sequence(tmp_path):
    st = make_store()
    s = st.create_sequence()
    hot = redknot.HostTier(1 << 10)
    t = st.swap_out(s, hot, model_id=MODEL, name="empty")
    assert t.num_objects == 0 and t.bytes == 0
    back = st.swap_in(t, hot)
    assert back in st and all(st.next_position(back, l) == 0 for l in range(2))

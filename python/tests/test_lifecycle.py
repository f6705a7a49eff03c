"""Ownership: pages return to the pool, stores die with their Python objects, no references leak, threads."""

from __future__ import annotations

import gc
import sys
import threading
import weakref

import numpy as np
import pytest

import redknot
from conftest import Shadow, live_stores, make_store


def test_pool_usage_returns_to_zero_after_forks_and_frees():
    st = make_store(dtype="bf16", page_size=4, num_pages=256)
    sh = Shadow(st, st.head_map, seed=1)
    a = sh.create()
    for layer in range(2):
        sh.append(a, layer, np.arange(10))
    kids = [sh.fork(a) for _ in range(3)]
    shared = st.stats()["pages_in_use"]
    for i, c in enumerate(kids):  # each child writes into the shared partial page: copy-on-write
        for layer in range(2):
            sh.append(c, layer, [10 + i])
    assert st.stats()["pages_in_use"] > shared
    assert st.stats()["num_sequences"] == 4
    sh.free(a)  # children keep the shared prefix alive
    assert st.stats()["pages_in_use"] > 0
    for c in kids:
        sh.free(c)
    stats = st.stats()
    assert stats["pages_in_use"] == 0
    assert stats["pages_global"] == 0 and stats["pages_local"] == 0
    assert stats["num_sequences"] == 0


def test_pool_exhaustion_is_recoverable():
    st = make_store(dtype="f32", num_pages=8)
    x = np.ones((16, 2, 16), np.float32)
    a = st.create_sequence()
    st.append(a, 0, x, x, np.arange(16))  # 4 pages per head: the pool is full
    b = st.create_sequence()
    with pytest.raises(redknot.PoolExhausted):
        st.append(b, 0, x[:1], x[:1], [0])
    st.free(a)
    st.append(b, 0, x[:1], x[:1], [0])  # retry succeeds
    assert st.stats()["pages_in_use"] == 2


def test_store_is_released_with_its_python_object():
    base = live_stores()
    st = make_store()
    assert live_stores() == base + 1
    ref = weakref.ref(st)
    st.create_sequence()
    del st
    gc.collect()
    assert ref() is None
    assert live_stores() == base


def test_store_in_a_reference_cycle_is_collected():
    base = live_stores()

    class Engine:
        pass

    e = Engine()
    e.store = make_store()
    e.self_ref = e  # a cycle only the GC can break
    s = e.store.create_sequence()
    e.store.append(s, 0, np.ones((3, 2, 16), np.float32), np.ones((3, 2, 16), np.float32), [0, 1, 2])
    del e
    gc.collect()
    assert live_stores() == base


def test_close_releases_now():
    base = live_stores()
    with make_store() as st:
        assert live_stores() == base + 1
    assert live_stores() == base


def test_no_reference_leaks_through_dlpack():
    st = make_store(dtype="f32")
    s = st.create_sequence()
    k = np.ones((4, 2, 16), np.float32)
    q = np.ones((4, 4, 16), np.float32)
    out = np.empty_like(q)
    lse = np.empty((4, 4), np.float32)
    pos = np.arange(4, dtype=np.int32)
    st.plan([s], [4], pos)
    counts = [sys.getrefcount(x) for x in (k, q, out, lse, pos)]
    for layer in range(2):
        st.append(s, layer, k, k, pos)
        st.run(q, layer, out=out, lse=lse)
    with pytest.raises(ValueError):
        st.run(q, 0, out=np.empty((1, 4, 16), np.float32), lse=lse)  # failing calls release too
    assert [sys.getrefcount(x) for x in (k, q, out, lse, pos)] == counts


def _workload(seed: int, dtype: str, results: dict, key) -> None:
    st = make_store(dtype=dtype, page_size=4)
    sh = Shadow(st, st.head_map, seed=seed)
    seqs = [sh.create() for _ in range(3)]
    outs = []
    nxt = 0
    for n in [6, 1, 1, 5, 1]:
        pos = np.arange(nxt, nxt + n)
        st.plan(seqs, [n] * 3, np.concatenate([pos] * 3))
        for layer in range(2):
            for s in seqs:
                sh.append(s, layer, pos)
            outs.append(st.run(sh.random(3 * n, 4, 16), layer))
        nxt += n
    for s in seqs:
        sh.free(s)
    results[key] = (outs, st.stats()["pages_in_use"])


def test_independent_stores_in_threads_match_sequential_runs():
    expected = {}
    for i in range(4):
        _workload(i, ["f32", "bf16"][i % 2], expected, i)
    got: dict = {}
    threads = [threading.Thread(target=_workload, args=(i, ["f32", "bf16"][i % 2], got, i)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        outs, pages = got[i]
        assert pages == 0
        for a, b in zip(outs, expected[i][0]):
            np.testing.assert_array_equal(a, b)


def test_one_store_shared_by_threads_is_serialised_not_corrupted():
    st = make_store(dtype="f32", num_pages=1024)
    x = np.ones((1, 2, 16), np.float32)
    errors = []

    def worker():
        try:
            for _ in range(20):
                s = st.create_sequence()
                for p in range(6):
                    st.append(s, 0, x, x, [p])
                    st.append(s, 1, x, x, [p])
                st.stats()
                st.free(s)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert st.stats()["pages_in_use"] == 0
    assert st.stats()["num_sequences"] == 0

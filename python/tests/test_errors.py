"""Every bad input raises a Python exception carrying the C++ message, and leaves the store intact."""

from __future__ import annotations

import numpy as np
import pytest

import redknot
from conftest import Shadow, live_stores, make_store


@pytest.fixture
def sh():
    st = make_store(dtype="f32", num_pages=12)
    s = Shadow(st, st.head_map, seed=11)
    seq = s.create()
    st.plan([seq], [3], [0, 1, 2])
    for layer in range(2):
        s.append(seq, layer, [0, 1, 2])
    s.seq = seq
    return s


def snapshot(st: redknot.Store):
    return st.stats(), {s: [st.page_table(s, l, h) for l in range(2) for h in range(2)] for s in st.sequences()}


F = np.float32
K3 = np.ones((3, 2, 16), F)
Q1 = np.ones((1, 4, 16), F)

# (name, call(store, seq), exception type, message fragment)
BAD_CALLS = [
    ("append k wrong head_dim", lambda st, s: st.append(s, 0, np.ones((3, 2, 8), F), K3, [3, 4, 5]),
     ValueError, "append: k has shape [3, 2, 8]"),
    ("append v wrong rows", lambda st, s: st.append(s, 0, K3, np.ones((2, 2, 16), F), [3, 4, 5]),
     ValueError, "append: v has shape [2, 2, 16], expected [n_tokens=3"),
    ("append k int dtype", lambda st, s: st.append(s, 0, K3.astype(np.int32), K3, [3, 4, 5]),
     ValueError, "dtype int32"),
    ("append k float64", lambda st, s: st.append(s, 0, K3.astype(np.float64), K3, [3, 4, 5]),
     ValueError, "dtype float64"),
    ("append k not an array", lambda st, s: st.append(s, 0, [[1.0]], K3, [3, 4, 5]),
     ValueError, "expected an array supporting DLPack"),
    ("append positions not increasing", lambda st, s: st.append(s, 0, K3, K3, [3, 5, 4]),
     ValueError, "strictly increasing"),
    ("append positions in the past", lambda st, s: st.append(s, 0, K3, K3, [1, 2, 3]),
     ValueError, "must be >= 3"),
    ("append positions float", lambda st, s: st.append(s, 0, K3, K3, [3.0, 4.0, 5.0]),
     ValueError, "must hold integers"),
    ("append positions 2-D", lambda st, s: st.append(s, 0, K3, K3, [[3, 4, 5]]),
     ValueError, "one-dimensional"),
    ("append positions overflow", lambda st, s: st.append(s, 0, K3, K3, [3, 4, 2**40]),
     ValueError, "outside int32"),
    ("append positions count", lambda st, s: st.append(s, 0, K3, K3, [3, 4]),
     ValueError, "n_tokens=2"),
    ("append empty", lambda st, s: st.append(s, 0, K3[:0], K3[:0], []),
     ValueError, "positions is empty"),
    ("append bad layer", lambda st, s: st.append(s, 2, K3, K3, [3, 4, 5]),
     ValueError, "layer=2 out of range"),
    ("append unknown seq", lambda st, s: st.append(12345, 0, K3, K3, [3, 4, 5]),
     KeyError, "sequence id=12345 is not live"),
    ("append pool exhausted", lambda st, s: st.append(s, 0, np.ones((40, 2, 16), F), np.ones((40, 2, 16), F),
                                                      np.arange(3, 43)),
     MemoryError, "pool has"),
    ("plan lens mismatch", lambda st, s: st.plan([s], [1, 1], [3, 4]),
     ValueError, "one per sequence"),
    ("plan positions mismatch", lambda st, s: st.plan([s], [2], [3]),
     ValueError, "expected sum(q_lens)=2"),
    ("plan negative len", lambda st, s: st.plan([s], [-1], []),
     ValueError, "must be >= 0"),
    ("plan duplicate", lambda st, s: st.plan([s, s], [1, 1], [2, 2]),
     ValueError, "appears twice"),
    ("plan unknown seq", lambda st, s: st.plan([999], [1], [0]),
     KeyError, "999"),
    ("run q wrong rows", lambda st, s: st.run(np.ones((2, 4, 16), F), 0),
     ValueError, "run: q has shape [2, 4, 16], expected [total_q=3"),
    ("run q wrong dtype", lambda st, s: st.run(np.ones((3, 4, 16), np.float16), 0),
     ValueError, "run: q has dtype float16, expected float32 or the store dtype float32"),
    ("run out wrong dtype", lambda st, s: st.run(np.ones((3, 4, 16), F), 0, out=np.ones((3, 4, 16), np.float64)),
     ValueError, "run: out has dtype float64"),
    ("run out wrong shape", lambda st, s: st.run(np.ones((3, 4, 16), F), 0, out=np.ones((3, 4, 8), F)),
     ValueError, "run: out has shape [3, 4, 8]"),
    ("run out read-only", lambda st, s: st.run(np.ones((3, 4, 16), F), 0,
                                               out=np.broadcast_to(np.ones((1, 4, 16), F), (3, 4, 16))),
     ValueError, "read-only"),
    ("run lse wrong shape", lambda st, s: st.run(np.ones((3, 4, 16), F), 0, lse=np.ones((3, 2), F)),
     ValueError, "run: lse has shape [3, 2]"),
    ("run bad layer", lambda st, s: st.run(np.ones((3, 4, 16), F), 7),
     ValueError, "layer=7"),
    ("run bad scale", lambda st, s: st.run(np.ones((3, 4, 16), F), 0, sm_scale=-1.0),
     ValueError, "sm_scale=-1 must be finite and >= 0"),
    ("run nan scale", lambda st, s: st._s.run(0, np.ones((3, 4, 16), F), np.ones((3, 4, 16), F), None,
                                              float("nan"), 0),
     ValueError, "sm_scale=nan"),
    ("run list q", lambda st, s: st.run([[1.0]], 0),
     ValueError, "expected an array supporting DLPack"),
    ("fork unknown", lambda st, s: st.fork(77), KeyError, "fork: sequence id=77"),
    ("free unknown", lambda st, s: st.free(77), KeyError, "free_sequence: sequence id=77"),
    ("next_position unknown", lambda st, s: st.next_position(77, 0), KeyError, "77"),
    ("next_position bad layer", lambda st, s: st.next_position(s, -1), ValueError, "layer=-1"),
    ("retire beyond", lambda st, s: st.retire_queries(s, 10), ValueError, "beyond the next position"),
    ("retire bad layer", lambda st, s: st.retire_queries(s, 1, 5), ValueError, "layer=5"),
    ("page_table bad head", lambda st, s: st.page_table(s, 0, 9), ValueError, "kv_head=9"),
    ("sequence_stats unknown", lambda st, s: st.sequence_stats(55), KeyError, "55"),
    ("pages_per_sequence negative", lambda st, s: st.pages_per_sequence(-5), ValueError, "num_tokens=-5"),
    ("export bad layer", lambda st, s: st.export_page_table(3, [s]), ValueError, "layer=3"),
    ("export unknown", lambda st, s: st.export_page_table(0, [s, 4242]), KeyError, "4242"),
]


@pytest.mark.parametrize("name,call,exc,fragment", BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_raises_and_leaves_store_intact(sh, name, call, exc, fragment):
    st = sh.store
    before = snapshot(st)
    with pytest.raises(exc) as info:
        call(st, sh.seq)
    assert isinstance(info.value, redknot.RedknotError)
    assert fragment in str(info.value), str(info.value)
    assert snapshot(st) == before
    # Still fully usable: plan the 3 appended queries and compare with the oracle.
    st.plan([sh.seq], [3], [0, 1, 2])
    q = sh.random(3, 4, 16)
    out = st.run(q, 1)
    ref, _ = sh.expected([sh.seq], [3], [0, 1, 2], 1, q)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)


def test_exception_hierarchy():
    assert issubclass(redknot.InvalidArgument, ValueError)
    assert issubclass(redknot.NotFound, KeyError)
    assert issubclass(redknot.PoolExhausted, MemoryError)
    assert issubclass(redknot.Unavailable, RuntimeError)
    for e in (redknot.InvalidArgument, redknot.NotFound, redknot.PoolExhausted, redknot.Unavailable):
        assert issubclass(e, redknot.RedknotError)
    # KeyError would quote its message: the redknot one does not.
    assert str(redknot.NotFound("x y")) == "x y"


def test_run_without_plan_and_after_free():
    st = make_store(dtype="f32")
    s = st.create_sequence()
    with pytest.raises(ValueError, match="no batch planned"):
        st.run(np.ones((1, 4, 16), F), 0)
    st.plan([s], [1], [0])
    st.free(s)
    with pytest.raises(KeyError, match="not live"):
        st.run(np.ones((1, 4, 16), F), 0)
    with pytest.raises(ValueError, match="query position 0"):
        s2 = st.create_sequence()
        st.plan([s2], [1], [0])
        st.run(np.ones((1, 4, 16), F), 0)  # its key is not appended yet


@pytest.mark.parametrize("kwargs,exc,fragment", [
    (dict(head_dim=12), ValueError, "head_dim=12"),
    (dict(num_q_heads=3), ValueError, "num_q_heads=3"),
    (dict(num_pages=0), ValueError, "num_pages=0"),
    (dict(page_size=0), ValueError, "page_size=0"),
    (dict(dtype="int8"), ValueError, "dtype='int8'"),
    (dict(device="tpu"), ValueError, "device='tpu'"),
    (dict(device="cuda:0"), RuntimeError, "not available"),
    (dict(head_map=redknot.HeadMap.all_global(3, 2)), ValueError, "num_layers=3"),
    (dict(head_map=42), ValueError, "head_map must be"),
    (dict(head_map="/nonexistent.json"), ValueError, "cannot be opened"),
    (dict(head_map='{"num_layers": 2}'), ValueError, "num_kv_heads"),
])
def test_bad_store_configs(kwargs, exc, fragment):
    args = dict(num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=16, num_pages=8, dtype="f32")
    args.update(kwargs)
    live = live_stores()
    with pytest.raises(exc) as info:
        redknot.Store(args.pop("num_layers"), args.pop("num_q_heads"), args.pop("num_kv_heads"),
                      args.pop("head_dim"), **args)
    assert fragment in str(info.value)
    assert live_stores() == live


def test_closed_store():
    st = make_store()
    st.close()
    assert "closed" in repr(st)
    with pytest.raises(ValueError, match="closed"):
        st.create_sequence()

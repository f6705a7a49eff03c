"""Every public entry point, fed values that do not fit its argument's C type or are not numbers at all.

The contract: bad input raises a ``redknot.RedknotError`` subclass -- ``redknot.InvalidArgument`` for a bad
argument -- whose message names the argument and the value; never pybind11's TypeError, an OverflowError, a
UnicodeDecodeError or a crash; and the store (or head map) is exactly as it was.
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

import redknot
from redknot.integrations import (
    RedknotAttentionImpl,
    RedknotAttentionMetadata,
    RedknotKVCacheManager,
    RedknotMetadataBuilder,
    ScheduledRequest,
)
from conftest import MIXED_MAP, live_stores, make_store

F = np.float32

# Values that are not a valid C int32 (or not an integer at all). 2**31 fits int64: int64 arguments skip it.
BAD_INTS = [2**31, 2**63, 2**64, 2**100, -2**63 - 1, 1e999, float("nan"), 2.0, "3", None, True, [1]]
BAD_INT_IDS = ["2**31", "2**63", "2**64", "2**100", "-2**63-1", "1e999", "nan", "2.0", "str", "None", "True",
               "list"]
# Real-number arguments (sm_scale, global_ratio, scale, watermark).
BAD_FLOATS = [10**400, "0.5", None, True, float("nan"), 1e999, [0.5]]
BAD_FLOAT_IDS = ["10**400", "str", "None", "True", "nan", "inf", "list"]


def value_text(v) -> str:
    """What the message must contain to name the value (numbers: their repr; others: their type)."""
    if isinstance(v, bool) or v is None or isinstance(v, (str, list)):
        return type(v).__name__
    if isinstance(v, float):
        return repr(v)  # 'inf', 'nan', '2.0'
    return str(v)


@pytest.fixture
def store():
    st = make_store(dtype="f32", num_pages=16)
    seq = st.create_sequence()
    rng = np.random.default_rng(3)
    for layer in range(2):
        kv = rng.uniform(-1, 1, (3, 2, 16)).astype(F)
        st.append(seq, layer, kv, kv, [0, 1, 2])
    st.plan([seq], [3], [0, 1, 2])
    st.seq = seq
    chunk = st.create_sequence()  # a registered chunk for the chunk calls
    for layer in range(2):
        st.append(chunk, layer, K3[:2], K3[:2], [0, 1])
    st.key = st.chunk_key("m", [5, 6])
    st.register_chunk(st.key, chunk)
    return st


def snapshot(st: redknot.Store):
    seqs = st.sequences()
    return (st.stats(), st.planned_queries() if hasattr(st, "planned_queries") else None,
            {s: [(st.next_position(s, l), st.query_floor(s, l), [st.page_table(s, l, h) for h in range(2)])
                 for l in range(2)] for s in seqs})


def store_snapshot(st: redknot.Store):
    return st.stats(), st._s.planned_queries(), snapshot(st), st.chunk_stats()


def still_usable(st: redknot.Store) -> None:
    st.plan([st.seq], [3], [0, 1, 2])
    out = st.run(np.ones((3, 4, 16), F), 1)
    assert np.isfinite(out).all()


# ---- Store methods: (name, ctype, call(store, seq, value)) ------------------------------------------------
K3 = np.ones((3, 2, 16), F)
Q3 = np.ones((3, 4, 16), F)

STORE_INT_ARGS = [
    ("fork parent", "int64", lambda st, s, v: st.fork(v)),
    ("free seq", "int64", lambda st, s, v: st.free(v)),
    ("next_position seq", "int64", lambda st, s, v: st.next_position(v, 0)),
    ("next_position layer", "int32", lambda st, s, v: st.next_position(s, v)),
    ("query_floor seq", "int64", lambda st, s, v: st.query_floor(v, 0)),
    ("query_floor layer", "int32", lambda st, s, v: st.query_floor(s, v)),
    ("retire_queries seq", "int64", lambda st, s, v: st.retire_queries(v, 1)),
    ("retire_queries next_query_pos", "int32", lambda st, s, v: st.retire_queries(s, v)),
    ("retire_queries layer", "int32", lambda st, s, v: st.retire_queries(s, 1, v)),
    ("page_table seq", "int64", lambda st, s, v: st.page_table(v, 0, 0)),
    ("page_table layer", "int32", lambda st, s, v: st.page_table(s, v, 0)),
    ("page_table kv_head", "int32", lambda st, s, v: st.page_table(s, 0, v)),
    ("append seq", "int64", lambda st, s, v: st.append(v, 0, K3, K3, [3, 4, 5])),
    ("append layer", "int32", lambda st, s, v: st.append(s, v, K3, K3, [3, 4, 5])),
    ("append(default positions) layer", "int32", lambda st, s, v: st.append(s, v, K3, K3)),
    ("append positions[i]", "int32", lambda st, s, v: st.append(s, 0, K3, K3, [3, 4, v])),
    ("plan seq_ids[i]", "int64", lambda st, s, v: st.plan([s, v], [1, 1], [3, 0])),
    ("plan q_lens[i]", "int32", lambda st, s, v: st.plan([s], [v], [3])),
    ("plan(default positions) q_lens[i]", "int32", lambda st, s, v: st.plan([s], [v])),
    ("plan q_positions[i]", "int32", lambda st, s, v: st.plan([s], [1], [v])),
    ("run layer", "int32", lambda st, s, v: st.run(Q3, v)),
    ("run num_threads", "int32", lambda st, s, v: st.run(Q3, 0, num_threads=v)),
    ("sequence_stats seq", "int64", lambda st, s, v: st.sequence_stats(v)),
    ("pages_per_sequence num_tokens", "int64", lambda st, s, v: st.pages_per_sequence(v)),
    ("sequences_that_fit num_tokens", "int64", lambda st, s, v: st.sequences_that_fit(v)),
    ("export_page_table layer", "int32", lambda st, s, v: st.export_page_table(v, [s])),
    ("export_page_table seq_ids[i]", "int64", lambda st, s, v: st.export_page_table(0, [s, v])),
    ("chunk_key tokens[i]", "int32", lambda st, s, v: st.chunk_key("m", [1, v])),
    ("register_chunk seq", "int64", lambda st, s, v: st.register_chunk(b"\x01" * 16, v)),
    ("splice seq", "int64", lambda st, s, v: st.splice(v, st.key, 3)),
    ("splice at", "int32", lambda st, s, v: st.splice(s, st.key, v)),
    ("splice first_query", "int32", lambda st, s, v: st.splice(s, st.key, 3, v)),
    ("relocate seq", "int64", lambda st, s, v: st.relocate(v, st.key, 3)),
    ("relocate at", "int32", lambda st, s, v: st.relocate(s, st.key, v)),
    ("relocate first_query", "int32", lambda st, s, v: st.relocate(s, st.key, 3, v)),
    ("overwrite seq", "int64", lambda st, s, v: st.overwrite(v, 0, K3, K3, [0, 1, 2])),
    ("overwrite layer", "int32", lambda st, s, v: st.overwrite(s, v, K3, K3, [0, 1, 2])),
    ("overwrite positions[i]", "int32", lambda st, s, v: st.overwrite(s, 0, K3, K3, [0, 1, v])),
    ("read_rows seq", "int64", lambda st, s, v: st.read_rows(v, 0, [0])),
    ("read_rows layer", "int32", lambda st, s, v: st.read_rows(s, v, [0])),
    ("read_rows positions[i]", "int32", lambda st, s, v: st.read_rows(s, 0, [0, v])),
]

def _applies(name: str, ctype: str, v) -> bool:
    if name.endswith("first_query") and v is None:
        return False  # None is the default (at + n)
    if ctype == "int64" and v == 2**31 and not isinstance(v, bool):
        return False  # a valid int64
    if "[i]" in name and isinstance(v, bool):
        return False  # inside a list numpy reads True as 1, like any integer-valued element
    return True


STORE_CASES = [(name, call, v) for name, ctype, call in STORE_INT_ARGS for v in BAD_INTS if _applies(name, ctype, v)]
STORE_CASE_IDS = [f"{name}={vid}" for name, ctype, call in STORE_INT_ARGS for v, vid in zip(BAD_INTS, BAD_INT_IDS)
                  if _applies(name, ctype, v)]


@pytest.mark.parametrize("name,call,value", STORE_CASES, ids=STORE_CASE_IDS)
def test_store_int_arguments(store, name, call, value):
    before = store_snapshot(store)
    with pytest.raises(redknot.InvalidArgument) as info:
        call(store, store.seq, value)
    msg = str(info.value)
    if "[i]" not in name:  # a scalar argument: the message names it and its value
        arg = name.split()[-1]
        assert arg in msg, msg
        assert value_text(value) in msg, msg
    assert store_snapshot(store) == before
    still_usable(store)


@pytest.mark.parametrize("value", [v for v in BAD_FLOATS if v is not None] + [-1.0, 1e39, 1e-50],
                         ids=[i for i in BAD_FLOAT_IDS if i != "None"] + ["-1.0", "1e39", "1e-50"])
def test_run_sm_scale(store, value):  # None and 0 are the default (1/sqrt(head_dim))
    before = store_snapshot(store)
    with pytest.raises(redknot.InvalidArgument, match="sm_scale"):
        store.run(Q3, 0, sm_scale=value)
    assert store_snapshot(store) == before
    still_usable(store)


@pytest.mark.parametrize("value", [0, 0.0, np.float32(0)], ids=["0", "0.0", "np.float32(0)"])
def test_run_sm_scale_zero_is_the_default(store, value):  # as in C (rk_attention_params) and C++
    np.testing.assert_array_equal(store.run(Q3, 0, sm_scale=value), store.run(Q3, 0))
    np.testing.assert_array_equal(store.run(Q3, 0, sm_scale=value),
                                  store.run(Q3, 0, sm_scale=1 / math.sqrt(store.head_dim)))


@pytest.mark.parametrize("value", [2**31 - 1, 1025, -1])
def test_run_num_threads_out_of_range(store, value):
    # Fits the C int but would make OpenMP kill the process (or is negative): refused before any work.
    with pytest.raises(redknot.InvalidArgument, match=f"num_threads={value}"):
        store.run(Q3, 0, num_threads=value)
    still_usable(store)


@pytest.mark.parametrize("value", ["yes", None, 1, np.ones(2)], ids=["str", "None", "int", "array"])
def test_run_return_lse_must_be_bool(store, value):
    with pytest.raises(redknot.InvalidArgument, match="return_lse"):
        store.run(Q3, 0, return_lse=value)


@pytest.mark.parametrize("arr", [
    np.array([3, 4, 2**40], dtype=np.int64),
    np.array([3, 4, 2**63], dtype=np.uint64),
    np.array([3.0, 4.0, 5.0]),
    np.array(["3", "4", "5"]),
    np.array([3, 4, None], dtype=object),
    np.array([True, False, True]),
    "345",
    5,
], ids=["int64 beyond int32", "uint64", "float", "str array", "object", "bool", "str", "scalar"])
def test_positions_arrays(store, arr):
    before = store_snapshot(store)
    with pytest.raises(redknot.InvalidArgument, match="positions"):
        store.append(store.seq, 0, K3, K3, arr)
    with pytest.raises(redknot.InvalidArgument, match="q_positions"):
        store.plan([store.seq], [3], arr)
    assert store_snapshot(store) == before
    still_usable(store)


def test_default_positions_beyond_int32(store):
    # plan() without q_positions computes next_position + q_len: must not wrap around int32 (nor allocate them).
    with pytest.raises(redknot.InvalidArgument, match="q_lens"):
        store.plan([store.seq], [2**31 - 2])


@pytest.mark.parametrize("arr", [np.array(["a", "b", "c"] * 32).reshape(3, 2, 16),
                                 np.full((3, 2, 16), None, dtype=object),
                                 np.zeros((3, 2, 16), dtype="datetime64[s]")], ids=["str", "object", "datetime"])
def test_arrays_dlpack_refuses(store, arr):
    before = store_snapshot(store)
    with pytest.raises(redknot.InvalidArgument, match="k"):
        store.append(store.seq, 0, arr, K3, [3, 4, 5])
    with pytest.raises(redknot.InvalidArgument, match="q"):
        store.run(arr.reshape(3, 4, 8), 0)
    assert store_snapshot(store) == before


def test_contains_never_raises(store):
    for v in [2**70, -2**70, "x", None, 1.0, True, [1]]:
        assert v not in store
    assert store.seq in store


def test_native_store_needs_exact_metadata_arrays(store):
    # The private _Store takes only exact int32/int64 arrays (redknot.Store converts); anything else is refused.
    with pytest.raises(redknot.InvalidArgument, match="q_lens"):
        store._s.plan(np.array([store.seq]), np.array([3], dtype=np.int64), np.arange(3, dtype=np.int32))
    with pytest.raises(redknot.InvalidArgument, match="positions"):
        store._s.append(store.seq, 0, K3, K3, [3, 4, 5])


# ---- the Store constructor ---------------------------------------------------------------------------------
CTOR_ARGS = ["num_layers", "num_q_heads", "num_kv_heads", "head_dim", "num_pages", "page_size"]


@pytest.mark.parametrize("arg", CTOR_ARGS)
@pytest.mark.parametrize("value", BAD_INTS + [-1, -2**31], ids=BAD_INT_IDS + ["-1", "-2**31"])
def test_store_constructor_ints(arg, value):
    args = dict(num_layers=2, num_q_heads=4, num_kv_heads=2, head_dim=16, num_pages=8, page_size=4)
    args[arg] = value
    live = live_stores()
    head_map = redknot.HeadMap.all_global(2, 2)
    with pytest.raises(redknot.InvalidArgument) as info:
        redknot.Store(args.pop("num_layers"), args.pop("num_q_heads"), args.pop("num_kv_heads"),
                      args.pop("head_dim"), head_map=head_map, dtype="f32", **args)
    assert arg in str(info.value), str(info.value)
    assert live_stores() == live


@pytest.mark.parametrize("kwargs", [dict(dtype=None), dict(dtype=3), dict(dtype="\udc80"), dict(device=None),
                                    dict(device=3), dict(device="\udc80"), dict(head_map=b"\xff"),
                                    dict(head_map=3.5)],
                         ids=["dtype None", "dtype int", "dtype surrogate", "device None", "device int",
                              "device surrogate", "head_map bytes", "head_map float"])
def test_store_constructor_other(kwargs):
    args = dict(num_pages=8, dtype="f32")
    args.update(kwargs)
    live = live_stores()
    with pytest.raises(redknot.InvalidArgument):
        redknot.Store(2, 4, 2, 16, **args)
    assert live_stores() == live


def test_head_map_none_with_bad_shape():
    with pytest.raises(redknot.InvalidArgument, match="num_layers"):
        redknot.Store(2**40, 4, 2, 16, num_pages=8)


# ---- HeadMap -----------------------------------------------------------------------------------------------
def mixed():
    return redknot.HeadMap.from_json(json.dumps(MIXED_MAP))


HEADMAP_INT_ARGS = [
    ("all_global num_layers", "int32", lambda m, v: redknot.HeadMap.all_global(v, 2)),
    ("all_global num_kv_heads", "int32", lambda m, v: redknot.HeadMap.all_global(2, v)),
    ("uniform num_layers", "int32", lambda m, v: redknot.HeadMap.uniform(v, 2, "local", 4, 1)),
    ("uniform window", "int32", lambda m, v: redknot.HeadMap.uniform(2, 2, "local", v, 1)),
    ("uniform sink", "int32", lambda m, v: redknot.HeadMap.uniform(2, 2, "global", -1, v)),
    ("with_global_ratio num_kv_heads", "int32", lambda m, v: redknot.HeadMap.with_global_ratio(2, v, 0.5, 4, 1)),
    ("with_global_ratio window", "int32", lambda m, v: redknot.HeadMap.with_global_ratio(2, 2, 0.5, v, 1)),
    ("with_global_ratio sink", "int32", lambda m, v: redknot.HeadMap.with_global_ratio(2, 2, 0.5, 4, v)),
    ("to_json indent", "int32", lambda m, v: m.to_json(v)),
    ("policy layer", "int32", lambda m, v: m.policy(v, 0)),
    ("policy kv_head", "int32", lambda m, v: m.policy(0, v)),
    ("raw layer", "int32", lambda m, v: m.raw(v, 0)),
    ("raw kv_head", "int32", lambda m, v: m.raw(0, v)),
    ("set layer", "int32", lambda m, v: m.set(v, 0, "local", 4, 1)),
    ("set kv_head", "int32", lambda m, v: m.set(0, v, "local", 4, 1)),
    ("set window", "int32", lambda m, v: m.set(0, 0, "global", v, 1)),
    ("set sink", "int32", lambda m, v: m.set(0, 0, "local", 4, v)),
    ("set_dense_prefix_layers n", "int32", lambda m, v: m.set_dense_prefix_layers(v)),
    ("peak_sequence_pages page_size", "int32", lambda m, v: m.peak_sequence_pages(v, 100, 10)),
    ("peak_sequence_pages num_tokens", "int64", lambda m, v: m.peak_sequence_pages(4, v, 10)),
    ("peak_sequence_pages chunk", "int64", lambda m, v: m.peak_sequence_pages(4, 100, v)),
]
HEADMAP_CASES = [(n, c, v) for n, t, c in HEADMAP_INT_ARGS for v in BAD_INTS
                 if not (t == "int64" and v == 2**31 and not isinstance(v, bool))]
HEADMAP_IDS = [f"{n}={i}" for n, t, c in HEADMAP_INT_ARGS for v, i in zip(BAD_INTS, BAD_INT_IDS)
               if not (t == "int64" and v == 2**31 and not isinstance(v, bool))]


@pytest.mark.parametrize("name,call,value", HEADMAP_CASES, ids=HEADMAP_IDS)
def test_head_map_int_arguments(name, call, value):
    m = mixed()
    before = m.to_json()
    with pytest.raises(redknot.InvalidArgument) as info:
        call(m, value)
    msg = str(info.value)
    assert name.split()[-1] in msg, msg
    assert value_text(value) in msg, msg
    assert m.to_json() == before


@pytest.mark.parametrize("value", BAD_FLOATS + [-0.5, 1.5], ids=BAD_FLOAT_IDS + ["-0.5", "1.5"])
def test_with_global_ratio_ratio(value):
    with pytest.raises(redknot.InvalidArgument, match="global_ratio"):
        redknot.HeadMap.with_global_ratio(2, 2, value, 4, 1)


@pytest.mark.parametrize("value", [3, None, "\udc80", b"local"], ids=["int", "None", "surrogate", "bytes"])
def test_head_class_strings(value):
    m = mixed()
    before = m.to_json()
    with pytest.raises(redknot.InvalidArgument, match="cls"):
        m.set(0, 0, value, 4, 1)
    with pytest.raises(redknot.InvalidArgument, match="cls"):
        redknot.HeadMap.uniform(2, 2, value, 4, 1)
    assert m.to_json() == before


@pytest.mark.parametrize("text", [3, None, 1.5, "\udc80", ["{}"]], ids=["int", "None", "float", "surrogate", "list"])
def test_from_json_text_type(text):
    with pytest.raises(redknot.InvalidArgument, match="text"):
        redknot.HeadMap.from_json(text)


@pytest.mark.parametrize("field", ["num_layers", "num_kv_heads"])
@pytest.mark.parametrize("number", ["1e999", "-1e999", "1e400"])
def test_json_number_overflowing_double(field, number):
    text = json.dumps(MIXED_MAP).replace(f'"{field}": 2', f'"{field}": {number}')
    assert number in text
    with pytest.raises(redknot.InvalidArgument) as info:
        redknot.HeadMap.from_json(text)
    assert number in str(info.value) or field in str(info.value), str(info.value)


def test_json_retrieval_top_p_overflowing_double(tmp_path):
    text = json.dumps(MIXED_MAP)[:-1] + ', "retrieval_top_p": 1e999}'
    with pytest.raises(redknot.InvalidArgument):
        redknot.HeadMap.from_json(text)
    p = tmp_path / "inf.json"
    p.write_text(text)
    with pytest.raises(redknot.InvalidArgument) as info:
        redknot.HeadMap.load(p)
    assert str(p) in str(info.value)


@pytest.mark.parametrize("content", [
    b"\xff\xfe{}",
    json.dumps(MIXED_MAP).replace('"global"', '"glo\\u00e9bal"').encode().replace(b"\\u00e9", b"\xe9"),
    b'{"num_layers": 2, \x80}',
], ids=["bom-like prefix", "latin-1 byte in a string", "stray continuation byte"])
def test_load_non_utf8_file(tmp_path, content):
    p = tmp_path / "map.json"
    p.write_bytes(content)
    with pytest.raises(redknot.InvalidArgument) as info:
        redknot.HeadMap.load(p)
    assert str(p) in str(info.value), str(info.value)
    with pytest.raises(redknot.InvalidArgument):
        redknot.HeadMap.from_json(content)  # bytes are accepted as JSON text
    with pytest.raises(redknot.InvalidArgument):
        redknot.Store(2, 4, 2, 16, num_pages=8, head_map=p)


def test_load_non_utf8_file_name(tmp_path):
    import os

    name = os.fsencode(tmp_path) + b"/map-\xff.json"
    with open(name, "wb") as f:
        f.write(json.dumps(MIXED_MAP).encode())
    assert redknot.HeadMap.load(name) == mixed()  # bytes paths are passed to the OS as they are
    assert redknot.HeadMap.load(os.fsdecode(name)) == mixed()  # str with surrogate escapes too
    with pytest.raises(redknot.InvalidArgument, match="cannot be opened"):
        redknot.HeadMap.load(os.fsencode(tmp_path) + b"/missing-\xfe.json")


@pytest.mark.parametrize("path", [3, None, 1.5, ["a"], "a\0b"], ids=["int", "None", "float", "list", "nul"])
def test_load_save_path_type(path):
    with pytest.raises(redknot.InvalidArgument, match="path"):
        redknot.HeadMap.load(path)
    with pytest.raises(redknot.InvalidArgument, match="path"):
        mixed().save(path)


def test_pickle_still_round_trips():
    m = mixed()
    assert pickle.loads(pickle.dumps(m)) == m


# ---- exception classes -------------------------------------------------------------------------------------
def test_internal_error_class():
    assert issubclass(redknot.InternalError, redknot.RedknotError)
    assert issubclass(redknot.InternalError, RuntimeError)
    assert "InternalError" in redknot.__all__


# ---- the vLLM shim -----------------------------------------------------------------------------------------
@pytest.fixture
def kv():
    st = make_store(dtype="f32", num_pages=64)
    mgr = RedknotKVCacheManager(st)
    mgr.allocate("a", 16)
    return mgr


def shim_snapshot(mgr: RedknotKVCacheManager):
    st = mgr.store
    return (dict(mgr._seq), dict(mgr._reserved), st.stats(), st.sequences())


SHIM_INT_ARGS = [
    ("can_admit max_tokens", "int64", lambda m, v: m.can_admit(v)),
    ("allocate max_tokens", "int64", lambda m, v: m.allocate("b", v)),
    ("fork max_tokens", "int64", lambda m, v: m.fork("a", "b", v)),
    ("num_computed_tokens", "int32", lambda m, v: RedknotMetadataBuilder(m).build([ScheduledRequest("a", v, 1)])),
    ("num_new_tokens", "int32", lambda m, v: RedknotMetadataBuilder(m).build([ScheduledRequest("a", 0, v)])),
    ("num_heads", "int32", lambda m, v: RedknotAttentionImpl(v, 16, 0.25, 2)),
    ("head_size", "int32", lambda m, v: RedknotAttentionImpl(4, v, 0.25, 2)),
    ("num_kv_heads", "int32", lambda m, v: RedknotAttentionImpl(4, 16, 0.25, v)),
]
SHIM_CASES = [(n, c, v) for n, t, c in SHIM_INT_ARGS for v in BAD_INTS
              if not (t == "int64" and v == 2**31 and not isinstance(v, bool))]
SHIM_IDS = [f"{n}={i}" for n, t, c in SHIM_INT_ARGS for v, i in zip(BAD_INTS, BAD_INT_IDS)
            if not (t == "int64" and v == 2**31 and not isinstance(v, bool))]


@pytest.mark.parametrize("name,call,value", SHIM_CASES, ids=SHIM_IDS)
def test_vllm_shim_int_arguments(kv, name, call, value):
    if name == "num_kv_heads" and value is None:
        pytest.skip("num_kv_heads=None means num_heads")
    before = shim_snapshot(kv)
    with pytest.raises(redknot.InvalidArgument) as info:
        call(kv, value)
    assert name.split()[-1] in str(info.value), str(info.value)
    assert shim_snapshot(kv) == before


@pytest.mark.parametrize("value", BAD_FLOATS + [1.0, -0.1], ids=BAD_FLOAT_IDS + ["1.0", "-0.1"])
def test_vllm_shim_watermark(kv, value):
    with pytest.raises(redknot.InvalidArgument, match="watermark"):
        RedknotKVCacheManager(kv.store, watermark=value)


@pytest.mark.parametrize("value", BAD_FLOATS + [0.0, -1.0], ids=BAD_FLOAT_IDS + ["0.0", "-1.0"])
def test_vllm_shim_scale(value):
    with pytest.raises(redknot.InvalidArgument, match="scale"):
        RedknotAttentionImpl(4, 16, value, 2)


def test_vllm_shim_other_types(kv):
    before = shim_snapshot(kv)
    with pytest.raises(redknot.InvalidArgument, match="store"):
        RedknotKVCacheManager("not a store")
    with pytest.raises(redknot.InvalidArgument, match="request_id"):
        kv.allocate(["unhashable"], 16)
    with pytest.raises(redknot.InvalidArgument, match="child_id"):
        kv.fork("a", ["unhashable"], 16)
    with pytest.raises(redknot.NotFound):
        kv.fork("missing", "c", 16)
    with pytest.raises(redknot.InvalidArgument, match="request_id"):
        kv.free(["unhashable"])
    assert ["unhashable"] not in kv
    with pytest.raises(redknot.InvalidArgument, match="scheduled"):
        RedknotMetadataBuilder(kv).build(5)
    with pytest.raises(redknot.InvalidArgument, match="scheduled"):
        RedknotMetadataBuilder(kv).build([("a", 0, 1)])
    with pytest.raises(redknot.InvalidArgument, match="kv_manager"):
        RedknotMetadataBuilder(kv.store)
    with pytest.raises(redknot.InvalidArgument, match="num_computed_tokens"):
        RedknotMetadataBuilder(kv).build([ScheduledRequest("a", 2**31 - 1, 4)])
    assert shim_snapshot(kv) == before


def test_vllm_shim_forward_bad_input(kv):
    st = kv.store
    meta = RedknotMetadataBuilder(kv).build([ScheduledRequest("a", 0, 3)])
    impl = RedknotAttentionImpl(4, 16, 0.25, 2)
    q = np.ones((3, 64), F)
    k = np.ones((3, 32), F)
    before = shim_snapshot(kv)
    for layer in BAD_INTS + [2, -1]:
        with pytest.raises(redknot.InvalidArgument, match="layer"):
            impl.forward(layer, q, k, k, st, meta)
    bad = [
        dict(query=np.ones((2, 64), F)),
        dict(key=np.ones((3, 31), F)),
        dict(value="not an array"),
        dict(kv_cache="not a store"),
        dict(attn_metadata=None),
        dict(output=np.ones((3, 63), F)),
    ]
    for b in bad:
        args = dict(layer=0, query=q, key=k, value=k, kv_cache=st, attn_metadata=meta)
        args.update(b)
        with pytest.raises(redknot.InvalidArgument):
            impl.forward(**args)
    assert shim_snapshot(kv) == before
    out = impl.forward(0, q, k, k, st, meta)
    assert out.shape == q.shape and np.isfinite(out).all()
    assert isinstance(meta, RedknotAttentionMetadata) and not math.isnan(float(out.sum()))


# ---- tiers: every new entry point, fed arguments of the wrong type or value ----------------------------------


@pytest.fixture
def tiered(store, tmp_path):
    """The store fixture plus two tiers, a swap ticket of a second sequence and a tiered chunk cache."""
    store.hot = redknot.HostTier(1 << 20)
    store.disk = redknot.DiskTier(tmp_path / "cold", 1 << 22)
    victim = store.create_sequence()
    for layer in range(2):
        store.append(victim, layer, K3, K3, [0, 1, 2])
    store.ticket = store.swap_out(victim, store.hot, store.disk, model_id="m", name="victim")
    store.cache = store.chunk_tiers([store.hot, store.disk], "m")
    return store


def tier_snapshot(st):
    return (store_snapshot(st), st.hot.stats()["objects"], st.disk.stats()["objects"], st.ticket.used,
            st.cache.stats())


TIER_INT_ARGS = [
    ("HostTier capacity_bytes", "int64", lambda st, v: redknot.HostTier(v)),
    ("DiskTier capacity_bytes", "int64", lambda st, v: redknot.DiskTier(st.disk.path, v)),
    ("TierPrefetcher threads", "int32", lambda st, v: redknot.TierPrefetcher(v)),
    ("swap_out seq", "int64", lambda st, v: st.swap_out(v, st.hot, st.disk, model_id="m", name="n")),
    ("chunk_tiers min_splices", "int64", lambda st, v: st.chunk_tiers([st.hot], "m", min_splices=v)),
    ("make_room pages", "int64", lambda st, v: st.cache.make_room(v)),
]
TIER_INT_CASES = [(name, call, v) for name, ctype, call in TIER_INT_ARGS for v in BAD_INTS
                  if _applies(name, ctype, v)]
TIER_INT_IDS = [f"{name}={vid}" for name, ctype, call in TIER_INT_ARGS for v, vid in zip(BAD_INTS, BAD_INT_IDS)
                if _applies(name, ctype, v)]


@pytest.mark.parametrize("name,call,value", TIER_INT_CASES, ids=TIER_INT_IDS)
def test_tier_int_arguments(tiered, name, call, value):
    before = tier_snapshot(tiered)
    with pytest.raises(redknot.InvalidArgument) as info:
        call(tiered, value)
    msg = str(info.value)
    assert name.split()[-1] in msg, msg
    assert value_text(value) in msg, msg
    assert tier_snapshot(tiered) == before
    still_usable(tiered)


NOT_A_TIER = [None, "tier", 3, [1], np.ones(2)]
NOT_A_TIER_IDS = ["None", "str", "int", "list", "array"]
BAD_NAMES = [None, 3, b"x", "", ".hidden", "../x", "a/b", "a b", "a\0b", "\udc80", "x" * 300]
BAD_NAME_IDS = ["None", "int", "bytes", "empty", "dot", "dotdot", "slash", "space", "nul", "surrogate", "long"]

TIER_OTHER_CASES = [
    # (id, call(st, v), values, match)
    ("HostTier capacity_bytes<0", lambda st, v: redknot.HostTier(v), [-1, -2**63], "capacity_bytes"),
    ("DiskTier capacity_bytes<0", lambda st, v: redknot.DiskTier(st.disk.path, v), [-1], "capacity_bytes"),
    ("DiskTier path", lambda st, v: redknot.DiskTier(v, 100), [None, 3, 1.5, ["a"], "a\0b", ""], "path"),
    ("DiskTier create", lambda st, v: redknot.DiskTier(st.disk.path, 100, create=v), [None, 1, "yes"], "create"),
    ("DiskTier fsync", lambda st, v: redknot.DiskTier(st.disk.path, 100, fsync=v), [None, 0, "no"], "fsync"),
    ("TierPrefetcher threads range", lambda st, v: redknot.TierPrefetcher(v), [0, -1, 65], "threads"),
    ("swap_out hot", lambda st, v: st.swap_out(st.seq, v, st.disk, model_id="m", name="n"), NOT_A_TIER, "hot"),
    ("swap_out cold", lambda st, v: st.swap_out(st.seq, st.hot, v, model_id="m", name="n"), NOT_A_TIER[1:],
     "cold"),
    ("swap_out model_id", lambda st, v: st.swap_out(st.seq, st.hot, model_id=v, name="n"), [None, 3, b"m"],
     "model_id"),
    ("swap_out name", lambda st, v: st.swap_out(st.seq, st.hot, st.disk, model_id="m", name=v), BAD_NAMES,
     "name"),
    ("swap_in ticket", lambda st, v: st.swap_in(v, st.hot, st.disk), [None, "t", 3, object()],
     "ticket"),
    ("swap_in hot", lambda st, v: st.swap_in(st.ticket, v, st.disk), NOT_A_TIER, "hot"),
    ("swap_in cold", lambda st, v: st.swap_in(st.ticket, st.hot, v), NOT_A_TIER[1:], "cold"),
    ("swap_in prefetcher", lambda st, v: st.swap_in(st.ticket, st.hot, st.disk, prefetcher=v), ["p", 3, [1]],
     "prefetcher"),
    ("discard hot", lambda st, v: st.ticket.discard(v, st.disk), NOT_A_TIER, "hot"),
    ("chunk_tiers tiers", lambda st, v: st.chunk_tiers(v, "m"), [None, "tiers", 3, [], [None], ["x"]], "tier"),
    ("chunk_tiers model_id", lambda st, v: st.chunk_tiers([st.hot], v), [None, 3], "model_id"),
    ("chunk_tiers min_splices<0", lambda st, v: st.chunk_tiers([st.hot], "m", min_splices=v), [-1], "min_splices"),
    ("chunk_tiers prefetcher", lambda st, v: st.chunk_tiers([st.hot], "m", prefetcher=v), ["p", 3], "prefetcher"),
    ("cache demote key", lambda st, v: st.cache.demote(v), [None, "k", b"short", 3], "key"),
    ("cache lookup key", lambda st, v: st.cache.lookup(v), [None, "k", b"short", 3], "key"),
    ("cache prefetch key", lambda st, v: st.cache.prefetch(v), [None, "k", b"x" * 17], "key"),
    ("cache in_tiers key", lambda st, v: st.cache.in_tiers(v), [None, b""], "key"),
    ("tier put name", lambda st, v: st.hot.put(v, b"data"), BAD_NAMES, "name"),
    ("tier put data", lambda st, v: st.hot.put("ok", v), [None, "str", 3, [1, 2]], "data"),
    ("tier get name", lambda st, v: st.disk.get(v), BAD_NAMES, "name"),
    ("tier remove name", lambda st, v: st.disk.remove(v), BAD_NAMES, "name"),
    ("tier contains name", lambda st, v: st.hot.contains(v), BAD_NAMES, "name"),
    ("path_of name", lambda st, v: st.disk.path_of(v), BAD_NAMES, "name"),
]
TIER_OTHER = [(call, v, match) for _, call, values, match in TIER_OTHER_CASES for v in values]
TIER_OTHER_IDS = [f"{name}[{i}]" for name, _, values, _ in TIER_OTHER_CASES for i in range(len(values))]


@pytest.mark.parametrize("call,value,match", TIER_OTHER, ids=TIER_OTHER_IDS)
def test_tier_other_arguments(tiered, call, value, match):
    before = tier_snapshot(tiered)
    with pytest.raises(redknot.InvalidArgument, match=match):
        call(tiered, value)
    assert tier_snapshot(tiered) == before
    still_usable(tiered)


def test_tier_calls_on_a_closed_store(tiered):
    tiered.close()
    with pytest.raises(redknot.InvalidArgument, match="closed"):
        tiered.swap_in(tiered.ticket, tiered.hot, tiered.disk)
    assert tiered.cache.lookup(tiered.key) == 2  # the cache holds the native store

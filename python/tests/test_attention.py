"""Store.run against the numpy oracle: dtypes, shapes, head maps, chunked prefill, decode, fork, layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest

import redknot
from conftest import MIXED_MAP, TOL, TOL_F32_OUT, Shadow, live_stores, make_store, np_dtype, torch_or_skip


def head_map_of(kind: str, layers: int, hk: int) -> redknot.HeadMap:
    if kind == "mixed":
        if hk == 2 and layers == 2:
            return redknot.HeadMap.from_json(json.dumps(MIXED_MAP))
        return redknot.HeadMap.with_global_ratio(layers, hk, 0.5, 6, 3)
    if kind == "global":
        return redknot.HeadMap.all_global(layers, hk)
    if kind == "local":
        return redknot.HeadMap.uniform(layers, hk, "local", window=5, sink=2)
    m = redknot.HeadMap.uniform(layers, hk, "local", window=4, sink=0)
    m.set_dense_prefix_layers(1)
    return m


# (q_len of a, q_len of b) per step; from step 3 on a fork of b decodes too.
STEPS = [(7, 3), (5, 1), (1, 9), (1, 1), (1, 1), (13, 1), (1, 1)]


def run_schedule(sh: Shadow, q_dtype_of_layer, tol_of_layer):
    st = sh.store
    a, b = sh.create(), sh.create()
    seqs = [a, b]
    nxt = {a: 0, b: 0}
    for step, (na, nb) in enumerate(STEPS):
        if step == 3:
            c = sh.fork(b)
            seqs.append(c)
            nxt[c] = nxt[b]
        lens = [na, nb] + [1] * (len(seqs) - 2)
        qpos = np.concatenate([np.arange(nxt[s], nxt[s] + n) for s, n in zip(seqs, lens)]).astype(np.int32)
        st.plan(seqs, lens, qpos)
        for layer in range(st.num_layers):
            row = 0
            for s, n in zip(seqs, lens):
                sh.append(s, layer, qpos[row:row + n])
                row += n
            q = sh.random(len(qpos), st.num_q_heads, st.head_dim, dtype=q_dtype_of_layer(layer))
            out, lse = st.run(q, layer, return_lse=True)
            assert out.dtype == q.dtype and out.shape == q.shape
            ref, ref_lse = sh.expected(seqs, lens, qpos, layer, q)
            np.testing.assert_allclose(out.astype(np.float64), ref, atol=tol_of_layer(layer), rtol=0)
            np.testing.assert_allclose(lse, ref_lse, atol=5e-4, rtol=0)
        for s, n in zip(seqs, lens):
            nxt[s] += n
    for s in seqs:
        sh.free(s)
    assert st.stats()["pages_in_use"] == 0


@pytest.mark.parametrize("dtype", ["f32", "f16", "bf16"])
@pytest.mark.parametrize("page_size", [1, 4, 16])
@pytest.mark.parametrize("hq,hk,d", [(4, 2, 16), (2, 2, 8), (8, 2, 32), (3, 1, 8)])
@pytest.mark.parametrize("kind", ["mixed", "global", "local", "dense_prefix"])
def test_prefill_decode_fork_match_oracle(dtype, page_size, hq, hk, d, kind):
    hm = head_map_of(kind, 2, hk)
    st = make_store(hm, dtype=dtype, page_size=page_size, hq=hq, hk=hk, d=d)
    sh = Shadow(st, hm, seed=page_size * 31 + hq)
    # Even layers: queries in f32 (out f32); odd layers: in the store dtype where numpy has it.
    q_dtype = lambda layer: np.float32 if layer % 2 == 0 else np_dtype(dtype)  # noqa: E731
    tol = lambda layer: TOL_F32_OUT[dtype] if q_dtype(layer) == np.float32 else TOL[dtype]  # noqa: E731
    run_schedule(sh, q_dtype, tol)


def test_float32_kv_is_converted_for_half_stores():
    for dtype in ["f16", "bf16"]:
        st = make_store(dtype=dtype)
        sh = Shadow(st, st.head_map, seed=3)
        s = sh.create()
        st.plan([s], [6], np.arange(6))
        for layer in range(2):
            sh.append(s, layer, np.arange(6), kv_dtype=np.float32)  # converted by the store (shadow rounds too)
            q = sh.random(6, 4, 16)
            out = st.run(q, layer)
            ref, _ = sh.expected([s], [6], np.arange(6), layer, q)
            np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)


def test_strided_inputs_out_and_2d_layouts():
    st = make_store(dtype="f32", hq=4, hk=2, d=16)
    sh = Shadow(st, st.head_map, seed=5)
    s = sh.create()
    n = 9
    # A fused projection [n, q + k + v]: k and v are strided views into it, as in an engine.
    qkv = sh.random(n, (4 + 2 + 2) * 16)
    q = qkv[:, :64].reshape(n, 4, 16)
    k = qkv[:, 64:96].reshape(n, 2, 16)
    v = qkv[:, 96:].reshape(n, 2, 16)
    assert not k.flags.c_contiguous
    st.plan([s], [n], np.arange(n))
    st.append(s, 0, k, v, np.arange(n))
    sh.kv[(s, 0)] = (list(k.astype(np.float64)), list(v.astype(np.float64)), list(range(n)))
    ref, ref_lse = sh.expected([s], [n], np.arange(n), 0, q)

    out_t = np.zeros((4, n, 16), np.float32).transpose(1, 0, 2)  # non-contiguous out
    lse_t = np.zeros((4, n), np.float32).T  # non-contiguous lse
    got = st.run(q, 0, out=out_t, lse=lse_t)
    assert got is out_t
    np.testing.assert_allclose(out_t, ref, atol=2e-5, rtol=0)
    np.testing.assert_allclose(lse_t, ref_lse, atol=1e-4, rtol=0)

    out2 = st.run(np.ascontiguousarray(q).reshape(n, 64), 0)  # 2-D q: [total_q, Hq * D]
    assert out2.shape == (n, 64)
    np.testing.assert_allclose(out2.reshape(n, 4, 16), ref, atol=2e-5, rtol=0)


def test_plan_defaults_and_append_defaults():
    st = make_store(dtype="f32")
    sh = Shadow(st, st.head_map)
    s = sh.create()
    st.plan([s], [5])  # positions default to the next 5 of layer 0
    for layer in range(2):
        k = sh.random(5, 2, 16)
        st.append(s, layer, k, k)  # positions default to the next 5 of (s, layer)
        assert st.next_position(s, layer) == 5
        st.run(sh.random(5, 4, 16), layer)
    st.plan([s], [1])
    assert st._s.planned_queries() == 1
    st.append(s, 0, sh.random(1, 2, 16), sh.random(1, 2, 16))
    assert st.next_position(s, 0) == 6


def test_sm_scale_and_threads():
    st = make_store(dtype="f32")
    sh = Shadow(st, st.head_map)
    s = sh.create()
    st.plan([s], [4], np.arange(4))
    sh.append(s, 0, np.arange(4))
    q = sh.random(4, 4, 16)
    out = st.run(q, 0, sm_scale=0.05, num_threads=1)
    ref, _ = sh.expected([s], [4], np.arange(4), 0, q, scale=0.05)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)


def test_local_heads_drop_pages_and_retire_queries():
    hm = redknot.HeadMap.uniform(1, 2, "local", window=4, sink=0)
    st = redknot.Store(1, 2, 2, 8, num_pages=64, head_map=hm, dtype="f32", page_size=4)
    s = st.create_sequence()
    x = np.ones((1, 2, 8), np.float32)
    for p in range(40):
        st.append(s, 0, x, x, [p])
    # A local head keeps at most window/page_size + 1 pages (page-granular eviction).
    assert st.sequence_stats(s)["pages_local"] <= 2 * (4 // 4 + 1)
    used = st.stats()["pages_in_use"]
    st.retire_queries(s, 40)
    assert st.stats()["pages_in_use"] <= used
    assert st.query_floor(s, 0) == 40


def test_page_tables_and_flashinfer_csr():
    hm = redknot.HeadMap.from_json(json.dumps({
        "num_layers": 1, "num_kv_heads": 2,
        "kv_head_classification": [["global", "local"]],
        "kv_head_max_distance": [[-1, 5]],
        "kv_head_sink_size": [[0, 4]],
    }))
    st = redknot.Store(1, 2, 2, 8, num_pages=64, head_map=hm, dtype="f32", page_size=4)
    a, b = st.create_sequence(), st.create_sequence()
    x = np.ones((10, 2, 8), np.float32)
    st.append(a, 0, x, x, np.arange(10))
    st.append(b, 0, x[:3], x[:3], np.arange(3))
    csr = st.export_page_table(0, [a, b])
    assert csr.indptr.dtype == np.int32 and csr.indices.dtype == np.int32
    assert csr.indptr.tolist() == [0, 3, 6, 7, 8]
    assert csr.last_page_len.tolist() == [2, 2, 3, 3]
    for r, (seq, h) in enumerate([(a, 0), (a, 1), (b, 0), (b, 1)]):
        entries = st.page_table(seq, 0, h)
        assert csr.indices[csr.indptr[r]:csr.indptr[r + 1]].tolist() == [e.page_id for e in entries]
        assert csr.page_pos0[csr.indptr[r]:csr.indptr[r + 1]].tolist() == [e.pos0 for e in entries]
    # Decoding evicts the local head's middle pages: the row keeps its (full) sink page and its window.
    for p in range(10, 24):
        st.append(a, 0, x[:1], x[:1], [p])
    csr = st.export_page_table(0, [a])
    local = csr.page_pos0[csr.indptr[1]:csr.indptr[2]].tolist()
    assert local[0] == 0 and local[-1] == 20 and len(local) == 3


def test_torch_cpu_tensors_zero_copy():
    torch = torch_or_skip()
    st = make_store(dtype="bf16")
    s = st.create_sequence()
    st.plan([s], [6], list(range(6)))
    k = torch.randn(6, 2, 16, dtype=torch.bfloat16)
    st.append(s, 0, k, k, list(range(6)))
    q = torch.randn(6, 4, 16, dtype=torch.bfloat16)
    out, lse = st.run(q, 0, return_lse=True)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    out32 = st.run(q.float(), 0)
    assert torch.allclose(out.float(), out32, atol=2e-2)


def test_torch_cuda_tensors_fail_cleanly():
    torch = torch_or_skip(cuda=True)
    with pytest.raises(redknot.Unavailable, match="cuda"):
        redknot.Store(2, 4, 2, 16, num_pages=8, device="cuda")
    st = make_store(dtype="f32")
    s = st.create_sequence()
    k = torch.randn(3, 2, 16, device="cuda")
    with pytest.raises(ValueError, match="k is on device cuda:0"):
        st.append(s, 0, k, k, [0, 1, 2])
    assert st.stats()["pages_in_use"] == 0


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_kv_pool_view_with_csr_is_what_flashinfer_reads(dtype):
    # Sinks that are multiples of page_size keep every row expressible after eviction.
    hm = redknot.HeadMap.from_json(json.dumps({
        "num_layers": 1, "num_kv_heads": 3,
        "kv_head_classification": [["global", "local", "local"]],
        "kv_head_max_distance": [[-1, 6, 3]],
        "kv_head_sink_size": [[0, 4, 0]],
    }))
    st = redknot.Store(1, 3, 3, 8, num_pages=128, head_map=hm, dtype=dtype, page_size=4)
    rng = np.random.default_rng(0)
    dt = np_dtype(dtype)
    seqs, shadow = [], {}
    for n_prefill, n_decode in [(10, 9), (3, 2), (17, 0)]:
        s = st.create_sequence()
        seqs.append(s)
        k = rng.uniform(-1, 1, (n_prefill + n_decode, 3, 8)).astype(dt)
        v = rng.uniform(-1, 1, (n_prefill + n_decode, 3, 8)).astype(dt)
        st.append(s, 0, k[:n_prefill], v[:n_prefill], np.arange(n_prefill))
        for p in range(n_prefill, n_prefill + n_decode):
            st.append(s, 0, k[p:p + 1], v[p:p + 1], [p])
        shadow[s] = (k, v)
    pool = np.from_dlpack(st.kv_pool())
    assert pool.shape == (128, 2, 4, 8) and pool.dtype == dt
    csr = st.export_page_table(0, seqs)
    for i, s in enumerate(seqs):
        k, v = shadow[s]
        for h in range(3):
            r = i * 3 + h
            pages = csr.indices[csr.indptr[r]:csr.indptr[r + 1]]
            for j, (page, pos0) in enumerate(zip(pages, csr.page_pos0[csr.indptr[r]:csr.indptr[r + 1]])):
                used = csr.last_page_len[r] if j == len(pages) - 1 else 4
                np.testing.assert_array_equal(pool[page, 0, :used], k[pos0:pos0 + used, h])
                np.testing.assert_array_equal(pool[page, 1, :used], v[pos0:pos0 + used, h])
    # The view keeps the store alive.
    base = live_stores()
    del st
    assert live_stores() == base
    del pool
    import gc

    gc.collect()
    assert live_stores() == base - 1

"""Chunk reuse from Python: register, splice at any offset (zero copy, queries counter-rotated), relocate,
overwrite (copy-on-write), read_rows, recompute selection -- against the numpy oracle over keys rotated at
their true positions, and bad input that leaves the store and the chunk registry unchanged."""

from __future__ import annotations

import json

import numpy as np
import pytest

import redknot
from conftest import MIXED_MAP, reference_attention

HQ, HK, D = 4, 2, 16


def np_rope(x: np.ndarray, pos: np.ndarray, cfg: redknot.RopeConfig) -> np.ndarray:
    """x [n, H, D] rotated for positions pos (float64), default or linear scaling (the oracle's RoPE)."""
    r = cfg.rotary_dim or x.shape[-1]
    inv = cfg.theta ** (-(2.0 * np.arange(r // 2)) / r)
    if cfg.scaling == "linear":
        inv = inv / cfg.factor
    ang = np.asarray(pos, np.float64)[:, None] * inv[None, :]  # [n, r/2]
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    y = np.array(x, dtype=np.float64)
    if cfg.pairing == "rotate_half":
        a, b = np.arange(r // 2), np.arange(r // 2) + r // 2
    else:
        a, b = 2 * np.arange(r // 2), 2 * np.arange(r // 2) + 1
    xa, xb = y[..., a].copy(), y[..., b].copy()
    y[..., a] = xa * c - xb * s
    y[..., b] = xa * s + xb * c
    return y


def mixed_map() -> redknot.HeadMap:
    return redknot.HeadMap.from_json(json.dumps(MIXED_MAP))


def rope_store(cfg, num_pages=256, page_size=4, head_map=None):
    return redknot.Store(2, HQ, HK, D, num_pages=num_pages, head_map=head_map or mixed_map(), dtype="f32",
                         page_size=page_size, rope=cfg)


class World:
    """Raw (unrotated) K, V of a prefix, a chunk and a question, and the store built from them."""

    def __init__(self, st: redknot.Store, cfg: redknot.RopeConfig, at: int, n_chunk=13, n_prefix=5, n_q=3,
                 seed=0):
        rng = np.random.default_rng(seed)
        self.st, self.cfg, self.at = st, cfg, at
        self.n = n_chunk
        self.raw = {name: (rng.uniform(-1, 1, (m, HK, D)), rng.uniform(-1, 1, (m, HK, D)))
                    for name, m in (("prefix", n_prefix), ("chunk", n_chunk), ("question", n_q))}
        self.pos = {"prefix": np.arange(n_prefix), "chunk": at + np.arange(n_chunk),
                    "question": at + n_chunk + np.arange(n_q)}
        self.q = rng.uniform(-1, 1, (n_q, HQ, D))

    def rotated(self, name, pos=None):
        k, v = self.raw[name]
        return np_rope(k, self.pos[name] if pos is None else pos, self.cfg).astype(np.float32), v.astype(np.float32)

    def register(self, model="m") -> bytes:
        key = self.st.chunk_key(model, np.arange(self.n) + 100)
        c = self.st.create_sequence()
        k, v = self.rotated("chunk", np.arange(self.n))  # computed alone at 0..n-1
        for layer in range(2):
            self.st.append(c, layer, k, v, np.arange(self.n))
        self.st.register_chunk(key, c)
        return key

    def request(self, key, mode="splice") -> int:
        s = self.st.create_sequence()
        k, v = self.rotated("prefix")
        for layer in range(2):
            self.st.append(s, layer, k, v, self.pos["prefix"])
        getattr(self.st, mode)(s, key, self.at)
        k, v = self.rotated("question")
        for layer in range(2):
            self.st.append(s, layer, k, v, self.pos["question"])
        return s

    def attend(self, s, layer):
        qpos = self.pos["question"]
        self.st.plan([s], [len(qpos)], qpos)
        q = np_rope(self.q.reshape(len(qpos), HQ, D), qpos, self.cfg).astype(np.float32)
        return self.st.run(q, layer), q

    def oracle(self, q, layer):
        parts = [self.rotated(n) for n in ("prefix", "chunk", "question")]
        K = np.concatenate([p[0] for p in parts]).astype(np.float64)
        V = np.concatenate([p[1] for p in parts]).astype(np.float64)
        P = np.concatenate([self.pos[n] for n in ("prefix", "chunk", "question")])
        out, _ = reference_attention(self.st.head_map, layer, K, V, P, q.astype(np.float64),
                                     self.pos["question"], 1.0 / np.sqrt(D))
        return out


def close(a, b, tol):
    err = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    assert np.isfinite(err).all() and err.max() <= tol, f"max error {np.nanmax(err)} (tol {tol})"


CONFIGS = [
    redknot.RopeConfig(),
    redknot.RopeConfig(pairing="interleaved", theta=500000.0),
    redknot.RopeConfig(rotary_dim=8),
    redknot.RopeConfig(scaling="linear", factor=4.0, pairing="interleaved", rotary_dim=12),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=["half", "interleaved", "partial", "linear"])
@pytest.mark.parametrize("at", [5, 7, 100_003])
def test_splice_and_relocate_match_the_oracle(cfg, at):
    st = rope_store(cfg)
    w = World(st, cfg, at)
    key = w.register()
    spliced, relocated = w.request(key, "splice"), w.request(key, "relocate")
    for layer in range(2):
        out_s, q = w.attend(spliced, layer)
        out_r, _ = w.attend(relocated, layer)
        ref = w.oracle(q, layer)
        close(out_s, ref, 2e-4)
        close(out_r, ref, 2e-4)


def test_splice_shares_pages_and_read_rows_rotates():
    cfg = redknot.RopeConfig()
    st = rope_store(cfg, head_map=redknot.HeadMap.all_global(2, HK))
    w = World(st, cfg, at=9, n_prefix=0, n_q=0)
    key = w.register()
    used = st.stats()["pages_in_use"]
    seqs = []
    for at in (0, 9, 23, 1000):  # one document at four offsets: one copy of its pages
        s = st.create_sequence()
        st.splice(s, key, at)
        seqs.append(s)
        k, v = st.read_rows(s, 1, at + np.arange(w.n))
        ek, ev = w.rotated("chunk", at + np.arange(w.n))
        close(k, ek, 1e-5)
        close(v, ev, 0)
    assert st.stats()["pages_in_use"] == used
    cs = st.chunk_stats()
    assert (cs["chunks"], cs["chunks_in_use"], cs["splices"]) == (1, 1, 4)
    with pytest.raises(redknot.InvalidArgument, match="spliced into 4 live"):
        st.drop_chunk(key)
    for s in seqs:
        st.free(s)
    assert st.drop_chunk(key) is True
    assert st.drop_chunk(key) is False
    assert st.stats()["pages_in_use"] == 0


def test_overwrite_is_copy_on_write():
    cfg = redknot.RopeConfig()
    st = rope_store(cfg, head_map=redknot.HeadMap.all_global(2, HK))
    w = World(st, cfg, at=4, n_prefix=0, n_q=0)
    key = w.register()
    a, b = st.create_sequence(), st.create_sequence()
    st.splice(a, key, 4, first_query=6)
    st.splice(b, key, 4)
    pos = np.array([6, 8], np.int32)
    fresh = np.full((2, HK, D), 0.5, np.float32)
    st.overwrite(a, 0, fresh, fresh, pos)
    ka, va = st.read_rows(a, 0, pos)
    close(ka, fresh, 1e-6)  # stored in the page's rotation frame, read back rotated
    close(va, fresh, 0)
    kb, vb = st.read_rows(b, 0, pos)  # the other sequence and the chunk keep the cached rows
    close(kb, np_rope(w.raw["chunk"][0][[2, 4]], pos, cfg), 1e-5)
    close(vb, w.raw["chunk"][1][[2, 4]], 1e-6)
    st.free(a)
    st.free(b)
    c = st.create_sequence()
    st.splice(c, key, 0)
    _, vc = st.read_rows(c, 0, np.array([2, 4]))
    close(vc, w.raw["chunk"][1][[2, 4]], 1e-6)


def test_local_heads_read_nan_where_they_hold_nothing():
    cfg = redknot.RopeConfig()
    st = rope_store(cfg)
    w = World(st, cfg, at=0, n_chunk=40, n_prefix=0, n_q=0)
    key = w.register()
    s = st.create_sequence()
    st.splice(s, key, 0)
    k, _ = st.read_rows(s, 0, np.arange(40))
    # layer 0: head 0 global (every row), head 1 local (sink 3, window 7: the middle rows are gone)
    assert np.isfinite(k[:, 0]).all()
    assert np.isnan(k[10, 1]).all() and np.isfinite(k[:3, 1]).all() and np.isfinite(k[-1, 1]).all()


def test_lookup_keys_and_stats():
    st = rope_store(redknot.RopeConfig())
    w = World(st, redknot.RopeConfig(), at=0)
    key = w.register()
    assert isinstance(key, bytes) and len(key) == 16
    assert st.lookup_chunk(key) == w.n
    assert st.lookup_chunk(st.chunk_key("other model", np.arange(w.n) + 100)) is None
    assert st.chunk_key("m", [1, 2]) != st.chunk_key("m", [2, 1])
    other = redknot.Store(2, HQ, HK, D, num_pages=8, head_map=redknot.HeadMap.all_global(2, HK), dtype="f32")
    assert other.chunk_key("m", [1, 2]) != st.chunk_key("m", [1, 2])  # another head map
    other_dtype = redknot.Store(2, HQ, HK, D, num_pages=8, head_map=mixed_map(), dtype="bf16")
    assert other_dtype.chunk_key("m", [1, 2]) != st.chunk_key("m", [1, 2])
    cs = st.chunk_stats()
    assert (cs["hits"], cs["misses"]) == (1, 1)
    assert st.rope == redknot.RopeConfig()


def snapshot(st: redknot.Store):
    return (st.stats(), st.chunk_stats(),
            {s: [[st.page_table(s, l, h) for h in range(HK)] for l in range(2)] for s in st.sequences()})


def test_bad_input_changes_nothing():
    cfg = redknot.RopeConfig()
    st = rope_store(cfg, num_pages=64)
    w = World(st, cfg, at=5)
    key = w.register()
    s = w.request(key)
    freed = st.create_sequence()
    st.free(freed)
    unknown = st.chunk_key("never registered", [1])
    before = snapshot(st)
    cases = [
        (redknot.NotFound, lambda: st.splice(freed, key, 0)),
        (redknot.InvalidArgument, lambda: st.splice(s, key, 3)),  # overlaps the sequence's positions
        (redknot.NotFound, lambda: st.splice(s, unknown, 100)),
        (redknot.NotFound, lambda: st.relocate(s, unknown, 100)),
        (redknot.InvalidArgument, lambda: st.splice(s, b"short", 100)),
        (redknot.InvalidArgument, lambda: st.splice(s, "0" * 32, 100)),
        (redknot.InvalidArgument, lambda: st.register_chunk(key, s)),  # already registered
        (redknot.InvalidArgument, lambda: st.drop_chunk(key)),  # in use
        (redknot.InvalidArgument, lambda: st.overwrite(s, 0, np.zeros((1, HK, D), np.float32),
                                                       np.zeros((1, HK, D), np.float32), [10_000])),
        (redknot.InvalidArgument, lambda: st.read_rows(s, 7, [0])),
        (redknot.PoolExhausted, lambda: [st.relocate(st.create_sequence(), key, 0) for _ in range(10)]),
    ]
    for exc, call in cases:
        with pytest.raises(exc):
            call()
        for extra in set(st.sequences()) - set(before[2]):  # sequences the PoolExhausted case created
            st.free(extra)
        assert snapshot(st) == before, call
    # a store without a RoPE spec splices only at the chunk's own positions
    plain = redknot.Store(2, HQ, HK, D, num_pages=64, head_map=mixed_map(), dtype="f32", page_size=4)
    w2 = World(plain, cfg, at=0)
    key2 = w2.register()
    t = plain.create_sequence()
    with pytest.raises(redknot.InvalidArgument, match="RopeConfig"):
        plain.splice(t, key2, 8)
    plain.splice(t, key2, 0)


@pytest.mark.parametrize("rope,match", [
    ({"theta": 0.5}, "theta"),
    ({"pairing": "sideways"}, "pairing"),
    ({"scaling": "ntk"}, "scaling"),
    ({"rotary_dim": 7}, "rotary_dim"),
    ({"rotary_dim": 64}, "rotary_dim"),
    ({"factor": -1.0, "scaling": "linear"}, "factor"),
    ({"theta": float("nan")}, "theta"),
    ({"colour": 1}, "colour"),
    ({"theta": "big"}, "theta"),
    ("llama", "RopeConfig"),
])
def test_bad_rope_configs(rope, match):
    with pytest.raises(redknot.InvalidArgument, match=match):
        rope_store(rope)


def test_rope_from_hf():
    cfg = redknot.RopeConfig.from_hf({"rope_theta": 500000.0, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}})
    assert (cfg.scaling, cfg.factor, cfg.theta, cfg.original_max_position) == ("llama3", 8.0, 500000.0, 8192)
    assert redknot.RopeConfig.from_hf({"partial_rotary_factor": 0.5, "head_dim": 64}).rotary_dim == 32
    st = rope_store(cfg)
    assert st.rope == cfg
    with pytest.raises(redknot.InvalidArgument, match="dynamic"):
        redknot.RopeConfig.from_hf({"rope_scaling": {"type": "dynamic", "factor": 2.0}})


def test_select_recompute_strategies():
    n = 10
    dev = np.zeros((n, 2), np.float32)
    dev[7, 0], dev[2, 1], dev[5, 1] = 5.0, 9.0, 8.0  # head 1 is local
    assert redknot.select_recompute("none", n).tolist() == []
    assert redknot.select_recompute("first_k", n, first_k=3).tolist() == [0, 1, 2]
    assert redknot.select_recompute("deviation_topk", n, ratio=0.2, deviation=dev).tolist() == [2, 5]
    assert redknot.select_recompute("global_deviation_topk", n, ratio=0.1, first_k=1, deviation=dev,
                                    head_is_local=[False, True]).tolist() == [0, 7]
    qa = np.arange(n, dtype=np.float32)
    assert redknot.select_recompute("query_topk", n, ratio=0.3, query_attention=qa).tolist() == [7, 8, 9]
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(redknot.InvalidArgument, match="ratio"):
            redknot.select_recompute("deviation_topk", n, ratio=bad, deviation=dev)
    with pytest.raises(redknot.InvalidArgument, match="strategy"):
        redknot.select_recompute("cacheblend", n)
    with pytest.raises(redknot.InvalidArgument, match="deviation"):
        redknot.select_recompute("deviation_topk", n, deviation=np.zeros((3, 2), np.float32))
    with pytest.raises(redknot.InvalidArgument):
        redknot.select_recompute("first_k", n, first_k=-1)


def test_kv_deviation_matches_numpy_and_keeps_nan():
    rng = np.random.default_rng(1)
    a, b, c, d = (rng.normal(size=(4, 2, 8)).astype(np.float32) for _ in range(4))
    c[1, 1] = np.nan
    got = redknot.kv_deviation(a, b, c, d)
    want = ((a - c) ** 2).sum(-1) + ((b - d) ** 2).sum(-1)
    assert got.shape == (4, 2)
    assert np.isnan(got[1, 1])
    mask = ~np.isnan(want)
    close(got[mask], want[mask], 1e-4)
    with pytest.raises(redknot.InvalidArgument, match="shape"):
        redknot.kv_deviation(a, b, c[:2], d)


def test_pool_pressure_evicts_only_unused_chunks():
    cfg = redknot.RopeConfig()
    st = rope_store(cfg, num_pages=40, head_map=redknot.HeadMap.all_global(2, HK))
    used_key = World(st, cfg, at=0, n_chunk=16).register("used")
    spare_key = World(st, cfg, at=0, n_chunk=16).register("spare")
    user = st.create_sequence()
    st.splice(user, used_key, 0)
    filler = st.create_sequence()
    rows = np.zeros((4, HK, D), np.float32)
    pos = 0
    with pytest.raises(redknot.PoolExhausted):
        while True:  # every append needs pages: the spare chunk goes first, the spliced one never
            for layer in range(2):
                st.append(filler, layer, rows, rows, np.arange(pos, pos + 4))
            pos += 4
    assert st.lookup_chunk(spare_key) is None
    assert st.lookup_chunk(used_key) == 16
    assert st.chunk_stats()["evictions"] == 1
    st.free(filler)
    st.free(user)
    assert st.drop_chunk(used_key)
    assert st.stats()["pages_in_use"] == 0


def test_flashinfer_export_refuses_spliced_keys():
    cfg = redknot.RopeConfig()
    st = rope_store(cfg, head_map=redknot.HeadMap.all_global(2, HK))
    key = World(st, cfg, at=0, n_chunk=8).register()
    home, away = st.create_sequence(), st.create_sequence()
    st.splice(home, key, 0)
    st.splice(away, key, 4)
    assert len(st.export_page_table(1, [home]).indices) == 2 * HK
    with pytest.raises(redknot.InvalidArgument, match="counter-rotate"):
        st.export_page_table(1, [away])

"""Shared helpers: a numpy oracle of the canonical attention rule and a shadow of everything appended."""

from __future__ import annotations

import json
from typing import Dict, List, Tuple

import numpy as np
import pytest

import redknot

TOL = {"f32": 2e-5, "f16": 3e-3, "bf16": 2e-2}  # out tolerance when out is in the store dtype
TOL_F32_OUT = {"f32": 2e-5, "f16": 2e-5, "bf16": 2e-5}  # out in f32: only accumulation order differs


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """x as the store holds it (round to nearest even), in float64."""
    x = np.asarray(x, dtype=np.float32)
    if dtype == "f32":
        return x.astype(np.float64)
    if dtype == "f16":
        return x.astype(np.float16).astype(np.float64)
    b = x.view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(np.float32).astype(np.float64)


def np_dtype(dtype: str):
    """The numpy dtype that carries a store dtype without conversion (bf16 has none: use f32)."""
    return {"f32": np.float32, "f16": np.float16, "bf16": np.float32}[dtype]


def visible_mask(policy: redknot.HeadPolicy, qpos: np.ndarray, kpos: np.ndarray) -> np.ndarray:
    """[len(qpos), len(kpos)] canonical rule (include/redknot/visibility.hpp)."""
    q = qpos[:, None].astype(np.int64)
    k = kpos[None, :].astype(np.int64)
    causal = k <= q
    if not policy.is_local():
        return causal
    return causal & ((k < policy.sink) | (k > q - policy.window))


def reference_attention(head_map: redknot.HeadMap, layer: int, K: np.ndarray, V: np.ndarray, kpos: np.ndarray,
                        q: np.ndarray, qpos: np.ndarray, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """Dense masked attention in float64. K, V: [n, Hk, D]; q: [m, Hq, D] -> out [m, Hq, D], lse [m, Hq]."""
    m, Hq, D = q.shape
    Hk = K.shape[1]
    g = Hq // Hk
    out = np.zeros((m, Hq, D))
    lse = np.full((m, Hq), -np.inf)
    for h in range(Hk):
        mask = visible_mask(head_map.policy(layer, h), qpos, kpos)  # [m, n]
        qh = q[:, h * g:(h + 1) * g].astype(np.float64)  # [m, g, D]
        s = np.einsum("mgd,nd->mgn", qh, K[:, h]) * scale
        s = np.where(mask[:, None, :], s, -np.inf)
        mx = s.max(axis=-1, keepdims=True)
        mx = np.where(np.isfinite(mx), mx, 0.0)
        w = np.exp(s - mx)
        tot = w.sum(axis=-1, keepdims=True)
        o = np.einsum("mgn,nd->mgd", w, V[:, h]) / np.where(tot > 0, tot, 1.0)
        out[:, h * g:(h + 1) * g] = o
        lse[:, h * g:(h + 1) * g] = np.where(tot[..., 0] > 0, mx[..., 0] + np.log(np.where(tot > 0, tot, 1.0))[..., 0],
                                             -np.inf)
    return out, lse


class Shadow:
    """A store plus a dense shadow of every K/V appended to it, for oracle comparisons."""

    def __init__(self, store: redknot.Store, head_map: redknot.HeadMap, seed: int = 0) -> None:
        self.store = store
        self.map = head_map
        self.rng = np.random.default_rng(seed)
        self.kv: Dict[Tuple[int, int], Tuple[List[np.ndarray], List[np.ndarray], List[int]]] = {}

    def create(self) -> int:
        s = self.store.create_sequence()
        for l in range(self.store.num_layers):
            self.kv[(s, l)] = ([], [], [])
        return s

    def fork(self, parent: int) -> int:
        c = self.store.fork(parent)
        for l in range(self.store.num_layers):
            K, V, P = self.kv[(parent, l)]
            self.kv[(c, l)] = (list(K), list(V), list(P))
        return c

    def free(self, s: int) -> None:
        self.store.free(s)
        for l in range(self.store.num_layers):
            del self.kv[(s, l)]

    def random(self, *shape: int, dtype=np.float32) -> np.ndarray:
        return self.rng.uniform(-1, 1, size=shape).astype(dtype)

    def append(self, s: int, layer: int, positions, kv_dtype=None) -> None:
        st = self.store
        n = len(positions)
        dt = kv_dtype or np_dtype(st.dtype)
        k = self.random(n, st.num_kv_heads, st.head_dim, dtype=dt)
        v = self.random(n, st.num_kv_heads, st.head_dim, dtype=dt)
        st.append(s, layer, k, v, positions)
        K, V, P = self.kv[(s, layer)]
        K.extend(round_to(k.astype(np.float32), st.dtype))
        V.extend(round_to(v.astype(np.float32), st.dtype))
        P.extend(int(p) for p in positions)

    def expected(self, seqs, q_lens, qpos, layer, q, scale=None):
        st = self.store
        scale = scale or 1.0 / np.sqrt(st.head_dim)
        outs, lses = [], []
        row = 0
        for s, n in zip(seqs, q_lens):
            K, V, P = self.kv[(s, layer)]
            o, l = reference_attention(self.map, layer, np.array(K).reshape(-1, st.num_kv_heads, st.head_dim),
                                       np.array(V).reshape(-1, st.num_kv_heads, st.head_dim), np.array(P),
                                       q[row:row + n].astype(np.float64), np.asarray(qpos[row:row + n]), scale)
            outs.append(o)
            lses.append(l)
            row += n
        return np.concatenate(outs), np.concatenate(lses)


MIXED_MAP = {
    "num_layers": 2,
    "num_kv_heads": 2,
    "kv_head_classification": [["global", "local"], ["sink_dominant", "retrieval"]],
    "kv_head_max_distance": [[-1, 7], [5, -1]],
    "kv_head_sink_size": [[0, 3], [4, 0]],
}


@pytest.fixture
def mixed_map() -> redknot.HeadMap:
    return redknot.HeadMap.from_json(json.dumps(MIXED_MAP))


def make_store(head_map=None, dtype="f32", page_size=4, num_pages=512, hq=4, hk=2, d=16, layers=2):
    if head_map is None:
        head_map = redknot.HeadMap.from_json(json.dumps(MIXED_MAP))
    return redknot.Store(layers, hq, hk, d, num_pages=num_pages, head_map=head_map, dtype=dtype,
                         page_size=page_size)


def live_stores() -> int:
    """Native stores alive, after the GC collected whatever earlier tests left in reference cycles."""
    import gc

    gc.collect()
    return redknot.live_stores()


def torch_or_skip(cuda: bool = False):
    torch = pytest.importorskip("torch")
    if cuda and not torch.cuda.is_available():
        pytest.skip("no CUDA device visible to torch")
    return torch

"""End to end through the vLLM-style shim: a two-layer toy transformer served by a little scheduler (arrivals,
chunked prefill mixed with decodes, a forked request, frees) must produce exactly the logits of a plain numpy
forward over each request's whole token list with the same head-class masks."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import pytest

import redknot
from redknot.integrations import (
    RedknotAttentionBackend,
    RedknotAttentionImpl,
    RedknotAttentionMetadata,
    RedknotKVCacheManager,
    RedknotMetadataBuilder,
    ScheduledRequest,
)
from conftest import reference_attention

HEAD_MAP = {
    "num_layers": 2,
    "num_kv_heads": 2,
    "kv_head_classification": [["global", "local"], ["streaming", "global"]],
    "kv_head_max_distance": [[-1, 6], [5, -1]],
    "kv_head_sink_size": [[0, 2], [1, 0]],
}


class ToyModel:
    """Pre-norm decoder: RMSNorm -> GQA attention with RoPE -> RMSNorm -> ReLU MLP, float32."""

    def __init__(self, seed=0, vocab=48, d_model=32, hq=4, hk=2, hd=8, layers=2):
        rng = np.random.default_rng(seed)
        w = lambda *s: (rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32)  # noqa: E731
        self.vocab, self.hq, self.hk, self.hd, self.layers = vocab, hq, hk, hd, layers
        self.emb = rng.standard_normal((vocab, d_model)).astype(np.float32)
        self.wq = [w(d_model, hq * hd) for _ in range(layers)]
        self.wk = [w(d_model, hk * hd) for _ in range(layers)]
        self.wv = [w(d_model, hk * hd) for _ in range(layers)]
        self.wo = [w(hq * hd, d_model) for _ in range(layers)]
        self.w1 = [w(d_model, 64) for _ in range(layers)]
        self.w2 = [w(64, d_model) for _ in range(layers)]
        self.lm_head = w(d_model, vocab)

    @staticmethod
    def norm(x):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6)

    def rope(self, x, pos):  # x [n, H, hd], rotate-half pairing
        half = self.hd // 2
        inv = 1.0 / (10000.0 ** (np.arange(half, dtype=np.float32) / half))
        ang = pos[:, None].astype(np.float32) * inv[None, :]
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1).astype(np.float32)

    def qkv(self, l, h, pos):
        x = self.norm(h)
        n = len(pos)
        q = self.rope((x @ self.wq[l]).reshape(n, self.hq, self.hd), pos).reshape(n, -1)
        k = self.rope((x @ self.wk[l]).reshape(n, self.hk, self.hd), pos).reshape(n, -1)
        v = x @ self.wv[l]
        return q, k, v

    def post(self, l, h, attn):
        h = h + attn @ self.wo[l]
        return h + np.maximum(self.norm(h) @ self.w1[l], 0) @ self.w2[l]

    def logits(self, h):
        return self.norm(h) @ self.lm_head


def reference_logits(model: ToyModel, head_map: redknot.HeadMap, tokens: List[int]) -> np.ndarray:
    """Plain numpy: the whole token list at once, masked by the canonical head rule."""
    n = len(tokens)
    pos = np.arange(n)
    h = model.emb[tokens]
    for l in range(model.layers):
        q, k, v = model.qkv(l, h, pos)
        out, _ = reference_attention(head_map, l, k.reshape(n, model.hk, model.hd).astype(np.float64),
                                     v.reshape(n, model.hk, model.hd).astype(np.float64), pos,
                                     q.reshape(n, model.hq, model.hd), pos, 1.0 / np.sqrt(model.hd))
        h = model.post(l, h, out.reshape(n, -1).astype(np.float32))
    return model.logits(h)


@dataclass
class Request:
    rid: str
    tokens: List[int]  # prompt, then generated tokens
    prompt_len: int
    max_new: int
    computed: int = 0  # tokens whose K/V are in the cache
    generated: int = 0
    checked: List[float] = field(default_factory=list)


def serve(model: ToyModel, head_map: redknot.HeadMap, store: redknot.Store, arrivals: Dict[int, List[Request]],
          token_budget: int, fork_of: Dict[str, str]):
    kv = RedknotKVCacheManager(store)
    builder = RedknotMetadataBuilder(kv)
    impl = RedknotAttentionImpl(num_heads=model.hq, head_size=model.hd, scale=1 / np.sqrt(model.hd),
                                num_kv_heads=model.hk)
    running: List[Request] = []
    finished: List[Request] = []
    worst = 0.0
    step = 0
    while step in arrivals or running or any(s > step for s in arrivals):
        for r in arrivals.get(step, []):
            assert kv.can_admit(r.prompt_len + r.max_new)
            kv.allocate(r.rid, r.prompt_len + r.max_new)
            running.append(r)
        # Decodes first, then prefill chunks fill the budget (chunked prefill).
        budget = token_budget
        sched = []
        for r in running:
            if r.computed >= r.prompt_len and budget > 0:
                sched.append(ScheduledRequest(r.rid, r.computed, 1))
                budget -= 1
        for r in running:
            if r.computed < r.prompt_len and budget > 0:
                n = min(budget, r.prompt_len - r.computed)
                sched.append(ScheduledRequest(r.rid, r.computed, n))
                budget -= n
        step += 1
        if not sched:
            continue
        meta = builder.build(sched)
        assert isinstance(meta, RedknotAttentionMetadata)
        by_id = {r.rid: r for r in running}
        sched_of = {s.request_id: s for s in sched}
        rows = np.concatenate([by_id[rid].tokens[sched_of[rid].num_computed_tokens:][:sched_of[rid].num_new_tokens]
                               for rid in meta.request_ids])
        # The model's forward: every layer goes through the attention backend.
        h = model.emb[rows]
        for l in range(model.layers):
            q, k, v = model.qkv(l, h, meta.positions)
            attn = impl.forward(l, q, k, v, store, meta)
            assert attn.shape == q.shape
            h = model.post(l, h, attn)
        logits = model.logits(h)
        for i, rid in enumerate(meta.request_ids):
            r = by_id[rid]
            r.computed += int(meta.query_start_loc[i + 1] - meta.query_start_loc[i])
            if r.computed < r.prompt_len:
                continue  # mid-prefill: nothing to sample
            last = logits[int(meta.query_start_loc[i + 1]) - 1]
            ref = reference_logits(model, head_map, r.tokens[:r.computed])[-1]
            worst = max(worst, float(np.abs(last - ref).max()))
            np.testing.assert_allclose(last, ref, atol=1e-3, rtol=0)
            order = np.argsort(last)
            r.tokens.append(int(order[-1]))
            r.generated += 1
            # Parallel sampling: a child forked right after the parent's prefill takes the runner-up token.
            for child, parent in fork_of.items():
                if parent == rid and r.generated == 1:
                    c = Request(child, r.tokens[:-1] + [int(order[-2])], r.prompt_len, r.max_new, r.computed, 1)
                    kv.fork(rid, child, r.prompt_len + r.max_new)
                    running.append(c)
        for r in list(running):
            if r.generated >= r.max_new:
                kv.free(r.rid)
                running.remove(r)
                finished.append(r)
    return finished, kv, worst


@pytest.mark.parametrize("dtype,page_size", [("f32", 4), ("f32", 1), ("f32", 16)])
def test_toy_transformer_through_the_shim_matches_numpy(dtype, page_size):
    head_map = redknot.HeadMap.from_json(json.dumps(HEAD_MAP))
    model = ToyModel(seed=page_size)
    store = redknot.Store(2, model.hq, model.hk, model.hd, num_pages=512, head_map=head_map, dtype=dtype,
                          page_size=page_size)
    rng = np.random.default_rng(42)
    prompt = lambda n: [int(t) for t in rng.integers(0, model.vocab, n)]  # noqa: E731
    arrivals = {
        0: [Request("a", prompt(5), 5, 6), Request("b", prompt(11), 11, 3)],
        2: [Request("c", prompt(3), 3, 7)],
        3: [Request("d", prompt(17), 17, 4)],
    }
    finished, kv, worst = serve(model, head_map, store, arrivals, token_budget=8, fork_of={"b2": "b"})
    assert sorted(r.rid for r in finished) == ["a", "b", "b2", "c", "d"]
    for r in finished:
        assert r.generated == r.max_new and len(r.tokens) == r.prompt_len + r.max_new
    assert worst < 1e-3
    # Every request was freed: the pool is empty again.
    stats = store.stats()
    assert stats["pages_in_use"] == 0 and stats["num_sequences"] == 0


def test_backend_registry_and_manager_errors():
    assert RedknotAttentionBackend.get_name() == "REDKNOT"
    assert RedknotAttentionBackend.get_impl_cls() is RedknotAttentionImpl
    assert RedknotAttentionBackend.get_metadata_cls() is RedknotAttentionMetadata
    assert RedknotAttentionBackend.get_builder_cls() is RedknotMetadataBuilder
    assert RedknotAttentionBackend.get_kv_cache_shape(10, 16, 2, 64) is None
    store = redknot.Store(2, 4, 2, 8, num_pages=16, head_map=json.dumps(HEAD_MAP), dtype="f32", page_size=4)
    kv = RedknotKVCacheManager(store)
    kv.allocate("x", 8)
    assert "x" in kv
    with pytest.raises(ValueError, match="already has sequence"):
        kv.allocate("x", 8)
    with pytest.raises(KeyError, match="'nope'"):
        kv.seq_id("nope")
    assert not kv.can_admit(10_000)
    with pytest.raises(ValueError, match="num_new_tokens=0"):
        RedknotMetadataBuilder(kv).build([ScheduledRequest("x", 0, 0)])
    kv.free("x")
    assert kv.free_pages() == 16

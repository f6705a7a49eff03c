"""A vLLM-style attention backend over a redknot Store: how an engine maps its scheduler onto the cache.

vLLM splits paged attention into four roles; each has a redknot counterpart here:

================================  ===========================================================================
vLLM                              redknot shim
================================  ===========================================================================
KV cache manager / block manager  ``RedknotKVCacheManager``: one redknot sequence per request; admission by
                                  pages (``can_admit``), fork for parallel sampling, free on finish. There are
                                  no block tables to hand out: every (layer, kv_head) keeps its own page list
                                  inside the store, and local heads drop pages on their own.
AttentionMetadataBuilder.build    ``RedknotMetadataBuilder.build``: turns the step's scheduled requests into
                                  ``RedknotAttentionMetadata`` (query_start_loc, positions, seq ids) and calls
                                  ``store.plan`` once per step.
reshape_and_cache + the kernel    ``RedknotAttentionImpl.forward``: per layer, appends the step's K/V of every
                                  request (the ``reshape_and_cache`` role: positions replace slot_mapping) and
                                  runs the batch's attention (prefill chunks and decodes mixed).
AttentionBackend                  ``RedknotAttentionBackend``: the class registry vLLM asks for.
================================  ===========================================================================

Arrays are whatever the model uses (numpy here, torch on an engine): the store takes them through DLPack.
This module does not import vLLM; it mirrors the shape of its interfaces so the mapping is easy to port.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Dict, Hashable, List, Optional, Sequence

import numpy as np

from .._redknot import InvalidArgument, NotFound
from .._store import Store, _int_arg, _shape

_INT32_MAX = 2**31 - 1

__all__ = [
    "ScheduledRequest",
    "RedknotAttentionMetadata",
    "RedknotKVCacheManager",
    "RedknotMetadataBuilder",
    "RedknotAttentionImpl",
    "RedknotAttentionBackend",
]


def _request_id(request_id: object, name: str = "request_id") -> Hashable:
    """Request ids are dictionary keys: anything hashable (vLLM uses str)."""
    try:
        hash(request_id)
    except TypeError:
        raise InvalidArgument(f"{name} must be hashable (a str), got {type(request_id).__name__}") from None
    return request_id


def _number(x: Any, name: str) -> float:
    """A real-number argument (int, float, numpy number; not bool, str, None)."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, float, np.integer, np.floating)):
        raise InvalidArgument(f"{name} must be a number, got {type(x).__name__} {x!r:.80}")
    try:
        return float(x)
    except OverflowError:
        raise InvalidArgument(f"{name}={x} does not fit in a double") from None


@dataclass(frozen=True)
class ScheduledRequest:
    """What a scheduler decided for one request this step (vLLM: a SequenceGroup / scheduled request).

    ``num_computed_tokens`` tokens are already in the cache; this step computes the next ``num_new_tokens``
    (a prefill chunk, or 1 for a decode).
    """

    request_id: str
    num_computed_tokens: int
    num_new_tokens: int


@dataclass
class RedknotAttentionMetadata:
    """Forward metadata of one step (vLLM: AttentionMetadata), shared by every layer."""

    request_ids: List[str]
    seq_ids: np.ndarray  # int64 [batch]: the redknot sequence of each request, batch order
    query_start_loc: np.ndarray  # int32 [batch + 1]: request i owns token rows [loc[i], loc[i + 1])
    positions: np.ndarray  # int32 [num_tokens]: absolute position of every token row
    seq_lens: np.ndarray  # int32 [batch]: context length of each request after this step
    num_prefills: int  # requests with more than one new token, first in the batch
    num_prefill_tokens: int
    num_decode_tokens: int

    @property
    def num_tokens(self) -> int:
        return int(self.query_start_loc[-1])


class RedknotKVCacheManager:
    """Maps requests to redknot sequences and answers admission questions (vLLM: KV cache / block manager).

    Admission is by pages: a request whose context will reach ``max_tokens`` needs
    ``store.pages_per_sequence(max_tokens)`` pages at steady state, which is far fewer than a dense cache
    needs when most heads are local.
    """

    def __init__(self, store: Store, watermark: float = 0.0) -> None:
        if not isinstance(store, Store):
            raise InvalidArgument(f"store must be a redknot.Store, got {type(store).__name__}")
        if not 0.0 <= _number(watermark, "watermark") < 1.0:
            raise InvalidArgument(f"watermark={watermark} must be in [0, 1)")
        self.store = store
        self.watermark_pages = int(watermark * store.num_pages)
        self._seq: Dict[str, int] = {}
        self._reserved: Dict[str, int] = {}  # pages promised to each running request

    def __contains__(self, request_id: object) -> bool:
        try:
            return request_id in self._seq
        except TypeError:  # unhashable: never a key
            return False

    def seq_id(self, request_id: str) -> int:
        try:
            return self._seq[_request_id(request_id)]
        except KeyError:
            raise NotFound(f"request '{request_id}' has no sequence (never allocated or already freed)") from None

    def free_pages(self) -> int:
        st = self.store.stats()
        return int(st["pages_total"] - st["pages_in_use"])

    def can_admit(self, max_tokens: int) -> bool:
        """Whether a new request growing to ``max_tokens`` fits next to every running request's reservation."""
        need = self.store.pages_per_sequence(_int_arg(max_tokens, "can_admit: max_tokens", "int64"))
        reserved = sum(self._reserved.values())
        return need + reserved + self.watermark_pages <= self.store.num_pages

    def allocate(self, request_id: str, max_tokens: int) -> int:
        # Everything is checked before the sequence exists: a failed call leaves the store as it was.
        if _request_id(request_id) in self._seq:
            raise InvalidArgument(f"request '{request_id}' already has sequence {self._seq[request_id]}")
        pages = self.store.pages_per_sequence(_int_arg(max_tokens, "allocate: max_tokens", "int64"))
        seq = self.store.create_sequence()
        self._seq[request_id] = seq
        self._reserved[request_id] = pages
        return seq

    def fork(self, parent_id: str, child_id: str, max_tokens: int) -> int:
        """Parallel sampling / beam search: the child shares every page of the parent (copy-on-write)."""
        if _request_id(child_id, "child_id") in self._seq:
            raise InvalidArgument(f"request '{child_id}' already has sequence {self._seq[child_id]}")
        parent = self.seq_id(parent_id)
        pages = self.store.pages_per_sequence(_int_arg(max_tokens, "fork: max_tokens", "int64"))
        seq = self.store.fork(parent)
        self._seq[child_id] = seq
        self._reserved[child_id] = pages
        return seq

    def free(self, request_id: str) -> None:
        seq = self.seq_id(request_id)
        self.store.free(seq)
        del self._seq[request_id]
        del self._reserved[request_id]


class RedknotMetadataBuilder:
    """Builds the step's metadata and plans the store once per step (vLLM: AttentionMetadataBuilder)."""

    def __init__(self, kv_manager: RedknotKVCacheManager) -> None:
        if not isinstance(kv_manager, RedknotKVCacheManager):
            raise InvalidArgument(f"kv_manager must be a RedknotKVCacheManager, got {type(kv_manager).__name__}")
        self.kv = kv_manager

    def build(self, scheduled: Sequence[ScheduledRequest]) -> RedknotAttentionMetadata:
        try:
            scheduled = list(scheduled)
        except TypeError:
            raise InvalidArgument(
                f"scheduled must be a sequence of ScheduledRequest, got {type(scheduled).__name__}") from None
        for r in scheduled:
            if not isinstance(r, ScheduledRequest):
                raise InvalidArgument(f"scheduled must hold ScheduledRequest, got {type(r).__name__} {r!r:.80}")
            what = f"request '{r.request_id}'"
            done = _int_arg(r.num_computed_tokens, f"{what}: num_computed_tokens")
            new = _int_arg(r.num_new_tokens, f"{what}: num_new_tokens")
            if new < 1:
                raise InvalidArgument(f"{what}: num_new_tokens={new} must be >= 1")
            if done < 0 or done + new > _INT32_MAX:
                raise InvalidArgument(f"{what}: num_computed_tokens={done} with num_new_tokens={new} must give "
                                      f"positions in [0, {_INT32_MAX}]")
        # vLLM orders prefills before decodes; the store does not care, but keep the convention.
        batch = sorted(scheduled, key=lambda r: r.num_new_tokens == 1)
        loc = [0]
        positions: List[np.ndarray] = []
        for r in batch:
            positions.append(np.arange(r.num_computed_tokens, r.num_computed_tokens + r.num_new_tokens,
                                       dtype=np.int32))
            loc.append(loc[-1] + r.num_new_tokens)
        seq_ids = np.array([self.kv.seq_id(r.request_id) for r in batch], dtype=np.int64)
        q_lens = np.array([r.num_new_tokens for r in batch], dtype=np.int32)
        pos = np.concatenate(positions) if positions else np.zeros(0, np.int32)
        self.kv.store.plan(seq_ids, q_lens, pos)
        prefills = [r for r in batch if r.num_new_tokens > 1]
        return RedknotAttentionMetadata(
            request_ids=[r.request_id for r in batch],
            seq_ids=seq_ids,
            query_start_loc=np.array(loc, dtype=np.int32),
            positions=pos,
            seq_lens=np.array([r.num_computed_tokens + r.num_new_tokens for r in batch], dtype=np.int32),
            num_prefills=len(prefills),
            num_prefill_tokens=sum(r.num_new_tokens for r in prefills),
            num_decode_tokens=sum(r.num_new_tokens for r in batch if r.num_new_tokens == 1),
        )


class RedknotAttentionImpl:
    """One attention layer's forward over the store (vLLM: AttentionImpl)."""

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: Optional[int] = None) -> None:
        self.num_heads = _int_arg(num_heads, "num_heads")
        self.head_size = _int_arg(head_size, "head_size")
        self.scale = _number(scale, "scale")
        self.num_kv_heads = num_heads if num_kv_heads is None else _int_arg(num_kv_heads, "num_kv_heads")
        for name, value in (("num_heads", self.num_heads), ("head_size", self.head_size),
                            ("num_kv_heads", self.num_kv_heads)):
            if value < 1:
                raise InvalidArgument(f"{name}={value} must be >= 1")
        if not (math.isfinite(self.scale) and self.scale > 0.0):
            raise InvalidArgument(f"scale={scale} must be a finite number > 0")
        if self.num_heads % self.num_kv_heads:
            raise InvalidArgument(f"num_heads={num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")

    def forward(self, layer: int, query: Any, key: Any, value: Any, kv_cache: Store,
                attn_metadata: RedknotAttentionMetadata, output: Any = None) -> Any:
        """query ``[num_tokens, num_heads * head_size]``, key/value ``[num_tokens, num_kv_heads * head_size]``
        (or 3-D) for the step's token rows; returns the attention output shaped like ``query``. ``output``
        (optional) receives the result in place and must be contiguous."""
        if not isinstance(kv_cache, Store):
            raise InvalidArgument(f"forward: kv_cache must be a redknot.Store, got {type(kv_cache).__name__}")
        if not isinstance(attn_metadata, RedknotAttentionMetadata):
            raise InvalidArgument(
                f"forward: attn_metadata must be a RedknotAttentionMetadata, got {type(attn_metadata).__name__}")
        layer = _int_arg(layer, "forward: layer")
        if not 0 <= layer < kv_cache.num_layers:  # checked up front: appends of earlier requests would stay
            raise InvalidArgument(f"forward: layer={layer} out of range [0, {kv_cache.num_layers})")
        n = attn_metadata.num_tokens
        shapes = [_shape(a, name) for a, name in ((query, "query"), (key, "key"), (value, "value"))]
        if any(not sh or sh[0] != n for sh in shapes):
            raise InvalidArgument(f"forward: query/key/value have shapes {shapes[0]}/{shapes[1]}/{shapes[2]}, "
                                  f"the metadata has {n} tokens")
        want = (self.num_heads * self.head_size, self.num_kv_heads * self.head_size,
                self.num_kv_heads * self.head_size)
        for sh, w, name in zip(shapes, want, ("query", "key", "value")):
            if int(np.prod(sh[1:], dtype=np.int64)) != w:
                raise InvalidArgument(f"forward: {name} has shape {sh}, expected {w} values per token row")
        if output is not None:
            osh = _shape(output, "output")
            if int(np.prod(osh, dtype=np.int64)) != n * want[0]:
                raise InvalidArgument(f"forward: output has shape {osh}, expected {n * want[0]} values like query")
        q = query.reshape(n, self.num_heads, self.head_size)
        k = key.reshape(n, self.num_kv_heads, self.head_size)
        v = value.reshape(n, self.num_kv_heads, self.head_size)
        out = None if output is None else output.reshape(n, self.num_heads, self.head_size)
        loc = attn_metadata.query_start_loc
        # reshape_and_cache: each request's new rows go into its own sequence, at its own positions.
        for i, seq in enumerate(attn_metadata.seq_ids):
            a, b = int(loc[i]), int(loc[i + 1])
            kv_cache.append(int(seq), layer, k[a:b], v[a:b], attn_metadata.positions[a:b])
        out = kv_cache.run(q, layer, out=out, sm_scale=self.scale)
        return out.reshape(query.shape)


class RedknotAttentionBackend:
    """The registry entry an engine asks for (vLLM: AttentionBackend)."""

    @staticmethod
    def get_name() -> str:
        return "REDKNOT"

    @staticmethod
    def get_impl_cls() -> type:
        return RedknotAttentionImpl

    @staticmethod
    def get_metadata_cls() -> type:
        return RedknotAttentionMetadata

    @staticmethod
    def get_builder_cls() -> type:
        return RedknotMetadataBuilder

    @staticmethod
    def get_kv_cache_shape(*args: Any, **kwargs: Any) -> None:
        """The store owns its pool ([num_pages][2][page_size][head_dim] per dtype): the engine allocates no
        per-layer kv_cache tensors and passes the Store as ``kv_cache``."""
        return None

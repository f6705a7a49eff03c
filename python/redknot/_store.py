"""The Python face of a redknot store, shaped like FlashInfer's wrappers.

One ``Store`` holds the whole KV cache of a model: every (layer, kv_head) of every sequence owns its own page
list in one fixed-size page pool. An engine step looks like::

    store.plan(seq_ids, q_lens, q_positions)        # once per step, before the layers run
    for layer in range(num_layers):
        ...                                          # projections -> q, k, v of the step's new tokens
        store.append(seq, layer, k, v, positions)    # per sequence: the step's K/V
        out = store.run(q, layer)                    # attention of the whole batch in this layer

Arrays come in through DLPack (numpy, torch, cupy, ...) without copies; CPU outputs are allocated like ``q``
(numpy in, numpy out; torch in, torch out) unless ``out=`` is given. Errors are ``redknot.RedknotError``
subclasses that are also ``ValueError`` / ``KeyError`` / ``MemoryError`` / ``RuntimeError``; a failed call
leaves the store exactly as it was.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from . import _redknot
from ._redknot import HeadMap, InvalidArgument
from ._reuse import RopeConfig, _rope_arg

__all__ = ["Store", "KVHeadStore", "KVPoolView", "PageEntry", "PageTableCsr", "IntArrayLike"]


# Integer metadata (ids, lengths, positions): a list, a numpy array, or anything numpy reads as 1-D integers.
IntArrayLike = Union[Sequence[int], np.ndarray]


@dataclass(frozen=True)
class PageEntry:
    """Slots ``[first, first + count)`` of page ``page_id`` hold positions ``pos0, pos0 + 1, ...``."""

    page_id: int
    first: int
    count: int
    pos0: int


class PageTableCsr(NamedTuple):
    """FlashInfer's paged-KV CSR for a (sequence x kv_head) batch; rows are ``i * num_kv_heads + h``."""

    indptr: np.ndarray  # int32 [rows + 1]
    indices: np.ndarray  # int32 [nnz] page ids
    last_page_len: np.ndarray  # int32 [rows]
    page_pos0: np.ndarray  # int32 [nnz] position of slot 0 of each page


def _int_array(x: Any, dtype: Any, name: str) -> np.ndarray:
    """Metadata (ids, lengths, positions) from any 1-D integer sequence, as a contiguous array of ``dtype``."""
    if x is None or isinstance(x, (str, bytes)):
        raise InvalidArgument(f"{name} must be a 1-D sequence of integers, got {type(x).__name__} {x!r:.80}")
    try:
        a = np.asarray(x)
    except Exception as e:  # e.g. a device tensor numpy cannot read, a ragged list
        raise InvalidArgument(f"{name}: cannot read as a host integer array ({e})") from None
    if a.ndim != 1:
        raise InvalidArgument(f"{name} must be one-dimensional, got shape {tuple(a.shape)}")
    if a.size == 0:
        return np.zeros(0, dtype=dtype)
    if a.dtype.kind not in "iu":
        raise InvalidArgument(f"{name} must hold integers, got dtype {a.dtype}")
    info = np.iinfo(dtype)
    lo, hi = int(a.min()), int(a.max())
    if lo < info.min or hi > info.max:
        raise InvalidArgument(f"{name} has values in [{lo}, {hi}], outside {np.dtype(dtype).name}")
    return np.ascontiguousarray(a, dtype=dtype)


_INT_RANGES = {"int32": (-2**31, 2**31 - 1), "int64": (-2**63, 2**63 - 1)}


def _int_arg(x: Any, name: str, ctype: str = "int32") -> int:
    """An integer argument (int or numpy integer; not bool, float, str, None) that fits ``ctype``."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, (int, np.integer)):
        raise InvalidArgument(f"{name} must be an integer, got {type(x).__name__} {x!r:.80}")
    v = int(x)
    lo, hi = _INT_RANGES[ctype]
    if not lo <= v <= hi:
        raise InvalidArgument(f"{name}={v} does not fit in {ctype} [{lo}, {hi}]")
    return v


def _dtype_name(dtype: Any) -> str:
    """'bf16', 'float16', np.float32, torch.bfloat16, ... -> a name the native module parses."""
    if isinstance(dtype, str):
        return dtype
    if dtype is None:  # np.dtype(None) would be float64
        raise InvalidArgument("dtype must be 'bf16', 'f16' or 'f32' (or a numpy/torch dtype), got None")
    try:
        s = str(dtype)
    except Exception:
        s = type(dtype).__name__
    if s.startswith("torch."):
        return s[len("torch."):]
    try:
        return np.dtype(dtype).name
    except Exception:
        return s


def _shape(x: Any, name: str) -> Tuple[int, ...]:
    try:
        return tuple(int(d) for d in x.shape)
    except Exception:
        raise InvalidArgument(f"{name}: cannot read the shape of a {type(x).__name__}") from None


def _rows(x: Any, name: str) -> int:
    shape = _shape(x, name)
    if not shape:
        raise InvalidArgument(f"{name} must have at least one dimension, got a scalar")
    return shape[0]


def _check_array(x: Any, name: str) -> None:
    if not hasattr(x, "__dlpack__"):
        raise InvalidArgument(
            f"{name}: expected an array supporting DLPack (numpy, torch, cupy, ...), got {type(x).__name__}")


def _empty_like(x: Any, shape: Tuple[int, ...], float32: bool) -> Any:
    """An uninitialised array of the same kind (and dtype, unless float32) as x."""
    if isinstance(x, np.ndarray):
        return np.empty(shape, dtype=np.float32 if float32 else x.dtype)
    if hasattr(x, "new_empty"):  # torch
        if float32:
            import torch  # type: ignore  # only reached when x is a torch tensor

            return x.new_empty(shape, dtype=torch.float32)
        return x.new_empty(shape)
    ns = getattr(x, "__array_namespace__", None)  # the array API standard (cupy, jax, ...)
    if ns is not None:
        xp = ns()
        return xp.empty(shape, dtype=xp.float32 if float32 else x.dtype)
    raise InvalidArgument(f"cannot allocate an output like a {type(x).__name__}: pass out= (and lse=)")


class KVPoolView:
    """The store's page pool ``[num_pages, 2, page_size, head_dim]`` (K = ``[:, 0]``, V = ``[:, 1]``) as a
    DLPack producer: ``np.from_dlpack(view)`` (f32/f16) or ``torch.from_dlpack(view)`` give zero-copy views
    that keep the store alive. Together with ``Store.export_page_table`` this is what FlashInfer's paged
    kernels read (one kv head per CSR row). Read it only between store calls."""

    def __init__(self, impl: "_redknot._Store") -> None:
        self._impl = impl

    def __dlpack__(self, *, stream: Any = None, max_version: Optional[Tuple[int, int]] = None,
                   dl_device: Any = None, copy: Optional[bool] = None) -> Any:
        if copy:
            raise BufferError("KVPoolView: copy=True is not supported (the view is zero-copy)")
        if dl_device is not None and tuple(dl_device) != (1, 0):
            raise BufferError(f"KVPoolView: the pool lives on the cpu, dl_device={dl_device} was requested")
        return self._impl.kv_pool_capsule(max_version is not None and max_version[0] >= 1)

    def __dlpack_device__(self) -> Tuple[int, int]:
        return (1, 0)  # kDLCPU


class Store:
    """A head-aware paged KV cache (``KVHeadStore``) for one model.

    Args:
      num_layers, num_q_heads, num_kv_heads, head_dim: the model's attention shape (GQA: num_q_heads is a
        multiple of num_kv_heads; head_dim a multiple of 8).
      num_pages: pool capacity in pages; fixed for the store's lifetime.
      head_map: a ``HeadMap``, JSON text, or a path to a JSON file; ``None`` makes every head global.
      dtype: storage dtype of K/V: ``"bf16"``, ``"f16"`` or ``"f32"`` (numpy/torch dtypes are accepted too).
      page_size: tokens of one kv head per page.
      device: ``"cpu"``; ``"cuda[:i]"`` raises ``Unavailable`` until the CUDA backend lands.
      rope: the model's ``RopeConfig`` (or its dict), needed to splice chunks at other offsets than they were
        computed at, to relocate them and to overwrite rows; ``None``: no RoPE spec.
    """

    def __init__(
        self,
        num_layers: int,
        num_q_heads: int,
        num_kv_heads: int,
        head_dim: int,
        *,
        num_pages: int,
        head_map: Union[HeadMap, str, "os.PathLike[str]", None] = None,
        dtype: Any = "bf16",
        page_size: int = 16,
        device: Any = "cpu",
        rope: Union[RopeConfig, dict, None] = None,
    ) -> None:
        if head_map is None:
            head_map = HeadMap.all_global(num_layers, num_kv_heads)
        elif isinstance(head_map, str) and head_map.lstrip().startswith("{"):
            head_map = HeadMap.from_json(head_map)
        elif isinstance(head_map, (str, os.PathLike)):
            head_map = HeadMap.load(head_map)
        elif not isinstance(head_map, HeadMap):
            raise InvalidArgument(
                f"head_map must be a HeadMap, JSON text or a path, got {type(head_map).__name__}")
        if not isinstance(device, str):
            try:
                device = str(device)  # torch.device("cpu") -> "cpu"
            except Exception:
                raise InvalidArgument(f"device must be a str, got {type(device).__name__}") from None
        # The native constructor checks every integer (type and range) and names the argument.
        self._impl: Optional[_redknot._Store] = _redknot._Store(
            num_layers, num_q_heads, num_kv_heads, head_dim, _dtype_name(dtype), head_map, page_size, num_pages,
            device, _rope_arg(rope))

    # ---- lifetime ----------------------------------------------------------------------------------------

    @property
    def _s(self) -> _redknot._Store:
        if self._impl is None:
            raise InvalidArgument("this store is closed")
        return self._impl

    def close(self) -> None:
        """Releases the pool now (otherwise it goes when the object is garbage collected). A
        ``TieredChunkCache`` made by ``chunk_tiers`` keeps the native store alive until the cache goes."""
        self._impl = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._impl is None:
            return "Store(closed)"
        s = self._impl
        return (f"Store(num_layers={s.num_layers}, num_q_heads={s.num_q_heads}, num_kv_heads={s.num_kv_heads}, "
                f"head_dim={s.head_dim}, dtype='{s.dtype}', page_size={s.page_size}, num_pages={s.num_pages}, "
                f"device='{s.device}')")

    # ---- shape -------------------------------------------------------------------------------------------

    @property
    def num_layers(self) -> int:
        return self._s.num_layers

    @property
    def num_q_heads(self) -> int:
        return self._s.num_q_heads

    @property
    def num_kv_heads(self) -> int:
        return self._s.num_kv_heads

    @property
    def head_dim(self) -> int:
        return self._s.head_dim

    @property
    def dtype(self) -> str:
        """Storage dtype: 'f32', 'f16' or 'bf16'."""
        return self._s.dtype

    @property
    def page_size(self) -> int:
        return self._s.page_size

    @property
    def num_pages(self) -> int:
        return self._s.num_pages

    @property
    def device(self) -> str:
        return self._s.device

    @property
    def head_map(self) -> HeadMap:
        """A copy of the store's head map."""
        return self._s.head_map

    @property
    def rope(self) -> Optional[RopeConfig]:
        """The store's RoPE spec, or None."""
        d = self._s.rope
        return None if d is None else RopeConfig(**d)

    # ---- sequences ---------------------------------------------------------------------------------------

    def create_sequence(self) -> int:
        return self._s.create_sequence()

    def fork(self, parent: int) -> int:
        """A new sequence sharing every page of ``parent`` (copy-on-write of partial last pages)."""
        return self._s.fork(parent)

    def free(self, seq: int) -> None:
        """Returns the sequence's pages to the pool (shared pages when their last holder goes)."""
        self._s.free_sequence(seq)

    free_sequence = free

    def __contains__(self, seq: object) -> bool:
        if isinstance(seq, (bool, np.bool_)) or not isinstance(seq, (int, np.integer)):
            return False
        return -2**63 <= int(seq) < 2**63 and self._s.contains(int(seq))

    def sequences(self) -> list:
        return self._s.sequences()

    def next_position(self, seq: int, layer: int) -> int:
        """The position the next append to (seq, layer) must start at or after."""
        return self._s.next_position(seq, layer)

    def query_floor(self, seq: int, layer: int) -> int:
        return self._s.query_floor(seq, layer)

    def retire_queries(self, seq: int, next_query_pos: int, layer: int = -1) -> None:
        """Declares every query of (seq, layer) before ``next_query_pos`` done (layer -1: all layers)."""
        self._s.retire_queries(seq, next_query_pos, layer)

    def page_table(self, seq: int, layer: int, kv_head: int) -> list:
        """One head's page entries (sink, then body), for inspection."""
        return [PageEntry(*e) for e in self._s.page_table(seq, layer, kv_head)]

    # ---- data path ---------------------------------------------------------------------------------------

    def append(self, seq: int, layer: int, k: Any, v: Any, positions: Optional[IntArrayLike] = None) -> None:
        """Appends K/V ``[n, num_kv_heads, head_dim]`` (or ``[n, num_kv_heads * head_dim]``) of one layer.

        ``k``/``v`` are in the store dtype (zero copy) or float32 (converted). ``positions`` (n integers,
        strictly increasing) default to the next n positions of (seq, layer).
        """
        _check_array(k, "k")
        _check_array(v, "v")
        if positions is None:
            n = _rows(k, "k")
            start = self._s.next_position(_int_arg(seq, "append: seq", "int64"), _int_arg(layer, "append: layer"))
            pos = _int_array(np.arange(start, start + n, dtype=np.int64), np.int32, "positions")
        else:
            pos = _int_array(positions, np.int32, "positions")
        self._s.append(seq, layer, k, v, pos)

    def append_batch(self, layer: int, seq_ids: IntArrayLike, token_offsets: IntArrayLike, k: Any, v: Any,
                     positions: IntArrayLike) -> None:
        """Appends one layer's K/V for a batch of sequences in one call (vLLM's ``reshape_and_cache``).

        Sequence ``seq_ids[i]`` takes rows ``token_offsets[i]:token_offsets[i + 1]`` of ``k``, ``v``
        (``[n, num_kv_heads, head_dim]``, store dtype or float32) and ``positions``; ``token_offsets`` has
        ``len(seq_ids) + 1`` non-decreasing entries starting at 0. All-or-nothing: on an error no sequence of
        the batch changed.
        """
        _check_array(k, "k")
        _check_array(v, "v")
        self._s.append_batch(layer, _int_array(seq_ids, np.int64, "seq_ids"),
                             _int_array(token_offsets, np.int32, "token_offsets"), k, v,
                             _int_array(positions, np.int32, "positions"))

    def plan(self, seq_ids: IntArrayLike, q_lens: IntArrayLike, q_positions: Optional[IntArrayLike] = None) -> None:
        """Describes the step's batch, once per step (FlashInfer's ``plan``).

        Sequence ``seq_ids[i]`` has ``q_lens[i]`` queries (1 for decode, the chunk length for prefill) at the
        positions ``q_positions[sum(q_lens[:i]):][:q_lens[i]]``. ``q_positions`` defaults to the next q_len
        positions of each sequence in layer 0 (call ``plan`` before the step's appends for that default).
        Only the description is checked here; query positions are checked against the appended K/V by ``run``.
        """
        ids = _int_array(seq_ids, np.int64, "seq_ids")
        lens = _int_array(q_lens, np.int32, "q_lens")
        if q_positions is not None:
            pos = _int_array(q_positions, np.int32, "q_positions")
        elif len(ids) != len(lens) or (lens < 0).any():
            pos = np.zeros(0, np.int32)  # no defaults for a bad description: the native check names the fault
        else:
            parts = []
            for i, (s, n) in enumerate(zip(ids, lens)):
                start = self._s.next_position(int(s), 0)
                if start + int(n) - 1 > 2**31 - 1:  # the defaults must be int32 (checked before allocating them)
                    raise InvalidArgument(f"plan: q_lens[{i}]={int(n)} for sequence {int(s)} (next position "
                                          f"{start}) would need positions beyond int32")
                parts.append(np.arange(start, start + int(n), dtype=np.int64))
            pos = _int_array(np.concatenate(parts) if parts else [], np.int32, "q_positions")
        self._s.plan(ids, lens, pos)

    def run(
        self,
        q: Any,
        layer: int,
        *,
        out: Any = None,
        lse: Any = None,
        return_lse: bool = False,
        sm_scale: Optional[float] = None,
        num_threads: int = 0,
    ) -> Any:
        """Attention of the planned batch in ``layer`` (FlashInfer's ``run``).

        ``q``: ``[total_q, num_q_heads, head_dim]`` (or ``[total_q, num_q_heads * head_dim]``), float32 or the
        store dtype. Returns ``out`` (same shape and dtype as q, allocated like q unless given), and
        ``(out, lse)`` with ``return_lse=True`` (lse: float32 ``[total_q, num_q_heads]``, natural log).
        ``sm_scale`` ``None`` (or 0, as in C and C++) selects ``1/sqrt(head_dim)``; negative, NaN and infinite
        values are rejected.
        """
        _check_array(q, "q")
        if not isinstance(return_lse, (bool, np.bool_)):
            raise InvalidArgument(f"run: return_lse must be a bool, got {type(return_lse).__name__} "
                                  f"{return_lse!r:.80}")
        # layer, sm_scale and num_threads are checked by the native call (the core's rules, as in C and C++).
        if out is None:
            out = _empty_like(q, _shape(q, "q"), float32=False)
        if return_lse and lse is None:
            lse = _empty_like(q, (_rows(q, "q"), self._s.num_q_heads), float32=True)
        self._s.run(layer, q, out, lse, sm_scale, num_threads)
        return (out, lse) if return_lse else out

    # ---- chunks: position-independent reuse ----------------------------------------------------------------

    def chunk_key(self, model_id: str, tokens: IntArrayLike) -> bytes:
        """The 16-byte key (XXH3-128) of a chunk of ``tokens`` computed by ``model_id`` for this store's shape,
        dtype and head map: a chunk of another model, map or dtype never matches."""
        return self._s.chunk_key(model_id, _int_array(tokens, np.int32, "chunk_key: tokens"))

    def register_chunk(self, key: bytes, seq: int) -> None:
        """Turns ``seq`` (the chunk's K/V appended alone at positions ``0..n-1`` on every layer) into the chunk
        ``key``; the sequence id is no longer live and the chunk holds its pages until dropped or evicted."""
        self._s.register_chunk(key, seq)

    def lookup_chunk(self, key: bytes) -> Optional[int]:
        """The chunk's token count, or None when it is not registered (counted as a hit or a miss)."""
        n = self._s.lookup_chunk(key)
        return None if n < 0 else n

    def splice(self, seq: int, key: bytes, at: int, first_query: Optional[int] = None) -> None:
        """Makes chunk ``key`` positions ``[at, at + n)`` of ``seq`` without copying K/V (pages shared).

        ``first_query``: the first position whose query will still run (e.g. the first recomputed token);
        default ``at + n``. Positions must lie after everything ``seq`` holds; ``at != 0`` needs ``rope``.
        """
        self._s.splice(seq, key, at, -1 if first_query is None else first_query)

    def relocate(self, seq: int, key: bytes, at: int, first_query: Optional[int] = None) -> None:
        """As ``splice`` but copies the chunk and rotates its keys to their new positions (fp32): for kernels
        that cannot counter-rotate queries. Needs pages like an append of the chunk."""
        self._s.relocate(seq, key, at, -1 if first_query is None else first_query)

    def drop_chunk(self, key: bytes) -> bool:
        """Drops a registered chunk (False when ``key`` is not registered); a chunk in use is an error."""
        return self._s.drop_chunk(key)

    def chunk_stats(self) -> dict:
        """chunks, chunks_in_use, pages_held, hits, misses, splices, evictions."""
        return self._s.chunk_stats()

    def overwrite(self, seq: int, layer: int, k: Any, v: Any, positions: IntArrayLike) -> None:
        """Fresh K/V of recomputed tokens for ``seq`` only (copy-on-write of shared pages; the chunk stays
        intact). ``k``/``v`` as for ``append``; ``positions`` strictly increasing and already held."""
        _check_array(k, "k")
        _check_array(v, "v")
        self._s.overwrite(seq, layer, k, v, _int_array(positions, np.int32, "overwrite: positions"))

    def read_rows(self, seq: int, layer: int, positions: IntArrayLike) -> Tuple[np.ndarray, np.ndarray]:
        """Cached K and V rows as float32 ``[n, num_kv_heads, head_dim]``, keys rotated for their current
        positions; NaN rows where a head no longer holds the token."""
        return self._s.read_rows(seq, layer, _int_array(positions, np.int32, "read_rows: positions"))

    # ---- tiers: sequence swap and chunks below the pool (tiers.hpp) ---------------------------------------

    def swap_out(self, seq: int, hot: "_redknot.KvTier", cold: Optional["_redknot.KvTier"] = None, *,
                 model_id: str, name: str) -> "_redknot.SwapTicket":
        """Writes every row ``seq`` holds to tiers and frees the sequence (preemption).

        Each layer's local heads (sink + window: small, needed first) go to ``hot`` as object
        ``<name>.l<layer>.local``, its global-like heads (the whole history) to ``cold`` (``None``: ``hot``) as
        ``<name>.l<layer>.global``; a local object ``hot`` refuses goes to ``cold``. ``model_id`` is the
        engine's model id (``swap_in`` accepts only slices of the same model); ``name`` is
        ``[A-Za-z0-9._-]``, not starting with ``.``. Returns the ``SwapTicket`` for ``swap_in``.

        Raises ``TierRefused`` when a tier refuses an object (too small, full device, read-only directory):
        what was written is removed again and the sequence stays live and unchanged.
        """
        return self._s.swap_out(seq, hot, cold, model_id, name)

    def swap_in(self, ticket: "_redknot.SwapTicket", hot: "_redknot.KvTier",
                cold: Optional["_redknot.KvTier"] = None, *,
                prefetcher: Optional["_redknot.TierPrefetcher"] = None) -> int:
        """Restores a swapped-out sequence into this store (the one it left, or another of the same layout
        and head map) and returns its new id: the same positions, rotations, next positions and query floors,
        so attention over it equals the never-moved sequence bit for bit. ``hot``/``cold`` must be the tiers
        ``swap_out`` was given; ``prefetcher`` reads the objects ahead. The objects are removed and the ticket
        is used up.

        Raises ``TierMiss`` when an object is missing or fails a check (the sequence cannot come back: its
        objects are removed, the ticket used up, the store unchanged), ``PoolExhausted`` when pages lack
        (nothing changed: make room and retry), ``InvalidArgument`` for a used ticket, another store layout or
        other tiers (nothing changed).
        """
        return self._s.swap_in(ticket, hot, cold, prefetcher)

    def chunk_tiers(self, tiers: Sequence["_redknot.KvTier"], model_id: str, *, min_splices: int = 0,
                    prefetcher: Optional["_redknot.TierPrefetcher"] = None) -> "_redknot.TieredChunkCache":
        """A ``TieredChunkCache``: this store's chunks over ``tiers`` (fastest first) for ``model_id`` (what
        ``chunk_key`` was given). ``make_room(pages)`` writes the least recently used unused chunks down
        (only those spliced at least ``min_splices`` times; the others are dropped) and drops them from the
        store; ``lookup(key)`` finds a chunk in the store or promotes a verified copy from a tier (``None``: a
        miss). The cache keeps this store, the tiers and the prefetcher alive."""
        return self._s.chunk_tiers(tiers, model_id, min_splices, prefetcher)

    # ---- accounting --------------------------------------------------------------------------------------

    def stats(self) -> dict:
        """Pool totals: num_sequences, pages_total, pages_in_use, pages_global, pages_local, bytes_*."""
        return self._s.stats()

    def sequence_stats(self, seq: int) -> dict:
        return self._s.sequence_stats(seq)

    def pages_per_sequence(self, num_tokens: int) -> int:
        """Pages one sequence of ``num_tokens`` tokens holds at steady state (decoding)."""
        return self._s.pages_per_sequence(num_tokens)

    def sequences_that_fit(self, num_tokens: int) -> int:
        """How many more such sequences fit in the free pages."""
        return self._s.sequences_that_fit(num_tokens)

    def kv_pool(self) -> KVPoolView:
        """The page pool as a DLPack producer (see ``KVPoolView``)."""
        return KVPoolView(self._s)

    def export_page_table(self, layer: int, seq_ids: IntArrayLike) -> PageTableCsr:
        """FlashInfer CSR of one layer for a (sequence x kv_head) batch (see rk_export_page_table in c_api.h).

        Raises ``InvalidArgument`` when a head's table is not expressible (a partial page before the last one,
        or a position jump inside a page).
        """
        ids = _int_array(seq_ids, np.int64, "seq_ids")
        return PageTableCsr(*self._s.export_page_table(layer, ids))


KVHeadStore = Store

"""Position-independent chunk reuse in Python: the model's RoPE spec and the choice of tokens to recompute.

A chunk (a document's K/V computed alone at positions ``0..n-1``) is registered once with
``Store.register_chunk`` and spliced into any sequence at any offset with ``Store.splice`` (zero copy: the
kernel counter-rotates the queries, so the store needs the model's ``RopeConfig``). A chunk computed alone has
not seen the text before it; ``select_recompute`` picks the tokens whose fresh K/V should replace the cached
ones (``Store.overwrite``) for one sequence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from . import _redknot
from ._redknot import InvalidArgument

__all__ = ["RopeConfig", "select_recompute", "kv_deviation", "RECOMPUTE_STRATEGIES"]

RECOMPUTE_STRATEGIES = ("none", "first_k", "deviation_topk", "global_deviation_topk", "query_topk")


@dataclass(frozen=True)
class RopeConfig:
    """The model's RoPE as the engine applies it to K and Q (``redknot/rope.hpp``).

    ``pairing``: ``"rotate_half"`` (HF Llama / GPT-NeoX) or ``"interleaved"`` (GPT-J, GGUF llama).
    ``scaling``: ``"default"``, ``"linear"``, ``"llama3"`` or ``"yarn"`` with ``factor`` and the fields named
    after Hugging Face's ``rope_scaling``. ``rotary_dim`` 0 rotates the whole head; less rotates dims
    ``[0, rotary_dim)`` only (partial rotary). The store checks the values (``InvalidArgument``).
    """

    theta: float = 10000.0
    rotary_dim: int = 0
    pairing: str = "rotate_half"
    scaling: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    beta_fast: float = 32.0
    beta_slow: float = 1.0

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_hf(config: Mapping[str, Any], head_dim: Optional[int] = None) -> "RopeConfig":
        """From a Hugging Face ``config.json`` dict (``rope_theta``, ``rope_scaling``, ``partial_rotary_factor``).

        Hugging Face models apply rotate-half pairing. ``head_dim`` (default: the config's ``head_dim`` or
        hidden_size / num_attention_heads) is needed only for partial rotary.
        """
        if not isinstance(config, Mapping):
            raise InvalidArgument(f"RopeConfig.from_hf: config must be a mapping, got {type(config).__name__}")
        theta = float(config.get("rope_theta", 10000.0))
        rotary_dim = 0
        partial = config.get("partial_rotary_factor")
        if partial is not None and float(partial) != 1.0:
            hd = head_dim or config.get("head_dim") or (
                int(config["hidden_size"]) // int(config["num_attention_heads"]))
            rotary_dim = int(int(hd) * float(partial))
        rs = config.get("rope_scaling") or {}
        kind = rs.get("rope_type", rs.get("type", "default")) if rs else "default"
        if kind not in ("default", "linear", "llama3", "yarn"):
            raise InvalidArgument(f"RopeConfig.from_hf: rope_scaling type '{kind}' is not supported "
                                  "(default, linear, llama3, yarn)")
        return RopeConfig(
            theta=theta, rotary_dim=rotary_dim, scaling=kind, factor=float(rs.get("factor", 1.0)),
            low_freq_factor=float(rs.get("low_freq_factor", 1.0)),
            high_freq_factor=float(rs.get("high_freq_factor", 4.0)),
            original_max_position=int(rs.get("original_max_position_embeddings",
                                             config.get("max_position_embeddings", 8192) if kind == "yarn"
                                             else 8192)),
            beta_fast=float(rs.get("beta_fast", 32.0)), beta_slow=float(rs.get("beta_slow", 1.0)))


def _rope_arg(rope: Any) -> Optional[dict]:
    if rope is None:
        return None
    if isinstance(rope, RopeConfig):
        return rope.to_dict()
    if isinstance(rope, Mapping):
        return dict(rope)
    raise InvalidArgument(f"rope must be a redknot.RopeConfig, a dict or None, got {type(rope).__name__}")


def _float_array(x: Any, name: str, ndim: Optional[int] = None) -> np.ndarray:
    if x is None or isinstance(x, (str, bytes)):
        raise InvalidArgument(f"{name} must be an array of floats, got {type(x).__name__}")
    try:
        a = np.asarray(x)
    except Exception as e:
        raise InvalidArgument(f"{name}: cannot read as a host float array ({e})") from None
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise InvalidArgument(f"{name} must hold numbers, got dtype {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise InvalidArgument(f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    return np.ascontiguousarray(a, dtype=np.float32)


def select_recompute(strategy: str, n_tokens: int, *, ratio: float = 0.15, first_k: int = 0,
                     deviation: Any = None, head_is_local: Optional[Sequence[bool]] = None,
                     query_attention: Any = None) -> np.ndarray:
    """Sorted indices (int32) of the chunk tokens to recompute.

    ``strategy``: one of ``RECOMPUTE_STRATEGIES``. ``none``: pure reuse; ``first_k``: the first ``first_k``
    tokens (EPIC); ``deviation_topk``: the ``ratio`` of tokens whose K/V deviate most over all heads
    (CacheBlend); ``global_deviation_topk``: the same on global heads only (``head_is_local`` says which heads
    are local) plus the first ``first_k``; ``query_topk``: the ``ratio`` of tokens with the most
    ``query_attention``. ``deviation``: ``[n_tokens, num_kv_heads]`` (``kv_deviation``; every head global unless ``head_is_local``), NaN where a head does
    not hold the token; ``query_attention``: ``[n_tokens]``.
    """
    dev = None if deviation is None else _float_array(deviation, "select_recompute: deviation", 2)
    local = np.zeros(0 if dev is None else dev.shape[1], np.int32)  # default: every head global
    if head_is_local is not None:
        h = np.asarray(head_is_local)
        if h.ndim != 1 or (h.size and h.dtype.kind not in "biu"):
            raise InvalidArgument(f"select_recompute: head_is_local must be a 1-D sequence of bools, got {h.dtype} "
                                  f"shape {tuple(h.shape)}")
        local = np.ascontiguousarray(h != 0, dtype=np.int32)
    dev = None if dev is None else dev.reshape(-1)
    qa = None if query_attention is None else _float_array(query_attention, "select_recompute: query_attention",
                                                          1)
    return _redknot.select_recompute(strategy, ratio, first_k, n_tokens, dev, local, qa)


def kv_deviation(k_fresh: Any, v_fresh: Any, k_cached: Any, v_cached: Any) -> np.ndarray:
    """Squared L2 distance of fresh vs cached K plus V per (token, kv_head): ``[n, num_kv_heads]`` float32.

    All four arrays ``[n, num_kv_heads, head_dim]``; cached keys rotated for the same positions as the fresh
    ones (``Store.read_rows`` returns them so). NaN rows (a head that no longer holds the token) stay NaN.
    """
    arrs = [_float_array(a, f"kv_deviation: {n}", 3)
            for a, n in ((k_fresh, "k_fresh"), (v_fresh, "v_fresh"), (k_cached, "k_cached"), (v_cached, "v_cached"))]
    shape = arrs[0].shape
    for a, n in zip(arrs[1:], ("v_fresh", "k_cached", "v_cached")):
        if a.shape != shape:
            raise InvalidArgument(f"kv_deviation: {n} has shape {a.shape}, k_fresh {shape}")
    n, kvh, hd = shape
    return _redknot.kv_deviation(*[a.reshape(-1) for a in arrs], n, kvh, hd).reshape(n, kvh)

"""Engine integrations: shims that show how a serving engine maps its scheduler onto a redknot Store."""

from .vllm_backend import (
    RedknotAttentionBackend,
    RedknotAttentionImpl,
    RedknotAttentionMetadata,
    RedknotKVCacheManager,
    RedknotMetadataBuilder,
    ScheduledRequest,
)

__all__ = [
    "RedknotAttentionBackend",
    "RedknotAttentionImpl",
    "RedknotAttentionMetadata",
    "RedknotKVCacheManager",
    "RedknotMetadataBuilder",
    "ScheduledRequest",
]

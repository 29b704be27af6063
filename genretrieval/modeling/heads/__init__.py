"""Joint search-and-recommendation heads (JSR, UnifiedSSR, SESRec): registry, shared-embedding adapters, data."""

from .base import (
    Head,
    HeadBatch,
    HeadConfig,
    HeadDataConfig,
    HeadOutput,
    OwnEmbeddings,
    SharedEmbeddings,
    build_head,
    get_head_class,
    register_head,
    registered_heads,
)

__all__ = ["Head", "HeadBatch", "HeadConfig", "HeadDataConfig", "HeadOutput", "OwnEmbeddings", "SharedEmbeddings", "build_head",
           "get_head_class", "register_head", "registered_heads"]

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

# Importing the head modules registers them (register_head); the standalone baselines are derived from the registry.
from . import unified_ssr  # noqa: E402,F401  (registers "unified-ssr")
from . import jsr  # noqa: E402,F401  (registers "jsr" and "jsr-seq")
from . import sesrec  # noqa: E402,F401  (registers "sesrec")

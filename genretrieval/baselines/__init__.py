"""Comparison models behind one :class:`Retriever` interface: popularity, BM25, SASRec and a dense bi-encoder.

Importing this package registers every baseline; build one with ``get_baseline_class(name)(config)``.
See ``docs/baselines.md``.
"""

from .base import Retriever, get_baseline_class, register_baseline, registered_baselines
from .biencoder import BiEncoder, BiEncoderConfig
from .bm25 import BM25, BM25Config
from .popularity import Popularity, PopularityConfig, QueryPopularity, QueryPopularityConfig
from .sasrec import SASRec, SASRecConfig

__all__ = [
    "BM25",
    "BiEncoder",
    "BiEncoderConfig",
    "BM25Config",
    "Popularity",
    "PopularityConfig",
    "QueryPopularity",
    "QueryPopularityConfig",
    "Retriever",
    "SASRec",
    "SASRecConfig",
    "get_baseline_class",
    "register_baseline",
    "registered_baselines",
]

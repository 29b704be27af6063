"""Comparison models behind one :class:`Retriever` interface: popularity, BM25, SASRec and a dense bi-encoder.

Importing this package registers every baseline; build one with ``get_baseline_class(name)(config)``.
See ``docs/baselines.md``.
"""

from .base import Retriever, get_baseline_class, register_baseline, registered_baselines
from .biencoder import BiEncoder, BiEncoderConfig
from .bm25 import BM25, BM25Config
from .popularity import Popularity, PopularityConfig, QueryPopularity, QueryPopularityConfig
from .heads import HeadBaseline, HeadBaselineConfig, register_head_baselines
from .sasrec import SASRec, SASRecConfig

register_head_baselines()  # one baseline per registered head: jsr, unified-ssr, sesrec

__all__ = [
    "BM25",
    "BiEncoder",
    "BiEncoderConfig",
    "HeadBaseline",
    "HeadBaselineConfig",
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

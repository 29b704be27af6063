"""BM25 search baseline over item text, via ``bm25s``.

Why bm25s: it is maintained, has no native or Java dependency (numpy + scipy sparse), indexes by precomputing every
(term, document) BM25 weight into a sparse matrix, so scoring the whole catalog for a query is one sparse row sum, and
it ships its stopword lists inside the package (nothing is downloaded). It is also what DESIGN §1's Beauty anchor used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..evaluation.evaluator import Request
from ._common import catalog_item_ids, catalog_texts, check_positive
from .base import Retriever, register_baseline

_METHODS = ("robertson", "lucene", "atire", "bm25l", "bm25+")


@dataclass
class BM25Config:
    """BM25 parameters and tokenisation (defaults are bm25s's own, which are also the usual Lucene-style ones)."""

    k1: float = 1.5  # term-frequency saturation (bm25s default; Elasticsearch uses 1.2)
    b: float = 0.75  # document-length normalisation (bm25s and Lucene default)
    method: str = "lucene"  # bm25s scoring variant; "lucene" has non-negative idf
    stopwords: str | None = "en"  # bm25s's bundled English list (33 words, offline); None keeps every token
    token_pattern: str = r"(?u)\b\w\w+\b"  # bm25s default: lower-cased words of >= 2 characters

    def __post_init__(self) -> None:
        check_positive("BM25Config", k1=self.k1)
        if not 0.0 <= self.b <= 1.0:
            raise ValueError(f"BM25Config.b must be in [0, 1], got {self.b!r}")
        if self.method not in _METHODS:
            raise ValueError(f"BM25Config.method must be one of {_METHODS}, got {self.method!r}")
        if not self.token_pattern:
            raise ValueError(f"BM25Config.token_pattern must be a non-empty regex, got {self.token_pattern!r}")


@register_baseline("bm25")
class BM25(Retriever):
    """Search only: BM25 of the request's query against each item's title + text + categories.

    A query with no term in the index scores every item 0. The user's history is ignored (not personalised).
    """

    supported_tasks = ("search",)

    def __init__(self, config: BM25Config | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else BM25Config()
        self._retriever: Any = None

    def _tokenize(self, texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(texts, lower=True, token_pattern=self.config.token_pattern,
                              stopwords=self.config.stopwords or [], return_ids=False, show_progress=False)

    def fit(self, catalog: Any, train: Mapping[str, Any] | None = None, validation: Mapping[str, Any] | None = None,
            seed: int = 0) -> BM25:
        """Index the catalog text; the training and validation examples are not used (BM25 is unsupervised)."""
        import bm25s

        self.item_ids = catalog_item_ids(catalog)
        cfg = self.config
        self._retriever = bm25s.BM25(k1=cfg.k1, b=cfg.b, method=cfg.method)
        self._retriever.index(self._tokenize(catalog_texts(catalog)), show_progress=False)
        return self

    def score(self, requests: Sequence[Request]) -> torch.Tensor:
        """``[len(requests), num_items]`` float32 BM25 scores (repeated query terms count once per occurrence)."""
        if self._retriever is None:
            raise RuntimeError("bm25: call fit() before score()")
        self.check_tasks(requests)
        vocab = self._retriever.vocab_dict
        out = np.zeros((len(requests), len(self.item_ids)), dtype=np.float32)
        for row, tokens in enumerate(self._tokenize([r.query for r in requests]) if requests else []):
            known = [t for t in tokens if t in vocab and t != ""]  # "" is bm25s's empty-document token
            if known:
                out[row] = self._retriever.get_scores(known)
        return torch.from_numpy(out)

"""The interface every comparison model implements, and the registry of baselines.

A :class:`Retriever` is fitted on the same canonical tables and example splits as the generative model and then
scores the **whole catalog** for a batch of :class:`~genretrieval.evaluation.evaluator.Request` objects. Both
evaluation protocols (full-catalog ranking and 1 positive + 99 sampled negatives) are computed from those scores, so
every model is measured by exactly the same code.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from ..evaluation.evaluator import Request

_REGISTRY: dict[str, type[Retriever]] = {}


def register_baseline(name: str):
    """Class decorator adding a :class:`Retriever` subclass to the registry under ``name`` (duplicates rejected)."""

    def wrap(cls: type[Retriever]) -> type[Retriever]:
        if name in _REGISTRY:
            raise ValueError(f"a baseline named {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_baseline_class(name: str) -> type[Retriever]:
    """The registered baseline class called ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown baseline {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def registered_baselines() -> list[str]:
    """Names of all registered baselines."""
    return sorted(_REGISTRY)


class Retriever(ABC):
    """Scores every catalog item for a request. Higher is better; ``-inf`` means "never retrieve"."""

    name: ClassVar[str] = ""
    supported_tasks: ClassVar[tuple[str, ...]] = ("search", "recommend")

    def __init__(self) -> None:
        self.item_ids: list[str] = []

    @abstractmethod
    def fit(self, catalog: Any, train: Mapping[str, Any], validation: Mapping[str, Any] | None = None,
            seed: int = 0) -> Retriever:
        """Learn from the catalog and the per-task training examples (``{"search": Dataset, "recommend": Dataset}``).

        ``validation`` (same shape) may be used for early stopping; never the test split.
        """

    @abstractmethod
    def score(self, requests: Sequence[Request]) -> torch.Tensor:
        """Float tensor ``[len(requests), len(self.item_ids)]`` of scores in :attr:`item_ids` order."""

    def check_tasks(self, requests: Sequence[Request]) -> None:
        """Raise if a request's task is one this model cannot serve."""
        for i, r in enumerate(requests):
            if r.task not in self.supported_tasks:
                raise ValueError(f"{self.name} cannot serve task {r.task!r} (request {i}); it supports {self.supported_tasks}")

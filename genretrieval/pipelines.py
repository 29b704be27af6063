"""``transformers.pipeline("generative-retrieval")``: search and recommendation with a saved GenerativeRetriever.

::

    import genretrieval  # registers the task (cheaply: see the package docstring)
    from transformers import pipeline

    pipe = pipeline("generative-retrieval", model="runs/default/model")
    pipe("wireless earbuds", top_k=10)                      # search: [{"item_id", "score", "rank", "title"}, ...]
    pipe(history=["item-1", "item-7"], top_k=5, exclude_history=True)  # recommendation
    pipe(["q1", "q2"], top_k=3, batch_size=2)              # one result list per query

``model`` is a directory written by :meth:`GenerativeRetriever.save_pretrained`: transformers loads the T5 model and
the tokenizer from it as usual, and the pipeline reads the item-ID scheme, titles and input settings from the same
directory (the model's ``name_or_path``). An already loaded :class:`GenerativeRetriever` works too
(``pipeline("generative-retrieval", model=retriever)``). Decoding is :meth:`GenerativeRetriever.retrieve`, so the
pipeline returns exactly the items and scores of :meth:`~GenerativeRetriever.search` and
:meth:`~GenerativeRetriever.recommend`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import genretrieval as _package

# This module registers the task itself (last line); the package's import hook would otherwise try to do it from
# inside the transformers import below, while this module is only half built.
_package._remove_pipeline_hook()

from transformers import AutoModelForSeq2SeqLM  # noqa: E402
from transformers.pipelines import PIPELINE_REGISTRY, Pipeline  # noqa: E402

from .modeling.retriever import RETRIEVER_FILE, GenerativeRetriever  # noqa: E402

__all__ = ["TASK", "GenerativeRetrievalPipeline", "register_pipeline"]

TASK = "generative-retrieval"


def _retriever_from_model(model: Any, tokenizer: Any | None) -> GenerativeRetriever:
    """The :class:`GenerativeRetriever` around ``model``: its ID scheme and settings come from the model's directory."""
    if isinstance(model, GenerativeRetriever):
        if tokenizer is not None and tokenizer is not model.tokenizer:
            raise ValueError("pass either a GenerativeRetriever (it brings its own tokenizer) or a model and a "
                             "tokenizer, not a GenerativeRetriever and another tokenizer")
        return model
    if isinstance(model, (str, os.PathLike)):
        return GenerativeRetriever.from_pretrained(model)
    directory = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "name_or_path", None)
    if directory and not Path(directory).is_dir():
        # transformers loaded the model from a Hub repo id: the rest of the retriever lives in the same snapshot.
        from .hub import resolve_pretrained

        try:
            directory = resolve_pretrained(directory)
        except (FileNotFoundError, ValueError):
            pass
    if not directory or not (Path(directory) / RETRIEVER_FILE).is_file():
        raise ValueError(
            f"the 'generative-retrieval' pipeline needs a directory written by GenerativeRetriever.save_pretrained "
            f"(with {RETRIEVER_FILE} and id_scheme.json next to the model), but the model comes from {directory!r}; "
            "pass such a directory as model=..., or a GenerativeRetriever object"
        )
    return GenerativeRetriever.from_parts(directory, model, tokenizer)


def _is_history(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value)


def _requests(inputs: Any, history: Any) -> dict[str, Any] | list[dict[str, Any]]:
    """One request dict (single input) or a list of them (batched input), from the public call arguments."""
    if inputs is None and history is None:
        raise ValueError("nothing to retrieve for: give a query (or a list of queries) or history=[item ids]")
    if inputs is not None and history is not None:
        raise ValueError("give either a query or history=..., not both: a request is a search or a recommendation")
    if history is not None:
        if isinstance(history, str):
            raise TypeError(f"history must be a list of item ids (or a list of such lists), not a string: {history!r}")
        if not isinstance(history, (list, tuple)) or len(history) == 0:
            raise ValueError(f"history must be a non-empty list of item ids (or a list of such lists), got {history!r}")
        if _is_history(history):
            return {"history": list(history)}
        if all(isinstance(h, (list, tuple)) for h in history):
            for i, h in enumerate(history):
                if len(h) == 0:
                    raise ValueError(f"history {i} of the batch is empty: a recommendation needs at least one item")
            return [{"history": list(h)} for h in history]
        raise TypeError("history must be a list of item ids (one history) or a list of lists of item ids (a batch), "
                        f"not a mix: {history!r}")
    if isinstance(inputs, str):
        return {"query": inputs}
    if isinstance(inputs, (list, tuple)):
        if len(inputs) == 0:
            raise ValueError("the list of queries is empty: nothing to retrieve for")
        bad = [q for q in inputs if not isinstance(q, str)]
        if bad:
            raise TypeError(f"queries must be strings, got {bad[0]!r}; pass histories as history=[[...], ...]")
        return [{"query": q} for q in inputs]
    raise TypeError(f"a query must be a string or a list of strings, got {type(inputs).__name__}; "
                    "pass histories as history=[...]")


class GenerativeRetrievalPipeline(Pipeline):
    """Search (query → items) and recommendation (history → next items) with one generative retriever.

    Each result is a list of ``{"item_id", "score", "rank", "title"}`` dicts, best first: ``score`` is the
    constrained log-probability (as in :class:`~genretrieval.decoding.RetrievalOutput`), ``rank`` starts at 1,
    ``title`` falls back to the item id when the saved retriever has no title for it.
    """

    _load_tokenizer = None  # loaded from the model directory by pipeline(); a GenerativeRetriever brings its own
    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False

    def __init__(self, model: Any, tokenizer: Any | None = None, **kwargs: Any):
        # Set first: the base constructor validates call parameters (top_k needs the catalog size).
        self.retriever = _retriever_from_model(model, tokenizer)
        super().__init__(model=self.retriever.model, tokenizer=self.retriever.tokenizer, **kwargs)

    def __call__(self, inputs: str | Sequence[str] | None = None, *, history: Sequence[Any] | None = None,
                 **kwargs: Any) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        """Retrieve for a query, a list of queries, ``history=[ids]`` or ``history=[[ids], ...]``.

        Keyword arguments: ``top_k`` (default 10), ``exclude_history`` (recommendation: never return items of the
        history; ignored for queries), ``num_beams`` (multi-token IDs: beams of the constrained beam search),
        ``batch_size``. A single request gives one result list; a list of requests gives one list per request.
        """
        requests = _requests(inputs, history)
        return super().__call__(requests, **kwargs)

    def _sanitize_parameters(self, top_k: int | None = None, exclude_history: bool | None = None,
                             num_beams: int | None = None) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        preprocess: dict[str, Any] = {}
        forward: dict[str, Any] = {}
        if top_k is not None:
            num_items = len(self.retriever.id_scheme)
            if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_items:
                raise ValueError(f"top_k must be an integer between 1 and the number of items ({num_items}), "
                                 f"got {top_k!r}")
            forward["top_k"] = top_k
        if num_beams is not None:
            if isinstance(num_beams, bool) or not isinstance(num_beams, int) or num_beams < 1:
                raise ValueError(f"num_beams must be a positive integer, got {num_beams!r}")
            forward["num_beams"] = num_beams
        if exclude_history is not None:
            if not isinstance(exclude_history, bool):
                raise ValueError(f"exclude_history must be True or False, got {exclude_history!r}")
            preprocess["exclude_history"] = exclude_history
        return preprocess, forward, {}

    def preprocess(self, request: Mapping[str, Any], exclude_history: bool = False) -> dict[str, Any]:
        """Formatted model input (the retriever's own formatting) and the items to exclude, if any."""
        if "history" in request:
            history = request["history"]
            exclude = frozenset(history) if exclude_history else None
            return {"source": self.retriever.format_recommend(history), "exclude": exclude}
        return {"source": self.retriever.format_search(request["query"]), "exclude": None}

    def _forward(self, model_inputs: dict[str, Any], top_k: int = 10, num_beams: int | None = None) -> dict[str, Any]:
        sources = model_inputs["source"]
        # batch_size > 1 collates each field into a list; batch_size 1 passes the single request through.
        batched = not isinstance(sources, str)
        sources = list(sources) if batched else [sources]
        excludes = list(model_inputs["exclude"]) if batched else [model_inputs["exclude"]]
        exclude = None if all(e is None for e in excludes) else [e or frozenset() for e in excludes]
        out = self.retriever.retrieve(sources, top_k, exclude=exclude, batch_size=len(sources), num_beams=num_beams)
        if batched:
            # Lists with one entry per input: the base class's batch unrolling hands each input its own entry.
            return {"item_ids": out.item_ids, "scores": out.scores}
        return {"item_ids": out.item_ids[0], "scores": out.scores[0]}

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        """Result dicts, best first."""
        return [{"item_id": item, "score": float(score), "rank": rank, "title": self.retriever.title(item)}
                for rank, (item, score) in enumerate(zip(model_outputs["item_ids"], model_outputs["scores"]), start=1)]

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        """Save the whole retriever (model, tokenizer, ID scheme, settings, titles), atomically.

        The base class would save only model and tokenizer, and record this class as Hub remote code.
        """
        if kwargs:
            raise TypeError(f"unexpected arguments for save_pretrained: {sorted(kwargs)}")
        self.retriever.save_pretrained(save_directory)


def register_pipeline() -> None:
    """Register ``"generative-retrieval"`` with transformers' ``PIPELINE_REGISTRY`` (idempotent).

    ``import genretrieval`` already arranges this; call it only after replacing the registry entry yourself.
    """
    current = PIPELINE_REGISTRY.supported_tasks.get(TASK)
    if current is not None and current.get("impl") is GenerativeRetrievalPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(TASK, pipeline_class=GenerativeRetrievalPipeline, pt_model=AutoModelForSeq2SeqLM,
                                        type="text")


register_pipeline()

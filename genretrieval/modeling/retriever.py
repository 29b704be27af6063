"""The generative retriever: a seq2seq model + its tokenizer + the item-ID scheme, saved as one directory.

Directory layout written by :meth:`GenerativeRetriever.save_pretrained`::

    config.json, model.safetensors, generation_config.json   # the T5 model (safetensors only)
    tokenizer.json, tokenizer_config.json, ...                # text pieces + task prefixes + ID tokens
    id_scheme.json                                            # item ↔ token sequence
    trie.safetensors                                          # compiled trie of valid IDs (rebuilt if absent)
    genretrieval.json                                         # input formatting (prefixes, history cap) + version
    catalog_titles.json                                       # optional: item → title, for readable output
    README.md                                                 # generated model card (genretrieval.hub)
    training_config.json, eval_results.json                   # optional: training config, last test metrics
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..ids import ItemIdScheme, load_id_scheme

RETRIEVER_FILE = "genretrieval.json"
TITLES_FILE = "catalog_titles.json"
SEARCH_PREFIX = "search:"
RECOMMEND_PREFIX = "recommend:"


@dataclass
class ModelConfig:
    """How to build the seq2seq model. Defaults give a ~3M-parameter T5 that trains on a CPU in minutes."""

    model_name_or_path: str | None = None  # local dir or Hub id of a pretrained seq2seq model; None = from config
    d_model: int = 128  # TIGER's size; enough for catalogs of ~10k items on CPU
    d_ff: int = 512  # 4 × d_model, as in T5
    num_layers: int = 4  # encoder layers
    num_decoder_layers: int = 4  # decoder layers
    num_heads: int = 4  # d_model / num_heads = d_kv
    d_kv: int = 32  # size of each attention head
    dropout_rate: float = 0.1  # T5's default
    max_source_length: int = 64  # tokens of the input (prefix + query or history); longer inputs are truncated
    max_history: int = 20  # most recent items of a history placed in a recommend input (fewer if they don't fit)

    def __post_init__(self) -> None:
        for name in ("d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "d_kv", "max_source_length", "max_history"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive integer, got {value!r}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"ModelConfig.dropout_rate must be in [0, 1), got {self.dropout_rate!r}")


def build_model(config: ModelConfig, tokenizer: Any) -> torch.nn.Module:
    """A T5 seq2seq model: pretrained (``model_name_or_path``) with resized embeddings, or fresh from ``config``."""
    from transformers import AutoModelForSeq2SeqLM, T5Config, T5ForConditionalGeneration

    if config.model_name_or_path:
        model = AutoModelForSeq2SeqLM.from_pretrained(config.model_name_or_path, use_safetensors=None)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        return model
    t5_config = T5Config(
        vocab_size=len(tokenizer),
        d_model=config.d_model,
        d_ff=config.d_ff,
        d_kv=config.d_kv,
        num_layers=config.num_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        dropout_rate=config.dropout_rate,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
    )
    return T5ForConditionalGeneration(t5_config)


@contextmanager
def _inference(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode + no autograd for the duration; the model's training flag is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


@contextmanager
def _output_rows(model: torch.nn.Module, token_ids: torch.Tensor) -> Iterator[bool]:
    """Within the block the model's output layer computes the logits of ``token_ids`` only (in that order).

    Yields whether it could: an output layer that is not a plain ``nn.Linear`` (e.g. wrapped by an adapter) is left
    alone, and the logits keep the whole vocabulary.
    """
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear:
        yield False
        return
    model.set_output_embeddings(_RowsOf(head, token_ids))
    try:
        yield True
    finally:
        model.set_output_embeddings(head)


class _RowsOf(torch.nn.Module):
    """A linear layer restricted to some of its output rows (shares the weights, copies nothing)."""

    def __init__(self, linear: torch.nn.Linear, rows: torch.Tensor):
        super().__init__()
        object.__setattr__(self, "linear", linear)  # not a submodule: the model's state dict must not change
        self.rows = rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)[..., rows]`` without computing the other rows."""
        bias = None if self.linear.bias is None else self.linear.bias[self.rows]
        return torch.nn.functional.linear(x, self.linear.weight[self.rows], bias)


class GenerativeRetriever:
    """One model that answers search (query → items) and recommendation (history → next items)."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        id_scheme: ItemIdScheme,
        *,
        max_source_length: int = 64,
        max_history: int = 20,
        titles: Mapping[str, str] | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.id_scheme = id_scheme
        self.max_source_length = max_source_length
        self.max_history = max_history
        self.titles = dict(titles) if titles else {}
        self._trie = None
        self._plan: dict[str, Any] | None = None
        self._prefix_tokens: int | None = None
        self._broadcast_encoder = True  # False once the model's attention refused batch-1 encoder states (score())
        self.heads: Any = None  # AuxiliaryHeads attached for training (saved as heads.json + heads.safetensors)
        self.saved_heads: Any = None  # (ModuleDict, heads.json) of the heads found by from_pretrained, if any
        missing = [t for t in id_scheme.new_tokens()[:1] + id_scheme.new_tokens()[-1:] if t not in tokenizer.get_vocab()]
        if missing:
            raise ValueError(f"the tokenizer lacks the item-ID tokens of the scheme (e.g. {missing[0]!r}); add them first")

    def with_model(self, model: torch.nn.Module) -> GenerativeRetriever:
        """The same retriever around another model object (e.g. the unwrapped one after ``accelerator.prepare``)."""
        other = GenerativeRetriever(model, self.tokenizer, self.id_scheme, max_source_length=self.max_source_length,
                                    max_history=self.max_history, titles=self.titles)
        other._trie = self._trie
        other._plan = self._plan
        other.heads, other.saved_heads = self.heads, self.saved_heads
        return other

    # ---- input formatting: the single place where sources are written -----------------------------------------
    def format_search(self, query: str) -> str:
        """Model input for a search request."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"a search query must be a non-empty string, got {query!r}")
        return f"{SEARCH_PREFIX} {' '.join(query.split())}"

    @property
    def history_items_kept(self) -> int:
        """How many of a history's most recent items a recommend input holds: ``max_history``, or fewer when their
        ID tokens would not fit ``max_source_length`` (e.g. 15 four-token semantic IDs in 64 tokens)."""
        if self._prefix_tokens is None:  # the tokenizer does not change; the lengths may, so only this is cached
            self._prefix_tokens = len(self.tokenizer(RECOMMEND_PREFIX, add_special_tokens=False)["input_ids"])
        # Tokenizers truncate on the right, which would drop the *newest* items, the ones that matter most.
        fit = (self.max_source_length - self._prefix_tokens - 1) // self.id_scheme.id_length  # 1: the eos token
        return max(1, min(self.max_history, fit))

    def format_recommend(self, history: Sequence[str]) -> str:
        """Model input for a recommendation request (item ids, oldest first; the newest
        :attr:`history_items_kept` items are kept)."""
        if isinstance(history, str):
            raise TypeError("a history is a list of item ids, not a string")
        if len(history) == 0:
            raise ValueError("a recommendation history must contain at least one item")
        kept = list(history)[-self.history_items_kept :]
        return f"{RECOMMEND_PREFIX} " + "".join(self.id_scheme.encode_text(i) for i in kept)

    def format_example(self, example: Mapping[str, Any]) -> str:
        """Model input for a row of an examples table (``task``, ``query``, ``history``)."""
        if example["task"] == "search":
            return self.format_search(example["query"])
        if example["task"] == "recommend":
            return self.format_recommend(example["history"])
        raise ValueError(f"unknown task {example['task']!r}; expected 'search' or 'recommend'")

    def format_target(self, item_id: str) -> str:
        """Decoder target text of an item (its ID tokens; the tokenizer appends eos)."""
        return self.id_scheme.encode_text(item_id)

    # ---- retrieval -------------------------------------------------------------------------------------------
    @property
    def trie(self):
        """Trie of valid item IDs (built once, on first use)."""
        if self._trie is None:
            from ..decoding import ItemTrie

            self._trie = ItemTrie.from_scheme(self.id_scheme, self.tokenizer)
        return self._trie

    def retrieve(self, sources: Sequence[str], k: int = 10, *, exclude: Sequence[Collection[str]] | None = None,
                 batch_size: int = 64, num_beams: int | None = None):
        """Top-``k`` items for already formatted inputs; returns :class:`~genretrieval.decoding.RetrievalOutput`."""
        from ..decoding import retrieve

        return retrieve(self.model, self.tokenizer, self.id_scheme, list(sources), k, num_beams=num_beams,
                        batch_size=batch_size, max_source_length=self.max_source_length, trie=self.trie,
                        exclude=list(exclude) if exclude is not None else None)

    def score(self, requests: Sequence[Any], batch_size: int = 128) -> torch.Tensor:
        """Constrained log-probability of every item for each request ``[n, num_items]`` (catalog order).

        Makes the generative model a :class:`~genretrieval.baselines.base.Retriever` for the evaluation protocols.
        Scores are exact, the same numbers constrained beam search reports: one decoder step scores every atomic
        ID; multi-token IDs are teacher-forced, one decoder pass per *branching* ID prefix (a prefix with a single
        valid continuation contributes log-probability 0), so the cost grows with ``requests x branching
        prefixes``: about 0.1 s per request for 1,682 items with 3 x 256 codes on one CPU thread. On very large
        catalogs rank with :meth:`retrieve` (beam search) instead.
        """
        if self.id_scheme.id_length != 1:
            return self._score_multi_token(requests, batch_size=max(1, min(batch_size, 16)))
        item_columns = self.trie.codes[:, 0]
        model = self.model
        out = []
        with _inference(model):
            for enc in self._encoded_batches(requests, batch_size):
                start_ids = torch.full((len(enc["input_ids"]), 1), model.config.decoder_start_token_id,
                                       device=model.device)
                logits = model(**enc, decoder_input_ids=start_ids).logits[:, 0, :]
                out.append(torch.log_softmax(logits[:, item_columns.to(logits.device)].float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty((0, len(self.id_scheme)))

    def _encoded_batches(self, requests: Sequence[Any], batch_size: int):
        """Tokenised model inputs of ``requests``, ``batch_size`` at a time, on the model's device."""
        for start in range(0, len(requests), batch_size):
            chunk = [self._format_request(r) for r in requests[start : start + batch_size]]
            yield self.tokenizer(chunk, max_length=self.max_source_length, truncation=True, padding=True,
                                 return_tensors="pt").to(self.model.device)

    def _score_plan(self) -> list[dict[str, torch.Tensor]]:
        """Index tensors of the teacher-forced scorer, one dict per ID position ``j``, built once per ID scheme.

        Only *branching* depth-``j`` prefixes need a decoder pass: under the trie constraint a prefix with a single
        valid next token gives it log-probability 0. With 3 x 256 codes most deeper prefixes have one child (and
        the collision digit is almost always 0), so this skips most of the work. Per position: ``prefixes [R, j]``
        (the branching prefixes), ``tokens [T]`` (the level's distinct tokens), ``mask [R, T]`` (each prefix's
        valid children), ``item_row [N]`` (the item's branching prefix, -1 if its prefix does not branch) and
        ``item_col [N]`` (the item's token among ``tokens``).
        """
        if getattr(self, "_plan", None) is not None:
            return self._plan
        codes = self.trie.codes.cpu()
        levels = []
        for j in range(codes.shape[1]):
            tokens, item_col = torch.unique(codes[:, j], return_inverse=True)
            if j:
                prefixes, group = torch.unique(codes[:, :j], dim=0, return_inverse=True)
            else:
                prefixes, group = codes[:1, :0], torch.zeros(len(codes), dtype=torch.long)
            allowed = torch.zeros(len(prefixes), len(tokens), dtype=torch.bool)
            allowed[group, item_col] = True
            branching = allowed.sum(1) > 1
            row_of_group = torch.full((len(prefixes),), -1, dtype=torch.long)
            row_of_group[branching] = torch.arange(int(branching.sum()))
            levels.append({"prefixes": prefixes[branching], "tokens": tokens, "mask": allowed[branching],
                           "item_row": row_of_group[group], "item_col": item_col})
        self._plan = levels
        return self._plan

    def _score_multi_token(self, requests: Sequence[Any], batch_size: int, chunk_sequences: int = 4096) -> torch.Tensor:
        model = self.model
        device = model.device
        start_id = model.config.decoder_start_token_id
        levels = []
        for level in self._score_plan():
            if not len(level["prefixes"]):
                continue  # no prefix branches at this position: every item's log-probability there is 0
            level = {k: v.to(device) for k, v in level.items()}
            level["decoder_input_ids"] = torch.cat(
                [torch.full((len(level["prefixes"]), 1), start_id, device=device), level["prefixes"]], dim=1)
            levels.append(level)
        # The output layer computes logits for the ID tokens only: with a large text vocabulary it is most of the cost.
        all_tokens = torch.cat([lv["tokens"] for lv in levels]) if levels else torch.zeros(1, dtype=torch.long)
        vocab, columns = torch.unique(all_tokens, return_inverse=True)
        num_items = len(self.id_scheme)
        out = []
        with _inference(model), _output_rows(model, vocab) as sliced:
            for level, cols in zip(levels, torch.split(columns, [len(lv["tokens"]) for lv in levels])):
                level["columns"] = cols if sliced else level["tokens"]
            for enc in self._encoded_batches(requests, batch_size):
                hidden = model.get_encoder()(**enc).last_hidden_state
                total = torch.zeros(len(hidden), num_items, device=device)
                for i in range(len(hidden)):
                    for level in levels:
                        inputs = level["decoder_input_ids"]
                        log_probs = torch.cat([
                            self._next_token_log_probs(hidden[i : i + 1], enc["attention_mask"][i : i + 1],
                                                       inputs[s : s + chunk_sequences], level["columns"],
                                                       level["mask"][s : s + chunk_sequences])
                            for s in range(0, len(inputs), chunk_sequences)])
                        rows = level["item_row"]
                        picked = log_probs[rows.clamp(min=0), level["item_col"]]
                        total[i] += torch.where(rows >= 0, picked, torch.zeros_like(picked))
                out.append(total.cpu())
        return torch.cat(out) if out else torch.empty((0, num_items))

    def _next_token_log_probs(self, hidden: torch.Tensor, attention_mask: torch.Tensor, decoder_input_ids: torch.Tensor,
                              columns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Constrained log-probabilities ``[R, T]`` of the next ID token after each of ``R`` prefixes, one request.

        The request's encoder states go in with batch size 1 and broadcast over the prefixes in cross-attention, so
        their keys and values are projected once instead of once per prefix (the dominant cost otherwise). A model
        whose attention does not broadcast gets the states expanded to the prefix batch (same numbers, slower).
        """
        logits = None
        if self._broadcast_encoder:
            try:
                logits = self.model(encoder_outputs=(hidden,), attention_mask=attention_mask,
                                    decoder_input_ids=decoder_input_ids).logits
            except RuntimeError:
                self._broadcast_encoder = False  # remembered: later calls go straight to the expanded path
        if logits is None:
            n = len(decoder_input_ids)
            logits = self.model(encoder_outputs=(hidden.expand(n, -1, -1),),
                                attention_mask=attention_mask.expand(n, -1), decoder_input_ids=decoder_input_ids).logits
        z = logits[:, -1, columns].float().masked_fill(~mask, float("-inf"))
        return torch.log_softmax(z, dim=-1)

    def _format_request(self, request: Any) -> str:
        # Built from the request's fields, not its ``source``: other models' requests carry their own formats.
        if request.task == "search":
            return self.format_search(request.query)
        return self.format_recommend(request.history)

    @property
    def item_ids(self) -> list[str]:
        """Catalog order of :meth:`score` columns."""
        return self.id_scheme.item_ids

    def search(self, queries: Sequence[str] | str, k: int = 10, **kwargs: Any):
        """Top-``k`` items for each query."""
        queries = [queries] if isinstance(queries, str) else list(queries)
        return self.retrieve([self.format_search(q) for q in queries], k, **kwargs)

    def recommend(self, histories: Sequence[Sequence[str]], k: int = 10, *, exclude_history: bool = False, **kwargs: Any):
        """Top-``k`` next items for each history; ``exclude_history`` drops items already in it."""
        histories = [list(h) for h in histories]
        exclude = [set(h) for h in histories] if exclude_history else None
        return self.retrieve([self.format_recommend(h) for h in histories], k, exclude=exclude, **kwargs)

    # ---- persistence -----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, *, training_config: Mapping[str, Any] | None = None,
                        metrics: Mapping[str, Mapping[str, float]] | None = None, repo_id: str | None = None,
                        card_data: Mapping[str, Any] | None = None) -> None:
        """Write model (safetensors), tokenizer, ID scheme, settings and a model card (``README.md``).

        The target appears complete or not at all. ``training_config`` (e.g. ``dataclasses.asdict(config)``) is
        written to ``training_config.json``; ``metrics`` (task → metric → value, e.g. the test metrics) go to
        ``eval_results.json`` and the card. Both default to what :meth:`from_pretrained` loaded, so a loaded model
        re-saves or re-pushes with its card intact. ``repo_id`` and ``card_data`` only shape the card
        (see :func:`genretrieval.hub.build_model_card`).
        """
        from ..fileio import atomic_write_text, replace_dir
        from ..hub import write_card_files

        loaded = getattr(self, "hub_metadata", None) or {}
        training_config = training_config if training_config is not None else loaded.get("training_config")
        metrics = metrics if metrics is not None else loaded.get("metrics")
        card_data = card_data if card_data is not None else loaded.get("card_data")

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp"))
        try:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            self.id_scheme.save(tmp)
            from ..decoding.trie import save_retriever_trie

            save_retriever_trie(self.trie, tmp, self.tokenizer)
            settings = {"max_source_length": self.max_source_length, "max_history": self.max_history,
                        "search_prefix": SEARCH_PREFIX, "recommend_prefix": RECOMMEND_PREFIX,
                        "genretrieval_version": _version()}
            atomic_write_text(tmp / RETRIEVER_FILE, json.dumps(settings, indent=2))
            if self.titles:
                atomic_write_text(tmp / TITLES_FILE, json.dumps(self.titles))
            write_card_files(self, tmp, metrics=metrics, training_config=training_config, repo_id=repo_id,
                             card_data=card_data)
            if self.heads is not None:  # auxiliary JSR/UnifiedSSR/SESRec heads trained beside the model
                self.heads.save(tmp)
            replace_dir(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, device: str | torch.device | None = None,
                        revision: str | None = None, token: str | bool | None = None,
                        cache_dir: str | os.PathLike | None = None, local_files_only: bool = False) -> GenerativeRetriever:
        """Load what :meth:`save_pretrained` wrote, from a directory or a Hub repo id (safetensors only; no remote code).

        A repo id is fetched with ``huggingface_hub.snapshot_download`` (``revision``, ``token``, ``cache_dir``,
        ``local_files_only``); with ``HF_HUB_OFFLINE=1`` it is served from the cache or fails naming the repo.
        The compiled trie of valid IDs is read from ``trie.safetensors`` (rebuilt from ``id_scheme.json`` if absent).
        """
        from transformers import AutoModelForSeq2SeqLM

        from ..hub import resolve_pretrained

        directory = resolve_pretrained(name_or_path, revision=revision, token=token, cache_dir=cache_dir,
                                       local_files_only=local_files_only)
        if not (directory / RETRIEVER_FILE).is_file():
            raise FileNotFoundError(f"{str(name_or_path)!r} is not a saved GenerativeRetriever (no {RETRIEVER_FILE})")
        model = AutoModelForSeq2SeqLM.from_pretrained(directory, use_safetensors=True, trust_remote_code=False)
        if device is not None:
            model.to(device)
        model.eval()
        return cls.from_parts(directory, model)

    @classmethod
    def from_parts(cls, directory: str | os.PathLike, model: torch.nn.Module, tokenizer: Any = None) -> GenerativeRetriever:
        """Wrap an already loaded ``model`` (and tokenizer) with the ID scheme, settings and card of ``directory``.

        ``directory`` is a local directory written by :meth:`save_pretrained`; the pipeline uses this after
        transformers has loaded the model itself.
        """
        from transformers import AutoTokenizer

        from ..hub import read_card_files

        directory = Path(directory)
        settings_path = directory / RETRIEVER_FILE
        if not settings_path.is_file():
            raise FileNotFoundError(f"{str(directory)!r} is not a saved GenerativeRetriever (no {RETRIEVER_FILE})")
        settings = json.loads(settings_path.read_text(encoding="utf-8"))
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
        titles_path = directory / TITLES_FILE
        titles = json.loads(titles_path.read_text(encoding="utf-8")) if titles_path.is_file() else None
        retriever = cls(model, tokenizer, load_id_scheme(directory), max_source_length=settings["max_source_length"],
                        max_history=settings["max_history"], titles=titles)
        # Kept so that save_pretrained/push_to_hub of a loaded model carry its training config, metrics and card.
        retriever.hub_metadata = read_card_files(directory)
        from ..decoding.trie import load_retriever_trie

        retriever._trie = load_retriever_trie(directory, retriever.id_scheme, tokenizer)  # None: built on first use
        from .heads.auxiliary import load_heads

        retriever.saved_heads = load_heads(directory)
        return retriever

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | bool | None = None,
                    commit_message: str | None = None, revision: str | None = None,
                    training_config: Mapping[str, Any] | None = None,
                    metrics: Mapping[str, Mapping[str, float]] | None = None,
                    card_data: Mapping[str, Any] | None = None) -> Any:
        """Upload everything needed to serve (model, tokenizer, ID scheme, config, model card) as one Hub commit.

        Creates ``repo_id`` if needed (``private`` applies then), commits to ``revision`` (a branch, created if
        missing) and returns the ``CommitInfo``. Metadata arguments default to those loaded by :meth:`from_pretrained`.
        """
        from ..hub import push_to_hub

        return push_to_hub(self, repo_id, private=private, token=token, commit_message=commit_message,
                           revision=revision, metrics=metrics, training_config=training_config, card_data=card_data)

    def title(self, item_id: str) -> str:
        """Human-readable title of an item (falls back to its id)."""
        return self.titles.get(item_id, item_id)


def _version() -> str:
    from .. import __version__

    return __version__

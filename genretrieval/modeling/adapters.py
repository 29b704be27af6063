"""Parameter-efficient fine-tuning (PEFT) of a generative retriever: LoRA & co. plus trainable ID-token rows.

:func:`apply_adapter` freezes the retriever's seq2seq model and wraps it in a PEFT model: low-rank (or IA3) updates
on the ``target_modules`` and, with ``train_new_tokens``, trainable embedding rows for the item-ID tokens and task
prefixes (PEFT's ``trainable_token_indices``: one copy of those rows, used by the encoder and decoder inputs and the
tied output layer). :func:`save_adapter` writes an adapter directory that holds everything except the base weights::

    adapter_config.json, adapter_model.safetensors    # PEFT's files (no full embedding matrix)
    tokenizer.json, tokenizer_config.json             # the tokenizer the adapter was trained with
    id_scheme.json                                    # item <-> token sequence
    genretrieval_adapter.json                         # input formatting, embedding rows, fingerprint of the base
    catalog_titles.json                               # optional: item -> title

:func:`load_adapter` puts it back onto its base (a saved retriever or pretrained seq2seq directory, or a
:class:`GenerativeRetriever`), resizing the base's embeddings first, and :func:`merge_adapter` folds it into plain
weights so the result saves and loads as an ordinary retriever.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..fileio import atomic_write_text, replace_dir
from ..ids import load_id_scheme
from .retriever import RECOMMEND_PREFIX, RETRIEVER_FILE, SEARCH_PREFIX, TITLES_FILE, GenerativeRetriever

ADAPTER_FILE = "genretrieval_adapter.json"
LORA_METHODS = ("lora", "dora")  # the PEFT configs that accept trainable_token_indices
FEEDFORWARD_OUTPUTS = ("wo", "fc2", "down_proj")  # IA3 scales these layers' inputs rather than their outputs
_BASE_ATTR = "_genretrieval_base"  # set on the PEFT model: what save_adapter records about the base


def is_adapted(model: Any) -> bool:
    """Whether ``model`` (or the module inside a DDP wrapper) is a PEFT model."""
    peft = sys.modules.get("peft")  # a model can only be a PeftModel if peft was imported: never import it here
    return peft is not None and isinstance(_unwrap(model), peft.PeftModel)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts (tied weights counted once)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def new_token_ids(retriever: GenerativeRetriever) -> list[int]:
    """Vocabulary ids of the tokens genretrieval adds: the item-ID tokens of the scheme and the task prefixes."""
    vocab = retriever.tokenizer.get_vocab()
    tokens = list(retriever.id_scheme.new_tokens())
    missing = [t for t in tokens if t not in vocab]
    if missing:
        raise ValueError(f"the tokenizer lacks {len(missing)} item-ID tokens of the scheme (e.g. {missing[0]!r})")
    # A pretrained tokenizer may spell a prefix with text pieces; only single-token prefixes have a row to train.
    tokens += [p for p in (SEARCH_PREFIX, RECOMMEND_PREFIX) if p in vocab]
    return sorted({vocab[t] for t in tokens})


def adaptable_layer_names(model: torch.nn.Module) -> list[str]:
    """Last name parts of the linear layers of ``model``: the valid ``target_modules`` (T5: q k v o wi wo lm_head)."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear)})


def build_peft_config(settings: Any, token_ids: list[int]) -> Any:
    """The ``peft`` config of ``settings`` (a :class:`~genretrieval.training.arguments.PeftSettings`)."""
    from peft import IA3Config, LoHaConfig, LoKrConfig, LoraConfig, TaskType

    targets = list(settings.target_modules)
    method = settings.method
    if token_ids and method not in LORA_METHODS:
        raise ConfigError(f"peft.train_new_tokens needs peft.method in {list(LORA_METHODS)}, got {method!r}")
    if method in LORA_METHODS:
        return LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=settings.r, lora_alpha=settings.alpha,
                          lora_dropout=settings.dropout, target_modules=targets, use_dora=method == "dora",
                          trainable_token_indices=list(token_ids) or None)
    if method in ("loha", "lokr"):
        cls = LoHaConfig if method == "loha" else LoKrConfig
        return cls(task_type=TaskType.SEQ_2_SEQ_LM, r=settings.r, alpha=settings.alpha,
                   rank_dropout=settings.dropout, target_modules=targets)
    if method == "ia3":
        return IA3Config(task_type=TaskType.SEQ_2_SEQ_LM, target_modules=targets,
                         feedforward_modules=[t for t in targets if t in FEEDFORWARD_OUTPUTS])
    raise ConfigError(f"peft.method: unknown adapter method {method!r}; choose one of "
                      f"{list(LORA_METHODS) + ['loha', 'lokr', 'ia3']}")


def apply_adapter(retriever: GenerativeRetriever, settings: Any) -> GenerativeRetriever:
    """Freeze ``retriever.model`` and wrap it in a trainable adapter; returns ``retriever`` (changed in place).

    ``settings`` is a :class:`~genretrieval.training.arguments.PeftSettings`; ``method: none`` leaves the retriever
    untouched. Bad settings for this model (a target layer it does not have) raise :class:`ConfigError`.
    """
    if settings.method == "none":
        return retriever
    if is_adapted(retriever.model):
        raise ValueError("the retriever already carries an adapter; merge_adapter() it before adding another")
    from peft import get_peft_model

    model = _unwrap(retriever.model)
    available = adaptable_layer_names(model)
    unknown = [t for t in settings.target_modules if t not in available]
    if unknown:
        raise ConfigError(f"peft.target_modules: {unknown} match no linear layer of {type(model).__name__}; "
                          f"its layers are {available}")
    token_ids = new_token_ids(retriever) if settings.train_new_tokens else []
    rows = model.get_input_embeddings().num_embeddings
    if token_ids and token_ids[-1] >= rows:
        raise ValueError(f"token id {token_ids[-1]} has no embedding row (the model has {rows}); resize the model "
                         "to len(tokenizer) first")
    base = {"vocab_rows": rows, "fingerprint": base_fingerprint(model)}
    with warnings.catch_warnings():
        # PEFT asks transformers about gradient checkpointing through a name v5 deprecates; not ours to act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, build_peft_config(settings, token_ids))
    setattr(peft_model, _BASE_ATTR, base)
    retriever.model = peft_model
    return retriever


def save_adapter(retriever: GenerativeRetriever, directory: str | os.PathLike) -> None:
    """Write the adapter + tokenizer + ID scheme to ``directory`` (without base weights); appears whole or not at all."""
    model = _unwrap(retriever.model)
    if not is_adapted(model):
        raise ValueError("the retriever has no adapter to save; use apply_adapter() or load_adapter() first")
    from .retriever import _version

    # A PEFT model built outside apply_adapter has no record of its base: no fingerprint check on loading then.
    base = getattr(model, _BASE_ATTR, None) or {"vocab_rows": model.get_base_model().config.vocab_size,
                                                "fingerprint": None}
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.tmp"))
    try:
        # The embedding matrix stays out: trainable_token_indices already stores the rows that changed.
        model.save_pretrained(tmp, safe_serialization=True, save_embedding_layers=False)
        retriever.tokenizer.save_pretrained(tmp)
        retriever.id_scheme.save(tmp)
        info = {"max_source_length": retriever.max_source_length, "max_history": retriever.max_history,
                "search_prefix": SEARCH_PREFIX, "recommend_prefix": RECOMMEND_PREFIX,
                "peft_type": str(model.peft_config[model.active_adapter].peft_type.value),
                "base_model": model.peft_config[model.active_adapter].base_model_name_or_path,
                "base_vocab_rows": base["vocab_rows"], "base_fingerprint": base["fingerprint"],
                "genretrieval_version": _version()}
        atomic_write_text(tmp / ADAPTER_FILE, json.dumps(info, indent=2))
        if retriever.titles:
            atomic_write_text(tmp / TITLES_FILE, json.dumps(retriever.titles))
        replace_dir(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_adapter(base: GenerativeRetriever | str | os.PathLike, adapter_dir: str | os.PathLike, *,
                 is_trainable: bool = False, check_base: bool = True) -> GenerativeRetriever:
    """Put the adapter saved in ``adapter_dir`` onto ``base``; returns a retriever whose model is the PEFT model.

    ``base`` is the model the adapter was trained from: a :class:`GenerativeRetriever` (its model is copied, not
    changed), a saved retriever directory or a pretrained seq2seq directory. Its embeddings are resized to the
    adapter's vocabulary before loading. With ``check_base`` a base whose weights differ from the one the adapter
    was trained on is an error (outputs would silently differ). ``is_trainable`` keeps training the adapter.
    """
    adapter_dir = Path(adapter_dir)
    info_path = adapter_dir / ADAPTER_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{str(adapter_dir)!r} is not an adapter written by save_adapter (no {ADAPTER_FILE})")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    if isinstance(base, GenerativeRetriever):
        if is_adapted(base.model):
            raise ValueError("the base retriever already carries an adapter; pass the plain base model")
        model, base_tokenizer = copy.deepcopy(_unwrap(base.model)), base.tokenizer
    else:
        base_dir = Path(base)
        if (base_dir / RETRIEVER_FILE).is_file():
            loaded = GenerativeRetriever.from_pretrained(base_dir)
            model, base_tokenizer = loaded.model, loaded.tokenizer
        elif (base_dir / "config.json").is_file():
            model = AutoModelForSeq2SeqLM.from_pretrained(base_dir, use_safetensors=True, trust_remote_code=False)
            base_tokenizer = None
        else:
            raise FileNotFoundError(f"base {str(base_dir)!r} is neither a saved retriever nor a model directory")
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=False)
    if base_tokenizer is not None:
        _check_vocabularies(base_tokenizer.get_vocab(), tokenizer.get_vocab())
    rows, wanted = model.get_input_embeddings().num_embeddings, int(info["base_vocab_rows"])
    if rows > wanted:
        raise ValueError(f"the base has {rows} embedding rows but the adapter was trained on {wanted}: wrong base model")
    if rows < wanted:
        # The new rows are placeholders, so they must all be trainable tokens whose values the adapter stores.
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
        stored = config.get("trainable_token_indices") or []
        stored = set(stored if isinstance(stored, list) else [i for v in stored.values() for i in v])
        unsaved = [i for i in range(rows, wanted) if i not in stored]
        if unsaved:
            raise ValueError(f"the base has {rows} embedding rows, the adapter needs {wanted}, and rows such as "
                             f"{unsaved[0]} are not stored in it (trained without train_new_tokens): pass the "
                             "resized base it was trained from, e.g. a saved retriever")
        model.resize_token_embeddings(wanted, mean_resizing=False)
    fingerprint = base_fingerprint(model)
    if check_base and info.get("base_fingerprint") and fingerprint != info["base_fingerprint"]:
        raise ValueError(f"the base model's weights differ from those the adapter in {str(adapter_dir)!r} was trained "
                         f"on (base recorded as {info.get('base_model')!r}); pass that model, or check_base=False")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = PeftModel.from_pretrained(model, adapter_dir, is_trainable=is_trainable)
    setattr(peft_model, _BASE_ATTR, {"vocab_rows": wanted, "fingerprint": fingerprint})
    if not is_trainable:
        peft_model.eval()
    titles_path = adapter_dir / TITLES_FILE
    titles = json.loads(titles_path.read_text(encoding="utf-8")) if titles_path.is_file() else None
    return GenerativeRetriever(peft_model, tokenizer, load_id_scheme(adapter_dir),
                               max_source_length=info["max_source_length"], max_history=info["max_history"],
                               titles=titles)


def merge_adapter(retriever: GenerativeRetriever) -> GenerativeRetriever:
    """Fold the adapter into the base weights; ``retriever.model`` becomes a plain model again (returns ``retriever``).

    The result saves with :meth:`GenerativeRetriever.save_pretrained` and loads with ``from_pretrained`` like any
    retriever. The PEFT model is consumed (its base weights now hold the merged values).
    """
    model = _unwrap(retriever.model)
    if not is_adapted(model):
        raise ValueError("the retriever has no adapter to merge")
    retriever.model = model.merge_and_unload()
    return retriever


def base_fingerprint(model: torch.nn.Module, samples: int = 256) -> str:
    """A short hash of a plain (not yet adapted) model's weights, apart from the embedding matrix.

    The embeddings are left out because their new rows are placeholders until the adapter fills them; every other
    tensor contributes ``samples`` evenly spaced values, which is enough to tell two trained models apart.
    """
    skip = {id(model.get_input_embeddings().weight)}
    output = model.get_output_embeddings()
    if output is not None:
        skip.add(id(output.weight))
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if id(param) in skip:
            continue
        flat = param.detach().reshape(-1).float().cpu()
        step = max(1, flat.numel() // samples)
        digest.update(name.encode())
        digest.update(flat[::step][:samples].numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_vocabularies(base_vocab: dict[str, int], adapter_vocab: dict[str, int]) -> None:
    # The adapter's tokenizer extends the base's: every base token must keep its id, or embeddings would mismatch.
    moved = [t for t, i in base_vocab.items() if adapter_vocab.get(t) != i]
    if moved:
        raise ValueError(f"the base tokenizer does not match the adapter's: {len(moved)} tokens have other ids "
                         f"(e.g. {moved[0]!r}); pass the base model the adapter was trained from")


def _unwrap(model: Any) -> Any:
    # DDP keeps the real module in .module; PEFT models forward unknown attributes, so test the type, not hasattr.
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model

"""A trie of item IDs compiled to flat tensors, so that a constrained decoding step is a handful of batched ops.

All IDs have the same length ``L``. Position ``d`` of an ID is "level ``d``"; its tokens lie in the column range
``[lo[d], lo[d] + width[d])`` (for semantic IDs each level has its own token range, so ``width`` is the codebook size).
A token's *local code* at level ``d`` is ``token - lo[d]``; ``token_table[d, token]`` holds it, precomputed.

Prefixes of length ``d`` are the trie's depth-``d`` nodes. Two encodings are mixed:

* **Dense** (depths ``0..D``): a node's id is its prefix written in mixed radix over ``width[:d]`` (``slots[d]`` =
  ``prod(width[:d])`` possible ids, existing or not), so reaching a node at depth ``<= D`` is one gather and a sum
  whatever the depth. For each dense level ``d < D`` a boolean table ``[slots[d] + 1, width[d]]`` says which children
  exist. ``D`` is the deepest depth whose ``slots`` stay within a budget (``max(2**16, 2 * num_items)`` by default):
  for 3 x 256 semantic codes the first two levels, a 64 KB table.
* **CSR** (depths ``> D``): nodes are numbered by rank among the distinct prefixes of their depth, in sorted order.
  Level ``d >= D`` stores per edge a sorted key ``parent * (width[d] + 1) + local`` (int32 when it fits) and the
  child's local code, and per parent a row pointer; since keys are sorted, edge ``e`` leads to child ``e`` and the
  children of a node are the contiguous range ``indptr[node]:indptr[node + 1]``. A transition is one
  ``searchsorted``.

Every depth has one extra *dead* id (``slots[d]`` or the number of nodes) with no children: prefixes that leave the
trie land there and stay there, so no validity flag has to be carried from level to level. Invalid tokens map to
local code ``width[d]``, which no key uses.

Memory is proportional to the number of edges below depth ``D`` plus the fixed dense tables: about 40 bytes per item
for 1e6 semantic IDs of 4 tokens, ``codes`` (kept for :attr:`ItemTrie.codes`, int32) included.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # only for annotations: keeps `import genretrieval.decoding.trie` free of tokenizer imports
    from genretrieval.ids.base import ItemIdScheme

TRIE_FILE = "trie.safetensors"
FORMAT_VERSION = 1
_INT32_MAX = 2**31 - 1
# Above this many children per node, padding every row to the maximum costs more than an exact CSR expansion.
_PADDED_MAX_CHILDREN = 16


def item_token_ids(scheme: ItemIdScheme, tokenizer: Any) -> torch.LongTensor:
    """Token ids of every item's ID, ``[num_items, id_length]``, in ``scheme.item_ids`` order.

    Semantic and atomic schemes are mapped with array ops (only the scheme's own tokens go through the tokenizer);
    other schemes go through :meth:`~genretrieval.ids.base.ItemIdScheme.valid_sequences`. Raises ``ValueError``
    naming the first ID token the tokenizer does not know (it would silently become ``<unk>`` and every item
    containing it would collapse onto the same ID).
    """
    from genretrieval.ids.atomic import AtomicIdScheme
    from genretrieval.ids.semantic import SemanticIdScheme

    if isinstance(scheme, SemanticIdScheme):
        # new_tokens() lists each level's range in code order, so code c of level j is entry offset[j] + c.
        vocab = _token_ids(scheme.new_tokens(), tokenizer)
        offsets = torch.tensor([0, *scheme.codebook_sizes[:-1]], dtype=torch.long).cumsum(0)
        return vocab[torch.as_tensor(scheme.codes, dtype=torch.long) + offsets]
    if isinstance(scheme, AtomicIdScheme):
        return _token_ids(scheme.new_tokens(), tokenizer).view(-1, 1)
    sequences = scheme.valid_sequences()
    flat = [token for sequence in sequences for token in sequence]
    return _token_ids(flat, tokenizer).view(len(sequences), scheme.id_length)


def _token_ids(tokens: list[str], tokenizer: Any) -> torch.LongTensor:
    ids = tokenizer.convert_tokens_to_ids(tokens)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    unk_token = getattr(tokenizer, "unk_token", None)
    missing = [i for i, token_id in enumerate(ids) if token_id is None or token_id == unk_id]
    for i in missing:
        if tokens[i] != unk_token:
            raise ValueError(
                f"ID token {tokens[i]!r} is not in the tokenizer's vocabulary (size {len(tokenizer)}); "
                "add the scheme's tokens first: tokenizer.add_tokens(scheme.new_tokens())"
            )
    return torch.tensor(ids, dtype=torch.long)


class ItemTrie:
    """Prefix tree over fixed-length item IDs (token-id sequences), compiled to tensors (see the module docstring).

    ``codes[i]`` is the token-id sequence of the item at catalog position ``i``; all IDs have length
    :attr:`id_length`. After a complete ID the only allowed continuation is ``eos_token_id``. ``dense_budget`` caps
    the number of node slots of the dense top levels (default ``max(2**16, 2 * num_items)``; 1 = CSR everywhere).
    Building is vectorised (one ``unique`` per level): well under a second for 1e6 items.
    """

    def __init__(self, codes: torch.Tensor, eos_token_id: int, *, dense_budget: int | None = None):
        codes = _check_codes(codes, eos_token_id)
        num_items, length = codes.shape
        if dense_budget is None:
            dense_budget = max(2**16, 2 * num_items)
        if not isinstance(dense_budget, int) or dense_budget < 1:
            raise ValueError(f"dense_budget must be a positive integer, got {dense_budget!r}")
        self.eos_token_id = int(eos_token_id)
        self.id_length = int(length)
        self.lo: list[int] = codes.min(0).values.tolist()
        self.width: list[int] = (codes.max(0).values - codes.min(0).values + 1).tolist()
        slots = _slots(self.width)
        self.dense_depth = max(d for d in range(length + 1) if slots[d] <= dense_budget)
        self.max_children: list[int] = []
        self.dense: list[torch.BoolTensor] = []  # level d < D: [slots[d] + 1, width[d]] child exists (+ dead row)
        self.keys: list[torch.Tensor] = []  # level d >= D: sorted edge keys parent * (width[d] + 1) + local, + sentinel
        self.locals: list[torch.Tensor] = []  # level d >= D: local code of each edge's token, + padding
        self.indptr: list[torch.Tensor] = []  # level d >= D: [parents + 2] CSR row pointers (+ the dead node)

        local = codes - torch.tensor(self.lo)
        node = torch.zeros(num_items, dtype=torch.long)
        parents = 1  # number of live node ids at the current depth (the dead id is `parents`)
        for d in range(length):
            width = self.width[d]
            if d < self.dense_depth:
                key = node * width + local[:, d]
                table = torch.zeros(slots[d + 1] + width, dtype=torch.bool)
                table[key] = True
                self.dense.append(table.view(slots[d] + 1, width))
                self.max_children.append(int(table.view(-1, width).sum(1).max()))
                node, parents = key, slots[d + 1]
            else:
                key = node * (width + 1) + local[:, d]
                uniq, node = torch.unique(key, sorted=True, return_inverse=True)
                counts = torch.bincount(uniq // (width + 1), minlength=parents + 1)
                most = int(counts.max())
                big = (parents + 1) * (width + 1)  # sentinel: above every key, also the dead node's
                self.keys.append(_narrow(torch.cat([uniq, uniq.new_full((1,), big)]), big))
                # Padding lets a row read max_children slots from any start without running off the end.
                self.locals.append(torch.cat([uniq % (width + 1), uniq.new_full((most,), width)]).to(torch.int32))
                self.indptr.append(_narrow(torch.cat([counts.new_zeros(1), counts.cumsum(0)]), len(uniq)))
                self.max_children.append(most)
                parents = len(uniq)
        _check_duplicates(node)
        self.leaf_item: torch.Tensor = torch.full((parents + 1,), -1, dtype=torch.int32)
        self.leaf_item[node] = torch.arange(num_items, dtype=torch.int32)
        self.token_table = self._token_table()
        self._codes: torch.Tensor = _narrow(codes, int(codes.max()))
        self._dict_trie: dict[int, Any] | None = None

    def _token_table(self) -> torch.Tensor:
        """``[L, key_base + 2]`` int32: what one gather turns a token at level ``d`` into (column ``token + 1``).

        Dense levels: ``local * radix[d]`` (the summand of the depth-``D`` mixed-radix id), else ``slots[D]`` so
        that any invalid token pushes the sum past the last live id. CSR levels: ``local``, else ``width[d]``. The
        first and last columns catch negative and too large tokens (clamped there).
        """
        depth, slots = self.dense_depth, _slots(self.width)
        table = torch.empty(self.id_length, self.key_base + 2, dtype=torch.long)
        radix = _radix(self.width[:depth])
        for d, (lo, width) in enumerate(zip(self.lo, self.width)):
            dense = d < depth
            table[d] = slots[depth] if dense else width
            table[d, lo + 1 : lo + width + 1] = torch.arange(width) * (radix[d] if dense else 1)
        return _narrow(table, int(table.max()))

    @classmethod
    def from_scheme(
        cls, scheme: ItemIdScheme, tokenizer: Any, eos_token_id: int | None = None, *, dense_budget: int | None = None
    ) -> ItemTrie:
        """Trie of ``scheme``'s IDs as ``tokenizer`` ids; ``eos_token_id`` defaults to the tokenizer's."""
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id explicitly")
        return cls(item_token_ids(scheme, tokenizer), eos, dense_budget=dense_budget)

    # ---- properties --------------------------------------------------------------------------------------------
    @property
    def codes(self) -> torch.LongTensor:
        """Token ids of every item's ID, ``[num_items, id_length]`` int64 (a fresh copy; stored as int32)."""
        return self._codes.long()

    @property
    def device(self) -> torch.device:
        """Device of the trie's tensors."""
        return self.leaf_item.device

    @property
    def key_base(self) -> int:
        """One more than the largest token id an ID uses (the vocabulary must have at least this many columns)."""
        return max(lo + w for lo, w in zip(self.lo, self.width))

    @property
    def num_nodes(self) -> int:
        """Number of existing trie nodes (root and leaves included)."""
        dense = 1 + sum(int(t.sum()) for t in self.dense)
        return dense + sum(len(k) - 1 for k in self.keys)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the trie holds, by name (the contents of ``trie.safetensors``)."""
        out = {"codes": self._codes, "leaf_item": self.leaf_item, "token_table": self.token_table}
        out.update({f"dense_{d}": t for d, t in enumerate(self.dense)})
        for name in ("keys", "locals", "indptr"):
            out.update({f"{name}_{self.dense_depth + i}": t for i, t in enumerate(getattr(self, name))})
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the trie's tensors (the lazily built Python dict of :meth:`get` is not counted)."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def to(self, device: torch.device | str) -> ItemTrie:
        """The trie with its tensors on ``device`` (``self`` if they are already there); :meth:`get` stays in Python."""
        device = torch.device(device)
        if device == self.device:
            return self
        clone = object.__new__(ItemTrie)
        clone.__dict__.update(self.__dict__)
        for name in ("dense", "keys", "locals", "indptr"):
            setattr(clone, name, [t.to(device) for t in getattr(self, name)])
        for name in ("leaf_item", "token_table", "_codes"):
            setattr(clone, name, getattr(self, name).to(device))
        return clone

    # ---- vectorised API ----------------------------------------------------------------------------------------
    def locate(self, prefixes: torch.Tensor) -> tuple[torch.LongTensor, torch.BoolTensor]:
        """Node id of each row of ``prefixes [B, t]`` at depth ``t`` and whether that prefix exists.

        Ids are per depth (see the module docstring); rows that left the trie get the depth's dead id. Cost: about
        six batched ops for the dense depths plus six per CSR level (one ``searchsorted``), whatever ``B``.
        """
        rows, t = prefixes.shape
        if t > self.id_length:
            raise ValueError(f"prefixes have {t} tokens, more than id_length={self.id_length}")
        device = prefixes.device
        if t == 0:
            return torch.zeros(rows, dtype=torch.long, device=device), torch.ones(rows, dtype=torch.bool, device=device)
        offsets, dividers = self._constants(device)
        # Column j of the table is token j - 1: tokens outside [0, key_base) land in the first or last column.
        local = self.token_table.view(-1)[prefixes.clamp(-1, self.key_base) + offsets[:t]]
        depth = min(t, self.dense_depth)
        if depth:
            node = local[:, :depth].sum(1)
            if depth < self.dense_depth:
                node = node.div_(dividers[depth], rounding_mode="floor")
            node = node.clamp_(max=_slots(self.width)[depth])
            if t == depth:
                return node, self.dense[depth - 1].view(-1)[node]
        else:
            node = torch.zeros(rows, dtype=torch.long, device=device)
        for d in range(depth, t):
            level = d - self.dense_depth
            keys = self.keys[level]
            key = torch.add(local[:, d], node, alpha=self.width[d] + 1).to(keys.dtype)
            idx = torch.searchsorted(keys, key)
            node = torch.where(keys[idx] == key, idx, len(keys) - 1)  # len(keys) - 1: the next depth's dead id
        return node, node < len(self.keys[t - 1 - self.dense_depth]) - 1

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, list[int]]:
        # Made once per device: building tensors every decoding step would cost a copy each time.
        cache = self.__dict__.setdefault("_constant_cache", {})
        if device not in cache:
            offsets = torch.arange(self.id_length, device=device) * (self.key_base + 2) + 1
            step = _slots(self.width)[self.dense_depth]
            cache[device] = (offsets, [step // s for s in _slots(self.width)[: self.dense_depth + 1]])
        return cache[device]

    def children_mask(self, node: torch.LongTensor, depth: int) -> torch.BoolTensor:
        """``[rows, width[depth]]`` mask of the local codes each depth-``depth`` node may emit (none for dead ids)."""
        if not 0 <= depth < self.id_length:
            raise ValueError(f"depth must be in [0, {self.id_length}), got {depth}")
        if depth < self.dense_depth:
            return self.dense[depth][node]
        level = depth - self.dense_depth
        locals_, indptr, width = self.locals[level], self.indptr[level], self.width[depth]
        start = indptr[node].long()
        count = indptr[node + 1] - start
        rows = len(node)
        most = self.max_children[depth]
        if most <= _PADDED_MAX_CHILDREN:
            # Few children everywhere: every row reads max_children slots; unused slots go to a spare column.
            slot = torch.arange(most, device=node.device)
            local = locals_[start[:, None] + slot].long().masked_fill_(slot >= count[:, None], width)
            mask = torch.zeros(rows, width + 1, dtype=torch.bool, device=node.device)
            return mask.scatter_(1, local, True)[:, :width]
        # Some node has many children (e.g. 256 below a popular prefix): padding every row to that would cost
        # rows x max_children, so expand each row's CSR range exactly into (row, edge) pairs instead.
        row = torch.repeat_interleave(count)
        shift = start - (count.cumsum(0) - count)
        edges = torch.arange(len(row), device=node.device) + shift[row]
        mask = torch.zeros(rows, width, dtype=torch.bool, device=node.device)
        mask[row, locals_[edges]] = True
        return mask

    def walk(self, prefixes: torch.LongTensor) -> torch.LongTensor:
        """Node reached by each row of ``prefixes [B, t]`` (``t <= id_length``, ids per depth); -1 off the trie."""
        if prefixes.dim() != 2 or prefixes.shape[1] > self.id_length:
            raise ValueError(
                f"prefixes must be [batch, t] with t <= id_length={self.id_length}, got shape {tuple(prefixes.shape)}"
            )
        node, valid = self.locate(prefixes)
        return torch.where(valid, node, torch.full_like(node, -1))

    def lookup(self, sequences: torch.LongTensor) -> torch.LongTensor:
        """Catalog position of the item whose ID is each row of ``sequences [B, id_length]``, or -1."""
        if sequences.dim() != 2 or sequences.shape[1] != self.id_length:
            raise ValueError(f"sequences must be [batch, {self.id_length}], got shape {tuple(sequences.shape)}")
        node, _ = self.locate(sequences.to(self.device))
        return self.leaf_item[node].long()  # the dead id's entry is -1

    # ---- GENRE-like Python API (per prefix; used by callbacks and tests) ---------------------------------------
    def get(self, prefix: Sequence[int]) -> list[int]:
        """Tokens allowed after ``prefix`` (ascending): children, ``[eos]`` after a complete ID, ``[]`` if invalid."""
        node = self._walk_dict(prefix)
        if node is None:
            return []
        return [self.eos_token_id] if len(prefix) == self.id_length else sorted(node)

    def __contains__(self, sequence: object) -> bool:
        """Whether ``sequence`` (token ids) is a complete item ID."""
        try:
            tokens = [int(t) for t in sequence]  # type: ignore[union-attr]
        except (TypeError, ValueError):
            return False
        return len(tokens) == self.id_length and self._walk_dict(tokens) is not None

    def __len__(self) -> int:
        return self._codes.shape[0]

    def __repr__(self) -> str:
        return (
            f"ItemTrie(items={len(self)}, id_length={self.id_length}, dense_depth={self.dense_depth}, "
            f"bytes={self.nbytes})"
        )

    def _walk_dict(self, prefix: Sequence[int]) -> dict[int, Any] | None:
        # Nested dicts are built on first use: a per-beam callback needs O(1) Python lookups, not tensor ops,
        # and keeping them independent of the compiled tensors makes them a real oracle in tests.
        if self._dict_trie is None:
            root: dict[int, Any] = {}
            for code in self._codes.tolist():
                node = root
                for token in code:
                    node = node.setdefault(token, {})
            self._dict_trie = root
        if len(prefix) > self.id_length:
            return None
        node = self._dict_trie
        for token in prefix:
            node = node.get(int(token))
            if node is None:
                return None
        return node

    # ---- persistence -------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """Write the compiled trie to ``path`` (safetensors, atomically); ``metadata`` is stored alongside."""
        from safetensors.torch import save_file

        path = Path(path)
        header = {
            "format_version": str(FORMAT_VERSION), "eos_token_id": str(self.eos_token_id),
            "lo": json.dumps(self.lo), "width": json.dumps(self.width), "dense_depth": str(self.dense_depth),
            "max_children": json.dumps(self.max_children),
        }  # fmt: skip
        overlap = set(header) & set(metadata or {})
        if overlap:
            raise ValueError(f"metadata keys {sorted(overlap)} are reserved by the trie file format")
        header.update(metadata or {})
        tensors = {name: t.detach().cpu().contiguous() for name, t in self.tensors().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            save_file(tensors, str(tmp), metadata=header)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()

    @classmethod
    def load(cls, path: str | os.PathLike) -> tuple[ItemTrie, dict[str, str]]:
        """Read a trie written by :meth:`save`: returns it and the file's metadata; ``ValueError`` if malformed."""
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        try:
            version = int(metadata["format_version"])
            if version != FORMAT_VERSION:
                raise ValueError(f"unsupported trie format_version {version} (this code reads {FORMAT_VERSION})")
            trie = object.__new__(cls)
            trie.eos_token_id = int(metadata["eos_token_id"])
            trie.lo, trie.width = json.loads(metadata["lo"]), json.loads(metadata["width"])
            trie.dense_depth = int(metadata["dense_depth"])
            trie.max_children = json.loads(metadata["max_children"])
            trie._codes, trie.leaf_item = tensors["codes"], tensors["leaf_item"]
            trie.token_table = tensors["token_table"]
            trie.id_length = trie._codes.shape[1]
            d0 = trie.dense_depth
            trie.dense = [tensors[f"dense_{d}"] for d in range(d0)]
            for name in ("keys", "locals", "indptr"):
                setattr(trie, name, [tensors[f"{name}_{d}"] for d in range(d0, trie.id_length)])
            trie._dict_trie = None
        except (KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{str(path)!r} is not a trie file written by ItemTrie.save (missing {exc})") from exc
        if not (len(trie.lo) == len(trie.width) == len(trie.max_children) == trie.id_length):
            raise ValueError(f"{str(path)!r} is inconsistent: per-level lists do not match id_length={trie.id_length}")
        if tuple(trie.token_table.shape) != (trie.id_length, trie.key_base + 2):
            raise ValueError(f"{str(path)!r} is inconsistent: token_table has shape {tuple(trie.token_table.shape)}")
        return trie, metadata


def _slots(width: Sequence[int]) -> list[int]:
    out = [1]
    for w in width:
        out.append(out[-1] * w)
    return out


def _radix(width: Sequence[int]) -> list[int]:
    out, step = [], 1
    for w in reversed(width):
        out.append(step)
        step *= w
    return out[::-1]


def _narrow(t: torch.Tensor, max_value: int) -> torch.Tensor:
    """int32 copy of ``t`` when ``max_value`` fits (halves memory and gather bandwidth), else int64."""
    return t.to(torch.int32) if max_value <= _INT32_MAX else t.to(torch.long)


def _check_codes(codes: torch.Tensor, eos_token_id: int) -> torch.LongTensor:
    if not isinstance(codes, torch.Tensor):
        codes = torch.as_tensor(codes)
    if codes.dim() != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise ValueError(f"codes must be a non-empty [num_items, id_length] tensor, got shape {tuple(codes.shape)}")
    if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
        raise ValueError(f"codes must hold integer token ids, got dtype {codes.dtype}")
    codes = codes.detach().to("cpu", torch.long)
    if int(codes.min()) < 0:
        row = int((codes < 0).any(1).nonzero()[0])
        raise ValueError(f"codes must be non-negative token ids; item {row} has {codes[row].tolist()}")
    hits = (codes == eos_token_id).any(1).nonzero()
    if len(hits):
        row = int(hits[0])
        raise ValueError(
            f"item {row}'s ID {codes[row].tolist()} contains eos_token_id={eos_token_id}, "
            "which would end decoding in the middle of an ID"
        )
    return codes.contiguous()


def _check_duplicates(leaves: torch.LongTensor) -> None:
    order = torch.argsort(leaves, stable=True)
    same = (leaves[order][1:] == leaves[order][:-1]).nonzero()
    if len(same):
        i = int(same[0])
        first, second = int(order[i]), int(order[i + 1])
        raise ValueError(
            f"items at positions {first} and {second} have the same ID; "
            f"{len(same)} duplicate(s) in total (every item needs a distinct ID)"
        )


# ---- storing the compiled trie next to a saved retriever ----------------------------------------------------------
def _fingerprint(directory: Path, tokenizer: Any) -> str:
    import hashlib

    from genretrieval.ids.base import ID_SCHEME_FILE

    digest = hashlib.sha256((directory / ID_SCHEME_FILE).read_bytes())
    digest.update(f"|vocab={len(tokenizer)}|eos={tokenizer.eos_token_id}".encode())
    return digest.hexdigest()


def save_retriever_trie(trie: ItemTrie, directory: str | os.PathLike, tokenizer: Any) -> None:
    """Write ``trie`` as ``trie.safetensors`` into a retriever directory that already holds its ``id_scheme.json``.

    The file records a fingerprint of the scheme file and the tokenizer, so a stale trie is never loaded.
    """
    directory = Path(directory)
    trie.save(directory / TRIE_FILE, {"fingerprint": _fingerprint(directory, tokenizer), "num_items": str(len(trie))})


def load_retriever_trie(directory: str | os.PathLike, scheme: ItemIdScheme, tokenizer: Any) -> ItemTrie | None:
    """The compiled trie saved in a retriever directory, or ``None`` (rebuild it) if absent, stale or unreadable.

    Directories saved before tries were stored have no ``trie.safetensors``: they load as before.
    """
    import logging

    directory = Path(directory)
    path = directory / TRIE_FILE
    if not path.is_file():
        return None
    try:
        trie, metadata = ItemTrie.load(path)
    except Exception as exc:  # a damaged cache must not make the model unloadable: it is rebuilt from the scheme
        logging.getLogger(__name__).warning("ignoring %s (%s); the trie will be rebuilt", path, exc)
        return None
    if (metadata.get("fingerprint") != _fingerprint(directory, tokenizer) or len(trie) != len(scheme)
            or trie.id_length != scheme.id_length):
        logging.getLogger(__name__).warning("%s does not match id_scheme.json/the tokenizer; rebuilding the trie", path)
        return None
    return trie

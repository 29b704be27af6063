"""A trie of item IDs, stored as flat tensors so that constrained decoding steps are vectorised.

Nodes are numbered level by level: the root is node 0, then every distinct 1-token prefix, then every distinct
2-token prefix, and so on; the leaves (complete IDs) come last. Each edge ``parent -> child`` labelled with token
``t`` has the key ``parent * V + t`` (``V`` = :attr:`ItemTrie.key_base`). Because nodes are numbered in key order,
the key array is sorted, edge ``e`` leads to node ``e + 1``, and the children of a node are one contiguous,
token-sorted range of edges (CSR form: ``indptr[node]:indptr[node + 1]``). A transition for a whole batch is thus one
``searchsorted`` over the keys; listing allowed tokens is a gather over a CSR range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # only for annotations: keeps `import genretrieval.decoding.trie` free of tokenizer imports
    from genretrieval.ids.base import ItemIdScheme


def item_token_ids(scheme: ItemIdScheme, tokenizer: Any) -> torch.LongTensor:
    """Token ids of every item's ID, ``[num_items, id_length]``, in ``scheme.item_ids`` order.

    Raises ``ValueError`` naming the first ID token the tokenizer does not know (it would silently become ``<unk>``
    and every item containing it would collapse onto the same ID).
    """
    sequences = scheme.valid_sequences()
    flat = [token for sequence in sequences for token in sequence]
    ids = tokenizer.convert_tokens_to_ids(flat)
    unk_id = getattr(tokenizer, "unk_token_id", None)
    unk_token = getattr(tokenizer, "unk_token", None)
    for token, token_id in zip(flat, ids):
        if token_id is None or (token_id == unk_id and token != unk_token):
            raise ValueError(
                f"ID token {token!r} is not in the tokenizer's vocabulary (size {len(tokenizer)}); "
                "add the scheme's tokens first: tokenizer.add_tokens(scheme.new_tokens())"
            )
    return torch.tensor(ids, dtype=torch.long).view(len(sequences), scheme.id_length)


class ItemTrie:
    """Prefix tree over fixed-length item IDs (token-id sequences), with vectorised transitions.

    ``codes[i]`` is the token-id sequence of the item at catalog position ``i``; all IDs have length
    :attr:`id_length`. After a complete ID the only allowed continuation is ``eos_token_id``.
    """

    def __init__(self, codes: torch.Tensor, eos_token_id: int):
        codes = _check_codes(codes, eos_token_id)
        num_items, id_length = codes.shape
        self.codes: torch.LongTensor = codes
        self.eos_token_id = int(eos_token_id)
        self.id_length = int(id_length)
        # Keys must not alias across parents, so the base exceeds every token id that can label an edge.
        self.key_base = int(codes.max()) + 1

        parent = torch.zeros(num_items, dtype=torch.long)
        level_keys, level_starts = [], []
        next_node = 1
        for level in range(id_length):
            keys, inverse = torch.unique(parent * self.key_base + codes[:, level], sorted=True, return_inverse=True)
            level_starts.append(next_node)
            level_keys.append(keys)
            parent = next_node + inverse
            next_node += len(keys)
        _check_duplicates(parent)

        self.edge_keys: torch.LongTensor = torch.cat(level_keys)  # sorted: see the module docstring
        self.edge_tokens: torch.LongTensor = self.edge_keys % self.key_base
        self.num_nodes = next_node
        edge_parents = self.edge_keys // self.key_base
        self.indptr: torch.LongTensor = torch.zeros(self.num_nodes + 1, dtype=torch.long)
        self.indptr[1:] = torch.cumsum(torch.bincount(edge_parents, minlength=self.num_nodes), 0)
        self.node_depth: torch.LongTensor = torch.zeros(self.num_nodes, dtype=torch.long)
        for level, start in enumerate(level_starts):
            self.node_depth[start : start + len(level_keys[level])] = level + 1
        self.leaf_item: torch.LongTensor = torch.full((self.num_nodes,), -1, dtype=torch.long)
        self.leaf_item[parent] = torch.arange(num_items)
        self._dict_trie: dict[int, Any] | None = None

    @classmethod
    def from_scheme(cls, scheme: ItemIdScheme, tokenizer: Any, eos_token_id: int | None = None) -> ItemTrie:
        """Trie of ``scheme``'s IDs as ``tokenizer`` ids; ``eos_token_id`` defaults to the tokenizer's."""
        eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if eos is None:
            raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id explicitly")
        return cls(item_token_ids(scheme, tokenizer), eos)

    # ---- vectorised API ----------------------------------------------------------------------------------------
    def to(self, device: torch.device | str) -> ItemTrie:
        """Copy whose tensors live on ``device``; :meth:`get` keeps using plain Python dicts."""
        device = torch.device(device)
        clone = object.__new__(ItemTrie)
        clone.__dict__.update(self.__dict__)
        for name, value in self.__dict__.items():
            if isinstance(value, torch.Tensor):
                setattr(clone, name, value.to(device))
        return clone

    @property
    def device(self) -> torch.device:
        """Device of the trie's tensors."""
        return self.edge_keys.device

    def transition(self, nodes: torch.LongTensor, tokens: torch.LongTensor) -> torch.LongTensor:
        """Child of each ``nodes[b]`` along ``tokens[b]``; -1 where there is no such edge or ``nodes[b]`` is -1."""
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < self.key_base)
        keys = nodes.clamp(min=0) * self.key_base + tokens.clamp(0, self.key_base - 1)
        idx = torch.searchsorted(self.edge_keys, keys).clamp(max=len(self.edge_keys) - 1)
        ok &= self.edge_keys[idx] == keys
        return torch.where(ok, idx + 1, torch.full_like(idx, -1))

    def walk(self, prefixes: torch.LongTensor) -> torch.LongTensor:
        """Node reached by each row of ``prefixes [B, t]`` (``t <= id_length``); -1 if the row left the trie."""
        if prefixes.dim() != 2 or prefixes.shape[1] > self.id_length:
            raise ValueError(
                f"prefixes must be [batch, t] with t <= id_length={self.id_length}, got shape {tuple(prefixes.shape)}"
            )
        nodes = torch.zeros(prefixes.shape[0], dtype=torch.long, device=prefixes.device)
        for position in range(prefixes.shape[1]):  # at most id_length steps, each over the whole batch
            nodes = self.transition(nodes, prefixes[:, position])
        return nodes

    def lookup(self, sequences: torch.LongTensor) -> torch.LongTensor:
        """Catalog position of the item whose ID is each row of ``sequences [B, id_length]``, or -1."""
        if sequences.dim() != 2 or sequences.shape[1] != self.id_length:
            raise ValueError(f"sequences must be [batch, {self.id_length}], got shape {tuple(sequences.shape)}")
        nodes = self.walk(sequences)
        return torch.where(nodes >= 0, self.leaf_item[nodes.clamp(min=0)], nodes)

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
        return self.codes.shape[0]

    def __repr__(self) -> str:
        return f"ItemTrie(items={len(self)}, id_length={self.id_length}, nodes={self.num_nodes})"

    def _walk_dict(self, prefix: Sequence[int]) -> dict[int, Any] | None:
        # Nested dicts are built on first use: a per-beam callback needs O(1) Python lookups, not tensor ops,
        # and keeping them independent of the CSR arrays makes them a real oracle in tests.
        if self._dict_trie is None:
            root: dict[int, Any] = {}
            for code in self.codes.tolist():
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

"""The item-ID scheme interface and its registry.

An :class:`ItemIdScheme` maps every catalog item to a fixed-length sequence of *ID tokens* (strings such as
``"<item_17>"`` or ``"<a_3>", "<b_250>", "<c_0>"``), knows the vocabulary of new tokens it needs, and maps
token sequences back to items. All items of one scheme share the same length ``id_length``: this keeps the trie of
valid IDs a dense ``[num_items, id_length]`` array and the decoder's ``max_new_tokens`` fixed.

Schemes register themselves by name with :func:`register_id_scheme` (duplicates are rejected) and are rebuilt from a
directory with :func:`load_id_scheme`, which reads ``id_scheme.json`` to find the class.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from ..fileio import atomic_write_text

ID_SCHEME_FILE = "id_scheme.json"

_REGISTRY: dict[str, type[ItemIdScheme]] = {}


class UnknownItemError(KeyError):
    """Raised when an item id is not part of the scheme's catalog."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown item"


def register_id_scheme(name: str):
    """Class decorator adding an :class:`ItemIdScheme` subclass to the registry under ``name``."""

    def wrap(cls: type[ItemIdScheme]) -> type[ItemIdScheme]:
        if name in _REGISTRY:
            raise ValueError(f"an item-ID scheme named {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.scheme_name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_id_scheme_class(name: str) -> type[ItemIdScheme]:
    """Return the registered scheme class called ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown item-ID scheme {name!r}; registered: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def registered_id_schemes() -> list[str]:
    """Names of all registered schemes."""
    return sorted(_REGISTRY)


class ItemIdScheme(ABC):
    """Maps catalog items to fixed-length token sequences and back.

    Subclasses implement :meth:`item_tokens`, :meth:`new_tokens`, :meth:`to_dict` and :meth:`from_dict`; the rest
    (lookup tables, decoding, save/load) is shared.
    """

    scheme_name: ClassVar[str] = ""

    def __init__(self, item_ids: Sequence[str]):
        item_ids = [str(i) for i in item_ids]
        if not item_ids:
            raise ValueError("an item-ID scheme needs at least one item")
        index: dict[str, int] = {}
        for pos, item in enumerate(item_ids):
            if item in index:
                raise ValueError(f"duplicate item id {item!r} at positions {index[item]} and {pos}")
            index[item] = pos
        self.item_ids: list[str] = item_ids
        self._index = index
        self._by_tokens: dict[tuple[str, ...], str] | None = None

    # ---- what subclasses define -------------------------------------------------------------------------------
    @abstractmethod
    def item_tokens(self, position: int) -> tuple[str, ...]:
        """Token sequence of the item at ``position`` in :attr:`item_ids` (length :attr:`id_length`)."""

    @abstractmethod
    def new_tokens(self) -> list[str]:
        """Every token string this scheme adds to the tokenizer vocabulary, in a stable order."""

    @property
    @abstractmethod
    def id_length(self) -> int:
        """Number of tokens in every item's ID."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (without ``item_ids``, which the base class stores)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, item_ids: list[str], state: dict[str, Any]) -> ItemIdScheme:
        """Inverse of :meth:`to_dict`."""

    # ---- shared behaviour ----------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def position(self, item_id: str) -> int:
        """Row of ``item_id`` in :attr:`item_ids`; :class:`UnknownItemError` if absent."""
        try:
            return self._index[item_id]
        except KeyError:
            raise UnknownItemError(f"unknown item {item_id!r}: not in the item-ID scheme's catalog of {len(self)} items") from None

    def encode(self, item_id: str) -> tuple[str, ...]:
        """ID tokens of ``item_id``."""
        return self.item_tokens(self.position(item_id))

    def encode_text(self, item_id: str) -> str:
        """ID tokens joined into the string used inside model inputs."""
        return "".join(self.encode(item_id))

    def decode(self, tokens: Iterable[str]) -> str | None:
        """Item whose ID is exactly ``tokens``, or ``None`` if no item has that ID."""
        if self._by_tokens is None:
            self._by_tokens = {self.item_tokens(p): item for p, item in enumerate(self.item_ids)}
        return self._by_tokens.get(tuple(tokens))

    def valid_sequences(self) -> list[tuple[str, ...]]:
        """Token sequence of every item, in :attr:`item_ids` order."""
        return [self.item_tokens(p) for p in range(len(self))]

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``id_scheme.json`` into ``directory`` (atomically)."""
        payload = {"scheme": self.scheme_name, "item_ids": self.item_ids, "state": self.to_dict()}
        atomic_write_text(Path(directory) / ID_SCHEME_FILE, json.dumps(payload))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ItemIdScheme)
            and type(self) is type(other)
            and self.item_ids == other.item_ids
            and self.to_dict() == other.to_dict()
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(items={len(self)}, id_length={self.id_length}, new_tokens={len(self.new_tokens())})"


def load_id_scheme(directory: str | os.PathLike) -> ItemIdScheme:
    """Rebuild the scheme saved in ``directory`` by :meth:`ItemIdScheme.save`."""
    path = Path(directory) / ID_SCHEME_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {ID_SCHEME_FILE} in {str(directory)!r}: not a saved item-ID scheme")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        name, item_ids, state = payload["scheme"], payload["item_ids"], payload["state"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed item-ID scheme file ({err})") from err
    return get_id_scheme_class(name).from_dict(item_ids, state)

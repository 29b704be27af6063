"""Atomic item IDs: one new vocabulary token per item (Penha et al. 2024; DSI's "atomic" docids)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .base import ItemIdScheme, register_id_scheme


@register_id_scheme("atomic")
class AtomicIdScheme(ItemIdScheme):
    """Item at catalog position ``p`` is the single token ``<item_p>``.

    Tokens are named by position rather than by the raw item id so that any id (ASINs, URLs, ids with spaces)
    becomes a well-formed token.
    """

    def __init__(self, item_ids: Sequence[str], token_format: str = "<item_{}>"):
        super().__init__(item_ids)
        if "{}" not in token_format:
            raise ValueError(f"token_format must contain '{{}}' for the item position, got {token_format!r}")
        self.token_format = token_format

    @property
    def id_length(self) -> int:
        """Atomic IDs are one token long."""
        return 1

    def item_tokens(self, position: int) -> tuple[str, ...]:
        """The single token of the item at ``position``."""
        return (self.token_format.format(position),)

    def new_tokens(self) -> list[str]:
        """One token per item, in catalog order."""
        return [self.token_format.format(p) for p in range(len(self))]

    def to_dict(self) -> dict[str, Any]:
        """Only the token format is state; the items are stored by the base class."""
        return {"token_format": self.token_format}

    @classmethod
    def from_dict(cls, item_ids: list[str], state: dict[str, Any]) -> AtomicIdScheme:
        """Rebuild from :meth:`to_dict` output."""
        return cls(item_ids, **state)

"""Constrained decoding of item IDs: the trie, the vectorised logits processor and the batched retrieval API."""

from .generate import RetrievalOutput, item_token_ids, iter_retrieve, retrieve
from .logits_process import TrieConstrainedLogitsProcessor, prefix_allowed_tokens_fn
from .trie import ItemTrie

__all__ = [
    "ItemTrie",
    "RetrievalOutput",
    "TrieConstrainedLogitsProcessor",
    "item_token_ids",
    "iter_retrieve",
    "prefix_allowed_tokens_fn",
    "retrieve",
]

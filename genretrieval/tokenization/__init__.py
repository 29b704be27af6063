"""Tokenization: a SentencePiece text tokenizer trained on the catalog, extended with task prefixes and item-ID tokens.

Importing this package does not import transformers; that happens when a tokenizer is built.
"""

from .text_tokenizer import (
    DEFAULT_TASK_PREFIXES,
    TextTokenizerConfig,
    add_id_tokens,
    add_task_prefixes,
    build_tokenizer,
    tokenizer_from_sentencepiece,
    train_sentencepiece,
)

__all__ = [
    "DEFAULT_TASK_PREFIXES",
    "TextTokenizerConfig",
    "add_id_tokens",
    "add_task_prefixes",
    "build_tokenizer",
    "tokenizer_from_sentencepiece",
    "train_sentencepiece",
]

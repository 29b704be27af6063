"""Text tokenizer for generative retrieval: SentencePiece trained on the catalog, plus one token per item-ID token.

The result is a HuggingFace fast tokenizer in T5's layout (``<pad>``=0, ``</s>``=1, ``<unk>``=2, no BOS, ``</s>``
appended to every sequence) where each task prefix (``"search:"``, ``"recommend:"``) and each item-ID token
(``"<item_17>"``) is exactly one id, so that ``"recommend: <item_3><item_9>"`` encodes to
``[id("recommend:"), id("<item_3>"), id("<item_9>"), id("</s>")]`` whatever the whitespace between them.

Verified on transformers 5.23 / tokenizers 0.23 / sentencepiece 0.2.3 (see ``tests/test_tokenization.py``):

* Normalisation (NFKC, plus case folding when ``lowercase``) is SentencePiece's own rule, carried into the HF
  tokenizer as its ``Precompiled`` charsmap. ``T5Tokenizer`` rebuilds its backend on load and keeps only a
  ``Precompiled`` normalizer, so a ``Lowercase()`` normalizer would be silently dropped by a save/load round trip;
  the charsmap survives it.
* ``add_tokens`` in v5 reports 1 for a string that is already a vocabulary piece (no new id is created) and, given a
  string equal to a special token such as ``"</s>"``, turns that special token into a normal one. :func:`add_id_tokens`
  therefore checks for collisions itself and counts additions from ``len(tokenizer)``.
* Item-ID tokens are added with ``normalized=False`` (matched on the raw text, so case-distinct IDs such as ``<A_3>``
  and ``<a_3>`` stay distinct and are never lowercased) and ``lstrip``/``rstrip`` (whitespace around them is absorbed,
  so no stray ``"▁"`` token appears even with a pre-tokenizer that lacks ``WhitespaceSplit``).
* Reading a ``spiece.model`` needs ``protobuf``; nothing here does. The charsmap and model type are read from the
  serialized SentencePiece model with a tiny protobuf wire-format reader, and saved tokenizers are ``tokenizer.json``
  + ``tokenizer_config.json`` only.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import sentencepiece as spm
from tokenizers import AddedToken

if TYPE_CHECKING:  # transformers takes ~5 s to import: only pay for it when a tokenizer is actually built
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "</s>", "<unk>"
DEFAULT_TASK_PREFIXES: tuple[str, ...] = ("search:", "recommend:")
MODEL_TYPES: tuple[str, ...] = ("unigram", "bpe")

# SentencePiece's own bounds for max_sentence_length (trainer_interface.cc); outside them it fails with a bare CHECK.
_MIN_SENTENCE_BYTES, _MAX_SENTENCE_BYTES = 10, 1 << 30
_SPM_META_PIECES = 3  # <pad>, </s>, <unk>
_SPM_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}  # TrainerSpec.ModelType enum


@dataclass
class TextTokenizerConfig:
    """How the SentencePiece part of the tokenizer is trained (see ``tokenizers/sentencepiece-default.yaml``)."""

    vocab_size: int = 4000  # upper bound incl. <pad>/</s>/<unk>; a corpus too small for it gets fewer pieces + a warning
    model_type: str = "unigram"  # T5's choice; "bpe" is also supported
    character_coverage: float = 1.0  # catalogs are small: keep every character seen instead of mapping rare ones to <unk>
    lowercase: bool = True  # case-fold corpus and inputs alike, so "Red Shoes" and "red shoes" get the same ids
    max_sentence_length: int = 8192  # bytes; longer texts are truncated (with a warning) where sentencepiece would drop them
    seed: int = 0  # sentencepiece's random generator (used when it samples or shuffles sentences)
    num_threads: int = 4  # fixed, not os.cpu_count(): unigram scores differ in the last float bits between thread counts
    model_max_length: int = 512  # the length T5 was pre-trained with; inputs here are far shorter

    def __post_init__(self) -> None:
        _check_int("vocab_size", self.vocab_size, minimum=_SPM_META_PIECES + 1)
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        if (
            isinstance(self.character_coverage, bool)
            or not isinstance(self.character_coverage, (int, float))
            or not 0.0 < self.character_coverage <= 1.0
        ):
            raise ValueError(f"character_coverage must be a number in (0, 1], got {self.character_coverage!r}")
        if not isinstance(self.lowercase, bool):
            raise ValueError(f"lowercase must be True or False, got {self.lowercase!r}")
        _check_int("max_sentence_length", self.max_sentence_length, _MIN_SENTENCE_BYTES, _MAX_SENTENCE_BYTES)
        _check_int("seed", self.seed, minimum=0, maximum=2**32 - 1)  # sentencepiece takes an unsigned 32-bit seed
        _check_int("num_threads", self.num_threads, minimum=1)
        _check_int("model_max_length", self.model_max_length, minimum=1)

    @property
    def normalization_rule_name(self) -> str:
        """SentencePiece normalisation rule: NFKC, plus Unicode case folding when ``lowercase``."""
        return "nmt_nfkc_cf" if self.lowercase else "nmt_nfkc"


def _check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    # bool is an int subclass: `vocab_size=True` would otherwise pass as 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


# ---- SentencePiece training ------------------------------------------------------------------------------------------


def _prepare_corpus(texts: Iterable[str], max_bytes: int) -> list[str]:
    """Non-blank texts, each cut to ``max_bytes`` UTF-8 bytes; a list because training may need it twice."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be an iterable of strings, not a single string")
    sentences: list[str] = []
    truncated = 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is a {type(text).__name__}, expected str")
        if not text.strip():
            continue
        raw = text.encode("utf-8")
        if len(raw) > max_bytes:
            text = raw[:max_bytes].decode("utf-8", errors="ignore")  # ignore: the cut may split a multi-byte char
            truncated += 1
        sentences.append(text)
    if not sentences:
        raise ValueError("cannot train a tokenizer on an empty corpus: texts held no non-whitespace string")
    if truncated:
        logger.warning("truncated %d of %d training texts to max_sentence_length=%d bytes", truncated, len(sentences), max_bytes)
    return sentences


def train_sentencepiece(
    texts: Iterable[str], config: TextTokenizerConfig | None = None
) -> spm.SentencePieceProcessor:
    """Train a SentencePiece model in memory (no files) in T5's layout: pad=0, eos=1, unk=2, no bos.

    ``config.vocab_size`` is an upper bound: when the corpus cannot support that many pieces the model is smaller
    and a warning is logged. Blank texts are skipped; an empty or all-blank corpus raises ``ValueError``. The texts
    are held in memory while training (sentencepiece loads them all anyway).
    """
    config = config if config is not None else TextTokenizerConfig()
    sentences = _prepare_corpus(texts, config.max_sentence_length)
    model = io.BytesIO()
    spm.set_random_generator_seed(config.seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            model_type=config.model_type,
            vocab_size=config.vocab_size,
            hard_vocab_limit=False,  # vocab_size becomes a maximum instead of a hard failure on small corpora
            character_coverage=config.character_coverage,
            normalization_rule_name=config.normalization_rule_name,
            max_sentence_length=config.max_sentence_length,
            num_threads=config.num_threads,
            pad_id=0,
            eos_id=1,
            unk_id=2,
            bos_id=-1,
            pad_piece=PAD_TOKEN,
            eos_piece=EOS_TOKEN,
            unk_piece=UNK_TOKEN,
            minloglevel=2,  # its INFO/WARNING lines go straight to stderr; we report what matters via logging
        )
    except RuntimeError as err:
        too_small = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(err))
        if too_small:
            raise ValueError(
                f"vocab_size={config.vocab_size} is too small for this corpus: its characters (at "
                f"character_coverage={config.character_coverage}) plus <pad>, </s>, <unk> need at least "
                f"{too_small[1]} pieces; raise vocab_size or lower character_coverage"
            ) from err
        raise
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    if processor.get_piece_size() < config.vocab_size:
        logger.warning(
            "corpus of %d texts supports only %d SentencePiece pieces: vocab_size shrunk from %d to %d",
            len(sentences), processor.get_piece_size(), config.vocab_size, processor.get_piece_size(),
        )
    return processor


# ---- SentencePiece -> HuggingFace ------------------------------------------------------------------------------------


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs of one protobuf message; enough of the wire format for a SentencePiece model."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(buf, pos)
        elif wire_type == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire_type in (1, 5):
            size = 8 if wire_type == 1 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type} in SentencePiece model")
        yield field, value


def _spm_model_info(processor: spm.SentencePieceProcessor) -> tuple[str, bytes]:
    """Model type and precompiled normalisation charsmap of a SentencePiece model, read without ``protobuf``."""
    model_type, charsmap = "unigram", b""  # proto defaults when the fields are absent
    for field, value in _proto_fields(processor.serialized_model_proto()):
        if field == 2:  # ModelProto.trainer_spec
            for sub, sub_value in _proto_fields(value):
                if sub == 3:  # TrainerSpec.model_type
                    model_type = _SPM_MODEL_TYPES.get(sub_value, str(sub_value))
        elif field == 3:  # ModelProto.normalizer_spec
            for sub, sub_value in _proto_fields(value):
                if sub == 2:  # NormalizerSpec.precompiled_charsmap
                    charsmap = sub_value
    return model_type, charsmap


def _bpe_merges(vocab: dict[str, int], skip: set[str]) -> list[tuple[str, str]]:
    # SentencePiece BPE numbers pieces in merge order, so ranking each merge by its result's id replays its merges.
    merges = []
    for piece, rank in vocab.items():
        if piece in skip:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab and left not in skip and right not in skip:
                merges.append((rank, vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]


def tokenizer_from_sentencepiece(
    processor: spm.SentencePieceProcessor, *, model_max_length: int = 512
) -> PreTrainedTokenizerFast:
    """Wrap a T5-layout SentencePiece model as a fast HF tokenizer giving the same ids (plus a final ``</s>``).

    Unigram models become a ``T5Tokenizer`` (built from ``(piece, score)`` pairs: no protobuf needed); BPE models a
    generic ``PreTrainedTokenizerFast`` (``T5Tokenizer`` can only hold a Unigram model).
    """
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast, T5Tokenizer

    layout = [processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()]
    if layout != [0, 1, 2, -1]:
        raise ValueError(f"expected T5 layout pad=0, eos=1, unk=2, bos=-1; got pad, eos, unk, bos = {layout}")
    model_type, charsmap = _spm_model_info(processor)
    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    special = {PAD_TOKEN: 0, EOS_TOKEN: 1, UNK_TOKEN: 2}
    if pieces[:3] != list(special):
        raise ValueError(f"expected pieces <pad>, </s>, <unk> at ids 0-2, got {pieces[:3]}")

    if model_type == "unigram":
        vocab = [(piece, processor.get_score(i)) for i, piece in enumerate(pieces)]
        tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=model_max_length)
        if charsmap:
            # On load T5Tokenizer rebuilds its backend and keeps exactly this normalizer type (Precompiled).
            tokenizer.backend_tokenizer.normalizer = normalizers.Precompiled(charsmap)
        return tokenizer
    if model_type != "bpe":
        raise ValueError(f"unsupported SentencePiece model type {model_type!r}; train with 'unigram' or 'bpe'")

    vocab_ids = {piece: i for i, piece in enumerate(pieces)}
    backend = Tokenizer(BPE(vocab=vocab_ids, merges=_bpe_merges(vocab_ids, set(special)), unk_token=UNK_TOKEN, fuse_unk=True))
    if charsmap:
        backend.normalizer = normalizers.Precompiled(charsmap)
    # Same pipeline as T5Tokenizer: WhitespaceSplit mirrors sentencepiece's remove_extra_whitespaces.
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)]
    )
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    backend.post_processor = processors.TemplateProcessing(
        single=f"$A {EOS_TOKEN}", pair=f"$A {EOS_TOKEN} $B {EOS_TOKEN}", special_tokens=[(EOS_TOKEN, 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
    )


# ---- new tokens ------------------------------------------------------------------------------------------------------


def _validated_tokens(tokens: Iterable[str], kind: str) -> list[str]:
    if isinstance(tokens, str):
        raise TypeError(f"{kind}s must be a sequence of strings, not the single string {tokens!r}")
    tokens = list(tokens)
    seen: set[str] = set()
    for token in tokens:
        if not isinstance(token, str) or not token:
            raise ValueError(f"every {kind} must be a non-empty string, got {token!r}")
        if any(ch.isspace() for ch in token):
            # whitespace around added tokens is stripped, so a token containing some could never be matched reliably
            raise ValueError(f"{kind} {token!r} contains whitespace")
        if token in seen:
            raise ValueError(f"duplicate {kind} {token!r}")
        seen.add(token)
    return tokens


def _add_plain_tokens(tokenizer: PreTrainedTokenizerBase, tokens: list[str], kind: str, normalized: bool) -> int:
    """Add ``tokens`` as non-special single-id tokens; tokens already added as non-special ones are skipped."""
    if getattr(tokenizer, "backend_tokenizer", None) is None:
        raise TypeError(f"need a fast (tokenizers-backed) tokenizer, got {type(tokenizer).__name__}")
    vocab = tokenizer.get_vocab()
    added = {str(t): t for t in tokenizer.added_tokens_decoder.values()}
    new = []
    for token in tokens:
        if token not in vocab:
            new.append(token)
        elif token not in added:
            raise ValueError(
                f"{kind} {token!r} is already a text piece of this tokenizer (id {vocab[token]}); a new token must "
                "not share a text piece's id and embedding"
            )
        elif added[token].special:
            raise ValueError(
                f"{kind} {token!r} is already a special token (id {vocab[token]}); it must be a normal token, since "
                "special tokens are dropped by decode(..., skip_special_tokens=True)"
            )
    before = len(tokenizer)
    # lstrip/rstrip absorb surrounding whitespace: with any pre-tokenizer a lone " " could otherwise become "▁".
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=normalized, lstrip=True, rstrip=True, single_word=False) for t in new]
    )
    count = len(tokenizer) - before
    if count != len(new):  # v5's add_tokens return value is not trustworthy (see module docstring): count ourselves
        raise RuntimeError(f"expected to add {len(new)} {kind}s but the vocabulary grew by {count}")
    return count


def _encode_plain(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # the backend directly: tokenizer(...) warns once the probe string exceeds model_max_length
    return tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids


def _check_single_ids(tokenizer: PreTrainedTokenizerBase, tokens: list[str], kind: str) -> None:
    """Each token must encode to its own id, whether the tokens are concatenated or space-separated."""
    if not tokens:
        return
    expected = tokenizer.convert_tokens_to_ids(tokens)
    for sep in ("", " "):
        got = _encode_plain(tokenizer, sep.join(tokens))
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
            window = tokens[max(0, at - 1) : at + 2]
            raise ValueError(
                f"{kind}s joined with {sep!r} do not encode to one id each: near {window} got tokens "
                f"{tokenizer.convert_ids_to_tokens(got[max(0, at - 1) : at + 3])}; are some tokens prefixes of others?"
            )


def add_id_tokens(tokenizer: PreTrainedTokenizerBase, id_tokens: Iterable[str]) -> int:
    """Add item-ID tokens to ``tokenizer`` (in place) as normal, un-normalised, single-id tokens.

    Works on any fast tokenizer, e.g. a pretrained ``t5-small``; resize the model's embeddings to
    ``len(tokenizer)`` afterwards. Idempotent: tokens already added as normal tokens are skipped. Raises
    ``ValueError`` (before adding anything) for a token that is already a special token or a text piece and for
    duplicates, and (after adding them) if the tokens do not encode to one id each, e.g. when one token is the
    concatenation of others. Returns the number of tokens added.
    """
    tokens = _validated_tokens(id_tokens, "ID token")
    # normalized=False: IDs match the raw text exactly, so lowercasing never merges "<A_3>" into "<a_3>"
    count = _add_plain_tokens(tokenizer, tokens, "ID token", normalized=False)
    _check_single_ids(tokenizer, tokens, "ID token")
    return count


def add_task_prefixes(tokenizer: PreTrainedTokenizerBase, task_prefixes: Iterable[str] = DEFAULT_TASK_PREFIXES) -> int:
    """Add task prefixes such as ``"search:"`` to ``tokenizer`` (in place) as normal single-id tokens.

    Prefixes are matched after normalisation, so with a lowercasing tokenizer ``"Search:"`` maps to ``"search:"``;
    a prefix that normalisation would change (``"Search:"`` itself) is rejected. Idempotent; returns the number added.
    """
    prefixes = _validated_tokens(task_prefixes, "task prefix")
    normalizer = getattr(getattr(tokenizer, "backend_tokenizer", None), "normalizer", None)
    for prefix in prefixes:
        normal = normalizer.normalize_str(prefix) if normalizer is not None else prefix
        if normal != prefix:
            raise ValueError(f"task prefix {prefix!r} is not in the tokenizer's normalised form {normal!r}; use that")
    count = _add_plain_tokens(tokenizer, prefixes, "task prefix", normalized=True)
    _check_single_ids(tokenizer, prefixes, "task prefix")
    return count


def build_tokenizer(
    texts: Iterable[str],
    id_tokens: Sequence[str],
    *,
    task_prefixes: Sequence[str] = DEFAULT_TASK_PREFIXES,
    config: TextTokenizerConfig | None = None,
) -> PreTrainedTokenizerFast:
    """Train SentencePiece on ``texts`` and return a T5-layout fast tokenizer with task prefixes and ID tokens added.

    Ids: the SentencePiece pieces first (pad=0, eos=1, unk=2), then ``task_prefixes``, then ``id_tokens`` in order.
    Save with ``save_pretrained`` and reload with ``AutoTokenizer.from_pretrained`` (offline, no protobuf).
    """
    config = config if config is not None else TextTokenizerConfig()
    prefixes = _validated_tokens(task_prefixes, "task prefix")
    tokens = _validated_tokens(id_tokens, "ID token")
    clash = set(prefixes) & set(tokens)
    if clash:  # checked before training so a mistake costs nothing
        raise ValueError(f"strings used both as task prefix and ID token: {sorted(clash)}")
    tokenizer = tokenizer_from_sentencepiece(train_sentencepiece(texts, config), model_max_length=config.model_max_length)
    add_task_prefixes(tokenizer, prefixes)
    add_id_tokens(tokenizer, tokens)
    if prefixes and tokens:
        probe = f"{prefixes[-1]} {tokens[0]} {''.join(tokens[:3])}"
        expected = tokenizer.convert_tokens_to_ids([prefixes[-1], tokens[0], *tokens[:3]])
        if _encode_plain(tokenizer, probe) != expected:
            raise RuntimeError(f"{probe!r} does not encode to one id per prefix/ID token: {tokenizer.tokenize(probe)}")
    return tokenizer

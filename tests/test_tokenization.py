"""Tests for genretrieval.tokenization: SentencePiece training, T5-layout HF tokenizer, task prefixes and ID tokens."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from genretrieval.ids import AtomicIdScheme
from genretrieval.tokenization import (
    DEFAULT_TASK_PREFIXES,
    TextTokenizerConfig,
    add_id_tokens,
    add_task_prefixes,
    build_tokenizer,
    tokenizer_from_sentencepiece,
    train_sentencepiece,
)

REPO = Path(__file__).resolve().parents[1]
N_ITEMS = 1000
PROBE_TEXTS = [
    "search: red running shoes",
    "Search: Waterproof JACKET for men",
    "recommend: <item_3><item_9><item_41>",
    "recommend: <item_3> <item_9>  <item_41>",
    "recommend:<item_0>\t<item_999>\n",
    "Nordwind classic leather boots model 451 <item_17> and more",
    "ＲＥＤ shoes, café, straße, İstanbul, 漢字 ☃ 🙂",
    "",
    "   ",
]


def make_corpus(n_items: int = N_ITEMS, n_queries: int = 11_000, seed: int = 0) -> list[str]:
    """A small synthetic catalog: item titles plus short queries (mixed case, so lowercasing matters)."""
    rng = random.Random(seed)
    adj = "Red blue green black white navy slim classic vintage waterproof lightweight leather cotton wool".split()
    noun = "running shoes shirt jacket dress boots sneakers hoodie jeans backpack watch sunglasses socks scarf".split()
    brands = ["Acme", "Nordwind", "Zephyr", "Lumen", "Orbit", "Kestrel", "Valley", "Summit"]
    titles = [
        f"{rng.choice(brands)} {' '.join(rng.sample(adj, 2))} {rng.choice(noun)} model {rng.randint(100, 999)}"
        for _ in range(n_items)
    ]
    queries = [" ".join(rng.sample(adj, rng.randint(0, 2)) + [rng.choice(noun)]) for _ in range(n_queries)]
    return titles + queries


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="module")
def id_tokens() -> list[str]:
    return AtomicIdScheme([f"sku-{i}" for i in range(N_ITEMS)]).new_tokens()


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def tokenizer(request, corpus, id_tokens):
    return build_tokenizer(corpus, id_tokens, config=TextTokenizerConfig(model_type=request.param))


@pytest.fixture(scope="module")
def unigram_tokenizer(corpus, id_tokens):
    return build_tokenizer(corpus, id_tokens)


# ---- config ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", 0),
        ("vocab_size", 3),
        ("vocab_size", 4000.0),
        ("vocab_size", True),
        ("model_type", "wordpiece"),
        ("character_coverage", 0.0),
        ("character_coverage", 1.5),
        ("character_coverage", "1.0"),
        ("lowercase", "yes"),
        ("max_sentence_length", 9),
        ("max_sentence_length", 2**31),
        ("seed", -1),
        ("num_threads", 0),
        ("model_max_length", 0),
    ],
)
def test_bad_config_value_is_named(field, value):
    with pytest.raises(ValueError, match=rf"{field}.*{re.escape(repr(value))}"):
        TextTokenizerConfig(**{field: value})


def test_yaml_spec_matches_config_defaults():
    spec = yaml.safe_load((REPO / "tokenizers" / "sentencepiece-default.yaml").read_text())
    defaults = dataclasses.asdict(TextTokenizerConfig())
    assert {k: spec[k] for k in defaults} == defaults
    assert (spec["pad_id"], spec["eos_id"], spec["unk_id"], spec["bos_id"]) == (0, 1, 2, -1)


def test_import_does_not_pull_in_transformers():
    code = "import sys, genretrieval.tokenization; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


# ---- SentencePiece training ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("texts", [[], ["", "   ", "\n\t"], iter(())])
def test_empty_corpus_errors(texts):
    with pytest.raises(ValueError, match="empty corpus"):
        train_sentencepiece(texts)
    with pytest.raises(ValueError, match="empty corpus"):
        build_tokenizer(texts, ["<item_0>"])


def test_corpus_must_be_strings():
    with pytest.raises(TypeError, match="single string"):
        train_sentencepiece("red shoes")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        train_sentencepiece(["red shoes", 3])


def test_t5_layout_and_in_memory_training(corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # sentencepiece's file-based API would write <prefix>.model/.vocab here
    sp = train_sentencepiece(corpus[:2000])
    assert [sp.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    assert list(tmp_path.iterdir()) == []


def test_tiny_corpus_shrinks_vocab_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="genretrieval.tokenization"):
        tok = build_tokenizer(["Red shoes", "blue shirt"], ["<item_0>", "<item_1>"], config=TextTokenizerConfig(vocab_size=4000))
    assert "shrunk from 4000" in caplog.text
    assert len(tok) < 100
    assert tok("recommend: <item_1> red shoes").input_ids[:2] == tok.convert_tokens_to_ids(["recommend:", "<item_1>"])


def test_vocab_smaller_than_alphabet_errors_clearly():
    with pytest.raises(ValueError, match=r"vocab_size=5 is too small.*at least \d+ pieces"):
        train_sentencepiece(["abcdefghij klmnop"], TextTokenizerConfig(vocab_size=5))


def test_long_texts_are_truncated_not_dropped(caplog):
    config = TextTokenizerConfig(max_sentence_length=16)
    with caplog.at_level(logging.WARNING, logger="genretrieval.tokenization"):
        sp = train_sentencepiece(["zebra quagga " * 10], config)  # sentencepiece alone would skip it: empty corpus
    assert "truncated 1 of 1" in caplog.text
    assert sp.get_piece_size() > 3


def test_training_is_deterministic(corpus):
    def pieces(sp):
        return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]

    assert pieces(train_sentencepiece(corpus[:3000])) == pieces(train_sentencepiece(corpus[:3000]))


def test_build_time_for_1000_item_catalog(corpus, id_tokens):
    build_tokenizer(corpus[:50], id_tokens[:5])  # first T5Tokenizer construction pays ~0.3 s of lazy imports
    start = time.perf_counter()
    build_tokenizer(corpus, id_tokens)
    elapsed = time.perf_counter() - start
    assert len(corpus) == 12_000
    assert elapsed < 3.0, f"building took {elapsed:.2f} s"


# ---- the HF tokenizer ------------------------------------------------------------------------------------------------


def test_special_tokens_and_length(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == ("<pad>", "</s>", "<unk>")
    assert tokenizer.bos_token_id is None
    assert tokenizer.model_max_length == 512
    assert tokenizer("red shoes").input_ids[-1] == 1


def test_same_ids_as_sentencepiece(corpus):
    for model_type in ("unigram", "bpe"):
        config = TextTokenizerConfig(model_type=model_type)
        sp = train_sentencepiece(corpus, config)
        tok = tokenizer_from_sentencepiece(sp)
        for text in corpus[::40] + PROBE_TEXTS[:2] + PROBE_TEXTS[5:]:
            assert tok(text).input_ids == sp.encode(text) + [1], (model_type, text)


def test_prefixes_and_id_tokens_are_single_ids(tokenizer, id_tokens):
    for token in [*DEFAULT_TASK_PREFIXES, *id_tokens]:
        assert tokenizer.tokenize(token) == [token]
    ids = tokenizer.convert_tokens_to_ids([*DEFAULT_TASK_PREFIXES, *id_tokens])
    assert len(set(ids)) == len(ids)
    assert tokenizer.unk_token_id not in ids
    assert min(ids) >= tokenizer.vocab_size  # new ids come after the SentencePiece pieces
    assert len(tokenizer) == tokenizer.vocab_size + len(DEFAULT_TASK_PREFIXES) + len(id_tokens)


@pytest.mark.parametrize(
    "text",
    [
        "recommend: <item_3><item_9>",
        "recommend: <item_3> <item_9>",
        "recommend:<item_3><item_9>",
        "  recommend:   <item_3>\t\n<item_9>  ",
    ],
)
def test_no_stray_metaspace_around_id_tokens(tokenizer, text):
    expected = tokenizer.convert_tokens_to_ids(["recommend:", "<item_3>", "<item_9>"]) + [tokenizer.eos_token_id]
    assert tokenizer(text).input_ids == expected
    assert "▁" not in tokenizer.convert_ids_to_tokens(tokenizer(text).input_ids)


def test_search_prefix_does_not_change_the_query_tokens(tokenizer):
    search_id = tokenizer.convert_tokens_to_ids("search:")
    assert tokenizer("search: red running shoes").input_ids == [search_id] + tokenizer("red running shoes").input_ids
    assert tokenizer("red <item_5> shoes").input_ids == (
        tokenizer("red").input_ids[:-1] + [tokenizer.convert_tokens_to_ids("<item_5>")] + tokenizer("shoes").input_ids
    )


def test_lowercase_normalisation(tokenizer):
    assert tokenizer("Red Shoes").input_ids == tokenizer("red shoes").input_ids
    assert tokenizer("NORDWIND Jacket").input_ids == tokenizer("nordwind jacket").input_ids
    assert tokenizer("Search: RED").input_ids == tokenizer("search: red").input_ids  # prefixes match after normalising
    assert tokenizer.tokenize("Search:") == ["search:"]


def test_lowercase_false_keeps_case(corpus):
    tok = build_tokenizer(corpus[:3000], ["<item_0>"], config=TextTokenizerConfig(lowercase=False))
    assert tok("Red Shoes").input_ids != tok("red shoes").input_ids


def test_id_tokens_are_case_sensitive_even_when_lowercasing(corpus):
    tok = build_tokenizer(corpus[:2000], ["<A_1>", "<a_1>"])
    ids = tok.convert_tokens_to_ids(["<A_1>", "<a_1>"])
    assert ids[0] != ids[1]
    assert tok("<A_1><a_1>").input_ids == ids + [1]


def test_decode_generated_item_ids(tokenizer):
    item_ids = tokenizer.convert_tokens_to_ids(["<item_3>", "<item_9>"])
    generated = [tokenizer.pad_token_id, *item_ids, tokenizer.eos_token_id, tokenizer.pad_token_id]
    assert tokenizer.convert_ids_to_tokens(generated, skip_special_tokens=True) == ["<item_3>", "<item_9>"]
    assert tokenizer.convert_ids_to_tokens(item_ids) == ["<item_3>", "<item_9>"]
    assert tokenizer.decode(generated, skip_special_tokens=True) == "<item_3><item_9>"
    assert tokenizer.batch_decode([generated, generated[1:2]], skip_special_tokens=True) == ["<item_3><item_9>", "<item_3>"]


def test_bad_prefixes_and_id_tokens(corpus):
    small = corpus[:500]
    with pytest.raises(ValueError, match="'Search:' is not in the tokenizer's normalised form 'search:'"):
        build_tokenizer(small, ["<item_0>"], task_prefixes=("Search:",))
    with pytest.raises(ValueError, match="both as task prefix and ID token"):
        build_tokenizer(small, ["search:"])
    with pytest.raises(ValueError, match="duplicate ID token '<item_0>'"):
        build_tokenizer(small, ["<item_0>", "<item_0>"])
    with pytest.raises(ValueError, match="whitespace"):
        build_tokenizer(small, ["<item 0>"])
    with pytest.raises(ValueError, match="do not encode to one id each"):
        build_tokenizer(small, ["<x>", "<y>", "<x><y>"])  # "<x>" + "<y>" reads back as "<x><y>"


# ---- save / load -----------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tokenizer, tmp_path, id_tokens):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is type(tokenizer)
    texts = PROBE_TEXTS + ["recommend: " + "".join(id_tokens[::97]), " ".join(id_tokens[-20:])]
    assert loaded(texts).input_ids == tokenizer(texts).input_ids
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded("Red Shoes").input_ids == loaded("red shoes").input_ids  # normalisation survived the reload
    assert (loaded.pad_token_id, loaded.eos_token_id, loaded.unk_token_id, loaded.model_max_length) == (0, 1, 2, 512)
    item = loaded.convert_tokens_to_ids("<item_7>")
    assert loaded.decode([item, loaded.eos_token_id], skip_special_tokens=True) == "<item_7>"
    assert add_id_tokens(loaded, id_tokens) == 0 and add_task_prefixes(loaded) == 0


def test_loading_needs_neither_protobuf_nor_sentencepiece(corpus, tmp_path):
    """Load in a fresh interpreter where importing protobuf or sentencepiece fails (and the Hub is offline)."""
    text = "recommend: <item_1> <item_2> Red Shoes"
    expected = {}
    for model_type in ("unigram", "bpe"):
        tok = build_tokenizer(corpus[:1000], ["<item_1>", "<item_2>"], config=TextTokenizerConfig(model_type=model_type))
        tok.save_pretrained(tmp_path / model_type)
        expected[model_type] = tok(text).input_ids
    code = (
        "import sys, json\n"
        "for name in ('google', 'google.protobuf', 'sentencepiece'):\n"
        "    sys.modules[name] = None\n"
        "from transformers import AutoTokenizer\n"
        f"print(json.dumps({{m: AutoTokenizer.from_pretrained(sys.argv[1] + '/' + m)({text!r}).input_ids"
        " for m in ('unigram', 'bpe')}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == expected


# ---- extending an existing tokenizer ---------------------------------------------------------------------------------


def test_add_id_tokens_is_idempotent(unigram_tokenizer):
    tok = copy.deepcopy(unigram_tokenizer)  # the fixture is shared: never mutate it
    size, vocab = len(tok), tok.get_vocab()
    assert add_id_tokens(tok, ["<item_0>", "<item_1>"]) == 0
    assert (len(tok), tok.get_vocab()) == (size, vocab)
    assert add_id_tokens(tok, ["<item_1>", "<new_0>", "<new_1>"]) == 2
    assert len(tok) == size + 2
    assert add_id_tokens(tok, ["<new_1>", "<new_0>"]) == 0
    assert tok("recommend: <new_0> <item_1>").input_ids == tok.convert_tokens_to_ids(["recommend:", "<new_0>", "<item_1>"]) + [1]


def test_add_id_tokens_rejects_clashes(unigram_tokenizer):
    tok = copy.deepcopy(unigram_tokenizer)
    text_piece = next(p for p in tok.get_vocab() if p.startswith("▁") and len(p) > 2)
    size = len(tok)
    with pytest.raises(ValueError, match="already a special token"):
        add_id_tokens(tok, ["<item_new>", "</s>"])
    with pytest.raises(ValueError, match="already a text piece"):
        add_id_tokens(tok, [text_piece])
    assert len(tok) == size  # nothing added when any token is rejected
    assert tok.added_tokens_decoder[1].special  # v5's add_tokens("</s>") would have made eos a normal token


def _pretrained_like_t5(metaspace_only: bool):
    """Stand-in for a user's t5-small (no network here): Unigram vocab + 100 special <extra_id_*> sentinels."""
    from tokenizers import pre_tokenizers
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -5.0) for w in "red blue shoes shirt recommend search".split()]
    pieces += [(c, -8.0) for c in "abcdefghijklmnopqrstuvwxyz:<>_0123456789"]
    tok = T5Tokenizer(vocab=pieces)
    if metaspace_only:  # pre-tokenizer of older Hub tokenizer.json files: a lone space becomes a "▁" token
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    return tok


@pytest.mark.parametrize("metaspace_only", [False, True])
def test_add_id_tokens_to_pretrained_t5_like_tokenizer(metaspace_only):
    tok = _pretrained_like_t5(metaspace_only)
    base = len(tok)
    assert add_id_tokens(tok, [f"<item_{i}>" for i in range(50)]) == 50
    assert add_task_prefixes(tok) == 2
    assert len(tok) == base + 52
    ids = tok("recommend: <item_3> <item_9>").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["recommend:", "<item_3>", "<item_9>", "</s>"]
    with pytest.raises(ValueError, match="already a special token"):
        add_id_tokens(tok, ["<extra_id_0>"])

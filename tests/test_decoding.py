"""Tests for the item trie, the vectorised trie logits processor and the retrieval API."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LogitNormalization, LogitsProcessorList, T5Config, T5ForConditionalGeneration, T5Tokenizer

from genretrieval.decoding import (
    ItemTrie,
    RetrievalOutput,
    TrieConstrainedLogitsProcessor,
    item_token_ids,
    prefix_allowed_tokens_fn,
    retrieve,
)
from genretrieval.decoding.generate import _top_k_beam
from genretrieval.ids import AtomicIdScheme, ItemIdScheme, register_id_scheme, registered_id_schemes

PAD, EOS = 0, 1
WORDS = ["▁search:", "▁recommend:", "▁red", "▁blue", "▁shoes", "▁hat", "▁cheap", ":", "▁", *"abcdefghijklmnop"]


class ToyDigitsScheme(ItemIdScheme):
    """Multi-token IDs ``<d0_x><d1_y>...``: digit ``v`` at level ``l`` is the token ``<d{l}_{v}>``."""

    def __init__(self, item_ids: list[str], codes: list[tuple[int, ...]], base: int):
        super().__init__(item_ids)
        self.codes = [tuple(c) for c in codes]
        self.base = base

    @property
    def id_length(self) -> int:
        return len(self.codes[0])

    def item_tokens(self, position: int) -> tuple[str, ...]:
        return tuple(f"<d{level}_{v}>" for level, v in enumerate(self.codes[position]))

    def new_tokens(self) -> list[str]:
        return [f"<d{level}_{v}>" for level in range(self.id_length) for v in range(self.base)]

    def to_dict(self) -> dict[str, Any]:
        return {"codes": self.codes, "base": self.base}

    @classmethod
    def from_dict(cls, item_ids: list[str], state: dict[str, Any]) -> ToyDigitsScheme:
        return cls(item_ids, **state)


if "toy-digits" not in registered_id_schemes():  # the registry rejects a second registration of the name
    register_id_scheme("toy-digits")(ToyDigitsScheme)


def make_tokenizer(scheme: ItemIdScheme) -> T5Tokenizer:
    tok = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(w, -1.0) for w in WORDS], extra_ids=0)
    tok.add_tokens(scheme.new_tokens())  # non-special, so they survive skip_special_tokens
    return tok


def make_model(tokenizer: T5Tokenizer, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=len(WORDS) + 3, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
        decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS,
    )  # fmt: skip
    model = T5ForConditionalGeneration(config)
    # Mean resizing would give every new ID token the same embedding here (tiny vocab: degenerate covariance),
    # so all items would tie; random rows make rankings meaningful.
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    # Random T5 logits are nearly flat; sharper ones make beam search and top-k orderings non-trivial.
    with torch.no_grad():
        model.shared.weight.mul_(8.0)
    return model.eval()


SOURCES = ["search: red shoes", "recommend: <d0_1><d1_2><d2_0>", "search: cheap blue hat", "search: hat", "x"]


@pytest.fixture(scope="module")
def atomic_setup():
    scheme = AtomicIdScheme([f"item-{i}" for i in range(12)])
    tok = make_tokenizer(scheme)
    sources = [s.replace("<d0_1><d1_2><d2_0>", "<item_3><item_9>") for s in SOURCES]
    return scheme, tok, make_model(tok), sources


@pytest.fixture(scope="module")
def digits_setup():
    gen = torch.Generator().manual_seed(1)
    all_codes = torch.cartesian_prod(torch.arange(4), torch.arange(4), torch.arange(4))
    codes = [tuple(c) for c in all_codes[torch.randperm(len(all_codes), generator=gen)[:24]].tolist()]
    scheme = ToyDigitsScheme([f"song-{i}" for i in range(len(codes))], codes, base=4)
    tok = make_tokenizer(scheme)
    return scheme, tok, make_model(tok, seed=3), ItemTrie.from_scheme(scheme, tok)


# ---- trie ------------------------------------------------------------------------------------------------------------
TOY_CODES = torch.tensor([[5, 6, 7], [5, 6, 8], [5, 9, 7], [10, 6, 7]])


def test_trie_get_contains_len():
    trie = ItemTrie(TOY_CODES, eos_token_id=EOS)
    assert len(trie) == 4
    assert trie.get([]) == [5, 10]
    assert trie.get([5]) == [6, 9]
    assert trie.get([5, 6]) == [7, 8]
    assert trie.get([5, 6, 8]) == [EOS]  # complete ID: only eos may follow
    assert trie.get([5, 6, 8, EOS]) == []
    assert trie.get([6]) == []
    assert [5, 9, 7] in trie and (10, 6, 7) in trie and torch.tensor([5, 6, 7]) in trie
    assert [5, 9] not in trie and [5, 9, 8] not in trie and [5, 6, 7, 1] not in trie


def test_trie_lookup_and_walk():
    trie = ItemTrie(TOY_CODES, eos_token_id=EOS)
    assert trie.lookup(TOY_CODES).tolist() == [0, 1, 2, 3]
    # wrong digit, token beyond any code, negative token, a prefix that aliases another node's key range
    bad = torch.tensor([[5, 6, 9], [5, 6, 1000], [5, -1, 7], [10, 7, 7]])
    assert trie.lookup(bad).tolist() == [-1, -1, -1, -1]
    assert trie.walk(torch.tensor([[5, 6], [10, 9]]))[1].item() == -1
    with pytest.raises(ValueError, match=r"\[batch, 3\]"):
        trie.lookup(torch.tensor([[5, 6]]))


def test_duplicate_codes_name_both_positions():
    codes = torch.tensor([[5, 6], [7, 8], [9, 9], [7, 8]])
    with pytest.raises(ValueError, match="positions 1 and 3"):
        ItemTrie(codes, eos_token_id=EOS)


@pytest.mark.parametrize(
    ("codes", "match"),
    [
        (torch.tensor([5, 6, 7]), "non-empty"),
        (torch.zeros((0, 2), dtype=torch.long), "non-empty"),
        (torch.tensor([[5.0, 6.0]]), "integer"),
        (torch.tensor([[5, 6], [3, -2]]), "item 1"),
        (torch.tensor([[5, 6], [EOS, 4]]), "eos_token_id=1"),
    ],
)
def test_trie_rejects_bad_codes(codes, match):
    with pytest.raises(ValueError, match=match):
        ItemTrie(codes, eos_token_id=EOS)


def test_from_scheme_rejects_unknown_tokens(atomic_setup):
    scheme, tok, _, _ = atomic_setup
    bare = T5Tokenizer(vocab=[("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁a", -1.0)], extra_ids=0)
    with pytest.raises(ValueError, match="<item_0>"):
        ItemTrie.from_scheme(scheme, bare)
    codes = item_token_ids(scheme, tok)
    assert codes.shape == (12, 1) and codes[:, 0].tolist() == tok.convert_tokens_to_ids(scheme.new_tokens())


# ---- properties of the processor on random tries ---------------------------------------------------------------------
@st.composite
def code_sets(draw) -> torch.Tensor:
    length = draw(st.integers(1, 3))
    digit = st.integers(2, 7)  # token ids 0/1 are pad/eos
    codes = draw(st.sets(st.tuples(*[digit] * length), min_size=1, max_size=25))
    return torch.tensor(sorted(codes), dtype=torch.long)[torch.randperm(len(codes))]


def reference_allowed(codes: list[tuple[int, ...]], prefix: list[int]) -> list[int]:
    """Allowed next tokens from first principles (set of prefixes), independent of the trie code."""
    length = len(codes[0])
    if len(prefix) == length and tuple(prefix) in codes:
        return [EOS]
    return sorted({c[len(prefix)] for c in codes if len(prefix) < length and list(c[: len(prefix)]) == prefix})


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(codes=code_sets(), data=st.data())
def test_trie_matches_first_principles(codes, data):
    trie = ItemTrie(codes, eos_token_id=EOS)
    code_list = [tuple(c) for c in codes.tolist()]
    assert trie.lookup(codes).tolist() == list(range(len(codes)))
    randoms = torch.tensor(data.draw(st.lists(st.tuples(*[st.integers(0, 9)] * trie.id_length), min_size=1)))
    expected = [code_list.index(tuple(r)) if tuple(r) in code_list else -1 for r in randoms.tolist()]
    assert trie.lookup(randoms).tolist() == expected
    for row in randoms.tolist():
        for t in range(trie.id_length + 1):
            assert trie.get(row[:t]) == reference_allowed(code_list, row[:t])


def random_prefixes(codes: torch.Tensor, t: int, rows: int, gen: torch.Generator) -> torch.Tensor:
    """``rows`` decoder-id rows (start token + ``t`` tokens): true prefixes, eos-terminated IDs and corrupted ones."""
    picked = codes[torch.randint(len(codes), (rows,), generator=gen)]
    body = torch.cat([picked, torch.full((rows, 1), EOS)], 1)[:, :t]
    corrupt = torch.rand(rows, generator=gen) < 0.3
    if t:
        col = torch.randint(t, (rows,), generator=gen)
        body[corrupt, col[corrupt]] = torch.randint(0, 10, (int(corrupt.sum()),), generator=gen)
    return torch.cat([torch.full((rows, 1), PAD), body], 1)


@FAST
@given(codes=code_sets(), seed=st.integers(0, 2**16))
def test_processor_mask_equals_oracle(codes, seed):
    gen = torch.Generator().manual_seed(seed)
    trie = ItemTrie(codes, eos_token_id=EOS)
    processor = TrieConstrainedLogitsProcessor(trie, pad_token_id=PAD)
    oracle = prefix_allowed_tokens_fn(trie, pad_token_id=PAD)
    for t in range(trie.id_length + 2):
        input_ids = random_prefixes(codes, t, rows=12, gen=gen)
        scores = processor(input_ids, torch.randn(12, 11, generator=gen))
        for row, ids in enumerate(input_ids):
            assert torch.isfinite(scores[row]).nonzero().squeeze(1).tolist() == sorted(oracle(0, ids)), ids.tolist()


def mock_beam_search(processor: TrieConstrainedLogitsProcessor, length: int, beams: int, gen: torch.Generator):
    """Beam search over random 'model' logits, renormalised after masking as ``retrieve`` does."""
    input_ids = torch.full((1, 1), PAD)
    beam_scores = torch.zeros(1)
    for _ in range(length + 1):
        logits = torch.randn(len(input_ids), 11, generator=gen)
        log_probs = torch.log_softmax(processor(input_ids, torch.log_softmax(logits, -1)), -1)
        total = (beam_scores[:, None] + log_probs).flatten()
        top = torch.topk(total, min(beams, int(torch.isfinite(total).sum())))
        rows, tokens = top.indices // 11, top.indices % 11
        input_ids = torch.cat([input_ids[rows], tokens[:, None]], 1)  # the reordering a real beam search does
        beam_scores = top.values
    return input_ids


@FAST
@given(codes=code_sets(), seed=st.integers(0, 2**16), beams=st.integers(1, 8))
def test_mock_decoding_yields_only_valid_distinct_items(codes, seed, beams):
    gen = torch.Generator().manual_seed(seed)
    trie = ItemTrie(codes, eos_token_id=EOS)
    processor = TrieConstrainedLogitsProcessor(trie, pad_token_id=PAD)
    L = trie.id_length

    out = mock_beam_search(processor, L, beams, gen)
    found = trie.lookup(out[:, 1 : L + 1]).tolist()
    assert min(found) >= 0 and len(set(found)) == len(found) == min(beams, len(codes))
    assert (out[:, L + 1] == EOS).all()

    # Greedy rows, shuffled and duplicated between steps like beams: the stateless processor must not care.
    input_ids = torch.full((6, 1), PAD)
    for _ in range(L + 1):
        input_ids = input_ids[torch.randint(len(input_ids), (len(input_ids),), generator=gen)]
        scores = processor(input_ids, torch.randn(len(input_ids), 11, generator=gen))
        input_ids = torch.cat([input_ids, scores.argmax(-1, keepdim=True)], 1)
    assert (trie.lookup(input_ids[:, 1 : L + 1]) >= 0).all() and (input_ids[:, L + 1] == EOS).all()


def test_processor_rejects_too_small_vocab():
    processor = TrieConstrainedLogitsProcessor(ItemTrie(TOY_CODES, eos_token_id=EOS))
    start = torch.zeros((2, 1), dtype=torch.long)
    assert torch.isfinite(processor(start, torch.zeros(2, 11))).sum() == 4  # token 10 needs exactly 11 columns
    with pytest.raises(ValueError, match="10 columns"):
        processor(start, torch.zeros(2, 10))


# ---- atomic fast path ------------------------------------------------------------------------------------------------
def constrained_log_probs(model, tok, scheme, sources) -> torch.Tensor:
    """Log-softmax over the item tokens of the first decoder step, one source at a time (no padding)."""
    cols = item_token_ids(scheme, tok)[:, 0]
    rows = []
    with torch.no_grad():
        for source in sources:
            enc = tok([source], return_tensors="pt")
            logits = model(**enc, decoder_input_ids=torch.full((1, 1), PAD)).logits[0, 0]
            rows.append(torch.log_softmax(logits[cols], -1))
    return torch.stack(rows)


def test_atomic_fast_path_is_exact_top_k(atomic_setup):
    scheme, tok, model, sources = atomic_setup
    expected = constrained_log_probs(model, tok, scheme, sources)
    out = retrieve(model, tok, scheme, sources, k=5, batch_size=2)
    assert isinstance(out, RetrievalOutput) and len(out.item_ids) == len(sources)
    for row, (items, scores) in enumerate(zip(out.item_ids, out.scores)):
        order = torch.argsort(expected[row], descending=True)[:5]
        assert items == [scheme.item_ids[p] for p in order.tolist()]
        torch.testing.assert_close(torch.tensor(scores), expected[row][order], atol=1e-5, rtol=1e-5)
    assert not model.training


def test_atomic_fast_path_excludes(atomic_setup):
    scheme, tok, model, sources = atomic_setup
    expected = constrained_log_probs(model, tok, scheme, sources)
    exclude = [{"item-0", "item-5"}, set(), [f"item-{i}" for i in range(10)], {"item-11"}, {"item-3"}]
    out = retrieve(model, tok, scheme, sources, k=4, exclude=exclude)
    for row, items in enumerate(out.item_ids):
        banned = {scheme.position(i) for i in exclude[row]}
        ranking = [p for p in torch.argsort(expected[row], descending=True).tolist() if p not in banned]
        assert items == [scheme.item_ids[p] for p in ranking[:4]]
        assert not set(items) & set(exclude[row])
    assert len(out.item_ids[2]) == 2  # only two items were left to return


def test_atomic_fast_path_equals_one_step_beam_search(atomic_setup):
    scheme, tok, model, sources = atomic_setup
    fast = retrieve(model, tok, scheme, sources, k=6)
    trie = ItemTrie.from_scheme(scheme, tok)
    with torch.inference_mode():
        positions, scores = _top_k_beam(model, tok(sources, padding=True, return_tensors="pt"), trie, 6, None, None)
    assert fast.item_ids == [[scheme.item_ids[p] for p in row] for row in positions]
    torch.testing.assert_close(torch.tensor(fast.scores), torch.tensor(scores), atol=1e-5, rtol=1e-5)


# ---- multi-token path ------------------------------------------------------------------------------------------------
def oracle_generate(model, tok, scheme, trie, sources, k, beams) -> tuple[list[list[str]], list[list[float]]]:
    """Same search through HF's own PrefixConstrainedLogitsProcessor with the per-beam Python callback."""
    enc = tok(sources, padding=True, return_tensors="pt")
    extra = {"early_stopping": True, "length_penalty": 0.0} if beams > 1 else {}
    out = model.generate(
        **enc, prefix_allowed_tokens_fn=prefix_allowed_tokens_fn(trie, pad_token_id=PAD),
        logits_processor=LogitsProcessorList([LogitNormalization()]), num_beams=beams, num_return_sequences=beams,
        max_new_tokens=trie.id_length + 1, do_sample=False, output_scores=True, return_dict_in_generate=True, **extra,
    )  # fmt: skip
    if beams > 1:
        seq_scores = out.sequences_scores
    else:
        steps = torch.stack(out.scores, 1)
        seq_scores = steps.gather(2, out.sequences[:, 1:, None]).squeeze(-1).sum(1)
    found = trie.lookup(out.sequences[:, 1 : 1 + trie.id_length]).view(len(sources), beams).tolist()
    items, scores = [], []
    for row_found, row_scores in zip(found, seq_scores.view(len(sources), beams).tolist()):
        seen: dict[int, float] = {}
        for pos, score in zip(row_found, row_scores):
            if pos >= 0 and pos not in seen:
                seen[pos] = score
        items.append([scheme.item_ids[p] for p in list(seen)[:k]])
        scores.append(list(seen.values())[:k])
    return items, scores


@pytest.mark.parametrize(("k", "num_beams"), [(5, 8), (1, None), (3, 3)])
def test_multi_token_path_matches_callback_oracle(digits_setup, k, num_beams):
    scheme, tok, model, trie = digits_setup
    out = retrieve(model, tok, scheme, SOURCES, k=k, num_beams=num_beams, trie=trie, batch_size=3)
    for items, scores in zip(out.item_ids, out.scores):
        assert len(items) == k == len(set(items)) and all(i in scheme for i in items)
        assert scores == sorted(scores, reverse=True)
    beams = max(k, num_beams or k)
    items, scores = oracle_generate(model, tok, scheme, trie, SOURCES[:3], k, beams)
    assert out.item_ids[:3] == items
    torch.testing.assert_close(torch.tensor(out.scores[:3]), torch.tensor(scores), atol=1e-5, rtol=1e-5)


def exhaustive_scores(model, tok, scheme, trie, source) -> torch.Tensor:
    """Constrained log-probability of every item by teacher forcing (the quantity beam search approximates)."""
    codes = trie.codes
    n, length = codes.shape
    enc = tok([source] * n, return_tensors="pt")
    decoder_input_ids = torch.cat([torch.full((n, 1), PAD), codes], 1)
    with torch.no_grad():
        log_probs = torch.log_softmax(model(**enc, decoder_input_ids=decoder_input_ids).logits, -1)
    processor = TrieConstrainedLogitsProcessor(trie)
    total = torch.zeros(n)
    for t in range(length):
        step = torch.log_softmax(processor(decoder_input_ids[:, : t + 1], log_probs[:, t]), -1)
        total += step.gather(1, codes[:, t : t + 1]).squeeze(1)
    return total


def test_multi_token_scores_are_constrained_log_probs(digits_setup):
    scheme, tok, model, trie = digits_setup
    # With as many beams as items nothing is ever pruned, so beam search must find the exact top-k.
    out = retrieve(model, tok, scheme, SOURCES[:2], k=6, num_beams=len(scheme), trie=trie)
    for row, source in enumerate(SOURCES[:2]):
        exact = exhaustive_scores(model, tok, scheme, trie, source)
        order = torch.argsort(exact, descending=True)[:6]
        assert out.item_ids[row] == [scheme.item_ids[p] for p in order.tolist()]
        torch.testing.assert_close(torch.tensor(out.scores[row]), exact[order], atol=1e-4, rtol=1e-4)


def test_multi_token_path_excludes(digits_setup):
    scheme, tok, model, trie = digits_setup
    plain = retrieve(model, tok, scheme, SOURCES[:2], k=4, trie=trie)
    exclude = [set(plain.item_ids[0][:2]), {"song-0", plain.item_ids[1][0]}]
    out = retrieve(model, tok, scheme, SOURCES[:2], k=4, trie=trie, exclude=exclude)
    for items, banned in zip(out.item_ids, exclude):
        assert len(items) == 4 and not set(items) & banned


# ---- input validation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sources": []}, "empty"),
        ({"sources": "search: red"}, "single string"),
        ({"sources": ["search: red", "  "]}, r"sources\[1\]"),
        ({"k": 0}, "got 0"),
        ({"k": 25}, "got 25"),
        ({"num_beams": 0}, "num_beams"),
        ({"batch_size": 0}, "batch_size"),
        ({"exclude": [set()]}, "1 entries"),
        ({"exclude": [set(), {"song-999"}]}, r"exclude\[1\].*song-999"),
    ],
)
def test_retrieve_validates_inputs(digits_setup, kwargs, match):
    scheme, tok, model, trie = digits_setup
    args = {"sources": ["search: red", "search: hat"], "k": 3, "trie": trie} | kwargs
    with pytest.raises(ValueError, match=match):
        retrieve(model, tok, scheme, **args)


def test_retrieve_rejects_mismatched_trie(digits_setup, atomic_setup):
    scheme, tok, model, _ = digits_setup
    atomic_trie = ItemTrie.from_scheme(atomic_setup[0], atomic_setup[1])
    with pytest.raises(ValueError, match="does not match"):
        retrieve(model, tok, scheme, ["search: red"], k=2, trie=atomic_trie)


# ---- batched / streamed retrieval ----------------------------------------------------------------------------------
def test_streamed_retrieval_equals_list_and_mixes_tasks(digits_setup, capsys):
    scheme, tok, model, trie = digits_setup
    # SOURCES mixes search and recommend requests; batch_size 2 splits them across batches of mixed tasks.
    whole = retrieve(model, tok, scheme, SOURCES, k=4, trie=trie, batch_size=len(SOURCES))
    streamed = retrieve(model, tok, scheme, (s for s in SOURCES), k=4, trie=trie, batch_size=2, progress=True)
    assert streamed.item_ids == whole.item_ids
    torch.testing.assert_close(torch.tensor(streamed.scores), torch.tensor(whole.scores), atol=1e-5, rtol=1e-5)
    assert "retrieve: 5query" in capsys.readouterr().err  # the tqdm bar counted every query (length unknown)
    for items in whole.item_ids:
        assert len(items) == len(set(items)) == 4 and all(i in scheme for i in items)


def test_iter_retrieve_yields_per_batch_and_checks_streams(digits_setup):
    from genretrieval.decoding import iter_retrieve

    scheme, tok, model, trie = digits_setup
    batches = list(iter_retrieve(model, tok, scheme, iter(SOURCES), k=2, trie=trie, batch_size=2,
                                 exclude=iter([{"song-1"}] * len(SOURCES))))
    assert [len(b.item_ids) for b in batches] == [2, 2, 1]
    assert all("song-1" not in items for b in batches for items in b.item_ids)
    assert not model.training
    with pytest.raises(ValueError, match="exclude has 3 entries"):
        retrieve(model, tok, scheme, iter(SOURCES), k=2, trie=trie, batch_size=2, exclude=iter([set()] * 3))
    with pytest.raises(ValueError, match="more entries"):
        retrieve(model, tok, scheme, iter(SOURCES), k=2, trie=trie, batch_size=2, exclude=iter([set()] * 6))
    with pytest.raises(ValueError, match=r"sources\[3\]"):
        retrieve(model, tok, scheme, iter(SOURCES[:3] + [""]), k=2, trie=trie, batch_size=2)
    with pytest.raises(ValueError, match="empty"):
        retrieve(model, tok, scheme, iter([]), k=2, trie=trie)

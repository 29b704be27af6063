"""Compiled trie (dense top levels + CSR below), its processor, persistence and the decoding benchmark recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genretrieval.decoding import ItemTrie, TrieConstrainedLogitsProcessor
from genretrieval.decoding import trie as trie_module

PAD, EOS = 0, 1
ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class DictTrie:
    """Plain nested-dict oracle, independent of ItemTrie (which builds its own dicts for get())."""

    def __init__(self, codes: list[list[int]]):
        self.length = len(codes[0])
        self.root: dict = {}
        for code in codes:
            node = self.root
            for token in code:
                node = node.setdefault(token, {})

    def allowed(self, prefix: list[int]) -> list[int]:
        """Tokens the processor must allow after ``prefix`` (with its eos/pad fallback)."""
        node = self.root
        for token in prefix[: self.length]:
            node = node.get(token) if node is not None else None
        if len(prefix) > self.length or node is None:
            return sorted({EOS, PAD})
        return [EOS] if len(prefix) == self.length else sorted(node)


@st.composite
def catalogs(draw) -> tuple[torch.Tensor, int]:
    """Random fixed-length IDs with shared prefixes and collision-like last digits, plus a dense budget."""
    length = draw(st.integers(1, 4))
    # Per level a token range of random width and offset; ranges may overlap (as in toy schemes) or not.
    ranges = [(draw(st.integers(2, 40)), draw(st.integers(1, 40))) for _ in range(length)]
    n = draw(st.integers(1, 120))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    cols = []
    for lo, width in ranges:
        skew = torch.rand(n, generator=gen) ** 3  # popular low codes: prefixes are shared
        cols.append(lo + (skew * width).long())
    codes = torch.unique(torch.stack(cols, 1), dim=0)
    codes = codes[torch.randperm(len(codes), generator=gen)]
    budget = draw(st.sampled_from([1, 2, 40, 1600, None]))
    return codes, budget


def random_rows(codes: torch.Tensor, t: int, rows: int, gen: torch.Generator) -> torch.Tensor:
    """Decoder rows (start token + ``t`` tokens): true prefixes, eos-terminated IDs and corrupted ones."""
    picked = codes[torch.randint(len(codes), (rows,), generator=gen)]
    body = torch.cat([picked, torch.full((rows, 2), EOS)], 1)[:, :t]
    corrupt = torch.rand(rows, generator=gen) < 0.3
    if t:
        col = torch.randint(t, (rows,), generator=gen)
        body[corrupt, col[corrupt]] = torch.randint(-2, 90, (int(corrupt.sum()),), generator=gen)
    return torch.cat([torch.full((rows, 1), PAD), body], 1)


@FAST
@given(catalog=catalogs(), seed=st.integers(0, 2**16), padded_max=st.sampled_from([0, 16, 10**6]))
def test_allowed_set_equals_dict_trie(catalog, seed, padded_max, monkeypatch_module):
    codes, budget = catalog
    monkeypatch_module.setattr(trie_module, "_PADDED_MAX_CHILDREN", padded_max)  # both CSR expansion paths
    gen = torch.Generator().manual_seed(seed)
    trie = ItemTrie(codes, eos_token_id=EOS, dense_budget=budget)
    oracle = DictTrie(codes.tolist())
    processor = TrieConstrainedLogitsProcessor(trie, pad_token_id=PAD)
    vocab = trie.key_base + 3
    for t in range(trie.id_length + 2):
        rows = int(torch.randint(1, 30, (1,), generator=gen))
        input_ids = random_rows(codes, t, rows, gen)
        scores = processor(input_ids, torch.randn(rows, vocab, generator=gen))
        for row, ids in enumerate(input_ids.tolist()):
            assert torch.isfinite(scores[row]).nonzero().squeeze(1).tolist() == oracle.allowed(ids[1:]), ids
    assert trie.lookup(codes).tolist() == list(range(len(codes)))


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def beam_search(processor: TrieConstrainedLogitsProcessor, batch: int, beams: int, length: int, vocab: int,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched beam search over random log-probs with the reordering HF applies between steps."""
    input_ids = torch.full((batch * beams, 1), PAD)
    scores = torch.zeros(batch, beams)
    scores[:, 1:] = float("-inf")  # all beams start identical: keep one per query
    for _ in range(length + 1):
        log_probs = processor(input_ids, torch.log_softmax(torch.randn(len(input_ids), vocab, generator=gen), -1))
        total = (scores.view(-1, 1) + log_probs).view(batch, beams * vocab)
        top = torch.topk(total, beams, dim=1)
        source = (top.indices // vocab) + torch.arange(batch)[:, None] * beams
        input_ids = torch.cat([input_ids[source.view(-1)], (top.indices % vocab).view(-1, 1)], 1)
        scores = top.values
    return input_ids, scores


@FAST
@given(catalog=catalogs(), seed=st.integers(0, 2**16), batch=st.integers(1, 4), beams=st.integers(1, 9))
def test_beam_search_returns_valid_distinct_items(catalog, seed, batch, beams):
    codes, budget = catalog
    gen = torch.Generator().manual_seed(seed)
    trie = ItemTrie(codes, eos_token_id=EOS, dense_budget=budget)
    processor = TrieConstrainedLogitsProcessor(trie, pad_token_id=PAD)
    length = trie.id_length
    out, scores = beam_search(processor, batch, beams, length, trie.key_base + 2, gen)
    live = torch.isfinite(scores).view(-1)
    found = trie.lookup(out[:, 1 : length + 1])
    assert (found[live] >= 0).all() and (out[live, length + 1] == EOS).all()
    for row in found.view(batch, beams)[torch.isfinite(scores)].view(batch, -1).tolist():
        assert len(set(row)) == len(row) == min(beams, len(codes))


def test_dense_and_csr_layouts_agree():
    gen = torch.Generator().manual_seed(0)
    codes = torch.unique(torch.randint(2, 30, (400, 4), generator=gen), dim=0)
    tries = [ItemTrie(codes, EOS, dense_budget=b) for b in (1, 28, 28**2, 28**4)]
    assert tries[0].dense_depth == 0 and tries[-1].dense_depth == 4
    probes = torch.cat([codes[:50], torch.randint(0, 32, (50, 4), generator=gen)])
    for t in range(5):
        rows = torch.cat([torch.zeros(100, 1, dtype=torch.long), probes[:, :t]], 1)
        ref = TrieConstrainedLogitsProcessor(tries[0], PAD).allowed_mask(rows, 40)
        for other in tries[1:]:
            assert torch.equal(TrieConstrainedLogitsProcessor(other, PAD).allowed_mask(rows, 40), ref)
    for other in tries:
        assert other.lookup(probes).tolist() == tries[0].lookup(probes).tolist()


def test_renormalize_gives_constrained_log_probs():
    codes = torch.tensor([[5, 6, 7], [5, 6, 8], [5, 9, 7], [10, 6, 7]])
    trie = ItemTrie(codes, EOS, dense_budget=1)
    plain, norm = TrieConstrainedLogitsProcessor(trie, PAD), TrieConstrainedLogitsProcessor(trie, PAD, renormalize=True)
    gen = torch.Generator().manual_seed(0)
    for t in range(5):
        body = torch.cat([codes, torch.ones(4, 1, dtype=torch.long)], 1)[:, :t]
        ids = torch.cat([torch.zeros(4, 1, dtype=torch.long), body], 1)
        ids[3, 1:] = 3 if t else 0  # one row off the trie from step 1: the fallback path
        scores = torch.randn(4, 12, generator=gen)
        torch.testing.assert_close(norm(ids, scores.clone()), torch.log_softmax(plain(ids, scores.clone()), -1))


def test_memory_accounting():
    trie = ItemTrie(torch.randint(2, 200, (3000, 4)).unique(dim=0), EOS)
    by_hand = sum(t.numel() * t.element_size() for t in trie.tensors().values())
    assert trie.nbytes == by_hand and "codes" in trie.tensors()
    assert all(t.dtype in (torch.int32, torch.bool) for t in trie.tensors().values())  # nothing int64 at this size
    # Memory grows with the number of edges, not with nodes x vocabulary: 10x the items is ~10x the CSR bytes.
    small = ItemTrie(torch.randint(2, 200, (2000, 4)).unique(dim=0), EOS, dense_budget=1)
    large = ItemTrie(torch.randint(2, 200, (20000, 4)).unique(dim=0), EOS, dense_budget=1)
    assert large.nbytes < 12 * small.nbytes
    assert small.nbytes / len(small) < 64


def test_save_load_round_trip(tmp_path):
    codes = torch.randint(2, 60, (500, 3)).unique(dim=0)
    trie = ItemTrie(codes, EOS, dense_budget=59)
    trie.save(tmp_path / "trie.safetensors", {"fingerprint": "abc"})
    loaded, meta = ItemTrie.load(tmp_path / "trie.safetensors")
    assert meta["fingerprint"] == "abc" and loaded.nbytes == trie.nbytes
    assert all(torch.equal(a, b) for a, b in zip(loaded.tensors().values(), trie.tensors().values()))
    probes = torch.cat([torch.zeros(len(codes), 1, dtype=torch.long), codes[:, :2]], 1)
    assert torch.equal(TrieConstrainedLogitsProcessor(loaded).allowed_mask(probes, 70),
                       TrieConstrainedLogitsProcessor(trie).allowed_mask(probes, 70))
    with pytest.raises(ValueError, match="reserved"):
        trie.save(tmp_path / "x.safetensors", {"eos_token_id": "3"})


def test_trie_moves_between_devices():
    trie = ItemTrie(torch.tensor([[5, 6], [5, 7]]), EOS)
    assert trie.to("cpu") is trie and trie.to("meta").device.type == "meta"


def test_bench_decoding_smoke(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_decoding_recipe", ROOT / "recipes" / "bench_decoding.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)  # in-process: a subprocess would pay transformers' import again
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        recipe.main(recipe.parse_args(["--sizes", "1e3", "--beams", "4", "--queries", "2", "--batch-size", "2",
                                       "--d-model", "32", "--output", str(out)]))
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    (row,) = report["rows"]
    assert row["items"] == 1000 and row["processor_outputs_valid"] == 1.0 and row["processor_equals_callback"] == 1.0
    assert set(row["ms_per_query"]) == {"unconstrained", "processor", "callback"}
    assert report["environment"]["torch"] == torch.__version__ and "| 1e+03 |" in report["table_markdown"]
    assert row["trie_bytes"] > 0 and row["constraint_ms_per_query"]["processor"] > 0


# ---- the compiled trie saved with the retriever --------------------------------------------------------------------
@pytest.fixture(scope="module")
def semantic_retriever():
    from genretrieval.ids.semantic import SemanticIdScheme
    from genretrieval.modeling.retriever import GenerativeRetriever, ModelConfig, build_model
    from genretrieval.tokenization import build_tokenizer

    gen = torch.Generator().manual_seed(0)
    codes = torch.unique(torch.randint(0, 6, (40, 3), generator=gen), dim=0)
    codes = torch.cat([codes, torch.zeros(len(codes), 1, dtype=torch.long)], 1)  # collision digit column
    scheme = SemanticIdScheme([f"item-{i}" for i in range(len(codes))], codes.numpy(), codebook_sizes=[6, 6, 6, 2])
    texts = ["red running shoes", "blue denim jacket", "green tea mug", "wireless mouse black"] * 3
    tokenizer = build_tokenizer(texts, scheme.new_tokens())
    torch.manual_seed(0)
    config = ModelConfig(d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2, d_kv=16)
    return GenerativeRetriever(build_model(config, tokenizer).eval(), tokenizer, scheme)


def test_vectorised_token_ids_equal_per_item_lookup(semantic_retriever):
    from genretrieval.decoding import item_token_ids

    scheme, tok = semantic_retriever.id_scheme, semantic_retriever.tokenizer
    slow = torch.tensor([tok.convert_tokens_to_ids(list(seq)) for seq in scheme.valid_sequences()])
    assert torch.equal(item_token_ids(scheme, tok), slow)


def test_retriever_saves_and_loads_compiled_trie(semantic_retriever, tmp_path, caplog):
    from genretrieval.decoding.trie import TRIE_FILE
    from genretrieval.modeling.retriever import GenerativeRetriever

    before = semantic_retriever.search(["red shoes", "tea"], k=3)
    semantic_retriever.save_pretrained(tmp_path / "r")
    assert (tmp_path / "r" / TRIE_FILE).is_file()
    loaded = GenerativeRetriever.from_pretrained(tmp_path / "r")
    assert loaded._trie is not None  # read from disk, not rebuilt
    for name, tensor in semantic_retriever.trie.tensors().items():
        assert torch.equal(loaded.trie.tensors()[name], tensor), name
    assert loaded.search(["red shoes", "tea"], k=3).item_ids == before.item_ids

    # A directory saved before tries were stored: loads, builds the trie on first use.
    (tmp_path / "r" / TRIE_FILE).unlink()
    old = GenerativeRetriever.from_pretrained(tmp_path / "r")
    assert old._trie is None and old.search(["red shoes", "tea"], k=3).item_ids == before.item_ids

    # A stale or damaged file is ignored (with a warning), never trusted.
    ItemTrie(torch.tensor([[900, 901]]), EOS).save(tmp_path / "r" / TRIE_FILE, {"fingerprint": "other"})
    assert GenerativeRetriever.from_pretrained(tmp_path / "r")._trie is None
    (tmp_path / "r" / TRIE_FILE).write_bytes(b"not a safetensors file")
    assert GenerativeRetriever.from_pretrained(tmp_path / "r")._trie is None
    assert "rebuil" in caplog.text

"""The head plumbing: registry, embeddings adapters, batch building from examples, the standalone baseline."""

from __future__ import annotations

import pytest
import torch
from heads_util import random_batch, tiny_embeddings

from genretrieval.modeling.heads import (
    Head,
    HeadConfig,
    HeadOutput,
    build_head,
    get_head_class,
    register_head,
)
from genretrieval.modeling.heads.base import _HEADS, pairwise_bce


class DotHead(Head):
    """Minimal head for plumbing tests: user/query vector · item vector."""

    def __init__(self, config: HeadConfig, embed_dim: int, num_users: int):
        super().__init__(config, embed_dim, num_users)
        self.users = torch.nn.Embedding(num_users, embed_dim)

    def _request(self, batch, emb):
        query = emb.encode_text(batch.query).sum(1)
        history = emb.items(batch.history).sum(1)
        return torch.where(batch.is_search.unsqueeze(1), query, history + self.users(batch.users))

    def forward(self, batch, emb):
        scores = self.score(batch, emb, batch.candidates())
        return HeadOutput(pairwise_bce(scores), scores, {})

    def score(self, batch, emb, candidates):
        req = self._request(batch, emb)
        items = emb.items(candidates)
        if candidates.dim() == 1:
            return req @ items.T
        return (req.unsqueeze(1) * items).sum(-1)


@pytest.fixture
def dot_head():
    if "dot-test" not in _HEADS:
        register_head("dot-test")(DotHead)
    yield "dot-test"


def test_registry_rejects_duplicates_and_unknown_names(dot_head):
    with pytest.raises(ValueError, match="already registered"):
        register_head("dot-test")(DotHead)
    with pytest.raises(ValueError, match="unknown head 'nope'"):
        get_head_class("nope")
    with pytest.raises(ValueError, match=r"unknown dot-test head parameter\(s\) \['widht'\]"):
        build_head("dot-test", 8, 3, widht=3)
    with pytest.raises(ValueError, match="dropout must be in"):
        build_head("dot-test", 8, 3, dropout=1.5)
    head = build_head("dot-test", 8, 3, num_negatives=2)
    assert head.config.num_negatives == 2 and head.name == "dot-test"


def test_own_embeddings_pad_with_zeros_and_item_text():
    emb = tiny_embeddings(num_items=5, vocab_size=9, dim=4)
    assert emb.items(torch.tensor([-1, 2])).abs()[0].sum() == 0
    assert emb.terms(torch.tensor([[0, 3]]))[0, 0].abs().sum() == 0
    text = emb.item_text(torch.tensor([[1, -1]]))
    assert text.shape == (1, 2, 6) and text[0, 1].sum() == 0 and torch.equal(text[0, 0], emb.item_text_ids[1])
    with pytest.raises(ValueError, match="item_text_ids must be"):
        type(emb)(5, 9, 4, torch.zeros(4, 2, dtype=torch.long))


def test_pairwise_bce_on_known_scores():
    scores = torch.tensor([[0.0, 0.0]])
    assert pairwise_bce(scores).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert pairwise_bce(torch.tensor([[20.0, -20.0]])).item() < 1e-6


def _tables():
    from genretrieval.data import build_examples, generate_synthetic

    from genretrieval.data.builders import SplitConfig
    from genretrieval.data.synthetic import SyntheticConfig

    catalog, interactions = generate_synthetic(SyntheticConfig(num_items=40, num_users=30, seed=1))
    return catalog, build_examples(catalog, interactions, SplitConfig(search_split="user"))


def test_batch_builder_places_searches_in_time_and_never_uses_held_out_examples():
    from genretrieval.modeling.heads.data import HeadBatchBuilder, word_ids, word_vocabulary
    from genretrieval.baselines._common import catalog_texts

    catalog, examples = _tables()
    train = {t: examples[t]["train"] for t in examples}
    vocab = word_vocabulary(catalog_texts(catalog) + list(train["search"]["query"]))
    builder = HeadBatchBuilder(catalog, train, word_ids(vocab))
    rows = train["recommend"].to_list()[:16] + train["search"].to_list()[:16]
    batch = builder.from_examples(rows, num_negatives=3, generator=torch.Generator().manual_seed(0))
    assert batch.size == 32 and batch.negatives.shape == (32, 3)
    assert not (batch.negatives == batch.target.unsqueeze(1)).any()
    assert torch.equal(batch.is_search, torch.tensor([False] * 16 + [True] * 16))
    assert (batch.query[:16] == 0).all() and (batch.query[16:] != 0).any(dim=1).all()
    # A search row sees only strictly earlier searches: never itself, a later one, or one at the same time.
    for n, row in enumerate(rows[16:], start=16):
        events = builder._searches[row["user_id"]]
        own_time = next(e[0] for e in events if e[1] == n - 16)
        kept = batch.search_items[n][batch.search_items[n] >= 0].tolist()
        assert kept == [e[3] for e in events if e[0] < own_time][-builder.config.max_searches:]
    # The first rec example of a user (target at position 1) has at most the searches made right after item 0.
    first = rows[0]
    assert builder._positions[first["user_id"]][first["target_item"]] >= 1
    # Held-out targets (validation/test) never appear among the earlier searches of a test request.
    from genretrieval.evaluation.evaluator import group_requests

    test = group_requests(examples["recommend"]["test"], lambda r: " ".join(r["history"]))
    inference = builder.from_requests(test)
    assert inference.negatives.shape == (len(test), 0) and (inference.target == -1).all()
    for req, items in zip(test, inference.search_items):
        relevant = {builder.index[i] for i in req.relevant}
        assert not relevant & set(items.tolist())
    # Unknown catalog items are named.
    with pytest.raises(ValueError, match="not in the catalog"):
        builder.from_examples([dict(rows[0], target_item="no-such-item")], 1)


def test_seq2seq_shared_embeddings_share_rows_and_pass_gradients():
    from transformers import T5Config, T5ForConditionalGeneration

    from genretrieval.modeling.heads.shared import Seq2SeqSharedEmbeddings

    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=99, d_model=32, d_ff=64, num_layers=2, num_heads=2,
                                                d_kv=16, decoder_start_token_id=0, pad_token_id=0))
    item_tokens = torch.tensor([[90], [91], [92]])
    emb = Seq2SeqSharedEmbeddings(model, item_tokens, torch.tensor([[5, 6, 0], [7, 0, 0], [8, 9, 10]]))
    shared = model.get_input_embeddings().weight
    assert torch.allclose(emb.items(torch.tensor([1])), shared[91].unsqueeze(0))
    assert emb.items(torch.tensor([-1])).abs().sum() == 0
    encoded = emb.encode_text(torch.tensor([[[5, 6, 0], [0, 0, 0]]]))
    assert encoded.shape == (1, 2, 3, 32) and encoded[0, 1].abs().sum() == 0 and encoded[0, 0, 2].abs().sum() == 0
    assert encoded[0, 0, 0].abs().sum() > 0
    (emb.items(torch.tensor([0, 2])).sum() + encoded.sum()).backward()
    assert shared.grad[90].abs().sum() > 0 and shared.grad[5].abs().sum() > 0 and shared.grad[91].abs().sum() == 0
    assert not list(emb.parameters())  # the model stays owned by the retriever
    semantic = Seq2SeqSharedEmbeddings(model, torch.tensor([[10, 20], [10, 21]]), torch.zeros(2, 1, dtype=torch.long))
    assert torch.allclose(semantic.items(torch.tensor([1]))[0], (shared[10] + shared[21]) / 2)


def test_standalone_head_baseline_fits_scores_and_trains_tasks_individually(dot_head, capsys):
    from genretrieval.baselines import HeadBaselineConfig, register_head_baselines
    from genretrieval.baselines.base import get_baseline_class
    from genretrieval.evaluation.evaluator import group_requests

    register_head_baselines()
    catalog, examples = _tables()
    train = {t: examples[t]["train"] for t in examples}
    valid = {t: examples[t]["validation"] for t in examples}
    cls = get_baseline_class("dot-test")
    model = cls(HeadBaselineConfig(max_epochs=2, batch_size=64, embedding_dim=8)).fit(catalog, train, valid, seed=0)
    assert model.supported_tasks == ("search", "recommend")
    shown = capsys.readouterr().err  # epoch and batch bars: minutes per epoch must not be silent
    assert "dot-test" in shown and "epoch" in shown and "batch" in shown
    requests = group_requests(examples["search"]["test"], lambda r: r["query"])[:5]
    requests += group_requests(examples["recommend"]["test"], lambda r: " ".join(r["history"]))[:5]
    scores = model.score(requests)
    assert scores.shape == (10, 40) and torch.isfinite(scores).all()
    again = cls(HeadBaselineConfig(max_epochs=2, batch_size=64, embedding_dim=8)).fit(catalog, train, valid, seed=0)
    assert torch.allclose(again.score(requests), scores)  # seeded
    alone = cls(HeadBaselineConfig(max_epochs=1, tasks=["recommend"], embedding_dim=8)).fit(catalog, train, valid)
    assert alone.supported_tasks == ("recommend",)
    with pytest.raises(ValueError, match="cannot serve task 'search'"):
        alone.score(requests[:1])
    with pytest.raises(ValueError, match="tasks must be a non-empty subset"):
        HeadBaselineConfig(tasks=["ranking"])


def test_per_task_stage_fine_tunes_separate_copies(dot_head):
    from genretrieval.baselines import HeadBaselineConfig, register_head_baselines
    from genretrieval.baselines.base import get_baseline_class

    class TwoStage(DotHead):
        def training_stages(self, num_epochs):
            return [(1, "alternate"), (1, "per-task")]

    if "two-stage-test" not in _HEADS:
        register_head("two-stage-test")(TwoStage)
    register_head_baselines()
    catalog, examples = _tables()
    model = get_baseline_class("two-stage-test")(HeadBaselineConfig(max_epochs=2, embedding_dim=8)).fit(
        catalog, {t: examples[t]["train"] for t in examples}, {t: examples[t]["validation"] for t in examples})
    assert model.heads["search"] is not model.heads["recommend"]
    assert model.embeddings["search"] is not model.embeddings["recommend"]
    assert len(model.training_log) >= 3


def test_random_batch_factory_is_well_formed():
    batch = random_batch(size=6, negatives=2)
    assert batch.candidates().shape == (6, 3)
    assert ((batch.history >= -1) & (batch.history < 30)).all()
    assert (batch.query[~batch.is_search] == 0).all()


def _smoke_retriever():
    from genretrieval.config import build_dataclass, load_yaml
    from genretrieval.data import build_examples
    from genretrieval.training import TrainConfig
    from genretrieval.training.trainer import build_retriever, load_tables

    config = build_dataclass(TrainConfig, load_yaml("recipes/configs/smoke.yaml"))
    catalog, interactions = load_tables(config)
    examples = build_examples(catalog, interactions, config.data.split)
    torch.manual_seed(0)
    return build_retriever(config, catalog, examples, log=lambda *a: None), catalog, examples


def test_auxiliary_heads_add_weighted_losses_train_shared_rows_and_save_with_the_retriever(dot_head, tmp_path):
    from genretrieval.modeling import GenerativeRetriever
    from genretrieval.modeling.heads.auxiliary import AuxiliaryHeads, HeadSpec

    retriever, catalog, examples = _smoke_retriever()
    train = {t: examples[t]["train"] for t in examples}
    aux = AuxiliaryHeads([HeadSpec("dot-test", weight=0.5)], retriever, catalog, train)
    rows = train["recommend"].to_list()[:8] + train["search"].to_list()[:8]
    total, logs = aux(rows, torch.Generator().manual_seed(0))
    assert total.item() == pytest.approx(0.5 * logs["dot-test/loss"].item())
    total.backward()
    shared = retriever.model.get_input_embeddings().weight
    targets = retriever.tokenizer.convert_tokens_to_ids([retriever.id_scheme.encode(r["target_item"])[0] for r in rows])
    assert all(shared.grad[t].abs().sum() > 0 for t in targets)
    assert aux.heads["dot-test"].users.weight.grad is not None
    retriever.heads = aux
    retriever.save_pretrained(tmp_path / "m")
    loaded = GenerativeRetriever.from_pretrained(tmp_path / "m")
    modules, meta = loaded.saved_heads
    assert meta["heads"][0]["weight"] == 0.5 and meta["users"] == aux.builder.user_index
    assert torch.equal(modules["dot-test"].users.weight, aux.heads["dot-test"].users.weight)
    assert GenerativeRetriever.from_pretrained(tmp_path / "m").saved_heads is not None
    with pytest.raises(ValueError, match="unknown head"):
        HeadSpec("nope")
    with pytest.raises(ValueError, match="weight must be"):
        HeadSpec("dot-test", weight=-1)


def test_head_baseline_validates_on_a_seeded_sample_per_task(dot_head, monkeypatch):
    import genretrieval.baselines.heads as heads_module
    from genretrieval.baselines import HeadBaselineConfig, register_head_baselines
    from genretrieval.baselines.base import get_baseline_class

    register_head_baselines()
    catalog, examples = _tables()
    seen = []
    monkeypatch.setattr(heads_module, "ranking_quality",
                        lambda fn, requests, *args: seen.append(list(requests)) or 0.5)
    config = HeadBaselineConfig(max_epochs=2, embedding_dim=8, max_valid_requests=3)
    get_baseline_class("dot-test")(config).fit(catalog, {t: examples[t]["train"] for t in examples},
                                               {t: examples[t]["validation"] for t in examples})
    assert len(seen) == 2 and all(len(r) == 6 for r in seen)  # 3 search + 3 recommend requests, every epoch
    assert [r.source for r in seen[0]] == [r.source for r in seen[1]]  # the same sample each epoch
    assert [r.task for r in seen[0]] == ["search"] * 3 + ["recommend"] * 3
    with pytest.raises(ValueError, match="max_valid_requests"):
        HeadBaselineConfig(max_valid_requests=0)

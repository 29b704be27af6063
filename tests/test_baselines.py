"""Tests for genretrieval.baselines: registry, configs, popularity, BM25, SASRec and the bi-encoder."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from genretrieval.baselines import (
    BM25,
    BiEncoder,
    BiEncoderConfig,
    BM25Config,
    Popularity,
    PopularityConfig,
    QueryPopularity,
    QueryPopularityConfig,
    Retriever,
    SASRec,
    SASRecConfig,
    get_baseline_class,
    register_baseline,
    registered_baselines,
)
from genretrieval.baselines._common import EarlyStopping
from genretrieval.baselines.sasrec import user_sequences
from genretrieval.data import CATALOG_FEATURES, EXAMPLE_FEATURES, SyntheticConfig, build_examples, generate_synthetic
from genretrieval.evaluation.evaluator import Request, group_requests

# --------------------------------------------------------------------------- helpers and fixtures


def make_catalog(texts: list[str], titles: list[str] | None = None) -> Dataset:
    """Catalog with items i00, i01, ... and the given free texts."""
    n = len(texts)
    return Dataset.from_dict(
        {"item_id": [f"i{k:02d}" for k in range(n)], "title": titles or [""] * n, "text": texts,
         "categories": [[] for _ in range(n)]},
        features=CATALOG_FEATURES,
    )


def make_examples(rows: list[tuple[str, str, str, list[str], str]]) -> Dataset:
    """Examples table from ``(task, user, query, history, target)`` tuples."""
    cols = {name: [] for name in EXAMPLE_FEATURES}
    for task, user, query, history, target in rows:
        for name, value in zip(EXAMPLE_FEATURES, (task, user, query, history, target)):
            cols[name].append(value)
    return Dataset.from_dict(cols, features=EXAMPLE_FEATURES)


def rec(history: list[str], target: str = "i00") -> Request:
    return Request("recommend", " ".join(history), {target}, history=history, user_id="u")


def search(query: str, target: str = "i00") -> Request:
    return Request("search", query, {target}, query=query)


@pytest.fixture(scope="module")
def small() -> dict:
    """A tiny synthetic world: catalog and per-task train/validation/test examples."""
    cfg = SyntheticConfig(num_items=60, num_users=40, num_topics=6, searches_per_user=4, min_history_length=5,
                          max_history_length=9)
    catalog, interactions = generate_synthetic(cfg)
    examples = build_examples(catalog, interactions)
    split = {s: {t: examples[t][s] for t in examples} for s in ("train", "validation", "test")}
    return {"catalog": catalog, **split}


FAST = {
    "sasrec": SASRecConfig(hidden_size=16, max_len=10, max_epochs=2, batch_size=16, num_threads=1),
    "biencoder": BiEncoderConfig(embedding_dim=16, hidden_size=16, max_epochs=2, batch_size=64, num_threads=1),
}

# Pattern world: 12 items, item i is always followed by item i+1 (mod 12); the query "qi" always leads to item i.
N_PATTERN = 12


def successor_examples(num_users: int = 24, length: int = 6) -> Dataset:
    rows = []
    for u in range(num_users):
        seq = [f"i{(u + t) % N_PATTERN:02d}" for t in range(length)]
        rows += [("recommend", f"u{u}", "", seq[:t], seq[t]) for t in range(1, length)]
    return make_examples(rows)


def query_examples(repeats: int = 4) -> Dataset:
    return make_examples([("search", f"u{r}", f"q{i}", [], f"i{i:02d}") for r in range(repeats)
                          for i in range(N_PATTERN)])


def top1(scores: torch.Tensor) -> list[int]:
    return scores.argmax(1).tolist()


# --------------------------------------------------------------------------- registry and configs


def test_registry_lists_every_baseline_and_returns_its_class():
    assert {"popularity", "popularity-query", "bm25", "sasrec", "biencoder"} <= set(registered_baselines())
    assert get_baseline_class("sasrec") is SASRec
    assert get_baseline_class("popularity-query") is QueryPopularity
    assert BiEncoder.name == "biencoder"


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="'popularity' is already registered"):
        register_baseline("popularity")(type("Other", (Popularity,), {}))
    assert get_baseline_class("popularity") is Popularity  # the original survives
    with pytest.raises(ValueError, match="unknown baseline 'nope'"):
        get_baseline_class("nope")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: SASRecConfig(hidden_size=0), r"hidden_size must be an integer >= 1, got 0"),
        (lambda: SASRecConfig(hidden_size=64, num_heads=3), r"hidden_size \(64\) must be divisible by num_heads \(3\)"),
        (lambda: SASRecConfig(loss="hinge"), r"loss must be one of .*got 'hinge'"),
        (lambda: SASRecConfig(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (lambda: SASRecConfig(valid_metric="mrr"), r"valid_metric must be one of .*got 'mrr'"),
        (lambda: BiEncoderConfig(temperature=0.0), r"temperature must be > 0, got 0.0"),
        (lambda: BiEncoderConfig(num_threads=0), r"BiEncoderConfig.num_threads must be None or an integer >= 1, got 0"),
        (lambda: BiEncoderConfig(history_encoder="lstm"), r"history_encoder must be one of .*got 'lstm'"),
        (lambda: BiEncoderConfig(tasks=("browse",)), r"tasks must be a non-empty subset .*got \('browse',\)"),
        (lambda: BM25Config(b=1.5), r"BM25Config.b must be in \[0, 1\], got 1.5"),
        (lambda: BM25Config(k1=-1.0), r"BM25Config.k1 must be > 0, got -1.0"),
        (lambda: PopularityConfig(tasks=("browse",)), r"unknown task 'browse'"),
        (lambda: QueryPopularityConfig(fallback="yes"), r"QueryPopularityConfig.fallback must be a bool, got 'yes'"),
    ],
)
def test_config_validation_names_the_bad_value(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# --------------------------------------------------------------------------- every baseline on tiny synthetic data


@pytest.mark.parametrize("name", ["popularity", "popularity-query", "bm25", "sasrec", "biencoder"])
def test_baseline_fits_tiny_synthetic_data_and_scores_every_item(small, name):
    cls = get_baseline_class(name)
    model = cls(FAST.get(name))
    assert model.fit(small["catalog"], small["train"], small["validation"], seed=0) is model
    assert model.item_ids == list(small["catalog"]["item_id"])
    for task in model.supported_tasks:
        requests = group_requests(small["test"][task], format_fn=lambda r: r["query"] or " ".join(r["history"]))
        scores = model.score(requests)
        assert scores.shape == (len(requests), len(small["catalog"]))
        assert scores.is_floating_point() and torch.isfinite(scores).all()
    expected = {"bm25": ("search",), "popularity-query": ("search",), "sasrec": ("recommend",)}
    assert model.supported_tasks == expected.get(name, ("search", "recommend"))


@pytest.mark.parametrize("name", ["popularity", "bm25", "sasrec", "biencoder"])
def test_score_before_fit_is_a_clear_error(name):
    with pytest.raises(RuntimeError, match="call fit"):
        get_baseline_class(name)().score([search("x")])


# --------------------------------------------------------------------------- popularity


def test_popularity_counts_targets_per_task_and_breaks_ties_by_catalog_order():
    catalog = make_catalog(["", "", "", ""])
    train = {
        "recommend": make_examples([("recommend", "u", "", ["i00"], t) for t in ["i02", "i03", "i02", "i01", "i03"]]),
        "search": make_examples([("search", "u", "q", [], "i00")]),
    }
    model = Popularity().fit(catalog, train)
    scores = model.score([rec(["i00"]), search("anything")])
    assert scores.dtype == torch.float64
    assert scores.floor().tolist() == [[0, 1, 2, 2], [1, 0, 0, 0]]
    # Ties are broken inside the scores (strictly), so any top-k gives i02 before i03 and the zero tail in order.
    assert scores[0, 2] > scores[0, 3] > scores[0, 1] > scores[0, 0]
    assert scores[1, 0] > scores[1, 1] > scores[1, 2] > scores[1, 3]


def test_popularity_without_a_task_refuses_its_requests():
    catalog = make_catalog(["", ""])
    model = Popularity().fit(catalog, {"search": make_examples([("search", "u", "q", [], "i01")]),
                                       "recommend": make_examples([])})
    assert model.supported_tasks == ("search",)
    with pytest.raises(ValueError, match="cannot serve task 'recommend' \\(request 1\\)"):
        model.score([search("q"), rec(["i00"])])
    with pytest.raises(ValueError, match="not in the catalog"):
        Popularity().fit(catalog, {"search": make_examples([("search", "u", "q", [], "zz")])})


def test_query_popularity_uses_the_normalised_query_then_global_popularity():
    catalog = make_catalog(["", "", "", ""])
    rows = [("Red Shoe", "i00"), ("red  shoe", "i00"), ("red shoe", "i01")] + [("blue", "i03")] * 5
    train = {"search": make_examples([("search", "u", q, [], t) for q, t in rows])}
    model = QueryPopularity().fit(catalog, train)
    scores = model.score([search(" RED shoe "), search("never seen")])
    assert scores[0].argsort(descending=True).tolist() == [0, 1, 3, 2]  # query counts 2, 1, then global 5, 0
    assert scores[1].argsort(descending=True).tolist() == [3, 0, 1, 2]  # global popularity 5, 2, 1, 0
    pure = QueryPopularity(QueryPopularityConfig(fallback=False)).fit(catalog, train)
    assert pure.score([search("red shoe")])[0].argsort(descending=True).tolist() == [0, 1, 2, 3]  # catalog order
    with pytest.raises(ValueError, match="cannot serve task 'recommend'"):
        model.score([rec(["i00"])])


# --------------------------------------------------------------------------- BM25


def test_bm25_ranks_the_item_with_the_rare_query_term_first():
    catalog = make_catalog(
        ["a widget for the kitchen", "the widget and another widget", "widget zorblax edition", "garden hose"],
        titles=["Widget", "Widget Pro", "Widget", "Hose"],
    )
    model = BM25().fit(catalog, {})
    scores = model.score([search("widget zorblax"), search("the and of"), search("unknownword"), search("")])
    assert top1(scores[:1]) == [2]
    assert scores[0, 3] == 0 and (scores[0, :3] > 0).all()
    assert (scores[1:] == 0).all()  # stopwords only, unknown term, empty query
    with pytest.raises(ValueError, match="bm25 cannot serve task 'recommend'"):
        model.score([rec(["i00"])])


def test_bm25_parameters_change_the_scores():
    catalog = make_catalog(["widget " * 5 + "long text here", "widget"])
    a = BM25(BM25Config(b=0.0)).fit(catalog, {}).score([search("widget")])
    b = BM25(BM25Config(b=1.0)).fit(catalog, {}).score([search("widget")])
    assert a[0, 0] > a[0, 1] and not torch.equal(a, b)


# --------------------------------------------------------------------------- SASRec


def test_user_sequences_stitch_histories_truncated_by_max_history():
    table = make_examples([
        ("recommend", "u1", "", ["a"], "b"), ("recommend", "u1", "", ["a", "b"], "c"),
        ("recommend", "u1", "", ["b", "c"], "d"), ("recommend", "u2", "", ["x"], "y"),
    ])
    assert user_sequences(table) == {"u1": ["a", "b", "c", "d"], "u2": ["x", "y"]}


# One thread: these models are tiny, and on a busy 2-core machine two threads make them tens of times slower.
SASREC_PATTERN = SASRecConfig(hidden_size=32, max_len=8, max_epochs=40, batch_size=8, dropout=0.1,
                              learning_rate=5e-3, num_threads=1)


@pytest.mark.parametrize("loss", ["ce", "bce"])
def test_sasrec_learns_the_successor_pattern(loss):
    catalog = make_catalog([""] * N_PATTERN)
    # BCE never samples the user's own items as negatives, so it learns nothing against them: short windows keep
    # the other successors as negatives, and (as in the masked protocol) the history is excluded before ranking.
    length = 6 if loss == "ce" else 3
    cfg = SASRecConfig(**{**SASREC_PATTERN.__dict__, "loss": loss, "max_epochs": 40 if loss == "ce" else 20})
    model = SASRec(cfg).fit(catalog, {"recommend": successor_examples(length=length)}, seed=0)
    requests = [rec([f"i{(i - 1) % N_PATTERN:02d}", f"i{i:02d}"]) for i in range(N_PATTERN)]
    scores = model.score(requests)
    if loss == "bce":
        for i in range(N_PATTERN):
            scores[i, [(i - 1) % N_PATTERN, i]] = float("-inf")
    hits = sum(p == (i + 1) % N_PATTERN for i, p in enumerate(top1(scores)))
    assert hits >= N_PATTERN - 1


def test_sasrec_is_deterministic_under_a_seed_and_refuses_search():
    catalog = make_catalog([""] * N_PATTERN)
    cfg = SASRecConfig(**{**SASREC_PATTERN.__dict__, "max_epochs": 3})
    train = {"recommend": successor_examples(), "search": query_examples()}
    requests = [rec(["i01", "i02"]), rec([])]
    rng_state, threads = torch.get_rng_state(), torch.get_num_threads()
    first = SASRec(cfg).fit(catalog, train, seed=1).score(requests)
    assert torch.equal(torch.get_rng_state(), rng_state) and torch.get_num_threads() == threads  # no global effects
    again = SASRec(cfg).fit(catalog, train, seed=1).score(requests)
    other = SASRec(cfg).fit(catalog, train, seed=2).score(requests)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert torch.isfinite(first).all()  # an empty history still gets scores
    with pytest.raises(ValueError, match="sasrec cannot serve task 'search'"):
        SASRec(cfg).fit(catalog, train).score([search("q1")])
    with pytest.raises(ValueError, match="needs recommend training examples"):
        SASRec(cfg).fit(catalog, {"search": query_examples()})
    with pytest.raises(ValueError, match="request 0 history: item 'nope' is not in the catalog"):
        SASRec(cfg).fit(catalog, train).score([rec(["nope"])])


def test_sasrec_early_stops_on_validation_and_logs_it():
    catalog = make_catalog([""] * N_PATTERN)
    valid = make_examples([("recommend", f"u{i}", "", [f"i{i:02d}"], f"i{(i + 1) % N_PATTERN:02d}")
                           for i in range(N_PATTERN)])
    cfg = SASRecConfig(**{**SASREC_PATTERN.__dict__, "max_epochs": 200, "patience": 2})
    model = SASRec(cfg).fit(catalog, {"recommend": successor_examples()}, {"recommend": valid}, seed=0)
    assert all("valid" in entry for entry in model.training_log)
    assert len(model.training_log) < 200  # the pattern is learnt long before, so patience ends training
    assert max(e["valid"] for e in model.training_log) > 0.9


def test_early_stopping_keeps_the_best_state():
    model = torch.nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(patience=2)
    stops = []
    for epoch, value in enumerate([0.1, 0.3, 0.2, 0.25], start=1):
        model.weight.data.fill_(epoch)
        stops.append(stopper.update(value, epoch, model))
    assert stops == [False, False, False, True] and stopper.best_epoch == 2
    stopper.restore(model)
    assert model.weight.item() == 2.0


# --------------------------------------------------------------------------- bi-encoder


BIENCODER_PATTERN = BiEncoderConfig(embedding_dim=32, hidden_size=32, max_epochs=60, batch_size=16, dropout=0.0,
                                    learning_rate=1e-2, temperature=0.1, num_threads=1)


def test_biencoder_learns_queries_and_successors_with_one_model():
    catalog = make_catalog([""] * N_PATTERN)  # no text: the query -> item map must be learnt, not matched
    train = {"search": query_examples(), "recommend": successor_examples()}
    model = BiEncoder(BIENCODER_PATTERN).fit(catalog, train, seed=0)
    assert model.supported_tasks == ("search", "recommend")
    searches = top1(model.score([search(f"q{i}") for i in range(N_PATTERN)]))
    recs = top1(model.score([rec([f"i{(i - 1) % N_PATTERN:02d}", f"i{i:02d}"]) for i in range(N_PATTERN)]))
    assert sum(p == i for i, p in enumerate(searches)) >= N_PATTERN - 1
    assert sum(p == (i + 1) % N_PATTERN for i, p in enumerate(recs)) >= N_PATTERN - 1


def test_biencoder_is_deterministic_and_serves_only_trained_tasks():
    catalog = make_catalog([f"text{i}" for i in range(N_PATTERN)])
    cfg = BiEncoderConfig(**{**BIENCODER_PATTERN.__dict__, "max_epochs": 2})
    train = {"search": query_examples(), "recommend": successor_examples()}
    requests = [search("q3 text3"), search("unknown words only"), rec(["i01"]), rec([])]
    first = BiEncoder(cfg).fit(catalog, train, seed=1).score(requests)
    again = BiEncoder(cfg).fit(catalog, train, seed=1).score(requests)
    assert torch.equal(first, again) and torch.isfinite(first).all()
    search_only = BiEncoder(cfg).fit(catalog, {"search": query_examples()})
    assert search_only.supported_tasks == ("search",)
    with pytest.raises(ValueError, match="biencoder cannot serve task 'recommend'"):
        search_only.score([rec(["i01"])])


def test_biencoder_masks_in_batch_duplicates_of_the_target():
    catalog = make_catalog([""] * N_PATTERN)
    model = BiEncoder(BiEncoderConfig(**{**BIENCODER_PATTERN.__dict__, "max_epochs": 1}))
    model.fit(catalog, {"search": query_examples()}, seed=0)
    log_freq = torch.zeros(N_PATTERN)
    # Every row has the same target: once duplicates are masked each row has a single candidate, so the loss is 0.
    same = [("search", [model.vocab[f"q{i}"]], 5) for i in range(4)]
    assert model._loss(same, log_freq).item() == pytest.approx(0.0, abs=1e-6)
    distinct = [("search", [model.vocab[f"q{i}"]], i) for i in range(4)]
    assert model._loss(distinct, log_freq).item() > 0.01


def test_biencoder_unseen_items_get_a_content_representation():
    # Items 0-5 are trained targets of queries "wi"; item 6 never is, but has exactly item 3's text.
    catalog = make_catalog([f"w{i}" for i in range(6)] + ["w3"])
    train = {"search": make_examples([("search", f"u{r}", f"w{i}", [], f"i{i:02d}") for r in range(4)
                                      for i in range(6)])}
    cfg = BiEncoderConfig(**{**BIENCODER_PATTERN.__dict__, "max_epochs": 40})
    model = BiEncoder(cfg).fit(catalog, train, seed=0)
    assert model.model is not None and model.model.item_id_emb.weight[6].abs().sum() == 0  # id vector untouched
    ranking = model.score([search("w3")])[0].argsort(descending=True).tolist()
    assert set(ranking[:2]) == {3, 6}  # the unseen item is found through its content alone


def test_retriever_subclasses_share_the_interface():
    for name in registered_baselines():
        cls = get_baseline_class(name)
        assert issubclass(cls, Retriever) and cls.name == name

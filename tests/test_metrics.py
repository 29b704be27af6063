"""Ranking metrics: hand-computed cases, validation, and (when installed) agreement with ranx."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from genretrieval.evaluation import compute_metrics, hits_matrix, hr_at_k, map_at_k, mrr, ndcg_at_k, recall_at_k

LOG2_3, LOG2_5 = math.log2(3), math.log2(5)


def test_hits_matrix_marks_first_occurrence_only():
    hits, n_rel = hits_matrix([["a", "a", "b", "c"], ["x"]], [{"a", "b"}, ["y", "z", "y"]])
    assert hits.tolist() == [[True, False, True, False], [False, False, False, False]]
    assert n_rel.tolist() == [2, 2]  # relevant ids are a set: the repeated "y" counts once
    hits, _ = hits_matrix([["a", "b", "c"]], [{"c"}], k=2)
    assert hits.shape == (1, 2) and not hits.any()


def test_multiple_relevant_items():
    # ranks 1..4 = a b c d; relevant {b, d, x}: hits at ranks 2 and 4, n_rel = 3
    hits, n_rel = hits_matrix([["a", "b", "c", "d"]], [{"b", "d", "x"}])
    assert recall_at_k(hits, n_rel, 2) == pytest.approx([1 / 3])
    assert recall_at_k(hits, n_rel, 4) == pytest.approx([2 / 3])
    # DCG@4 = 1/log2(3) + 1/log2(5); ideal has min(3, 4) = 3 hits: 1 + 1/log2(3) + 1/log2(4)
    assert ndcg_at_k(hits, n_rel, 4) == pytest.approx([(1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3 + 0.5)])
    # DCG@2 = 1/log2(3); ideal with min(3, 2) = 2 hits: 1 + 1/log2(3)
    assert ndcg_at_k(hits, n_rel, 2) == pytest.approx([(1 / LOG2_3) / (1 + 1 / LOG2_3)])
    assert mrr(hits) == pytest.approx([1 / 2])
    # AP@4 = (P@2 + P@4) / min(3, 4) = (1/2 + 2/4) / 3
    assert map_at_k(hits, n_rel, 4) == pytest.approx([1 / 3])
    # AP@2 = P@2 / min(3, 2) = (1/2) / 2
    assert map_at_k(hits, n_rel, 2) == pytest.approx([1 / 4])
    assert hr_at_k(hits, 1).tolist() == [0.0] and hr_at_k(hits, 2).tolist() == [1.0]


def test_no_hits_gives_zeros():
    hits, n_rel = hits_matrix([["a", "b"], []], [{"z"}, {"a"}])
    for values in (recall_at_k(hits, n_rel, 5), ndcg_at_k(hits, n_rel, 5), map_at_k(hits, n_rel, 5), mrr(hits)):
        assert values.tolist() == [0.0, 0.0]
    assert hr_at_k(hits, 5).tolist() == [0.0, 0.0]


def test_k_larger_than_list():
    # one-item lists, k = 10: the missing ranks are simply non-hits
    hits, n_rel = hits_matrix([["a"], ["b"]], [{"a"}, {"a", "b"}])
    assert recall_at_k(hits, n_rel, 10).tolist() == [1.0, 0.5]
    # query 2: DCG = 1 at rank 1; ideal with 2 hits = 1 + 1/log2(3)
    assert ndcg_at_k(hits, n_rel, 10) == pytest.approx([1.0, 1 / (1 + 1 / LOG2_3)])
    # query 2: AP = P@1 / min(2, 10) = 1/2
    assert map_at_k(hits, n_rel, 10).tolist() == [1.0, 0.5]
    assert hr_at_k(hits, 10).tolist() == [1.0, 1.0] and mrr(hits).tolist() == [1.0, 1.0]


def test_compute_metrics_means():
    ranked = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "r"]]
    relevant = [{"a"}, {"z"}, {"nothing"}]
    m = compute_metrics(ranked, relevant, ks=(1, 3), map_k=3)
    assert list(m) == ["recall@1", "ndcg@1", "hr@1", "recall@3", "ndcg@3", "hr@3", "mrr", "map@3"]
    # query 1: hit at rank 1; query 2: hit at rank 3; query 3: none
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3) and m["hr@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 3)  # rank 3 is discounted by log2(4) = 2
    assert m["mrr"] == pytest.approx((1 + 1 / 3) / 3)
    assert m["map@3"] == pytest.approx((1 + 1 / 3) / 3)  # AP = P@3 = 1/3 for query 2
    assert all(isinstance(v, float) for v in m.values())
    assert set(compute_metrics(ranked, relevant)) >= {"recall@30", "ndcg@10", "mrr", "map@100", "hr@5"}


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: hits_matrix([["a"]], [{"a"}, {"b"}]), "1 queries but relevant has 2"),
        (lambda: hits_matrix([["a"], ["b"]], [{"a"}, set()]), r"relevant\[1\] is empty"),
        (lambda: hits_matrix([["a"]], ["a"]), r"relevant\[0\] is a string"),
        (lambda: hits_matrix(["ab"], [{"a"}]), r"ranked\[0\] is a string"),
        (lambda: hits_matrix([["a"]], [{"a"}], k=0), "k must be"),
        (lambda: recall_at_k(np.ones((1, 2), bool), np.array([1]), 0), "got 0"),
        (lambda: ndcg_at_k(np.ones((1, 2), bool), np.array([0]), 1), "query 0 has 0"),
        (lambda: map_at_k(np.ones((2, 2), bool), np.array([1]), 1), "shape"),
        (lambda: hr_at_k(np.ones((1, 2), bool), -1), "got -1"),
        (lambda: compute_metrics([], []), "no queries"),
        (lambda: compute_metrics([["a"]], [{"a"}], ks=(0,)), "got 0"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.slow  # ranx JIT-compiles its metrics with numba on first use: about 30 s
def test_agrees_with_ranx():
    ranx = pytest.importorskip("ranx")
    rng = random.Random(7)
    items = [f"i{j}" for j in range(40)]
    ranked, relevant = [], []
    for _ in range(60):
        ranked.append(rng.sample(items, rng.randint(1, 25)))
        relevant.append(set(rng.sample(items, rng.randint(1, 6))))
    qrels = ranx.Qrels({f"q{q}": {i: 1 for i in rel} for q, rel in enumerate(relevant)})
    # Strictly decreasing scores so ranx keeps our rank order.
    run = ranx.Run({f"q{q}": {i: float(len(r) - j) for j, i in enumerate(r)} for q, r in enumerate(ranked)})
    ours = compute_metrics(ranked, relevant, ks=(5, 10), map_k=10)
    theirs = ranx.evaluate(qrels, run, ["recall@5", "recall@10", "ndcg@5", "ndcg@10", "hit_rate@10", "mrr", "map@10"])
    for ours_key, their_key in [
        ("recall@5", "recall@5"),
        ("recall@10", "recall@10"),
        ("ndcg@5", "ndcg@5"),
        ("ndcg@10", "ndcg@10"),
        ("hr@10", "hit_rate@10"),
        ("mrr", "mrr"),
        ("map@10", "map@10"),  # same here: every query has n_rel <= 6 < 10, where min(n_rel, k) = n_rel
    ]:
        assert ours[ours_key] == pytest.approx(theirs[their_key], abs=1e-9), ours_key

"""Benchmark protocols (full and sampled), paired significance tests and plots."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from genretrieval.evaluation.evaluator import Request
from genretrieval.evaluation.metrics import compute_metrics
from genretrieval.evaluation.protocols import (
    ProtocolConfig,
    evaluate_retriever,
    negative_sample,
    rank_from_scores,
    sampled_candidates,
)
from genretrieval.evaluation.significance import (
    compare_over_seeds,
    compare_per_request,
    mean_over_seeds,
    paired_t_test,
)

INF = float("-inf")


class FixedRetriever:
    """Returns a fixed score row per request source; records batch sizes."""

    def __init__(self, item_ids: list[str], rows: dict[str, list[float]]):
        self.item_ids = list(item_ids)
        self.rows = {k: torch.tensor(v, dtype=torch.float32) for k, v in rows.items()}
        self.batches: list[int] = []

    def score(self, requests):
        self.batches.append(len(requests))
        return torch.stack([self.rows[r.source] for r in requests])


class HashRetriever:
    """Deterministic pseudo-random scores per (source, item), different per ``salt``: a stand-in for a second model."""

    def __init__(self, item_ids: list[str], salt: int):
        self.item_ids = list(item_ids)
        self.salt = salt

    def score(self, requests):
        out = []
        for r in requests:
            g = torch.Generator().manual_seed(hash_str(r.source) + self.salt)
            out.append(torch.rand(len(self.item_ids), generator=g))
        return torch.stack(out)


def hash_str(s: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(s)) % (2**31)


def rec(source: str, relevant, user: str = "", exclude=(), history=()) -> Request:
    return Request("recommend", source, set(relevant), set(exclude), "", list(history), user or source)


# ---------------------------------------------------------------------------------------------------- ranking helper


def test_rank_from_scores_breaks_ties_by_lower_index_and_marks_minus_inf():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, INF, 1.0],
                           [0.0] * 7,
                           [INF] * 6 + [1.0]])
    assert rank_from_scores(scores, 2).tolist() == [[1, 2], [0, 1], [6, -1]]
    assert rank_from_scores(scores, 5).tolist() == [[1, 2, 4, 3, 0], [0, 1, 2, 3, 4], [6, -1, -1, -1, -1]]
    assert rank_from_scores(scores, 100).shape == (3, 7)  # depth clamped to the catalog


def test_rank_from_scores_matches_stable_sort_on_tie_heavy_scores():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (40, 60), generator=gen).float()
    scores[::5, ::3] = INF
    for depth in (1, 7, 30, 60):
        values, order = torch.sort(scores, dim=1, descending=True, stable=True)
        expected = order[:, :depth].masked_fill(values[:, :depth] == INF, -1)
        assert torch.equal(rank_from_scores(scores, depth), expected)


def test_rank_from_scores_rejects_nan_and_bad_depth():
    with pytest.raises(ValueError, match="NaN.*row 1"):
        rank_from_scores(torch.tensor([[1.0, 2.0], [float("nan"), 0.0]]), 1)
    with pytest.raises(ValueError, match="depth.*0"):
        rank_from_scores(torch.zeros(1, 3), 0)


# ---------------------------------------------------------------------------------------------------- full protocol


def test_full_protocol_equals_compute_metrics_on_the_same_ranking():
    rng = random.Random(0)
    items = [f"i{j}" for j in range(40)]
    rows, requests = {}, []
    for q in range(23):
        rows[f"q{q}"] = torch.randn(40, generator=torch.Generator().manual_seed(q)).tolist()
        relevant = set(rng.sample(items, rng.randint(1, 3)))
        if q % 7 == 0:
            relevant.add("not-in-catalog")  # unreachable but counts in n_rel
        requests.append(rec(f"q{q}", relevant))
    retriever = FixedRetriever(items, rows)
    config = ProtocolConfig("full", ks=(1, 5, 10), depth=20)
    result = evaluate_retriever(retriever, requests, config, batch_size=5)

    ranked = [[items[j] for j in np.argsort(-np.array(rows[r.source]), kind="stable")[:20]] for r in requests]
    expected = compute_metrics(ranked, [r.relevant for r in requests], ks=(1, 5, 10), map_k=20)
    assert result.metrics.keys() == expected.keys()
    for name, value in expected.items():
        assert result.metrics[name] == pytest.approx(value), name
        assert result.per_request[name].shape == (23,)
        assert result.per_request[name].mean() == pytest.approx(value)
    assert result.num_requests == result.num_cases == 23
    assert result.request_index.tolist() == list(range(23))
    assert max(retriever.batches) == 5 and sum(retriever.batches) == 23


def test_full_protocol_hand_computed():
    items = list("abcde")
    retriever = FixedRetriever(items, {"q": [5, 4, 3, 2, 1], "r": [1, 1, 1, 1, 1]})
    config = ProtocolConfig("full", ks=(1, 3), depth=5)
    res = evaluate_retriever(retriever, [rec("q", {"c"}), rec("r", {"c"})], config)
    # q: c at rank 3. r: all tied, so catalog order a b c d e puts c at rank 3 as well.
    for q in range(2):
        assert res.per_request["hr@1"][q] == 0.0 and res.per_request["hr@3"][q] == 1.0
        assert res.per_request["ndcg@3"][q] == pytest.approx(1 / math.log2(4))
        assert res.per_request["mrr"][q] == pytest.approx(1 / 3)
        assert res.per_request["map@5"][q] == pytest.approx(1 / 3)
    # Ties at the depth cut-off keep the lowest indices: with depth 2, c (index 2) is cut from the tied row.
    res = evaluate_retriever(retriever, [rec("r", {"c"})], ProtocolConfig("full", ks=(1,), depth=2))
    assert res.metrics["mrr"] == 0.0


def test_full_protocol_masks_exclude_only_when_asked():
    items = list("abcde")
    retriever = FixedRetriever(items, {"q": [5, 4, 3, 2, 1]})
    request = rec("q", {"c"}, exclude={"a", "b"})
    plain = evaluate_retriever(retriever, [request], ProtocolConfig("full", ks=(1,), depth=5))
    masked = evaluate_retriever(retriever, [request], ProtocolConfig("full", ks=(1,), depth=5, exclude_history=True))
    assert plain.metrics["mrr"] == pytest.approx(1 / 3)
    assert masked.metrics["mrr"] == 1.0 and masked.metrics["hr@1"] == 1.0
    # The retriever's own tensor is not modified by the masking.
    assert retriever.rows["q"].tolist() == [5, 4, 3, 2, 1]
    # A relevant item that is itself excluded can never be retrieved.
    gone = evaluate_retriever(retriever, [rec("q", {"a"}, exclude={"a"})],
                              ProtocolConfig("full", ks=(1,), depth=5, exclude_history=True))
    assert gone.metrics["mrr"] == 0.0


# ---------------------------------------------------------------------------------------------------- sampled protocol


def _small_catalog():
    # 12 items: positive p, two interacted items h0 h1, nine others; with 9 negatives every "other" item is drawn.
    items = ["p", "h0", "h1"] + [f"n{j}" for j in range(9)]
    return items, ProtocolConfig("sampled", num_negatives=9, sampled_ks=(1, 5, 10))


def test_sampled_hand_computed_ranks():
    items, config = _small_catalog()
    high = [9.0, 100, 100] + [1.0] * 9                      # positive above all negatives (h0, h1 are not negatives)
    below3 = [5.0, 100, 100] + [10.0] * 3 + [1.0] * 6      # exactly 3 negatives above the positive
    tied = [5.0, 100, 100] + [10.0] + [5.0] * 2 + [1.0] * 6  # 1 above and 2 tied: pessimistic rank 4
    retriever = FixedRetriever(items, {"high": high, "below3": below3, "tied": tied})
    requests = [rec(s, {"p"}, user="u", history=["h0"]) for s in ("high", "below3", "tied")]
    res = evaluate_retriever(retriever, requests, config, interacted={"u": {"h1"}})
    pr = res.per_request
    assert pr["hr@1"].tolist() == [1.0, 0.0, 0.0]
    assert pr["hr@5"].tolist() == [1.0, 1.0, 1.0]
    assert pr["ndcg@5"] == pytest.approx([1.0, 1 / math.log2(5), 1 / math.log2(5)])
    assert pr["mrr"] == pytest.approx([1.0, 1 / 4, 1 / 4])
    assert set(res.metrics) == {"hr@1", "ndcg@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr"}


def test_sampled_positive_masked_by_exclude_ranks_last():
    items, config = _small_catalog()
    retriever = FixedRetriever(items, {"q": [9.0, 0, 0] + [1.0] * 9})
    masked = ProtocolConfig("sampled", num_negatives=9, sampled_ks=(1, 10), exclude_history=True)
    res = evaluate_retriever(retriever, [rec("q", {"p"}, exclude={"p", "h0", "h1"})], masked)
    assert res.metrics["mrr"] == pytest.approx(1 / 10) and res.metrics["hr@1"] == 0.0


def test_sampled_negatives_avoid_interactions_and_are_stable():
    items = [f"i{j}" for j in range(300)]
    interacted = {f"u{u}": {f"i{(u * 7 + j) % 300}" for j in range(40)} for u in range(6)}
    requests = [rec(f"s{u}", {f"i{u}", f"i{u + 100}"}, user=f"u{u}", exclude={f"i{u + 1}"}, history=[f"i{u + 2}"])
                for u in range(6)]
    idx, cand = sampled_candidates(requests, items, num_negatives=99, seed=3, interacted=interacted)
    assert cand.shape == (12, 100)
    assert idx.tolist() == [u for u in range(6) for _ in range(2)]  # one case per relevant item
    for case, (r, row) in enumerate(zip(idx, cand)):
        req = requests[r]
        negatives = {items[j] for j in row[:-1]}
        assert len(negatives) == 99
        assert items[row[-1]] in req.relevant
        forbidden = interacted[req.user_id] | req.relevant | req.exclude | set(req.history)
        assert not negatives & forbidden, case
    # Same negatives on a second call, with the requests shuffled (key is the content, not the position) ...
    _, again = sampled_candidates(requests, items, num_negatives=99, seed=3, interacted=interacted)
    assert np.array_equal(again, cand)
    _, rev = sampled_candidates(requests[::-1], items, num_negatives=99, seed=3, interacted=interacted)
    assert np.array_equal(rev, cand.reshape(6, 2, 100)[::-1].reshape(12, 100))
    # ... and with another model's input format (the key is the request's content, not its formatted source) ...
    reformatted = [Request(r.task, "<fmt> " + r.source, r.relevant, r.exclude, r.query, r.history, r.user_id)
                   for r in requests]
    assert np.array_equal(sampled_candidates(reformatted, items, 99, seed=3, interacted=interacted)[1], cand)
    # ... but a different seed draws different ones.
    _, other = sampled_candidates(requests, items, num_negatives=99, seed=4, interacted=interacted)
    assert not np.array_equal(other, cand)


def test_sampled_uses_the_same_negatives_for_every_model():
    items = [f"i{j}" for j in range(150)]
    requests = [rec(f"s{u}", {f"i{u}"}, user=f"u{u}", history=[f"i{u + 50}"]) for u in range(8)]
    config = ProtocolConfig("sampled", seed=1)
    idx, cand = sampled_candidates(requests, items, 99, seed=1)
    for salt in (0, 1):
        model = HashRetriever(items, salt)
        scores = model.score(requests)
        expected_rank = 1 + (scores[torch.from_numpy(idx)[:, None], torch.from_numpy(cand[:, :-1])]
                             >= scores[torch.from_numpy(idx), torch.from_numpy(cand[:, -1])][:, None]).sum(1)
        res = evaluate_retriever(model, requests, config, batch_size=3)
        assert res.per_request["mrr"] == pytest.approx(1.0 / expected_rank.numpy())


def test_sampled_too_few_items_is_an_error():
    items = [f"i{j}" for j in range(20)]
    retriever = FixedRetriever(items, {"q": [0.0] * 20})
    with pytest.raises(ValueError, match=r"only 14 catalog items.*num_negatives=99"):
        evaluate_retriever(retriever, [rec("q", {"i0"}, user="u")], ProtocolConfig("sampled"),
                           interacted={"u": {f"i{j}" for j in range(1, 6)}})


def test_sampled_positive_missing_from_catalog_is_an_error():
    items = [f"i{j}" for j in range(200)]
    retriever = FixedRetriever(items, {"q": [0.0] * 200})
    with pytest.raises(ValueError, match="'zzz' is not in"):
        evaluate_retriever(retriever, [rec("q", {"zzz"})], ProtocolConfig("sampled"))


def test_negative_sample_maps_around_forbidden_indices():
    forbidden = np.array([0, 2, 3, 7])
    draws = negative_sample(rec("q", {"x"}), 10, 6, forbidden, 0, "x")
    assert sorted(draws.tolist()) == [1, 4, 5, 6, 8, 9]  # every allowed index exactly once


@pytest.mark.parametrize("name", ["full", "sampled"])
def test_batching_does_not_change_results(name):
    items = [f"i{j}" for j in range(130)]
    requests = [rec(f"s{u}", {f"i{u}", f"i{2 * u + 1}"}, user=f"u{u}", exclude={f"i{u + 3}"}) for u in range(11)]
    config = ProtocolConfig(name, ks=(5, 10), depth=20, exclude_history=True)
    model = HashRetriever(items, 7)
    results = [evaluate_retriever(model, requests, config, batch_size=b) for b in (1, 4, 256)]
    for other in results[1:]:
        assert other.metrics == results[0].metrics
        for key, values in results[0].per_request.items():
            assert np.array_equal(other.per_request[key], values)
        assert np.array_equal(other.request_index, results[0].request_index)


# ---------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "topk"}, "'topk'"),
        ({"ks": (5, 0)}, "got 0"),
        ({"ks": ()}, r"\(\)"),
        ({"depth": 0}, "got 0"),
        ({"ks": (5, 200), "depth": 100}, "k=200 > depth=100"),
        ({"num_negatives": -1}, "got -1"),
        ({"seed": -2}, "got -2"),
        ({"exclude_history": "yes"}, "'yes'"),
        ({"name": "sampled", "num_negatives": 5, "sampled_ks": (1, 10)}, "k=10"),
    ],
)
def test_bad_config_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProtocolConfig(**kwargs)


def test_config_accepts_lists_and_checks_only_the_active_protocol():
    assert ProtocolConfig(ks=[1, 2], depth=2).ks == (1, 2)
    ProtocolConfig("sampled", ks=(500,), depth=10)  # full-only cut-offs are not checked under sampled


def test_bad_scores_are_reported():
    items = list("abc")
    bad_shape = FixedRetriever(items, {"q": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"shape \(1, 2\).*\(1, 3\)"):
        evaluate_retriever(bad_shape, [rec("q", {"a"})], ProtocolConfig("full", ks=(1,), depth=3))
    with pytest.raises(ValueError, match="no requests"):
        evaluate_retriever(bad_shape, [], ProtocolConfig())
    with pytest.raises(ValueError, match="batch_size.*0"):
        evaluate_retriever(bad_shape, [rec("q", {"a"})], ProtocolConfig(), batch_size=0)


# ---------------------------------------------------------------------------------------------------- significance


def test_paired_t_test_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    a = np.array([0.1, 0.5, 0.3, 0.9, 0.4, 0.6])
    b = np.array([0.2, 0.4, 0.1, 0.7, 0.4, 0.3])
    out = paired_t_test(a, b)
    ref = stats.ttest_rel(a, b)
    assert out["t"] == pytest.approx(ref.statistic) and out["p_value"] == pytest.approx(ref.pvalue)
    assert out["mean_diff"] == pytest.approx((a - b).mean()) and out["n"] == 6
    # Hand check: diffs -0.1 0.1 0.2 0.2 0 0.3, mean 0.1167, sd 0.1472 -> t = 0.1167 / (0.1472 / sqrt 6) = 1.941
    assert out["t"] == pytest.approx(1.9415, abs=1e-3)
    assert compare_over_seeds(list(a), list(b)) == out


def test_paired_t_test_errors_and_degenerate_cases():
    with pytest.raises(ValueError, match="a has 3 values, b has 2"):
        paired_t_test(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="at least 2"):
        paired_t_test(np.zeros(1), np.zeros(1))
    with pytest.raises(ValueError, match="non-finite.*index 1"):
        paired_t_test(np.array([0.0, np.nan]), np.zeros(2))
    same = paired_t_test(np.ones(4), np.ones(4))
    assert same["t"] == 0.0 and same["p_value"] == 1.0
    shifted = paired_t_test(np.ones(4), np.zeros(4))
    assert shifted["t"] == math.inf and shifted["p_value"] == 0.0 and shifted["mean_diff"] == 1.0


def test_compare_per_request_and_mean_over_seeds():
    out = compare_per_request({"mrr": np.array([1.0, 0.5, 0.2]), "hr@1": np.ones(3)},
                              {"mrr": np.array([0.5, 0.5, 0.1]), "other": np.ones(3)})
    assert list(out) == ["mrr"] and out["mrr"]["n"] == 3
    with pytest.raises(ValueError, match="mrr: .*a has 3 values, b has 2"):
        compare_per_request({"mrr": np.zeros(3)}, {"mrr": np.zeros(2)})
    agg = mean_over_seeds([{"mrr": 0.1, "hr@1": 1.0}, {"mrr": 0.3, "hr@1": 1.0}, {"mrr": 0.2, "hr@1": 1.0}])
    assert agg["mrr"]["mean"] == pytest.approx(0.2) and agg["mrr"]["std"] == pytest.approx(0.1)
    assert agg["hr@1"] == {"mean": 1.0, "std": 0.0, "n": 3}
    assert mean_over_seeds([{"mrr": 0.5}])["mrr"] == {"mean": 0.5, "std": 0.0, "n": 1}
    with pytest.raises(ValueError, match=r"seed 1 .*missing \['hr@1'\]"):
        mean_over_seeds([{"mrr": 0.1, "hr@1": 1.0}, {"mrr": 0.3}])


# ---------------------------------------------------------------------------------------------------- plots


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_metrics_and_training_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from genretrieval.evaluation.plots import plot_metrics, plot_training_curves

    table = {"Gen-R": {"recall@10": 0.3, "mrr": 0.1}, "Pop": {"recall@10": 0.05, "mrr": 0.02}}
    out = plot_metrics(table, ["recall@10", "mrr"], tmp_path / "bars.png", title="test")
    assert out == tmp_path / "bars.png" and out.stat().st_size > 1000 and _is_png(out)
    with pytest.raises(ValueError, match=r"'Gen-R' has no value for \['ndcg@10'\]"):
        plot_metrics(table, ["ndcg@10"], tmp_path / "x.png")

    history = [{"step": 10, "train/loss": 2.0}, {"step": 20, "train/loss": 1.5},
               {"step": 20, "validation/recall@10": 0.1}, {"step": 30, "train/loss": 1.2}]
    out = plot_training_curves({"a": history, "b": history[:2]}, "train/loss", tmp_path / "sub" / "loss.png")
    assert out.stat().st_size > 1000 and _is_png(out)
    with pytest.raises(ValueError, match=r"no model logged 'nope'.*validation/recall@10"):
        plot_training_curves({"a": history}, "nope", tmp_path / "y.png")
    with pytest.raises(ValueError, match=r"\.png"):
        plot_metrics(table, ["mrr"], tmp_path / "bars.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bars.png", "sub"]  # no temp files left behind


def test_plot_item_embeddings_tsne(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("sklearn")
    from genretrieval.evaluation.plots import plot_item_embeddings_tsne

    rng = np.random.default_rng(0)
    popularity = rng.integers(0, 100, size=60)
    embeddings = {"a": rng.normal(size=(60, 8)), "b": rng.normal(size=(60, 4))}
    out = plot_item_embeddings_tsne(embeddings, popularity, tmp_path / "tsne.png", seed=0, max_items=50)
    assert out.stat().st_size > 1000 and _is_png(out)
    with pytest.raises(ValueError, match=r"embeddings\['b'\] has shape \(59, 4\)"):
        plot_item_embeddings_tsne({"b": np.zeros((59, 4))}, popularity, tmp_path / "bad.png")


def test_several_protocols_share_one_scoring_pass():
    from genretrieval.evaluation.protocols import ProtocolConfig, evaluate_protocols, evaluate_retriever

    class Counting:
        """Random but fixed scores per request; counts how many requests were scored."""

        item_ids = [f"i{k}" for k in range(40)]

        def __init__(self):
            self.scored = 0

        def score(self, requests):
            self.scored += len(requests)
            rows = [torch.Generator().manual_seed(int(r.user_id[1:])) for r in requests]
            return torch.stack([torch.rand(len(self.item_ids), generator=g) for g in rows])

    requests = [Request(task="recommend", source=f"u{u}", relevant={f"i{u % 40}"}, user_id=f"u{u}",
                        history=[f"i{(u + 1) % 40}"], exclude={f"i{(u + 1) % 40}"}) for u in range(23)]
    configs = [ProtocolConfig("full", ks=(5, 10), depth=20), ProtocolConfig("sampled", num_negatives=9, seed=3),
               ProtocolConfig("full", ks=(5, 10), depth=20, exclude_history=True)]
    model = Counting()
    together = evaluate_protocols(model, requests, configs, batch_size=7)
    assert model.scored == len(requests)  # one pass for three protocols
    for config, result in zip(configs, together):
        alone = evaluate_retriever(Counting(), requests, config, batch_size=7)
        assert result.metrics == alone.metrics and result.config == config
        for name, values in alone.per_request.items():
            np.testing.assert_array_equal(result.per_request[name], values)
    with pytest.raises(ValueError, match="configs is empty"):
        evaluate_protocols(model, requests, [])


def test_metric_bars_give_every_model_its_own_colour():
    """Suites have ~20 models; matplotlib's default cycle repeats after 10, which made two models' bars look alike."""
    from genretrieval.evaluation.plots import _distinct_colors

    for n in (1, 10, 11, 20, 21, 30):
        colors = _distinct_colors(n)
        assert len(colors) == n and len({tuple(round(c, 3) for c in color) for color in colors}) == n

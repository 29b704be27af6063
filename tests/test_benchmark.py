"""The benchmark command end to end on the smoke suite, and suite-config validation."""

import json
from pathlib import Path

import pytest
import torch
from recipes_util import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "configs" / "suites" / "smoke.yaml")


def _recipe():
    return load_recipe("benchmark")


def test_smoke_suite_writes_results_table_and_plots_and_resumes(tmp_path):
    results = _recipe().main([SMOKE, "--output_root", str(tmp_path)])
    out = tmp_path / "smoke"
    saved = json.loads((out / "results.json").read_text())
    assert saved["suite"] == "smoke" and saved["reference_model"] == "Gen-R+S"
    assert saved["environment"]["torch"] and saved["datasets"]["synthetic-tiny"]["items"] == 60
    search = saved["results"]["synthetic-tiny"]["search"]["full"]["models"]
    rec = saved["results"]["synthetic-tiny"]["recommend"]["full"]["models"]
    assert {"Gen-S", "Gen-R+S", "Gen-R+S-SID", "Pop", "BM25", "Bi-encoder"} <= set(search)
    assert {"Gen-R", "Gen-R+S", "Pop", "SASRec", "Bi-encoder"} <= set(rec)
    assert "BM25" not in rec and "SASRec" not in search and "Gen-R" not in search
    for block in (search, rec):
        for metrics in block.values():
            assert 0.0 <= metrics["recall@10"]["mean"] <= 1.0
    sampled = saved["results"]["synthetic-tiny"]["recommend"]["sampled"]
    assert "hr@10" in sampled["models"]["SASRec"] and "p_value" in sampled["paired_tests"]["SASRec"]["ndcg@10"]
    cold = saved["cold_start"]
    assert cold["max_train_examples"] == 5
    for task in ("search", "recommend"):
        block = cold["results"]["synthetic-tiny"][task]
        assert 0 < block["num_requests"] <= saved["datasets"]["synthetic-tiny"]["examples"][task]["test"]
        assert 0.0 <= block["models"]["Gen-R+S"]["recall@10"]["mean"] <= 1.0
    markdown = (out / "results.md").read_text()
    assert "### synthetic-tiny · search · full protocol" in markdown and "| Gen-R+S |" in markdown
    for name in ("synthetic-tiny-search-metrics.png", "synthetic-tiny-recommend-metrics.png",
                 "synthetic-tiny-train-loss.png", "synthetic-tiny-item-tsne.png"):
        assert (out / "plots" / name).stat().st_size > 1000, name
    assert results["results"] == saved["results"]
    pairs = {(c["task"], c["protocol"], c["a"], c["b"]) for c in saved["comparisons"]}
    assert ("search", "full", "Gen-R+S", "Gen-S") in pairs and ("recommend", "sampled", "SASRec", "Pop") in pairs
    assert ("search", "full", "Gen-R+S", "Gen-R") not in pairs  # Gen-R has no search results
    assert all(0.0 <= c["p_value"] <= 1.0 and c["seeds_a"] == 1 for c in saved["comparisons"])
    assert "## Comparisons" in markdown and "| Gen-R+S | Gen-S |" in markdown
    # Gen-R+S-SID: beam ranking on a 12-request sample; full protocol only, paired on the requests both evaluated.
    sid = json.loads((out / "runs" / "synthetic-tiny" / "Gen-R_S-SID" / "seed0.json").read_text())
    assert sid["evaluation"]["ranking"] == "beam" and sid["evaluation"]["depth"] == 30
    assert sid["evaluation"]["evaluated"] == {"search": 12, "recommend": 12}
    for task in ("search", "recommend"):
        assert len(sid["request_index"][task]) == 12 and sid["request_index"][task] == sorted(sid["request_index"][task])
        assert list(sid["per_request"][task]) == ["full"] and len(sid["per_request"][task]["full"]["recall@10"]) == 12
        assert "Gen-R+S-SID" not in saved["results"]["synthetic-tiny"][task]["sampled"]["models"]
        how = saved["results"]["synthetic-tiny"][task]["full"]["evaluated_on"]
        assert set(how) == {"Gen-R+S-SID"} and how["Gen-R+S-SID"]["of"] > 12
        assert {k: how["Gen-R+S-SID"][k] for k in ("requests", "ranking", "depth")} == {"requests": 12, "ranking": "beam",
                                                                                         "depth": 30}
        assert saved["results"]["synthetic-tiny"][task]["full"]["paired_tests"]["Gen-R+S-SID"]["recall@10"]["n"] == 12
    sid_vs_atomic = [c for c in saved["comparisons"] if c["a"] == "Gen-R+S-SID"]
    assert {c["protocol"] for c in sid_vs_atomic} == {"full"} and all(c["n"] == 12 for c in sid_vs_atomic)
    assert "| Gen-R+S-SID † |" in markdown and "beam-search ranking (depth 30) on 12 of" in markdown
    sasrec = json.loads((out / "runs" / "synthetic-tiny" / "SASRec" / "seed0.json").read_text())
    assert sasrec["training_log"] and all("loss" in entry for entry in sasrec["training_log"])
    # Resume: finished runs are read back, not recomputed.
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("seed*.json")}
    assert len(stamps) == 8
    _recipe().main([SMOKE, "--output_root", str(tmp_path), "--tsne", "false"])
    assert stamps == {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("seed*.json")}
    # `only` adds a seed to one model; the other models' finished runs are still reported.
    again = _recipe().main([SMOKE, "--output_root", str(tmp_path), "--tsne", "false", "--seeds", "[0, 1]",
                            "--only", "[Pop]"])
    added = set((out / "runs").rglob("seed*.json")) - set(stamps)
    assert [p.relative_to(out / "runs").as_posix() for p in added] == ["synthetic-tiny/Pop/seed1.json"]
    models = again["results"]["synthetic-tiny"]["search"]["full"]["models"]
    assert len(models["Pop"]["recall@10"]["per_seed"]) == 2 and len(models["Gen-S"]["recall@10"]["per_seed"]) == 1


@pytest.mark.parametrize(
    "override, message",
    [
        (["--seeds", "[]"], "at least one seed"),
        (["--reference_model", "Nope"], "reference_model 'Nope'"),
        (["--modelz", "[]"], "unknown config key 'modelz'"),
        (["--only", "[Nope]"], "not in the suite: ['Nope']"),
        (["--comparisons", "[[Gen-S, Nope]]"], "not in the suite: ['Nope']"),
        (["--comparisons", "[[Gen-S]]"], "two different models"),
        (["--ks", "[5, 10, 50]", "--depth", "100"], "num_beams (30) must be at least the largest cut-off (50)"),
    ],
)
def test_bad_suite_configs_fail_with_a_message(override, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        _recipe().main([SMOKE, "--output_root", str(tmp_path)] + override)
    assert message in capsys.readouterr().err


def test_model_spec_validation():
    from genretrieval.benchmark import DatasetSpec, ModelSpec

    with pytest.raises(ValueError, match="needs 'baseline'"):
        ModelSpec(name="x", kind="baseline")
    with pytest.raises(ValueError, match="tasks must be"):
        ModelSpec(name="x", tasks=["ranking"])
    with pytest.raises(ValueError, match="needs 'path'"):
        DatasetSpec(name="ml", source="movielens")
    with pytest.raises(ValueError, match="ranking 'beam' is for generative models"):
        ModelSpec(name="x", kind="baseline", baseline="popularity", ranking="beam")
    with pytest.raises(ValueError, match="max_test_requests must be an integer >= 1"):
        ModelSpec(name="x", max_test_requests=0)
    with pytest.raises(ValueError, match="ranking must be 'exact' or 'beam'"):
        ModelSpec(name="x", ranking="greedy")


def test_cold_start_cut_averages_only_the_cold_requests():
    from genretrieval.benchmark.runner import aggregate
    from genretrieval.benchmark.suite import DatasetSpec, ModelSpec, SuiteConfig

    suite = SuiteConfig(name="t", seeds=[0, 1], datasets=[DatasetSpec(name="d", source="synthetic")],
                        models=[ModelSpec(name="Pop", kind="baseline", baseline="popularity")], protocols=["full"])
    def record(seed, recall):
        per = {"recall@10": recall, "ndcg@10": [0.0] * 4, "mrr": [0.0] * 4}
        return {"dataset": "d", "model": "Pop", "seed": seed, "metrics": {"recommend": {"full": {
            "recall@10": sum(recall) / 4, "ndcg@10": 0.0, "mrr": 0.0}}}, "per_request": {"recommend": {"full": per}}}
    records = [record(0, [1.0, 0.0, 0.0, 1.0]), record(1, [0.0, 0.0, 1.0, 1.0])]
    info = {"d": {"items": 4, "users": 4, "rec_interactions": 8, "search_interactions": 0, "distinct_queries": 0}}
    out = aggregate(suite, records, info, {"d": {"recommend": [0, 2], "search": []}})
    block = out["cold_start"]["results"]["d"]["recommend"]
    assert block["num_requests"] == 2
    assert block["models"]["Pop"]["recall@10"]["per_seed"] == [0.5, 0.5]
    assert out["results"]["d"]["recommend"]["full"]["models"]["Pop"]["recall@10"]["mean"] == 0.5
    assert "search" not in out["cold_start"]["results"]["d"]


def test_paired_tests_align_a_sampled_model_with_a_fully_evaluated_one():
    from genretrieval.benchmark.runner import aggregate, to_markdown
    from genretrieval.benchmark.suite import DatasetSpec, ModelSpec, SuiteConfig

    suite = SuiteConfig(name="t", seeds=[0, 1], datasets=[DatasetSpec(name="d", source="synthetic")],
                        models=[ModelSpec(name="Full"), ModelSpec(name="Sampled", max_test_requests=3)],
                        protocols=["full"], comparisons=[["Sampled", "Full"]])

    def record(model, seed, recall, index=None):
        per = {"recall@10": recall, "ndcg@10": recall, "mrr": recall}
        return {"dataset": "d", "model": model, "seed": seed, "per_request": {"recommend": {"full": per}},
                "metrics": {"recommend": {"full": {m: sum(recall) / len(recall) for m in per}}},
                "request_index": {"recommend": index},
                "evaluation": {"ranking": "exact", "test_requests": {"recommend": 5}}}

    full = [1.0, 0.0, 1.0, 0.0, 1.0]
    records = [record("Full", 0, full), record("Full", 1, full),
               record("Sampled", 0, [1.0, 1.0, 0.0], [1, 3, 4]), record("Sampled", 1, [0.0, 1.0, 0.0], [1, 3, 4])]
    info = {"d": {"items": 9, "users": 5, "rec_interactions": 9, "search_interactions": 0, "distinct_queries": 0}}
    out = aggregate(suite, records, info, {"d": {"recommend": [0, 1], "search": []}})
    (c,) = out["comparisons"]
    # Paired on requests 1, 3, 4: Sampled (seed mean) 0.5, 1.0, 0.0 vs Full 0.0, 0.0, 1.0.
    assert c["n"] == 3 and c["mean_a"] == 0.5 and abs(c["mean_b"] - 1 / 3) < 1e-9
    block = out["results"]["d"]["recommend"]["full"]
    assert block["evaluated_on"] == {"Sampled": {"requests": 3, "of": 5, "ranking": "exact", "depth": None}}
    assert "| Sampled † |" in to_markdown(out) and "on 3 of 5 test requests" in to_markdown(out)
    # Cold-start cut [0, 1]: the sampled model evaluated only request 1.
    sampled_cold = out["cold_start"]["results"]["d"]["recommend"]["models"]["Sampled"]
    assert sampled_cold["recall@10"]["per_seed"] == [1.0, 0.0] and sampled_cold["requests"] == 1
    assert out["cold_start"]["results"]["d"]["recommend"]["models"]["Full"]["requests"] == 2
    assert "| Sampled | 0.5000 | 0.5000 | 0.5000 | 1 |" in to_markdown(out)
    stale = records[:3] + [record("Sampled", 1, [1.0, 0.0], [0, 2])]
    with pytest.raises(ValueError, match="different test-request samples"):
        aggregate(suite, stale, info)


def test_generative_overrides_reach_the_training_config(tmp_path):
    """A suite can attach auxiliary heads to a generative model (issue 5: head as an auxiliary loss)."""
    from genretrieval.benchmark.runner import generative_config
    from genretrieval.benchmark.suite import DatasetSpec, ModelSpec, SuiteConfig

    spec = ModelSpec(name="Gen-R+S+JSR", tasks=["search", "recommend"],
                     overrides={"heads": [{"name": "jsr", "weight": 0.1, "params": {"dropout": 0.0}}],
                                "training.num_epochs": 2})
    suite = SuiteConfig(name="t", seeds=[3], datasets=[DatasetSpec(name="d", source="synthetic")], models=[spec],
                        generative_defaults={"training.num_epochs": 5, "training.num_threads": 1})
    config = generative_config(spec, suite.datasets[0], suite, 3, tmp_path)
    assert [(h.name, h.weight, h.params) for h in config.heads] == [("jsr", 0.1, {"dropout": 0.0})]
    assert config.eval.run_test is False  # the benchmark evaluates every model itself
    assert config.training.num_epochs == 2 and config.training.num_threads == 1 and config.training.seed == 3
    assert config.mixture.tasks == ["search", "recommend"] and config.training.output_dir == str(tmp_path)
    bad = ModelSpec(name="bad", overrides={"heads": [{"nme": "jsr"}]})
    with pytest.raises((ValueError, TypeError), match="nme"):
        generative_config(bad, suite.datasets[0], suite, 0, tmp_path)


def test_a_finished_training_run_is_reused_not_retrained(tmp_path, monkeypatch):
    """Evaluation interrupted or re-run: the trained model of the same config is loaded, not trained again."""
    import genretrieval.training as training
    from genretrieval.benchmark.runner import load_dataset, train_generative
    from genretrieval.benchmark.suite import DatasetSpec, ModelSpec, SuiteConfig

    from genretrieval.data.synthetic import SyntheticConfig

    dataset = DatasetSpec(name="d", source="synthetic", synthetic=SyntheticConfig(num_items=40, num_users=30))
    spec = ModelSpec(name="Gen-R", tasks=["recommend"])
    suite = SuiteConfig(name="t", seeds=[0], datasets=[dataset], models=[spec],
                        generative_defaults={"training.max_steps": 2, "training.num_threads": 1,
                                             "model.d_model": 16, "model.d_ff": 32, "model.num_layers": 1,
                                             "model.num_decoder_layers": 1, "model.num_heads": 2, "model.d_kv": 8})
    catalog, interactions, _ = load_dataset(dataset)
    first, result = train_generative(spec, dataset, suite, 0, (catalog, interactions), tmp_path / "run")
    assert result["steps"] == 2 and not result.get("reused")

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(training, "train", no_training)
    again, reused = train_generative(spec, dataset, suite, 0, (catalog, interactions), tmp_path / "run")
    assert reused["reused"] and reused["steps"] == 2 and reused["log_history"] == result["log_history"]
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    # Another config (seed) in the same directory is trained, not confused with the finished run.
    with pytest.raises(AssertionError, match="trained again"):
        train_generative(spec, dataset, suite, 1, (catalog, interactions), tmp_path / "run")


@pytest.mark.parametrize("path", sorted((ROOT / "recipes" / "configs" / "suites").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_suite_builds_its_models(path, tmp_path):
    """A typo in a shipped suite (an override key, a head parameter, a baseline param) fails here, not an hour into
    a benchmark run on real data."""
    from genretrieval.benchmark.runner import generative_config, make_baseline
    from genretrieval.benchmark.suite import load_suite
    from genretrieval.modeling.heads import build_head

    suite = load_suite(str(path), data_root=str(tmp_path))
    for spec in suite.models:
        if spec.kind == "baseline":
            make_baseline(spec)
            continue
        config = generative_config(spec, suite.datasets[0], suite, suite.seeds[0], tmp_path / spec.slug)
        for head in config.heads:
            build_head(head.name, embed_dim=8, num_users=3, vocab_size=11, **head.params)

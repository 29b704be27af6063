"""recipes/evaluate_saved.py: a saved model re-evaluated on a suite's split gives the suite run's numbers."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from recipes_util import load_recipe

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "configs" / "suites" / "smoke.yaml")


def _recipe(name):
    return load_recipe(name)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Gen-R of the smoke suite, trained and evaluated by the benchmark command."""
    out = tmp_path_factory.mktemp("bench")
    _recipe("benchmark").main([SMOKE, "--output_root", str(out), "--only", "[Gen-R]", "--tsne", "false"])
    run = out / "smoke" / "runs" / "synthetic-tiny" / "Gen-R"
    return run / "seed0-train" / "model", json.loads((run / "seed0.json").read_text())


def test_full_evaluation_reproduces_the_suite_run(smoke_run, tmp_path):
    model_dir, record = smoke_run
    output = tmp_path / "eval.json"
    report = _recipe("evaluate_saved").main([SMOKE, str(model_dir), "--tasks", "recommend", "--output", str(output)])
    assert json.loads(output.read_text()) == report
    assert report["sample"]["recommend"]["evaluated"] == report["sample"]["recommend"]["test_requests"]
    for protocol in ("full", "sampled"):
        ours, suite = report["metrics"]["recommend"][protocol], record["metrics"]["recommend"][protocol]
        assert ours.keys() == suite.keys()
        for metric, value in suite.items():
            assert ours[metric] == pytest.approx(value, abs=1e-6), (protocol, metric)
    assert report["standard_errors"]["recommend"]["full"]["recall@10"] >= 0.0


def test_sampled_requests_are_seeded(smoke_run, tmp_path):
    model_dir, _ = smoke_run
    runs = [_recipe("evaluate_saved").main([SMOKE, str(model_dir), "--tasks", "recommend", "--max_requests", "7",
                                            "--sample_seed", "3", "--output", str(tmp_path / f"e{i}.json")])
            for i in range(2)]
    assert runs[0]["sample"]["recommend"] == {"test_requests": runs[0]["sample"]["recommend"]["test_requests"],
                                              "evaluated": 7, "seed": 3}
    assert runs[0]["metrics"] == runs[1]["metrics"]


@pytest.mark.parametrize("args, message", [(["--dataset", "nope"], "--dataset 'nope' is not in the suite"),
                                           (["--max_requests", "0"], "--max_requests must be >= 1")])
def test_bad_arguments_are_named(smoke_run, args, message, capsys):
    model_dir, _ = smoke_run
    with pytest.raises(SystemExit):
        _recipe("evaluate_saved").main([SMOKE, str(model_dir)] + args)
    assert message in capsys.readouterr().err


def test_semantic_scheme_is_registered_in_a_fresh_process():
    """Loading a saved semantic-ID model must not depend on training code having been imported first."""
    code = "from genretrieval.ids import get_id_scheme_class; print(get_id_scheme_class('semantic').__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "SemanticIdScheme", done.stderr


def test_beam_ranking_equals_exact_ranking_for_atomic_ids(smoke_run, tmp_path):
    """Atomic IDs: beam search's top-k is the exact top-k, so every cut-off up to the beam width agrees."""
    model_dir, record = smoke_run
    report = _recipe("evaluate_saved").main([SMOKE, str(model_dir), "--tasks", "recommend", "--ranking", "beam",
                                             "--num_beams", "30", "--output", str(tmp_path / "beam.json")])
    assert list(report["metrics"]["recommend"]) == ["full"] and report["ranking"] == "beam search, 30 beams"
    exact = record["metrics"]["recommend"]["full"]
    for metric in ("recall@5", "recall@10", "recall@30", "ndcg@10", "hr@10"):
        assert report["metrics"]["recommend"]["full"][metric] == pytest.approx(exact[metric], abs=1e-6), metric
    with pytest.raises(SystemExit):
        _recipe("evaluate_saved").main([SMOKE, str(model_dir), "--ranking", "beam", "--num_beams", "5"])

"""recipes/bench_training.py on a tiny model and a few steps: it runs both sides and writes the documented JSON."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num_items", "40", "--num_users", "30", "--max_steps", "4", "--warmup_steps", "1", "--repeats", "1",
        "--batch_size", "16", "--d_model", "16", "--d_ff", "32", "--num_layers", "1", "--num_heads", "2",
        "--logging_steps", "2", "--threads", "1"]


def _recipe():
    spec = importlib.util.spec_from_file_location("bench_training_recipe", ROOT / "recipes" / "bench_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_writes_the_report(tmp_path, capsys):
    out = tmp_path / "report.json"
    returned = _recipe().main(TINY + ["--output", str(out), "--work_dir", str(tmp_path / "work")])
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert set(report["results"]) == {"ours", "seq2seq_trainer"}
    for side, res in report["results"].items():
        assert res["description"] and len(res["examples_per_s"]) == len(res["runs"]) == 1
        assert res["median_examples_per_s"] > 0
        # Same timed span on both sides: steps 2..4 of 16 examples each.
        assert res["runs"][0]["examples"] == 3 * 16, side
    assert report["results"]["ours"]["runs"][0]["reused_shared_tokenized_cache"] is True
    ratio = report["results"]["ours"]["median_examples_per_s"] / report["results"]["seq2seq_trainer"]["median_examples_per_s"]
    assert report["ratio_ours_over_seq2seq_trainer"] == pytest.approx(ratio)
    assert report["target"] == {"ratio": 1.2, "met": ratio >= 1.2}
    env = report["environment"]
    for key in ("torch", "transformers", "accelerate", "cpu", "torch_threads"):
        assert env[key], key
    assert env["torch_threads"] == 1
    data = report["data"]
    assert data["timed_examples_per_run"] == 48 and data["train_examples"] > 0
    assert 0 <= data["padding_bucketed_batches"]["padding_fraction"] <= data["padding_random_batches"]["padding_fraction"]
    assert len(list((tmp_path / "work" / "ours" / "cache").glob("tokenized-*.arrow"))) == 1, "tokenised once for both"
    assert "ratio ours / Seq2SeqTrainer" in capsys.readouterr().out


def test_bad_settings_are_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _recipe().main(["--warmup_steps", "100", "--max_steps", "10"])
    assert exit_info.value.code == 2
    assert "warmup_steps" in capsys.readouterr().err

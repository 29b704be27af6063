"""End-to-end runs of recipes/train.py on the smoke config (tiny data, tiny model, a few steps)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "configs" / "smoke.yaml")


def _recipe():
    spec = importlib.util.spec_from_file_location("train_recipe", ROOT / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_trains_evaluates_and_saves(tmp_path, capsys):
    out = tmp_path / "run"
    result = _recipe().main([SMOKE, "--training.output_dir", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == json.loads(json.dumps(result))
    assert set(metrics["test"]) == {"search", "recommend"}
    for task in ("search", "recommend"):
        m = metrics["test"][task]
        assert 0.0 <= m["recall@10"] <= 1.0 and m["num_requests"] > 0
    assert metrics["protocol"]["history_items_masked"] is False
    printed = capsys.readouterr().out
    assert "| search |" in printed and "[recommend] user's last items" in printed
    assert (out / "model" / "model.safetensors").is_file() and (out / "best" / "id_scheme.json").is_file()
    assert (out / "checkpoints").is_dir()
    from genretrieval.modeling import GenerativeRetriever

    GenerativeRetriever.from_pretrained(out / "model").search("anything at all", k=3)


def test_resume_equals_uninterrupted(tmp_path):
    recipe = _recipe()
    full, parts = tmp_path / "full", tmp_path / "parts"
    common = [SMOKE, "--eval.num_examples_to_show", "0"]
    res_full = recipe.main(common + ["--training.output_dir", str(full)])
    first = recipe.main(common + ["--training.output_dir", str(parts), "--training.interrupt_after_steps", "5"])
    assert first == {"interrupted_at_step": 5}
    assert (parts / "checkpoints" / "checkpoint-5").is_dir()
    res_parts = recipe.main(common + ["--training.output_dir", str(parts), "--training.resume_from_checkpoint", "latest"])
    a, b = load_file(str(full / "model" / "model.safetensors")), load_file(str(parts / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert res_full["test"] == res_parts["test"]
    assert res_full["best_validation"] == res_parts["best_validation"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--training.lr", "0.1"], "unknown config key 'training.lr'"),
        (["--mixture.tasks", "[search, ranking]"], "ranking"),
        (["--training.batch_size", "0"], "batch_size"),
        (["--data.source", "files"], "catalog_path"),
    ],
)
def test_bad_config_fails_with_a_message(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _recipe().main([SMOKE] + args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_alignment_simulation_script_runs_and_resumes(tmp_path):
    spec = importlib.util.spec_from_file_location("simulate_alignment", ROOT / "recipes" / "simulate_alignment.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    args = ["--alignments", "1.0", "0.0", "--seeds", "0", "--config", SMOKE, "--output", str(tmp_path),
            "--", "--training.max_steps", "4"]
    summary = module.main(args)
    assert [(r["alignment"], r["task"]) for r in summary["rows"]] == [
        (1.0, "search"), (1.0, "recommend"), (0.0, "search"), (0.0, "recommend")]
    row = summary["rows"][0]
    assert row["gen_s/recall@10/per_seed"] == [
        json.loads((tmp_path / "alignment-1" / "gen_s-seed0" / "metrics.json").read_text())["test"]["search"]["recall@10"]]
    assert (tmp_path / "results.md").read_text().startswith("| alignment |")
    # A second call trains nothing new: every run's metrics.json is reused.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("alignment-*/*/metrics.json")}
    assert len(stamps) == 6
    module.main(args)
    assert stamps == {p: p.stat().st_mtime_ns for p in tmp_path.glob("alignment-*/*/metrics.json")}

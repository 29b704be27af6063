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
    res_parts = recipe.main(common + ["--output_dir", str(parts), "--resume_from_checkpoint=latest"])
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


def test_user_files_train_and_malformed_files_name_the_line(tmp_path, capsys):
    from genretrieval.data import SyntheticConfig, generate_synthetic, save_table

    catalog, interactions = generate_synthetic(SyntheticConfig(num_items=40, num_users=30, num_topics=4, seed=3))
    save_table(catalog, tmp_path / "catalog.jsonl")
    save_table(interactions, tmp_path / "events.csv")
    files = ["--data.source", "files", "--data.catalog_path", str(tmp_path / "catalog.jsonl"),
             "--data.interactions_path", str(tmp_path / "events.csv"), "--eval.num_examples_to_show", "0"]
    result = _recipe().main([SMOKE, "--training.output_dir", str(tmp_path / "run"), "--training.max_steps", "3"] + files)
    assert result["data"]["items"] == 40 and result["data"]["source"] == "files"

    lines = (tmp_path / "events.csv").read_text().splitlines()
    lines[4] = lines[4].replace(lines[4].split(",")[2], "not-a-time", 1)
    (tmp_path / "events.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit):
        _recipe().main([SMOKE, "--training.output_dir", str(tmp_path / "bad")] + files)
    err = capsys.readouterr().err
    assert "events.csv line 5, field 'timestamp'" in err and "not-a-time" in err


def test_early_stopping_stops_when_validation_does_not_improve(tmp_path):
    # A learning rate of 1e-12 leaves the rankings unchanged, so the second validation cannot improve (strictly).
    result = _recipe().main([SMOKE, "--training.output_dir", str(tmp_path), "--training.learning_rate", "1e-12",
                             "--training.eval_every", "2", "--training.early_stopping_patience", "1",
                             "--eval.num_examples_to_show", "0"])
    assert result["stopped_early"] is True and result["steps"] == 4
    assert result["best_validation"]["step"] == 2


def test_pretrained_start_and_tensorboard_logs(tmp_path):
    """model_name_or_path: a local seq2seq checkpoint + its own tokenizer, extended with the ID tokens."""
    from transformers import T5Config, T5ForConditionalGeneration

    from genretrieval.tokenization import train_sentencepiece, tokenizer_from_sentencepiece

    tokenizer = tokenizer_from_sentencepiece(train_sentencepiece(["some generic pretraining text"] * 20 + ["zebra"]))
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
                      d_kv=16, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    out = tmp_path / "run"
    result = _recipe().main([SMOKE, "--training.output_dir", str(out), "--training.max_steps", "3",
                             "--model.model_name_or_path", str(tmp_path / "base"), "--training.report_to", "tensorboard",
                             "--eval.num_examples_to_show", "0"])
    assert set(result["test"]) == {"search", "recommend"}
    from genretrieval.modeling import GenerativeRetriever

    loaded = GenerativeRetriever.from_pretrained(out / "model")
    assert loaded.model.config.d_model == 32 and loaded.model.get_input_embeddings().num_embeddings >= len(loaded.tokenizer)
    assert list((out / "logs").rglob("events.out.tfevents.*")), "no TensorBoard event file written"


@pytest.mark.slow
def test_two_process_cpu_run_with_torchrun(tmp_path):
    """DDP over gloo: one set of files, every test request scored exactly once (gather_for_metrics)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "recipes" / "train.py"), SMOKE, "--training.output_dir", str(tmp_path), "--training.num_threads", "1",
           "--eval.num_examples_to_show", "0"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    single = _recipe().main([SMOKE, "--training.output_dir", str(tmp_path / "single"), "--eval.num_examples_to_show", "0"])
    for task in ("search", "recommend"):
        assert metrics["test"][task]["num_requests"] == single["test"][task]["num_requests"]
    assert proc.stdout.count("validation recall@10") == 2  # printed by the main process only (2 validations)


def test_accelerate_launch_runs_the_recipe(tmp_path):
    """The README's way in: `accelerate launch recipes/train.py [CONFIG]` (here on the smoke config)."""
    import os
    import shutil
    import subprocess
    import sys

    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert launcher, "the accelerate CLI is not installed next to this Python"
    cmd = [launcher, "launch", "--num_processes", "1", "--num_cpu_threads_per_process", "2", str(ROOT / "recipes" / "train.py"),
           SMOKE, "--training.output_dir", str(tmp_path), "--training.max_steps", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| recommend |" in proc.stdout and (tmp_path / "metrics.json").is_file()

"""recipes/train.py with auxiliary heads: the head losses join the seq2seq loss and the heads are saved."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "recipes" / "configs" / "smoke.yaml")


def _recipe():
    spec = importlib.util.spec_from_file_location("train_recipe_heads", ROOT / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(tmp_path, name, heads):
    out = tmp_path / name
    args = [SMOKE, "--training.output_dir", str(out), "--eval.num_examples_to_show", "0", "--training.max_steps", "6",
            "--training.eval_every", "3", "--training.cache_tokenized", "false"]
    if heads is not None:
        args += ["--heads", heads]
    return out, _recipe().main(args)


def test_auxiliary_heads_train_beside_the_model_and_save_with_it(tmp_path):
    plain_dir, _ = _run(tmp_path, "plain", None)
    heads_dir, result = _run(tmp_path, "heads", "[{name: jsr, weight: 0.5}, {name: sesrec, weight: 0.1}]")
    assert 0.0 <= result["test"]["search"]["recall@10"] <= 1.0
    saved = json.loads((heads_dir / "model" / "heads.json").read_text())
    assert [h["name"] for h in saved["heads"]] == ["jsr", "sesrec"] and saved["heads"][0]["weight"] == 0.5
    weights = load_file(str(heads_dir / "model" / "heads.safetensors"))
    assert any(k.startswith("jsr.") for k in weights) and any(k.startswith("sesrec.") for k in weights)
    assert not (plain_dir / "model" / "heads.json").exists()
    # Same seed and data: the only difference is the heads' loss, so the shared weights must differ.
    a = load_file(str(plain_dir / "model" / "model.safetensors"))
    b = load_file(str(heads_dir / "model" / "model.safetensors"))
    assert any(not torch.equal(a[k], b[k]) for k in a)
    from genretrieval.modeling import GenerativeRetriever

    loaded = GenerativeRetriever.from_pretrained(heads_dir / "model")
    modules, meta = loaded.saved_heads
    assert set(modules) == {"jsr", "sesrec"} and meta["users"]


def test_unknown_head_in_the_config_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        _run(tmp_path, "bad", "[{name: jsrr}]")
    assert "unknown head 'jsrr'" in capsys.readouterr().err

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


_SYNC_DRIVER = '''
import json, sys
import torch
import torch.distributed as dist
from torch import nn
from genretrieval.training.distributed import average_gradients, broadcast_module

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)  # each rank starts from different weights
module = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
broadcast_module(module)
for p in module[0].parameters():
    p.grad = torch.full_like(p, float(rank + 1))
if rank == 0:  # on rank 1 the second layer got no gradient (a head component its batch did not use)
    for p in module[1].parameters():
        p.grad = torch.full_like(p, 4.0)
average_gradients(module.parameters())
out = {"weights": [p.detach().reshape(-1).tolist() for p in module.parameters()],
       "grads": [p.grad.reshape(-1).tolist() for p in module.parameters()]}
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump(out, f)
dist.barrier()
dist.destroy_process_group()
'''


def _torchrun(args: list[str], timeout: int):
    import os
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_head_weights_start_equal_and_gradients_are_averaged_across_two_processes(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(_SYNC_DRIVER)
    proc = _torchrun([str(driver), str(tmp_path)], timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    torch.manual_seed(0)
    expected = [p.detach().reshape(-1).tolist() for p in
                torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)).parameters()]
    assert r0["weights"] == r1["weights"] == expected  # rank 0's initialisation everywhere
    assert r0["grads"] == r1["grads"]
    first, second = r0["grads"][:2], r0["grads"][2:]
    assert all(g == 1.5 for t in first for g in t)  # (1 + 2) / 2
    assert all(g == 2.0 for t in second for g in t)  # (4 + 0) / 2: a missing gradient counts as zero


def test_gradient_helpers_are_no_ops_in_one_process():
    from genretrieval.training.distributed import average_gradients, broadcast_module

    layer = torch.nn.Linear(2, 2)
    layer.weight.grad = torch.ones_like(layer.weight)
    before = [p.detach().clone() for p in layer.parameters()]
    broadcast_module(layer)
    average_gradients(layer.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters()))
    assert torch.equal(layer.weight.grad, torch.ones(2, 2)) and layer.bias.grad is None


@pytest.mark.slow
def test_auxiliary_heads_train_with_two_processes(tmp_path):
    """DDP over gloo with a JSR head: the heads' extra collectives keep both ranks in step to the end."""
    proc = _torchrun([str(ROOT / "recipes" / "train.py"), SMOKE, "--training.output_dir", str(tmp_path),
                      "--training.num_threads", "1", "--training.max_steps", "4", "--training.eval_every", "2",
                      "--eval.num_examples_to_show", "0", "--heads", "[{name: jsr, weight: 0.5}]"], timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["steps"] == 4 and set(metrics["test"]) == {"search", "recommend"}
    assert any(k.startswith("jsr.") for k in load_file(str(tmp_path / "model" / "heads.safetensors")))

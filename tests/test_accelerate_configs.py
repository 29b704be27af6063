"""recipes/accelerate/*.yaml: valid for accelerate's own parsers, and 2 CPU processes train like 1 process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "accelerate"
SMOKE = str(ROOT / "recipes" / "configs" / "smoke.yaml")
# Seconds a run may take to exit once the main process has written metrics.json (normally < 5 s: end_training).
SHUTDOWN_GRACE = 60

# file → (distributed_type, the launcher `accelerate launch` picks, processes it starts)
EXPECTED = {
    "cpu.yaml": ("NO", "simple", 1),
    "cpu_2proc.yaml": ("MULTI_GPU", "torchrun", 2),
    "multi_gpu.yaml": ("MULTI_GPU", "torchrun", 2),
    "fsdp.yaml": ("FSDP", "fsdp", 2),
    "deepspeed_zero2.yaml": ("DEEPSPEED", "deepspeed", 2),
}


def _launch_args(name: str):
    """What `accelerate launch --config_file NAME recipes/train.py` resolves, without starting anything."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    argv = ["--config_file", str(CONFIG_DIR / name), str(ROOT / "recipes" / "train.py"), SMOKE]
    # A private helper, but it is exactly the code path of `accelerate launch`: if it moves, this test should fail.
    return _validate_launch_command(launch_command_parser().parse_args(argv))


def _launcher(args) -> str:
    # The order of accelerate's launch_command().
    if args.use_deepspeed and not args.cpu:
        return "deepspeed"
    if args.use_fsdp and not args.cpu:
        return "fsdp"
    if args.multi_gpu and not args.cpu:
        return "torchrun"
    return "simple"


def test_every_config_file_is_covered_and_documented():
    found = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    assert found == set(EXPECTED), f"configs without a test entry (or missing files): {found ^ set(EXPECTED)}"
    readme = (CONFIG_DIR / "README.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert f"accelerate launch --config_file recipes/accelerate/{name} recipes/train.py" in readme or (
            f"accelerate launch --config_file recipes/accelerate/{name} --num_processes" in readme
        ), f"README.md has no launch command for {name}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate_and_picks_the_right_launcher(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    config = load_config_from_file(str(CONFIG_DIR / name))
    assert isinstance(config, ClusterConfig)
    distributed_type, launcher, processes = EXPECTED[name]
    assert config.distributed_type.value == distributed_type
    assert config.num_processes == processes and config.num_machines == 1
    assert config.mixed_precision == "no"  # the recipe's training.mixed_precision decides (README)
    args, defaults, _ = _launch_args(name)
    assert _launcher(args) == launcher
    assert args.num_processes == processes
    assert defaults.use_cpu == name.startswith("cpu")


def test_nested_keys_are_options_accelerate_launch_knows():
    # ClusterConfig accepts any key inside fsdp_config/deepspeed_config; launch copies each onto its argparse
    # namespace, where a misspelt key is silently ignored. So compare them with the launch CLI's own options.
    from accelerate.commands.launch import launch_command_parser

    from accelerate.commands.config.config_args import load_config_from_file

    options = {a.dest for a in launch_command_parser()._actions}
    for name in ("fsdp.yaml", "deepspeed_zero2.yaml"):
        config = load_config_from_file(str(CONFIG_DIR / name))
        nested = {**config.fsdp_config, **config.deepspeed_config}
        assert nested, f"{name} has no nested plugin section"
        unknown = sorted(k for k in nested if k not in options)
        assert not unknown, f"{name}: keys accelerate launch does not know: {unknown}"


def _tiny_t5():
    from genretrieval.ids import AtomicIdScheme
    from genretrieval.modeling.retriever import ModelConfig, build_model
    from genretrieval.tokenization import build_tokenizer

    scheme = AtomicIdScheme([f"sku-{i}" for i in range(8)])
    tokenizer = build_tokenizer(["red shoes", "blue jacket", "green mug", "black mouse"] * 5, scheme.new_tokens())
    config = ModelConfig(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16)
    return build_model(config, tokenizer)


def test_fsdp_config_builds_the_plugin_and_wraps_t5_blocks():
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = _launch_args("fsdp.yaml")
    env = prepare_multi_gpu_env(args)  # the environment accelerate launch would give each worker
    fsdp_env = {k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}
    assert fsdp_env["ACCELERATE_USE_FSDP"] == "true" and fsdp_env["FSDP_TRANSFORMER_CLS_TO_WRAP"] == "T5Block"
    model = _tiny_t5()
    with mock.patch.dict(os.environ, fsdp_env):
        plugin = FullyShardedDataParallelPlugin()
        plugin.set_auto_wrap_policy(model)  # raises when no module of the model is a T5Block
        wrong = FullyShardedDataParallelPlugin(transformer_cls_names_to_wrap=["T5LayerFF5"])
        with pytest.raises(ValueError, match="T5LayerFF5"):
            wrong.set_auto_wrap_policy(model)
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["T5Block"]
    blocks = [m for m in model.modules() if type(m).__name__ == "T5Block"]
    assert len(blocks) == 4  # 2 encoder + 2 decoder layers: the units FSDP shards
    assert all(plugin.auto_wrap_policy(module=b, recurse=False, nonwrapped_numel=0) for b in blocks)
    assert not plugin.auto_wrap_policy(module=model.shared, recurse=False, nonwrapped_numel=0)


def test_deepspeed_config_builds_zero2_and_leaves_accumulation_to_the_recipe():
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    from genretrieval.training.arguments import TrainingArguments

    args, defaults, _ = _launch_args("deepspeed_zero2.yaml")
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    ds_env = {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}
    with mock.patch.dict(os.environ, ds_env):
        plugin = DeepSpeedPlugin()  # builds the DeepSpeed JSON config; deepspeed itself is not needed for that
    ds = plugin.deepspeed_config
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "none"
    # "auto" = filled from Accelerator(gradient_accumulation_steps=training.gradient_accumulation_steps).
    assert ds["gradient_accumulation_steps"] == "auto"
    assert ds["gradient_clipping"] == TrainingArguments().max_grad_norm


# ------------------------------------------------------------------------------------------------------------------
# 2 CPU processes vs 1
# ------------------------------------------------------------------------------------------------------------------
def _launch(config: str, out: Path, batch_size: int) -> tuple[subprocess.CompletedProcess, bool]:
    """Run recipes/train.py under `accelerate launch`; also returns whether it hung after writing metrics.json."""
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")
    assert launcher, "the accelerate CLI is not installed next to this Python"
    cmd = [launcher, "launch", "--config_file", str(CONFIG_DIR / config), str(ROOT / "recipes" / "train.py"), SMOKE,
           "--training.output_dir", str(out), "--training.batch_size", str(batch_size),
           # One thread per process: two processes on a 2-core machine must not oversubscribe it.
           "--training.num_threads", "1",
           # Dropout draws different masks for one batch of 16 than for two batches of 8; without it the two runs
           # do the same arithmetic up to summation order, so they can be compared tightly.
           "--model.dropout_rate", "0.0",
           "--training.report_to", "tensorboard", "--eval.num_examples_to_show", "0"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    log_out, log_err = out.parent / f"{out.name}.stdout", out.parent / f"{out.name}.stderr"
    # Files, not pipes: a leftover worker holding a pipe open would block communicate() forever.
    with open(log_out, "w") as fout, open(log_err, "w") as ferr:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=fout, stderr=ferr, text=True, start_new_session=True)
        deadline, done_at = time.time() + 300, None
        while proc.poll() is None and time.time() < deadline:
            if done_at is None and (out / "metrics.json").is_file():
                done_at = time.time()
            if done_at is not None and time.time() - done_at > SHUTDOWN_GRACE:
                break
            time.sleep(0.5)
        hung = proc.poll() is None
        if hung:
            # torchrun runs each worker in a session of its own, out of reach of killpg; on SIGTERM it stops
            # them itself. SIGKILL is the fallback for a launcher that does not react.
            proc.terminate()
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stdout, stderr = log_out.read_text(), log_err.read_text()
    if hung and done_at is None:
        pytest.fail(f"{config}: no metrics.json after 300 s\n{stdout[-2000:]}\n{stderr[-2000:]}")
    assert hung or proc.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(cmd, -1 if hung else proc.returncode, stdout, stderr), hung


def _files(directory: Path) -> set[str]:
    # TensorBoard names files after time and pid: those are compared separately.
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and "logs" not in p.parts}


@pytest.mark.slow
def test_two_cpu_processes_match_one_process(tmp_path):
    """2 processes × batch 8 vs 1 × batch 16 (same global batch, same data order): same model, same metrics."""
    pytest.importorskip("tensorboard")
    from safetensors.torch import load_file

    started = time.time()
    two, two_hung = _launch("cpu_2proc.yaml", tmp_path / "A", 8)
    one, one_hung = _launch("cpu.yaml", tmp_path / "B", 16)
    assert not one_hung
    print(f"two launches took {time.time() - started:.1f} s")
    a = json.loads((tmp_path / "A" / "metrics.json").read_text())
    b = json.loads((tmp_path / "B" / "metrics.json").read_text())
    assert a["steps"] == b["steps"] == 12

    # The weights: DDP averages two 8-example gradients where one process takes one 16-example mean, so they may
    # differ by float rounding (measured 8e-7 on weights of magnitude ~4); 1e-4 leaves a wide margin and still
    # catches any real difference in data, learning rate or gradient scale, which moves weights by ~1e-3 per step.
    wa = load_file(str(tmp_path / "A" / "model" / "model.safetensors"))
    wb = load_file(str(tmp_path / "B" / "model" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4

    # The metrics are computed from rankings; weights that equal up to rounding rank alike unless two items are
    # tied to ~1e-6. Allow one such flip: one request moving by one rank changes a mean metric by at most
    # 1 / num_requests. (Measured: identical.)
    for task in ("search", "recommend"):
        ma, mb = a["test"][task], b["test"][task]
        assert ma["num_requests"] == mb["num_requests"] > 0  # every test request scored once, none twice
        tolerance = 1.0 / mb["num_requests"] + 1e-9
        for name, value in mb.items():
            assert ma[name] == pytest.approx(value, abs=tolerance), (task, name, ma[name], value)
    valid_a = [e["validation/recall@10"] for e in a["log_history"] if "validation/recall@10" in e]
    valid_b = [e["validation/recall@10"] for e in b["log_history"] if "validation/recall@10" in e]
    assert len(valid_a) == len(valid_b) == 2 and valid_a == pytest.approx(valid_b, abs=0.05)

    # Only the main process wrote: the same files as the single process, plus rank 1's RNG state in checkpoints.
    extra = _files(tmp_path / "A") - _files(tmp_path / "B")
    assert extra and all(Path(f).name == "random_states_1.pkl" for f in extra), extra
    assert not _files(tmp_path / "B") - _files(tmp_path / "A")
    # TensorBoard event files are named events.out.tfevents.<time>.<host>.<pid>.<n>: all from one process.
    events_a = list((tmp_path / "A").rglob("events.out.tfevents.*"))
    events_b = list((tmp_path / "B").rglob("events.out.tfevents.*"))
    assert events_a and len(events_a) == len(events_b)
    assert len({p.name.split(".")[-2] for p in events_a}) == 1
    assert len(list((tmp_path / "A").rglob("metrics.json"))) == 1
    for line in ("catalog:", "step 6: validation", "step 12: validation", "| search |", "model saved to"):
        assert two.stdout.count(line) == 1 == one.stdout.count(line), (line, two.stdout)
    if two_hung:
        # Seen in 4 of 7 runs under pytest (1 of 10 from a shell): rank 1 deadlocks at exit while the DDP Reducer frees
        # the gloo process group (the group's destructor joins its worker thread holding the GIL; the worker needs
        # the GIL to free the tensors of the last all_gather). Everything was written and checked above.
        pytest.xfail("2-process run finished but a worker hung at exit (torch gloo shutdown deadlock, "
                     "see recipes/accelerate/README.md)")

"""The `evaluate` module of genretrieval's ranking metrics: loads offline, equals genretrieval.evaluation."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from genretrieval.evaluation import compute_metrics
from genretrieval.evaluation.hf_metric import METRIC_NAME, metric_path

ROOT = Path(__file__).resolve().parents[1]
LOG2_3, LOG2_5 = math.log2(3), math.log2(5)


@pytest.fixture(scope="module")
def metric():
    evaluate = pytest.importorskip("evaluate")
    from genretrieval.evaluation.hf_metric import load_metric

    # HF_HUB_OFFLINE and HF_HOME (a temp dir) come from conftest.py; the evaluate flag is read at import, so
    # patch the parsed value: any attempt to reach the Hub would now raise instead of silently working.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
        yield load_metric(keep_in_memory=True)


def _random_case(seed: int, n_requests: int = 40, n_items: int = 60, max_len: int = 40):
    rng = random.Random(seed)
    items = [f"item-{i}" for i in range(n_items)]
    ranked, relevant = [], []
    for _ in range(n_requests):
        ranking = rng.sample(items, rng.randint(0, max_len))
        if ranking and rng.random() < 0.2:  # retrievers can repeat an item; only its first rank may count
            ranking.insert(rng.randrange(len(ranking)), rng.choice(ranking))
        ranked.append(ranking)
        relevant.append(rng.sample(items, rng.randint(1, 5)))
    return ranked, relevant


def test_metric_folder_has_the_layout_evaluate_loads():
    path = Path(metric_path())
    assert path.is_dir() and path.name == METRIC_NAME
    assert (path / f"{METRIC_NAME}.py").is_file()  # evaluate.load(dir) imports dir/<basename of dir>.py


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_equals_genretrieval_on_random_cases(metric, seed):
    ranked, relevant = _random_case(seed)
    expected = compute_metrics(ranked, relevant, ks=(5, 10, 30), map_k=100)
    got = metric.compute(predictions=ranked, references=relevant)
    assert got == {**expected, "num_requests": float(len(ranked))}  # the same code: bit-identical, not approximate


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_rankings_are_cut_at_depth_like_the_evaluator(metric, seed):
    # evaluate_requests retrieves `depth` items, so MRR and MAP only ever see that many ranks.
    ranked, relevant = _random_case(seed, max_len=40)
    depth, ks = 15, (1, 5, 15)
    expected = compute_metrics([r[:depth] for r in ranked], relevant, ks=ks, map_k=depth)
    got = metric.compute(predictions=ranked, references=relevant, ks=list(ks), depth=depth)
    assert got == {**expected, "num_requests": float(len(ranked))}
    assert f"map@{depth}" in got and "map@100" not in got
    uncut = compute_metrics(ranked, relevant, ks=ks, map_k=depth)
    assert uncut["mrr"] > got["mrr"]  # the cut is real: hits below rank 15 no longer count


def test_hand_computed_case(metric):
    predictions = [
        ["a", "b", "c", "d"],  # relevant b (rank 2) and d (rank 4) out of 3
        ["e", "f", "g", "h", "y"],  # the only relevant item is at rank 5, beyond depth 4: no hit at all
        ["z"],  # relevant z listed twice: one relevant item, found at rank 1
        [],  # nothing retrieved
    ]
    references = [["b", "d", "x"], ["y"], ["z", "z"], ["q"]]
    got = metric.compute(predictions=predictions, references=references, ks=[2, 4], depth=4)
    per_request = {
        "recall@2": [1 / 3, 0, 1, 0],
        "ndcg@2": [(1 / LOG2_3) / (1 + 1 / LOG2_3), 0, 1, 0],
        "hr@2": [1, 0, 1, 0],
        "recall@4": [2 / 3, 0, 1, 0],
        "ndcg@4": [(1 / LOG2_3 + 1 / LOG2_5) / (1 + 1 / LOG2_3 + 1 / 2), 0, 1, 0],
        "hr@4": [1, 0, 1, 0],
        "mrr": [1 / 2, 0, 1, 0],
        "map@4": [(1 / 2 + 2 / 4) / 3, 0, 1, 0],  # (P@2 + P@4) / min(3 relevant, 4)
    }
    expected = {name: sum(values) / 4 for name, values in per_request.items()}
    assert set(got) == set(expected) | {"num_requests"} and got["num_requests"] == 4.0
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize(
    ("predictions", "references", "kwargs", "message"),
    [
        ([["a"]], [["a"], ["b"]], {}, r"Mismatch in the number of predictions \(1\) and references \(2\)"),
        ([], [], {}, "no requests"),
        ([["a"]], [[]], {}, r"relevant\[0\] is empty"),
        (["a b"], [["a"]], {}, "expected a list"),  # a bare string instead of a ranking
        ([["a"]], [["a"]], {"ks": [5, 10], "depth": 5}, r"depth \(5\) must be at least the largest cut-off"),
        ([["a"]], [["a"]], {"ks": [0]}, "integers >= 1"),
        ([["a"]], [["a"]], {"ks": 10}, "non-empty list of cut-offs"),
        ([["a"]], [["a"]], {"depth": 2.5}, "integers >= 1"),
    ],
)
def test_bad_input_fails_clearly(metric, predictions, references, kwargs, message):
    with pytest.raises(ValueError, match=message):
        metric.compute(predictions=predictions, references=references, **kwargs)


def test_loads_in_a_fresh_offline_cache_without_network(tmp_path):
    """A new process with empty HF caches, offline flags set and any HTTP(S) request routed to a dead proxy."""
    pytest.importorskip("evaluate")
    ranked, relevant = _random_case(7, n_requests=12)
    script = (
        "import json, sys\n"
        "from genretrieval.evaluation.hf_metric import load_metric\n"
        "case = json.loads(sys.stdin.read())\n"
        "metric = load_metric()\n"  # not in memory: the arrow cache must go to the temp HF_HOME as well
        "print(json.dumps(metric.compute(predictions=case[0], references=case[1], ks=[3, 10], depth=20)))\n"
    )
    home = tmp_path / "hf"
    env = dict(os.environ, HF_HOME=str(home), HF_MODULES_CACHE=str(home / "modules"), HF_HUB_OFFLINE="1",
               HF_EVALUATE_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    proc = subprocess.run([sys.executable, "-c", script], input=json.dumps([ranked, relevant]), env=env,
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = compute_metrics([r[:20] for r in ranked], relevant, ks=(3, 10), map_k=20)
    assert got == {**expected, "num_requests": 12.0}
    copies = list((home / "modules").rglob(f"{METRIC_NAME}.py"))
    assert len(copies) == 1  # evaluate imported its copy from the temp cache, not from a shared one


def test_metric_script_ships_in_the_wheel(tmp_path):
    """`pip install .` (not only `-e .`) must carry the script folder, which has no __init__.py."""
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    shutil.copytree(ROOT / "genretrieval", src / "genretrieval", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-q", "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("genretrieval-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert f"genretrieval/evaluation/hf_metric/{METRIC_NAME}/{METRIC_NAME}.py" in names
    assert "genretrieval/evaluation/hf_metric/__init__.py" in names

"""The README's snippets run as written (on smoke-sized models, in a scratch directory)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def _smoke_commands() -> list[list[str]]:
    """The README's `python recipes/train.py ... smoke.yaml ...` commands (continuation lines joined)."""
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("python recipes/train.py recipes/configs/smoke.yaml"):
                commands.append([sys.executable] + shlex.split(line)[1:])
    return commands


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch directory with `recipes/` linked in, a smoke model at runs/default and the README's smoke runs."""
    work = tmp_path_factory.mktemp("readme")
    (work / "recipes").symlink_to(ROOT / "recipes")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    commands = [[sys.executable, "recipes/train.py", "recipes/configs/smoke.yaml", "--training.output_dir",
                 "runs/default"]] + _smoke_commands()
    assert len(commands) >= 3, "the README lost its smoke-run commands"
    for command in commands:
        done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr[-3000:]}"
    return work


def test_readme_starts_with_the_two_commands():
    first = _blocks("bash")[0].strip().splitlines()
    assert len(first) == 2
    assert first[0].startswith("python3 -m venv .venv") and "pip install torch==2.13.0" in first[0]
    assert "accelerate launch" in first[0] and "recipes/train.py" in first[0]
    assert first[1] == 'python -m pytest -q -m "not slow"'


@pytest.mark.parametrize("index", range(len(_blocks("python"))))
def test_python_snippet_runs(index, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = _blocks("python")[index]
    exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "__readme__"})

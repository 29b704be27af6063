"""Run a benchmark suite (datasets × models × seeds) and write results/<suite>/{results.json,results.md,plots/}.

    python recipes/benchmark.py recipes/configs/suites/smoke.yaml
    python recipes/benchmark.py recipes/configs/suites/ml-100k.yaml --datasets[0].path /data/ml-100k   # (see below)
    python recipes/benchmark.py recipes/configs/suites/ml-100k.yaml --data_root ../shared/data --seeds "[0]"

Top-level keys of the suite can be overridden as --key VALUE (e.g. --seeds "[0, 1]", --output_root out). Dataset
paths in the suite files are relative to --data_root (default: the current directory). Finished runs are reused, so
an interrupted suite resumes where it stopped; delete results/<suite>/runs/... to redo a run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: Sequence[str]):
    """Suite YAML path (first) + ``--key value`` overrides (``--data_root DIR`` resolves dataset paths)."""
    from genretrieval.benchmark.suite import load_suite, split_data_root

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    rest, data_root = split_data_root(argv[1:])
    return load_suite(argv[0], rest, data_root)


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse the suite, run it, return results.json's content."""
    from genretrieval.config import ConfigError
    from genretrieval.data import SchemaError

    try:
        suite = parse_args(sys.argv[1:] if argv is None else argv)
        from genretrieval.benchmark import run_suite

        return run_suite(suite)
    except (ConfigError, SchemaError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

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
    from pathlib import Path

    from genretrieval.benchmark import SuiteConfig
    from genretrieval.config import ConfigError, build_dataclass, deep_merge, load_yaml, parse_overrides

    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    path, rest = argv[0], argv[1:]
    data_root = None
    if "--data_root" in rest:
        i = rest.index("--data_root")
        if i + 1 >= len(rest):
            raise ConfigError("--data_root needs a directory")
        data_root = rest[i + 1]
        del rest[i : i + 2]
    values = deep_merge(load_yaml(path), parse_overrides(rest))
    if data_root is not None:
        for ds in values.get("datasets", []):
            for key in ("path", "catalog_path", "interactions_path"):
                if ds.get(key) and not os.path.isabs(ds[key]):
                    ds[key] = str(Path(data_root) / ds[key])
    return build_dataclass(SuiteConfig, values)


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

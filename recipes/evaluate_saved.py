"""Evaluate a saved generative retriever on a benchmark suite's dataset, with the suite's split and protocols.

    python recipes/evaluate_saved.py SUITE.yaml MODEL_DIR [--dataset NAME] [--tasks recommend] \\
        [--max_requests 2000] [--sample_seed 0] [--output eval.json] [--data_root DIR]

The test requests are built exactly as `recipes/benchmark.py` builds them (same loader, query simulation, split and
grouping), so a model trained by a suite run (its `runs/<dataset>/<model>/seed<k>-train/best` or `.../model`) can
be re-evaluated, or evaluated on a seeded random sample of the test requests when full-catalog scoring of every
request does not fit the time box (semantic IDs score every catalog item per request). The JSON output records the
sample (size, seed), the protocols, standard errors over the evaluated requests and the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_parser() -> argparse.ArgumentParser:
    """The command line (suite overrides other than --data_root are not accepted here)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="suite YAML (its dataset, split, protocols and cut-offs are used)")
    parser.add_argument("model_dir", help="directory written by GenerativeRetriever.save_pretrained")
    parser.add_argument("--dataset", default=None, help="dataset name in the suite (default: its only/first dataset)")
    parser.add_argument("--tasks", nargs="+", default=["search", "recommend"], choices=["search", "recommend"])
    parser.add_argument("--max_requests", type=int, default=None,
                        help="evaluate a seeded random sample of at most this many test requests per task")
    parser.add_argument("--sample_seed", type=int, default=0, help="seed of the request sample")
    parser.add_argument("--ranking", choices=["exact", "beam"], default="exact",
                        help="exact: score every item (the benchmark's way); beam: constrained beam search top-k")
    parser.add_argument("--num_beams", type=int, default=30, help="beam width (and ranking depth) of --ranking beam")
    parser.add_argument("--data_root", default=None, help="dataset paths of the suite are relative to this")
    parser.add_argument("--output", default=None, help="JSON file to write (default: MODEL_DIR/../evaluate_saved.json)")
    return parser


def evaluate_saved(args: argparse.Namespace) -> dict[str, Any]:
    """Load the suite's dataset and the model, evaluate under every protocol of the suite, return the report."""
    from pathlib import Path

    import numpy as np

    from genretrieval.benchmark.runner import _environment, prepare_dataset
    from genretrieval.benchmark.suite import load_suite
    from genretrieval.evaluation.protocols import ProtocolConfig, evaluate_protocols
    from genretrieval.evaluation.sampling import BeamRanking, sample_request_index
    from genretrieval.fileio import atomic_write_text
    from genretrieval.modeling import GenerativeRetriever

    if args.max_requests is not None and args.max_requests < 1:
        raise ValueError(f"--max_requests must be >= 1, got {args.max_requests}")
    suite = load_suite(args.suite, data_root=args.data_root)
    names = [d.name for d in suite.datasets]
    name = args.dataset or names[0]
    if name not in names:
        raise ValueError(f"--dataset {name!r} is not in the suite (datasets: {names})")
    dataset = suite.datasets[names.index(name)]
    retriever = GenerativeRetriever.from_pretrained(args.model_dir)
    prepared = prepare_dataset(dataset, suite)
    unknown = sorted(set(prepared.catalog["item_id"]) - set(retriever.item_ids))
    if unknown:
        raise ValueError(f"the model in {args.model_dir!r} does not know {len(unknown)} items of dataset {name!r} "
                         f"(e.g. {unknown[:3]}): it was trained on another catalog")
    protocols, depth, ks = list(suite.protocols), suite.depth, tuple(suite.ks)
    scorer: Any = retriever
    if args.ranking == "beam":
        if args.num_beams < max(suite.ks):
            raise ValueError(f"--num_beams ({args.num_beams}) must be at least the largest cut-off {max(suite.ks)}")
        scorer, depth, protocols = BeamRanking(retriever, args.num_beams), args.num_beams, ["full"]
    report: dict[str, Any] = {
        "ranking": args.ranking if args.ranking == "exact" else f"beam search, {args.num_beams} beams",
        "model_dir": str(args.model_dir), "suite": suite.name, "dataset": name,
        "protocols": {p: ("full-catalog ranking, depth %d" % depth if p == "full" else
                          f"1 positive + {suite.num_negatives} sampled negatives") for p in protocols},
        "history_items_masked": suite.exclude_history, "sample": {}, "metrics": {}, "standard_errors": {},
        "environment": _environment(),
    }
    for task in args.tasks:
        requests = prepared.requests[task]
        if not requests:
            continue
        index = sample_request_index(len(requests), args.max_requests, args.sample_seed)
        chosen = [requests[i] for i in index]
        report["sample"][task] = {"test_requests": len(requests), "evaluated": len(chosen), "seed": args.sample_seed}
        report["metrics"][task], report["standard_errors"][task] = {}, {}
        configs = [ProtocolConfig(name=protocol, ks=ks, depth=depth, num_negatives=suite.num_negatives,
                                  exclude_history=suite.exclude_history, seed=0) for protocol in protocols]
        results = evaluate_protocols(scorer, chosen, configs, interacted=prepared.interacted, progress=task)
        for protocol, result in zip(protocols, results):
            report["metrics"][task][protocol] = {k: float(v) for k, v in result.metrics.items()}
            # Standard error of the mean over the evaluated requests: the sampling error of a sub-sampled evaluation.
            report["standard_errors"][task][protocol] = {
                m: float(np.std(v, ddof=1) / np.sqrt(len(v))) for m, v in result.per_request.items() if len(v) > 1}
    output = Path(args.output) if args.output else Path(args.model_dir).parent / "evaluate_saved.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, json.dumps(report, indent=1))
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Parse, evaluate, print the metrics; errors about the input exit with status 2 and a message."""
    from genretrieval.config import ConfigError
    from genretrieval.data import SchemaError

    args = build_parser().parse_args(argv)
    try:
        report = evaluate_saved(args)
    except (ConfigError, SchemaError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    for task, protocols in report["metrics"].items():
        for protocol, metrics in protocols.items():
            shown = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k in ("recall@10", "ndcg@10", "hr@10"))
            print(f"{task} · {protocol} ({report['sample'][task]['evaluated']} requests): {shown}")
    return report


if __name__ == "__main__":
    main()

"""Training throughput: our Accelerate loop vs. a stock Seq2SeqTrainer on the same tiny T5 and examples, one run.

    python recipes/bench_training.py                                   # 3 repeats, 100 steps x 64 examples per run
    OMP_NUM_THREADS=1 python recipes/bench_training.py --repeats 5 --output runs/bench_training/1thread.json
    python recipes/bench_training.py --sides ours seq2seq_trainer ours_no_bucketing   # + the bucketing ablation

Writes a JSON report (medians, every run, the ratio ours / Seq2SeqTrainer, padding statistics, environment); see
genretrieval/training/throughput.py for what each side does and which span is timed, docs/speed_training.md for results.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

# Before any HuggingFace import: the benchmark never needs the network.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line → namespace (one flag per ``BenchSettings`` field, same defaults)."""
    from genretrieval.training.throughput import SIDES, BenchSettings

    defaults = BenchSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=defaults.output, help="JSON report path")
    parser.add_argument("--work_dir", default=defaults.work_dir, help="tokenised cache and run directories")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=defaults.sides)
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="runs per side; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both (default: $OMP_NUM_THREADS or all cores)")
    for name in ("seed", "num_items", "num_users", "batch_size", "max_steps", "warmup_steps", "logging_steps",
                 "d_model", "d_ff", "num_layers", "num_heads"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    for name in ("learning_rate", "weight_decay", "lr_warmup_ratio"):
        parser.add_argument(f"--{name}", type=float, default=getattr(defaults, name))
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the benchmark; print a summary; return the report written to ``--output``."""
    from genretrieval.training.throughput import BenchSettings, run_benchmark

    args = parse_args(argv)
    try:
        settings = BenchSettings(**vars(args))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    report = run_benchmark(settings)
    for side, res in report["results"].items():
        rates = ", ".join(f"{r:.0f}" for r in res["examples_per_s"])
        print(f"{side:18s} median {res['median_examples_per_s']:8.1f} examples/s  (runs: {rates})")
    if "ratio_ours_over_seq2seq_trainer" in report:
        print(f"ratio ours / Seq2SeqTrainer = {report['ratio_ours_over_seq2seq_trainer']:.2f} "
              f"(target 1.2: {'met' if report['target']['met'] else 'not met'})")
    print(f"report: {settings.output}")
    return report


if __name__ == "__main__":
    main()

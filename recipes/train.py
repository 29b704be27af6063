"""Train one generative retriever for search, recommendation or both.

    accelerate launch recipes/train.py                                  # Gen-R+S on the embedded synthetic data
    accelerate launch recipes/train.py recipes/configs/gen_s.yaml       # search only (Gen-S)
    python recipes/train.py recipes/configs/gen_rs.yaml --data.synthetic.alignment 0.0 --training.output_dir runs/a0

The optional first argument is a YAML config (sections: data, mixture, ids, tokenizer, model, training, eval; see
genretrieval/training/arguments.py for every key and its default). Any key can be overridden as --section.key VALUE.
Unknown keys are an error. Shorthands: --resume_from_checkpoint (PATH or latest), --output_dir, --seed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

# Before any HuggingFace import: nothing here downloads unless the user points at a Hub id and is online.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# Flags users type most often, as in transformers' Trainer scripts.
ALIASES = {"--resume_from_checkpoint": "--training.resume_from_checkpoint", "--output_dir": "--training.output_dir",
           "--seed": "--training.seed"}


def _expand_alias(arg: str) -> str:
    key, sep, value = arg.partition("=")
    return ALIASES.get(key, key) + sep + value


def parse_args(argv: Sequence[str]):
    """Config path (optional, first) + ``--section.key value`` overrides → ``TrainConfig``."""
    from genretrieval.config import parse_config
    from genretrieval.training import TrainConfig

    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    config_path = argv.pop(0) if argv and not argv[0].startswith("--") else None
    argv = [_expand_alias(a) for a in argv]
    return parse_config(TrainConfig, config_path, argv)


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse, train, evaluate; returns the metrics written to ``metrics.json``."""
    from genretrieval.config import ConfigError
    from genretrieval.data import SchemaError

    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
        from genretrieval.training import train

        return train(config)
    except (ConfigError, SchemaError, FileNotFoundError) as err:
        # Bad input is the user's to fix: one line naming the problem, not a traceback.
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

"""Learn semantic item IDs (embeddings → residual codes → collision digit) and write the scheme to a directory.

    python recipes/build_item_ids.py                                             # embedded synthetic data, defaults
    python recipes/build_item_ids.py tokenizers/semantic-ids-default.yaml --output_dir item_ids/default
    python recipes/build_item_ids.py CONFIG --ids.semantic.quantizer rq-vae --ids.semantic.embedding content

CONFIG is a recipes/train.py config: its ``data`` section says which catalog and interactions to use (only the
training split feeds the embeddings) and ``ids.semantic`` how to learn the codes. The output directory receives
``id_scheme.json`` (codes, codebook sizes, build info) and ``diagnostics.json`` (utilisation per level, collision
rate, items per prefix); train on it with ``recipes/train.py CONFIG --ids.name semantic --ids.path DIR``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: Sequence[str]):
    """Config path (optional, first) + ``--section.key value`` overrides + ``--output_dir DIR``."""
    from genretrieval.config import ConfigError, parse_config
    from genretrieval.training import TrainConfig

    argv = list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0)
    config_path = argv.pop(0) if argv and not argv[0].startswith("--") else None
    output_dir = "item_ids/default"
    if "--output_dir" in argv:
        i = argv.index("--output_dir")
        if i + 1 >= len(argv):
            raise ConfigError("--output_dir needs a directory")
        output_dir = argv[i + 1]
        del argv[i : i + 2]
    return parse_config(TrainConfig, config_path, argv), output_dir


def build(config, output_dir: str) -> dict:
    """Build the scheme of ``config`` and write it (atomically) to ``output_dir``; returns the diagnostics."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from genretrieval.data.builders import build_examples
    from genretrieval.ids.quantizers import format_diagnostics
    from genretrieval.ids.semantic import build_semantic_ids
    from genretrieval.training.trainer import load_tables

    catalog, interactions = load_tables(config)
    examples = build_examples(catalog, interactions, config.data.split)
    print(f"catalog: {len(catalog)} items; training examples: search {len(examples['search']['train'])}, "
          f"recommend {len(examples['recommend']['train'])}")
    scheme = build_semantic_ids(catalog, examples, config.ids.semantic, progress=True)
    diagnostics = scheme.info["diagnostics"]
    print(format_diagnostics(diagnostics))
    out = Path(output_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        scheme.save(tmp)
        (tmp / "diagnostics.json").write_text(json.dumps(diagnostics, indent=1), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"wrote {out}/id_scheme.json ({len(scheme)} items, {scheme.id_length} tokens each, "
          f"{len(scheme.new_tokens())} ID tokens)")
    return diagnostics


def main(argv: Sequence[str] | None = None) -> dict:
    """Parse, build, write; returns the diagnostics."""
    from genretrieval.config import ConfigError
    from genretrieval.data import SchemaError

    try:
        config, output_dir = parse_args(sys.argv[1:] if argv is None else argv)
        return build(config, output_dir)
    except (ConfigError, SchemaError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

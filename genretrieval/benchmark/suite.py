"""The typed description of a benchmark suite: datasets × models × seeds × protocols.

A suite YAML looks like::

    name: ml-100k
    seeds: [0, 1, 2]
    datasets:
      - name: ml-100k
        source: movielens
        path: ../shared/data/ml-100k          # the project ships no real data: pass your copy
        queries: {method: genre_template}
    models:
      - {name: Gen-R+S, kind: generative, tasks: [search, recommend]}
      - {name: SASRec, kind: baseline, baseline: sasrec, params: {max_epochs: 50}}
    protocols: [full, sampled]

Generative models take ``overrides`` (``--section.key value`` pairs of ``recipes/train.py``, as a mapping
``{"training.num_epochs": 4}``); baselines take ``params`` for their config dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..data.builders import SplitConfig
from ..data.queries import QuerySimulationConfig
from ..data.synthetic import SyntheticConfig

DATA_SOURCES = ("synthetic", "files", "movielens", "amazon-sequences", "amazon-reviews")


@dataclass
class DatasetSpec:
    """One dataset of the suite and how to turn it into examples."""

    name: str  # label in tables and file names
    source: Literal["synthetic", "files", "movielens", "amazon-sequences", "amazon-reviews"] = "synthetic"
    path: str | None = None  # movielens / amazon-sequences: the dataset directory
    catalog_path: str | None = None  # files: catalog .jsonl/.csv; amazon-reviews: the metadata file
    interactions_path: str | None = None  # files: interactions .jsonl/.csv; amazon-reviews: the reviews file
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)  # synthetic: generator knobs
    queries: QuerySimulationConfig | None = None  # simulate search queries (datasets without queries)
    split: SplitConfig = field(default_factory=SplitConfig)  # split settings (fixed across seeds: paired tests)
    max_users: int | None = None  # keep a seeded subset of users (CPU time boxes); None = all

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"dataset name must be a non-empty string without '/', got {self.name!r}")
        needs_path = {"movielens": "path", "amazon-sequences": "path"}
        if self.source in needs_path and not self.path:
            raise ValueError(f"dataset {self.name!r}: source={self.source} needs 'path' (the dataset directory)")
        if self.source in ("files", "amazon-reviews") and not (self.catalog_path and self.interactions_path):
            raise ValueError(f"dataset {self.name!r}: source={self.source} needs catalog_path and interactions_path")
        if self.max_users is not None and self.max_users < 2:
            raise ValueError(f"dataset {self.name!r}: max_users must be >= 2 or null, got {self.max_users!r}")


@dataclass
class ModelSpec:
    """One row of the result table."""

    name: str  # label, e.g. "Gen-R+S" or "BM25"
    kind: Literal["generative", "baseline"] = "generative"
    tasks: list[str] = field(default_factory=lambda: ["search", "recommend"])  # generative: tasks trained on
    baseline: str | None = None  # baseline: registered name (popularity, popularity-query, bm25, sasrec, biencoder)
    overrides: dict[str, Any] = field(default_factory=dict)  # generative: recipes/train.py keys, e.g. training.num_epochs
    params: dict[str, Any] = field(default_factory=dict)  # baseline: fields of its config dataclass
    # generative: "exact" scores every catalog item (the default); "beam" ranks by constrained beam search's top
    # num_beams (TIGER's way) where exact multi-token scoring does not fit, e.g. semantic IDs on a 12k-item catalog.
    # Beam ranking reports the full protocol only, at depth num_beams.
    ranking: Literal["exact", "beam"] = "exact"
    num_beams: int = 30  # ranking: beam: beam width = ranking depth (>= the suite's largest cut-off)
    # Evaluate a seeded sample of at most this many test requests per task (the same sample for every seed, and for
    # every model with the same value, so paired tests stay paired); None = all.
    max_test_requests: int | None = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"model name must be a non-empty string without '/', got {self.name!r}")
        if self.ranking not in ("exact", "beam"):
            raise ValueError(f"model {self.name!r}: ranking must be 'exact' or 'beam', got {self.ranking!r}")
        if self.ranking == "beam" and self.kind != "generative":
            raise ValueError(f"model {self.name!r}: ranking 'beam' is for generative models")
        for key, value in (("num_beams", self.num_beams), ("max_test_requests", self.max_test_requests)):
            if key == "max_test_requests" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"model {self.name!r}: {key} must be an integer >= 1, got {value!r}")
        if self.kind == "baseline" and not self.baseline:
            raise ValueError(f"model {self.name!r}: kind=baseline needs 'baseline' (a registered baseline name)")
        if self.kind == "generative" and self.baseline:
            raise ValueError(f"model {self.name!r}: 'baseline' is only for kind=baseline")
        bad = [t for t in self.tasks if t not in ("search", "recommend")]
        if bad or not self.tasks:
            raise ValueError(f"model {self.name!r}: tasks must be a non-empty subset of [search, recommend], got {self.tasks}")

    @property
    def slug(self) -> str:
        """File-system-safe form of the name."""
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in self.name)


@dataclass
class SuiteConfig:
    """datasets × models × seeds, evaluated under the listed protocols."""

    name: str = "smoke"  # results go to <output_root>/<name>/
    seeds: list[int] = field(default_factory=lambda: [0])  # training seeds (data splits stay fixed)
    datasets: list[DatasetSpec] = field(default_factory=list)
    models: list[ModelSpec] = field(default_factory=list)
    protocols: list[Literal["full", "sampled"]] = field(default_factory=lambda: ["full", "sampled"])
    ks: list[int] = field(default_factory=lambda: [5, 10, 30])  # cut-offs of the full protocol
    depth: int = 100  # full protocol: items ranked per request (MRR, MAP@depth)
    num_negatives: int = 99  # sampled protocol: negatives per positive
    exclude_history: bool = False  # mask items already in the user's history (rec)
    reference_model: str | None = None  # paired tests compare every model with this one (default: first generative)
    output_root: str = "results"  # where <name>/ is written
    tsne: bool = True  # Spotify-style t-SNE of item embeddings of the generative models
    cold_start_max_train: int = 5  # cold-start cut: requests whose relevant items have <= this many training examples
    generative_defaults: dict[str, Any] = field(default_factory=dict)  # overrides applied to every generative model
    # Run only these models now (e.g. --only "[Gen-R]" to add a seed to one model on a time box); finished runs of
    # the others are still read and reported. Empty = run everything.
    only: list[str] = field(default_factory=list)
    # Extra paired tests [model_a, model_b] (a claim "a beats b", e.g. [JSR, JSR-S]), per task and protocol both
    # models ran; reported under results.json "comparisons" and in results.md.
    comparisons: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds must list at least one seed")
        if not self.datasets or not self.models:
            raise ValueError("a suite needs at least one dataset and one model")
        for what, names in (("dataset", [d.name for d in self.datasets]), ("model", [m.name for m in self.models])):
            dup = {n for n in names if names.count(n) > 1}
            if dup:
                raise ValueError(f"duplicate {what} names: {sorted(dup)}")
        if self.reference_model and self.reference_model not in [m.name for m in self.models]:
            raise ValueError(f"reference_model {self.reference_model!r} is not one of the suite's models")
        unknown = sorted(set(self.only) - {m.name for m in self.models})
        if unknown:
            raise ValueError(f"only names models that are not in the suite: {unknown}")
        names = {m.name for m in self.models}
        for pair in self.comparisons:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2 or pair[0] == pair[1]:
                raise ValueError(f"comparisons: each entry must be [model_a, model_b] with two different models, "
                                 f"got {pair!r}")
            missing = [n for n in pair if n not in names]
            if missing:
                raise ValueError(f"comparisons: {pair!r} names models that are not in the suite: {missing}")
        if self.depth < max(self.ks):
            raise ValueError(f"depth ({self.depth}) must be at least the largest cut-off ({max(self.ks)})")
        for m in self.models:
            if m.ranking == "beam" and m.num_beams < max(self.ks):
                raise ValueError(f"model {m.name!r}: num_beams ({m.num_beams}) must be at least the largest cut-off "
                                 f"({max(self.ks)}): beam ranking ranks only num_beams items")


def load_suite(path: str, overrides: list[str] | None = None, data_root: str | None = None) -> SuiteConfig:
    """A suite from its YAML file, ``--key value`` overrides applied, dataset paths made relative to ``data_root``."""
    import os
    from pathlib import Path

    from ..config import build_dataclass, deep_merge, load_yaml, parse_overrides

    values = deep_merge(load_yaml(path), parse_overrides(list(overrides or [])))
    if data_root is not None:
        for ds in values.get("datasets", []):
            for key in ("path", "catalog_path", "interactions_path"):
                if ds.get(key) and not os.path.isabs(ds[key]):
                    ds[key] = str(Path(data_root) / ds[key])
    return build_dataclass(SuiteConfig, values)


def split_data_root(argv: list[str]) -> tuple[list[str], str | None]:
    """Remove ``--data_root DIR`` from command-line arguments; returns (the rest, DIR or None)."""
    from ..config import ConfigError

    rest = list(argv)
    if "--data_root" not in rest:
        return rest, None
    i = rest.index("--data_root")
    if i + 1 >= len(rest):
        raise ConfigError("--data_root needs a directory")
    data_root = rest[i + 1]
    del rest[i : i + 2]
    return rest, data_root

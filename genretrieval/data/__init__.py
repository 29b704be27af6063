"""Data: canonical tables, the synthetic default dataset, user-data loaders, example builders and task mixing.

See ``docs/data.md`` for the formats and protocols.
"""

from .builders import (
    SPLITS,
    MixtureConfig,
    SplitConfig,
    build_examples,
    check_tasks,
    mix_tasks,
    normalize_query,
)
from .loaders import load_catalog, load_interactions, save_table
from .schema import (
    CATALOG_FEATURES,
    EXAMPLE_FEATURES,
    INTERACTION_FEATURES,
    SCENARIOS,
    TASKS,
    DataFormatError,
    SchemaError,
    validate_catalog,
    validate_interactions,
)
from .synthetic import SyntheticConfig, SyntheticWorld, generate_synthetic, simulate

__all__ = [
    "CATALOG_FEATURES",
    "EXAMPLE_FEATURES",
    "INTERACTION_FEATURES",
    "SCENARIOS",
    "SPLITS",
    "TASKS",
    "DataFormatError",
    "MixtureConfig",
    "SchemaError",
    "SplitConfig",
    "SyntheticConfig",
    "SyntheticWorld",
    "build_examples",
    "check_tasks",
    "generate_synthetic",
    "load_catalog",
    "load_interactions",
    "mix_tasks",
    "normalize_query",
    "save_table",
    "simulate",
    "validate_catalog",
    "validate_interactions",
]

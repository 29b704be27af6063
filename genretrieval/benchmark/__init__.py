"""The benchmark command's library side: suite configs and the runner."""

from .runner import run_suite
from .suite import DatasetSpec, ModelSpec, SuiteConfig

__all__ = ["DatasetSpec", "ModelSpec", "SuiteConfig", "run_suite"]

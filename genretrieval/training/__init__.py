"""Training: the typed config tree and the multi-task Accelerate loop."""

from .arguments import DataConfig, EvalConfig, IdSchemeConfig, PeftSettings, TrainConfig, TrainingArguments
from .trainer import train

__all__ = ["DataConfig", "EvalConfig", "IdSchemeConfig", "PeftSettings", "TrainConfig", "TrainingArguments", "train"]

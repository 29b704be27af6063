"""Test-wide settings: never touch the network, keep HF caches inside a temp dir, use both cores."""

import os
import tempfile

# Must be set before any HuggingFace library is imported (huggingface_hub reads it at import time).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HOME", os.path.join(tempfile.gettempdir(), "genretrieval-test-hf-home"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

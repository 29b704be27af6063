"""Loaders that turn raw files into the canonical catalog and interaction tables (see ``schema.py``)."""

from ..schema import DataFormatError
from .jsonl import load_catalog, load_interactions, save_table

__all__ = ["DataFormatError", "load_catalog", "load_interactions", "save_table"]

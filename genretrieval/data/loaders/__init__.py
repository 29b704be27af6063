"""Loaders that turn raw files into the canonical catalog and interaction tables (see ``schema.py``)."""

from ..schema import DataFormatError
from .amazon import load_amazon_reviews, load_amazon_sequences
from .jsonl import load_catalog, load_interactions, save_table
from .movielens import detect_movielens_format, load_movielens
from .product_search import ProductSearchData, load_product_search, product_search_examples

__all__ = [
    "DataFormatError",
    "ProductSearchData",
    "detect_movielens_format",
    "load_amazon_reviews",
    "load_amazon_sequences",
    "load_catalog",
    "load_interactions",
    "load_movielens",
    "load_product_search",
    "product_search_examples",
    "save_table",
]

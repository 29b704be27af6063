"""Item-ID schemes: how catalog items become token sequences the model can generate."""

from .atomic import AtomicIdScheme
from .base import (
    ItemIdScheme,
    UnknownItemError,
    get_id_scheme_class,
    load_id_scheme,
    register_id_scheme,
    registered_id_schemes,
)

# Imported for its registration: a saved semantic-ID model must load in a fresh process (numpy-only import).
from .semantic import SemanticIdScheme

__all__ = [
    "AtomicIdScheme",
    "ItemIdScheme",
    "SemanticIdScheme",
    "UnknownItemError",
    "get_id_scheme_class",
    "load_id_scheme",
    "register_id_scheme",
    "registered_id_schemes",
]

"""The generative model and the retriever that wraps it with its tokenizer and item-ID scheme."""

from .retriever import GenerativeRetriever, ModelConfig, build_model

__all__ = ["GenerativeRetriever", "ModelConfig", "build_model"]

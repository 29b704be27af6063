"""genretrieval: generative retrieval for joint search and recommendation.

Submodules are imported on demand so that ``import genretrieval`` stays cheap; the heavy
HuggingFace imports happen only when a model, tokenizer or trainer is used.
"""

__version__ = "0.1.0"

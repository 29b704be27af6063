"""Random HeadBatch / OwnEmbeddings factories shared by the head tests (no data files)."""

from __future__ import annotations

import torch

from genretrieval.modeling.heads import HeadBatch, OwnEmbeddings


def tiny_embeddings(num_items: int = 30, vocab_size: int = 50, dim: int = 16, text_len: int = 6,
                    seed: int = 0) -> OwnEmbeddings:
    """Own item/word tables with random (0-padded) item texts."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(1, vocab_size, (num_items, text_len), generator=g)
    text[:, -2:] *= (torch.rand(num_items, 2, generator=g) < 0.5).long()  # some padding at the end
    torch.manual_seed(seed)
    return OwnEmbeddings(num_items, vocab_size, dim, text)


def random_batch(size: int = 8, num_items: int = 30, vocab_size: int = 50, num_users: int = 10, history: int = 5,
                 searches: int = 3, query_len: int = 4, negatives: int = 1, search_fraction: float = 0.5,
                 seed: int = 0) -> HeadBatch:
    """A mixed search/recommendation batch with left-padded histories and 0-padded queries."""
    g = torch.Generator().manual_seed(seed)
    is_search = torch.rand(size, generator=g) < search_fraction
    hist = torch.randint(0, num_items, (size, history), generator=g)
    lengths = torch.randint(1, history + 1, (size,), generator=g)
    hist[torch.arange(history).unsqueeze(0) < (history - lengths).unsqueeze(1)] = -1
    s_items = torch.randint(0, num_items, (size, searches), generator=g)
    s_lengths = torch.randint(0, searches + 1, (size,), generator=g)
    s_items[torch.arange(searches).unsqueeze(0) < (searches - s_lengths).unsqueeze(1)] = -1
    s_queries = torch.randint(1, vocab_size, (size, searches, query_len), generator=g)
    s_queries[s_items < 0] = 0
    query = torch.randint(1, vocab_size, (size, query_len), generator=g)
    query[:, -1] *= (torch.rand(size, generator=g) < 0.5).long()
    query[~is_search] = 0
    target = torch.randint(0, num_items, (size,), generator=g)
    neg = (target.unsqueeze(1) + torch.randint(1, num_items, (size, negatives), generator=g)) % num_items
    return HeadBatch(is_search=is_search, users=torch.randint(1, num_users, (size,), generator=g), history=hist,
                     query=query, search_items=s_items, search_queries=s_queries, target=target, negatives=neg)
